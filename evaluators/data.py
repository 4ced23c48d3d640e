"""Datasets for training supernets and measuring subnet accuracy, by spec string.

``load_data(spec)`` understands:

* ``digits``: scikit-learn's 1,797 real 8x8 handwritten digits (ships with scikit-learn; the embedded
  default), grey levels repeated to 3 channels, with a fixed stratified 70/15/15 train/val/test split;
* ``npz:PATH``: arrays ``x`` (``N,H,W`` / ``N,H,W,C`` / ``N,C,H,W``, uint8 or float) and ``y``; optional
  ``x_val``/``y_val`` and ``x_test``/``y_test``, otherwise the same fixed stratified split;
* ``folder:PATH``: one sub-folder of images per class (read with Pillow), split as above, or
  ``train/``, ``val/`` (and ``test/``) folders of class sub-folders (the ImageNet layout);
* ``sequences[:N]``: a token-sequence classification task generated on the spot (for transformers);
* ``cifar10:ROOT``: through torchvision, when it is installed and the data is on disk (nothing is
  downloaded); ``imagenet:ROOT``: the ``train/`` + ``val/`` folder layout (val doubles as test).

Images are stored at one size and normalised per channel with the training split's statistics. A
subnet asks for its own input resolution: :func:`train_view` (random-resized-crop style scale and
shift, optional horizontal flip, at the requested size, vectorised over the batch) and
:func:`eval_view` (a plain resize) produce it from a stored batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from nas.errors import ConfigError

#: Fraction of the data in the validation and test splits when a source has no splits of its own.
VAL_FRACTION = TEST_FRACTION = 0.15
SPLIT_SEED = 0
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}

Batch = tuple[torch.Tensor, torch.Tensor]


class Split:
    """One split of a dataset: a torch ``Dataset`` of ``(image, label)`` and a batch iterator.

    In-memory splits (``TensorDataset``) are batched by slicing, which is many times faster than a
    ``DataLoader`` for small images; others go through a ``DataLoader``.
    """

    def __init__(self, dataset: torch.utils.data.Dataset, labels: np.ndarray):
        self.dataset, self.labels = dataset, np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, batch_size: int, shuffle: bool = False, seed: int = 0, limit: int | None = None,
                drop_last: bool = False) -> Iterator[Batch]:
        """Batches of ``(images, labels)``; ``shuffle`` with ``seed`` is reproducible; ``limit`` caps the
        number of samples (the first ones of the order)."""
        order = np.arange(len(self))
        if shuffle:
            order = np.random.default_rng(seed).permutation(len(self))
        if limit is not None:
            order = order[:limit]
        stop = len(order) - (len(order) % batch_size if drop_last and len(order) >= batch_size else 0)
        tensors = getattr(self.dataset, "tensors", None)
        for start in range(0, stop, batch_size):
            index = order[start:start + batch_size]
            if tensors is not None:
                idx = torch.from_numpy(index)
                yield tensors[0][idx], tensors[1][idx]
            else:
                items = [self.dataset[int(i)] for i in index]
                yield torch.stack([x for x, _ in items]), torch.tensor([int(y) for _, y in items])


@dataclass
class Data:
    """A classification dataset: three splits, its classes and how its images may be augmented."""

    spec: str
    train: Split
    val: Split
    test: Split
    n_classes: int
    image_size: int
    channels: int = 3
    #: Whether a horizontal flip keeps an image's class (not for digits).
    hflip: bool = False
    details: dict = field(default_factory=dict)

    def implied_options(self) -> dict:
        """Space options this data fixes: its classes, and what sequence data needs (vocabulary, length)."""
        return {"n_classes": self.n_classes, **self.details.get("space_options", {})}

    def describe(self) -> dict:
        return {"spec": self.spec, "n_classes": self.n_classes, "image_size": self.image_size,
                "channels": self.channels, "train": len(self.train), "val": len(self.val),
                "test": len(self.test), **self.details}

    def train_view(self, x: torch.Tensor, size: int | None, generator: torch.Generator) -> torch.Tensor:
        """An augmented view of a training batch of images at ``size`` (stored size if ``None``); other
        inputs (token sequences) as they are."""
        if x.dim() != 4:
            return x
        return train_view(x, size or self.image_size, generator, self.hflip)

    def eval_view(self, x: torch.Tensor, size: int | None) -> torch.Tensor:
        return x if size is None or x.dim() != 4 else eval_view(x, size)

    def split(self, name: str) -> Split:
        if name not in ("train", "val", "test"):
            raise ConfigError(f"unknown data split {name!r}; use train, val or test")
        return getattr(self, name)


def train_view(x: torch.Tensor, size: int, generator: torch.Generator, hflip: bool = False,
               scale: tuple[float, float] = (0.7, 1.0), max_shift: float = 0.1) -> torch.Tensor:
    """Random crop of each image (area fraction in ``scale``, centre shifted by up to ``max_shift`` of
    the side), resampled to ``size`` x ``size``, optionally flipped: one ``grid_sample`` for the batch."""
    n = x.shape[0]
    side = torch.sqrt(torch.empty(n).uniform_(*scale, generator=generator))
    shift = torch.empty(n, 2).uniform_(-max_shift, max_shift, generator=generator) * 2
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0) if hflip else torch.ones(n)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = side * flip
    theta[:, 1, 1] = side
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta.to(x.dtype), [n, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def eval_view(x: torch.Tensor, size: int) -> torch.Tensor:
    """The batch resized to ``size`` x ``size`` (bilinear; unchanged if it already is that size)."""
    if x.dim() != 4 or x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=x.shape[-1] > size)


# ---------------------------------------------------------------------- sources
Loader = Callable[[str, int | None], Data]
_SOURCES: dict[str, Loader] = {}
_NO_ARGUMENT = {"digits", "sequences"}             # sources that need no path


def register_source(scheme: str):
    """Decorator: ``loader(argument, image_size) -> Data`` for specs ``scheme`` or ``scheme:argument``."""

    def decorator(loader: Loader) -> Loader:
        _SOURCES[scheme] = loader
        return loader

    return decorator


def load_data(spec: str, image_size: int | None = None) -> Data:
    """The dataset named by ``spec`` (see the module docstring); ``image_size`` sets the stored size of
    sources whose images vary in size (folders, ImageNet)."""
    scheme, _, argument = spec.partition(":")
    if scheme not in _SOURCES:
        raise ConfigError(f"unknown data {spec!r}; use one of: digits, sequences, npz:PATH, folder:PATH, "
                          "cifar10:ROOT, imagenet:ROOT")
    if scheme not in _NO_ARGUMENT and not argument:
        raise ConfigError(f"data {spec!r} needs a path: {scheme}:PATH")
    return _SOURCES[scheme](argument, image_size)


def stratified_split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fixed train/val/test index arrays, stratified by class (the same for the same labels)."""
    from sklearn.model_selection import train_test_split

    index = np.arange(len(labels))
    try:
        rest, test = train_test_split(index, test_size=TEST_FRACTION, stratify=labels, random_state=SPLIT_SEED)
        val_share = VAL_FRACTION / (1 - TEST_FRACTION)
        train, val = train_test_split(rest, test_size=val_share, stratify=labels[rest], random_state=SPLIT_SEED)
    except ValueError as exc:
        raise ConfigError(f"cannot split the data into train/val/test by class: {exc} "
                          "(every class needs a few examples)") from None
    return np.sort(train), np.sort(val), np.sort(test)


