"""Super-resolution data: HR images, their bicubic LR versions, aligned random crops, PSNR.

``load_sr_data(spec, scale)`` understands:

* ``photos`` (the embedded default): real photographs that ship inside installed packages, so nothing is
  downloaded: scikit-image's bundled ``skimage.data`` images and scikit-learn's ``load_sample_images``
  (see :data:`PHOTOS`), split by image into train/validation/test once and for all;
* ``folder:PATH``: a folder of HR images (the DIV2K / Set5 / Set14 layout: a flat folder), split by image
  with a fixed seed (:data:`VAL_FRACTION`, :data:`TEST_FRACTION`, at least one image each); or a folder
  with ``train/`` and ``val/`` (and optionally ``test/``) sub-folders used as those splits.

Every HR image is cropped (top-left) to a multiple of the scale and down-scaled once with antialiased
bicubic interpolation (``a = −0.5``, like MATLAB's ``imresize`` up to border handling); the LR image is
rounded to 8 bits, as LR images stored on disk are. Training takes random aligned patches (the LR patch
at ``(y, x)`` and the HR patch at ``(s·y, s·x)``, ``s`` times larger) with random horizontal and
vertical flips; validation and test take whole images. Images are RGB in [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from evaluators.data import IMAGE_EXTENSIONS, SPLIT_SEED
from nas.errors import ConfigError

SCALES = (2, 3, 4)
SPLITS = ("train", "val", "test")
VAL_FRACTION = TEST_FRACTION = 0.1
#: ITU-R BT.601 luma of RGB in [0, 1], on the 0..255 scale (Y in [16, 235]); the offset cancels in PSNR.
Y_WEIGHTS = (65.481, 128.553, 24.966)

#: The embedded photographs: name -> (split, loader of an HxW or HxWx3 uint8 array). Colour photographs
#: for validation and test; the greyscale ones (repeated to RGB) only add training texture.
PHOTOS: dict[str, tuple[str, Callable[[], np.ndarray]]] = {}


def _skimage(name: str, pick: Callable[[object], np.ndarray] = lambda image: image) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        return pick(getattr(skimage.data, name)())
    return load


def _sklearn(filename: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_image

        return load_sample_image(filename)
    return load


for _name in ("astronaut", "rocket", "hubble_deep_field", "immunohistochemistry", "retina", "camera", "brick",
              "grass", "gravel", "coins"):
    PHOTOS[_name] = ("train", _skimage(_name))
PHOTOS["china"] = ("train", _sklearn("china.jpg"))
PHOTOS["chelsea"] = ("val", _skimage("chelsea"))
PHOTOS["motorcycle"] = ("val", _skimage("stereo_motorcycle", lambda pair: pair[0]))
PHOTOS["coffee"] = ("test", _skimage("coffee"))
PHOTOS["flower"] = ("test", _sklearn("flower.jpg"))


# ---------------------------------------------------------------------- resampling and PSNR
def bicubic_downscale(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """``(n, 3, H, W)`` -> ``(n, 3, H/s, W/s)``, antialiased bicubic, clamped to [0, 1] (sides divisible by s)."""
    size = (hr.shape[-2] // scale, hr.shape[-1] // scale)
    return F.interpolate(hr, size=size, mode="bicubic", antialias=True, align_corners=False).clamp(0.0, 1.0)


def bicubic_upscale(lr: torch.Tensor, scale: int) -> torch.Tensor:
    """``(n, 3, h, w)`` -> ``(n, 3, s·h, s·w)``, bicubic, clamped to [0, 1]: the baseline every SR network beats."""
    size = (lr.shape[-2] * scale, lr.shape[-1] * scale)
    return F.interpolate(lr, size=size, mode="bicubic", align_corners=False).clamp(0.0, 1.0)


def psnr(sr: torch.Tensor, hr: torch.Tensor, scale: int) -> torch.Tensor:
    """PSNR in dB on the BT.601 luma (Y) channel, ``scale`` border pixels shaved, peak 255 on the Y scale.

    The common SR protocol (EDSR, RFDN, QuantNAS). ``sr`` and ``hr`` are RGB in [0, 1], shape
    ``(..., 3, H, W)``; ``sr`` is clamped to [0, 1]. Returns one value per image (shape ``sr.shape[:-3]``),
    ``inf`` for identical images.
    """
    if sr.shape != hr.shape or sr.shape[-3] != 3:
        raise ValueError(f"psnr needs two RGB images of one shape; got {tuple(sr.shape)} and {tuple(hr.shape)}")
    weights = torch.tensor(Y_WEIGHTS, dtype=torch.float64, device=sr.device).view(3, 1, 1) / 255.0
    diff = ((sr.double().clamp(0.0, 1.0) - hr.double()) * weights).sum(-3)
    if scale > 0:
        diff = diff[..., scale:-scale, scale:-scale]
    return -10.0 * torch.log10(diff.pow(2).mean((-2, -1)))


# ---------------------------------------------------------------------- data
@dataclass(frozen=True)
class SRImage:
    """One image: its HR version (cropped to a multiple of the scale) and its bicubic LR version,
    both ``(3, H, W)`` uint8."""

    name: str
    hr: torch.Tensor
    lr: torch.Tensor

    def pair(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(lr, hr)`` as ``(1, 3, h, w)`` and ``(1, 3, s·h, s·w)`` floats in [0, 1]."""
        return self.lr[None].float() / 255.0, self.hr[None].float() / 255.0