def _tensor_data(spec: str, x: np.ndarray, y: np.ndarray, splits: dict[str, tuple[np.ndarray, np.ndarray]] | None,
                 hflip: bool, details: dict | None = None) -> Data:
    """A ``Data`` of in-memory images normalised with the training split's per-channel statistics."""
    if splits is None:
        train, val, test = stratified_split(y)
        splits = {"train": (x[train], y[train]), "val": (x[val], y[val]), "test": (x[test], y[test])}
    mean = splits["train"][0].mean(axis=(0, 2, 3), keepdims=True)
    std = splits["train"][0].std(axis=(0, 2, 3), keepdims=True) + 1e-6
    made = {}
    for name, (xs, ys) in splits.items():
        xs = torch.from_numpy(((xs - mean) / std).astype(np.float32))
        made[name] = Split(torch.utils.data.TensorDataset(xs, torch.from_numpy(ys.astype(np.int64))), ys)
    all_labels = np.concatenate([s[1] for s in splits.values()])
    return Data(spec, made["train"], made["val"], made["test"], n_classes=int(all_labels.max()) + 1,
                image_size=int(x.shape[-1]), channels=int(x.shape[1]), hflip=hflip, details=details or {})


@register_source("digits")
def _digits(argument: str, image_size: int | None) -> Data:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = np.repeat(digits.images[:, None].astype(np.float32) / 16.0, 3, axis=1)      # (N, 3, 8, 8)
    return _tensor_data("digits", x, digits.target.astype(np.int64), None, hflip=False,
                        details={"source": "sklearn.datasets.load_digits"})


@register_source("npz")
def _npz(argument: str, image_size: int | None) -> Data:
    path = Path(argument)
    if not path.is_file():
        raise ConfigError(f"npz data {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except Exception as exc:
        raise ConfigError(f"cannot read npz data {path}: {exc}") from None
    if "x" not in arrays or "y" not in arrays:
        raise ConfigError(f"npz data {path} needs arrays 'x' and 'y'; it has {sorted(arrays)}")
    x, y = _images_nchw(arrays["x"], path), _labels(arrays["y"], len(arrays["x"]), path)
    splits = None
    if "x_val" in arrays and "x_test" in arrays:
        splits = {"train": (x, y)}
        for name in ("val", "test"):
            xs = _images_nchw(arrays[f"x_{name}"], path)
            splits[name] = (xs, _labels(arrays.get(f"y_{name}"), len(xs), path))
    return _tensor_data(f"npz:{path}", x, y, splits, hflip=False)


def _images_nchw(x: np.ndarray, path: Path) -> np.ndarray:
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ConfigError(f"npz data {path}: images must be N,H,W or N,H,W,C or N,C,H,W with 1 or 3 channels; "
                          f"got shape {x.shape}")
    x = x.astype(np.float32) / (255.0 if x.dtype == np.uint8 else 1.0)
    return np.repeat(x, 3, axis=1) if x.shape[1] == 1 else x


def _labels(y: np.ndarray | None, n: int, path: Path) -> np.ndarray:
    if y is None or y.ndim != 1 or len(y) != n or not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
        raise ConfigError(f"npz data {path}: labels must be non-negative integers, one per image")
    return y.astype(np.int64)


@register_source("sequences")
def _sequences(argument: str, image_size: int | None, n: int = 4000, length: int = 32, vocab: int = 32,
               markers: int = 4) -> Data:
    """A sequence classification task generated on the spot (fixed seed): which of ``markers`` marker
    tokens (ids 1..markers) occurs most often among filler tokens; no ties. ``sequences`` or
    ``sequences:N`` for N sequences."""
    if argument:
        try:
            n = int(argument)
        except ValueError:
            raise ConfigError(f"sequences:{argument}: the argument is the number of sequences") from None
    rng = np.random.default_rng(SPLIT_SEED)
    x = rng.integers(markers + 1, vocab, size=(n, length))
    y = np.empty(n, dtype=np.int64)
    for i in range(n):
        counts = rng.integers(0, 6, size=markers)
        while (counts == counts.max()).sum() > 1:
            counts = rng.integers(0, 6, size=markers)
        positions = rng.permutation(length)[:counts.sum()]
        x[i, positions] = np.repeat(np.arange(1, markers + 1), counts)
        y[i] = counts.argmax()
    train, val, test = stratified_split(y)
    made = {name: Split(torch.utils.data.TensorDataset(torch.from_numpy(x[idx]), torch.from_numpy(y[idx])), y[idx])
            for name, idx in (("train", train), ("val", val), ("test", test))}
    return Data(f"sequences:{n}" if argument else "sequences", made["train"], made["val"], made["test"],
                n_classes=markers, image_size=length, channels=1,
                details={"task": f"most frequent of {markers} marker tokens",
                         "space_options": {"vocab_size": vocab, "max_len": length}})


# ---------------------------------------------------------------------- image folders
class _ImageFiles(torch.utils.data.Dataset):
    """Image files read with Pillow, as RGB, resized (shorter side) and centre-cropped to ``size``,
    normalised with given per-channel statistics."""

    def __init__(self, files: list[Path], labels: list[int], size: int, mean=None, std=None):
        self.files, self.labels, self.size = files, labels, size
        self.mean = torch.zeros(3, 1, 1) if mean is None else mean
        self.std = torch.ones(3, 1, 1) if std is None else std

    def __len__(self) -> int:
        return len(self.files)

    def load(self, i: int) -> torch.Tensor:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(self.files[i]) as image:
                image = image.convert("RGB")
                scale = self.size / min(image.size)
                w, h = max(self.size, round(image.width * scale)), max(self.size, round(image.height * scale))
                image = image.resize((w, h), Image.BILINEAR)
                left, top = (w - self.size) // 2, (h - self.size) // 2
                image = image.crop((left, top, left + self.size, top + self.size))
                array = np.asarray(image, dtype=np.float32) / 255.0
        except (OSError, UnidentifiedImageError) as exc:
            raise ConfigError(f"cannot read image {self.files[i]}: {exc}") from None
        return torch.from_numpy(array.transpose(2, 0, 1).copy())

    def __getitem__(self, i: int):
        return (self.load(i) - self.mean) / self.std, self.labels[i]


def _class_folders(root: Path) -> tuple[list[Path], list[int], list[str]]:
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    files, labels = [], []
    for label, name in enumerate(classes):
        for f in sorted((root / name).rglob("*")):
            if f.suffix.lower() in IMAGE_EXTENSIONS:
                files.append(f)
                labels.append(label)
    return files, labels, classes


@register_source("folder")
def _folder(argument: str, image_size: int | None) -> Data:
    root = Path(argument)
    if not root.is_dir():
        raise ConfigError(f"image folder {root} does not exist")
    size = image_size or 224
    if (root / "train").is_dir() and (root / "val").is_dir():
        parts = {name: _class_folders(root / name) for name in ("train", "val", "test") if (root / name).is_dir()}
        parts.setdefault("test", parts["val"])
        classes = parts["train"][2]
        if any(p[2] != classes for p in parts.values()):
            raise ConfigError(f"image folder {root}: train/val/test have different class folders")
        chosen = {name: (files, labels) for name, (files, labels, _) in parts.items()}
    else:
        files, labels, classes = _class_folders(root)
        train, val, test = stratified_split(np.asarray(labels)) if files else ([], [], [])
        chosen = {name: ([files[i] for i in idx], [labels[i] for i in idx])
                  for name, idx in (("train", train), ("val", val), ("test", test))}
    if len(classes) < 2 or not chosen["train"][0]:
        raise ConfigError(f"image folder {root} needs one sub-folder of images per class (at least two classes "
                          f"with images); found classes {classes[:5]}")
    mean, std = _folder_statistics(_ImageFiles(*chosen["train"], size))
    splits = {name: Split(_ImageFiles(files, labels, size, mean, std), np.asarray(labels))
              for name, (files, labels) in chosen.items()}
    return Data(f"folder:{root}", splits["train"], splits["val"], splits["test"], n_classes=len(classes),
                image_size=size, hflip=True, details={"classes": classes})


def _folder_statistics(files: _ImageFiles, samples: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std from up to ``samples`` training images spread over the split."""
    picks = np.linspace(0, len(files) - 1, min(samples, len(files))).round().astype(int)
    stack = torch.stack([files.load(int(i)) for i in np.unique(picks)])
    return stack.mean((0, 2, 3)).view(3, 1, 1), stack.std((0, 2, 3)).view(3, 1, 1) + 1e-6


# ---------------------------------------------------------------------- torchvision (optional)
def _torchvision():
    try:
        import torchvision
    except Exception as exc:  # not installed, or a build that does not match this torch
        raise ConfigError(f"cifar10 data needs torchvision matching your torch ({exc}); "
                          "install the 'vision' extra, or use folder:PATH / npz:PATH") from None
    return torchvision


@register_source("cifar10")
def _cifar10(argument: str, image_size: int | None) -> Data:
    datasets = _torchvision().datasets
    try:
        train = datasets.CIFAR10(argument, train=True, download=False)
        test = datasets.CIFAR10(argument, train=False, download=False)
    except RuntimeError as exc:
        raise ConfigError(f"CIFAR-10 not found under {argument}: {exc} (nothing is downloaded)") from None
    x = train.data.transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    y = np.asarray(train.targets, dtype=np.int64)
    from sklearn.model_selection import train_test_split

    tr, va = train_test_split(np.arange(len(y)), test_size=0.1, stratify=y, random_state=SPLIT_SEED)
    splits = {"train": (x[np.sort(tr)], y[np.sort(tr)]), "val": (x[np.sort(va)], y[np.sort(va)]),
              "test": (test.data.transpose(0, 3, 1, 2).astype(np.float32) / 255.0,
                       np.asarray(test.targets, dtype=np.int64))}
    return _tensor_data(f"cifar10:{argument}", x, y, splits, hflip=True)


@register_source("imagenet")
def _imagenet(argument: str, image_size: int | None) -> Data:
    """ImageNet as it is laid out on disk (``train/`` and ``val/`` of class folders); no torchvision needed."""
    root = Path(argument)
    if not (root / "train").is_dir() or not (root / "val").is_dir():
        raise ConfigError(f"imagenet:{root} needs train/ and val/ folders of class sub-folders")
    data = _folder(argument, image_size)
    data.spec = f"imagenet:{root}"
    return data