@dataclass
class SRData:
    """An SR dataset at one scale: three splits of whole images."""

    spec: str
    scale: int
    train: list[SRImage]
    val: list[SRImage]
    test: list[SRImage]
    details: dict = field(default_factory=dict)

    def split(self, name: str) -> list[SRImage]:
        if name not in SPLITS:
            raise ConfigError(f"unknown data split {name!r}; use train, val or test")
        return getattr(self, name)

    def describe(self) -> dict:
        return {"spec": self.spec, "scale": self.scale, **{s: [i.name for i in self.split(s)] for s in SPLITS},
                **self.details}

    def train_batches(self, batch_size: int, patch: int, steps: int, seed: int = 0, split: str = "train"
                      ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``steps`` batches of aligned random patches: LR ``(n, 3, patch, patch)`` and HR ``(n, 3, s·patch,
        s·patch)``; each from an image of ``split`` drawn uniformly, flipped at random (both alike).

        Raises:
            ConfigError: when an image of the split is smaller than the LR patch.
        """
        images = self.split(split)
        small = [i.name for i in images if min(i.lr.shape[-2:]) < patch]
        if small:
            raise ConfigError(f"{self.spec}: {split} images {small} are smaller than the {patch}-pixel LR crop "
                              f"(at scale {self.scale}); choose a smaller patch")
        rng, s = np.random.default_rng(seed), self.scale
        for _ in range(steps):
            lrs, hrs = [], []
            for _ in range(batch_size):
                image = images[rng.integers(len(images))]
                y = int(rng.integers(image.lr.shape[-2] - patch + 1))
                x = int(rng.integers(image.lr.shape[-1] - patch + 1))
                lr = image.lr[:, y:y + patch, x:x + patch]
                hr = image.hr[:, s * y:s * (y + patch), s * x:s * (x + patch)]
                dims = [d for d, flip in zip((-1, -2), rng.random(2) < 0.5, strict=True) if flip]
                lrs.append(lr.flip(dims) if dims else lr)
                hrs.append(hr.flip(dims) if dims else hr)
            yield torch.stack(lrs).float() / 255.0, torch.stack(hrs).float() / 255.0


def make_image(name: str, array: np.ndarray, scale: int) -> SRImage:
    """An :class:`SRImage` from an ``HxW`` or ``HxWx3`` uint8 array (greyscale repeated to RGB)."""
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    hr = torch.from_numpy(np.array(array[:, :, :3])).permute(2, 0, 1)  # a writable copy
    h, w = hr.shape[-2] // scale * scale, hr.shape[-1] // scale * scale
    if h == 0 or w == 0:
        raise ConfigError(f"image {name} ({hr.shape[-2]}x{hr.shape[-1]}) is smaller than the scale {scale}")
    hr = hr[:, :h, :w].contiguous()
    lr = bicubic_downscale(hr[None].float() / 255.0, scale)[0]
    return SRImage(name, hr, (lr * 255.0).round().to(torch.uint8))


def bicubic_psnr(data: SRData, split: str = "test") -> float:
    """Mean PSNR over the images of ``split`` of bicubic up-scaling of their LR versions."""
    values = [psnr(bicubic_upscale(lr, data.scale), hr, data.scale).item()
              for lr, hr in (image.pair() for image in data.split(split))]
    return float(np.mean(values))


# ---------------------------------------------------------------------- sources
SRLoader = Callable[[str, int], SRData]
_SOURCES: dict[str, SRLoader] = {}


def register_sr_source(scheme: str) -> Callable[[SRLoader], SRLoader]:
    """Decorator: ``loader(argument, scale) -> SRData`` for specs ``scheme`` or ``scheme:argument``."""

    def decorator(loader: SRLoader) -> SRLoader:
        _SOURCES[scheme] = loader
        return loader

    return decorator


def load_sr_data(spec: str, scale: int) -> SRData:
    """The SR dataset named by ``spec`` at ``scale`` (see the module docstring).

    Raises:
        ConfigError: for an unknown spec, a scale outside :data:`SCALES`, a missing folder or one
            without readable images.
    """
    if scale not in SCALES:
        raise ConfigError(f"super-resolution scale must be one of {list(SCALES)}; got {scale!r}")
    scheme, _, argument = spec.partition(":")
    if scheme not in _SOURCES:
        raise ConfigError(f"unknown super-resolution data {spec!r}; use photos or folder:PATH")
    if scheme == "folder" and not argument:
        raise ConfigError(f"data {spec!r} needs a path: folder:PATH")
    return _SOURCES[scheme](argument, scale)


@lru_cache(maxsize=None)
def _photo(name: str) -> np.ndarray:
    array = PHOTOS[name][1]()
    array.setflags(write=False)
    return array


@register_sr_source("photos")
def _photos(argument: str, scale: int) -> SRData:
    splits = {s: [make_image(n, _photo(n), scale) for n, (split, _) in PHOTOS.items() if split == s] for s in SPLITS}
    return SRData("photos", scale, **splits, details={"source": "skimage.data, sklearn.datasets.load_sample_images"})


def _read(path: Path, scale: int) -> SRImage:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"))
    except (OSError, UnidentifiedImageError) as exc:
        raise ConfigError(f"cannot read image {path}: {exc}") from None
    return make_image(path.name, array, scale)


def _image_files(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)


def split_by_image(n: int) -> dict[str, np.ndarray]:
    """Fixed train/val/test indices of ``n`` images (seeded permutation; at least one image each)."""
    if n < 3:
        raise ConfigError(f"an image folder needs at least 3 images to split into train/val/test; it has {n}")
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    n_val, n_test = max(1, round(VAL_FRACTION * n)), max(1, round(TEST_FRACTION * n))
    return {"val": np.sort(order[:n_val]), "test": np.sort(order[n_val:n_val + n_test]),
            "train": np.sort(order[n_val + n_test:])}


@register_sr_source("folder")
def _folder(argument: str, scale: int) -> SRData:
    root = Path(argument)
    if not root.is_dir():
        raise ConfigError(f"image folder {root} does not exist")
    if (root / "train").is_dir() and (root / "val").is_dir():
        folders = {s: root / s for s in SPLITS if (root / s).is_dir()}
        files = {s: _image_files(folder) for s, folder in folders.items()}
        files.setdefault("test", files["val"])
    else:
        found = _image_files(root)
        if not found:
            raise ConfigError(f"image folder {root} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        files = {s: [found[i] for i in index] for s, index in split_by_image(len(found)).items()}
    empty = [s for s in SPLITS if not files[s]]
    if empty:
        raise ConfigError(f"image folder {root}: no images for {', '.join(empty)}")
    return SRData(f"folder:{root}", scale, **{s: [_read(f, scale) for f in files[s]] for s in SPLITS})
