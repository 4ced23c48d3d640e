"""Data sources: the fixed stratified split, npz and image-folder loading, views at any resolution."""

import numpy as np
import pytest
import torch

from evaluators.data import eval_view, load_data, stratified_split, train_view
from nas.errors import ConfigError


def test_digits_split_is_fixed_stratified_and_normalised():
    data = load_data("digits")
    assert (len(data.train), len(data.val), len(data.test)) == (1257, 270, 270)
    assert data.n_classes == 10 and data.image_size == 8 and not data.hflip
    for split in (data.train, data.val, data.test):
        counts = np.bincount(split.labels, minlength=10)
        assert counts.min() >= 0.8 * counts.mean()                     # every class, in proportion
    again = load_data("digits")
    assert np.array_equal(again.test.labels, data.test.labels)
    x = data.train.dataset.tensors[0]
    assert x.shape[1:] == (3, 8, 8) and abs(float(x.mean())) < 0.05 and abs(float(x.std()) - 1) < 0.1


def test_splits_do_not_overlap():
    labels = np.repeat(np.arange(5), 20)
    train, val, test = stratified_split(labels)
    assert len(set(train) | set(val) | set(test)) == 100 and len(train) + len(val) + len(test) == 100


def test_batches_shuffle_reproducibly_and_cover_the_split():
    data = load_data("digits")
    first = torch.cat([y for _, y in data.val.batches(64, shuffle=True, seed=3)])
    second = torch.cat([y for _, y in data.val.batches(64, shuffle=True, seed=3)])
    assert torch.equal(first, second) and len(first) == 270
    assert not torch.equal(first, torch.cat([y for _, y in data.val.batches(64)]))
    dropped = list(data.val.batches(64, drop_last=True))
    assert len(dropped) == 4 and all(len(y) == 64 for _, y in dropped)
    assert sum(len(y) for _, y in data.train.batches(100, limit=250)) == 250


def test_npz_source_with_and_without_its_own_splits(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, size=(60, 12, 12, 3), dtype=np.uint8)
    y = np.repeat(np.arange(3), 20)
    np.savez(tmp_path / "a.npz", x=x, y=y)
    data = load_data(f"npz:{tmp_path / 'a.npz'}")
    assert data.n_classes == 3 and data.image_size == 12 and len(data.train) + len(data.val) + len(data.test) == 60
    np.savez(tmp_path / "b.npz", x=x, y=y, x_val=x[:6], y_val=y[:6], x_test=x[:9, :, :, :1], y_test=y[:9])
    data = load_data(f"npz:{tmp_path / 'b.npz'}")
    assert (len(data.train), len(data.val), len(data.test)) == (60, 6, 9)
    assert data.test.dataset.tensors[0].shape[1] == 3                 # grey test images widened to 3 channels


@pytest.mark.parametrize("arrays, message", [
    ({"x": np.zeros((4, 8, 8))}, "needs arrays 'x' and 'y'"),
    ({"x": np.zeros((4, 8, 8)), "y": np.array([0, 1, 2])}, "one per image"),
    ({"x": np.zeros((4, 8)), "y": np.arange(4)}, "images must be"),
])
def test_malformed_npz_is_refused(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ConfigError, match=message):
        load_data(f"npz:{tmp_path / 'bad.npz'}")


def _write_folder(root, classes=("cat", "dog"), per_class=10):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, size=(20, 30, 3), dtype=np.uint8)).save(root / c / f"{i}.png")


def test_image_folder_is_read_resized_and_split(tmp_path):
    _write_folder(tmp_path / "imgs")
    data = load_data(f"folder:{tmp_path / 'imgs'}", image_size=16)
    assert data.n_classes == 2 and data.details["classes"] == ["cat", "dog"] and data.hflip
    x, y = next(data.train.batches(4))
    assert x.shape == (4, 3, 16, 16) and y.dtype == torch.int64
    assert len(data.train) + len(data.val) + len(data.test) == 20


def test_image_folder_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_data(f"folder:{tmp_path / 'missing'}")
    _write_folder(tmp_path / "one", classes=("only",))
    with pytest.raises(ConfigError, match="one sub-folder of images per class"):
        load_data(f"folder:{tmp_path / 'one'}")
    (tmp_path / "broken" / "a").mkdir(parents=True)
    (tmp_path / "broken" / "b").mkdir(parents=True)
    for c in "ab":
        for i in range(8):
            (tmp_path / "broken" / c / f"{i}.png").write_bytes(b"not an image")
    with pytest.raises(ConfigError, match="cannot read image"):
        load_data(f"folder:{tmp_path / 'broken'}")


def test_unknown_specs_and_missing_paths():
    with pytest.raises(ConfigError, match="unknown data 'mnist'"):
        load_data("mnist")
    with pytest.raises(ConfigError, match="needs a path"):
        load_data("npz")


def test_views_have_the_requested_size_and_are_reproducible():
    x = torch.randn(5, 3, 8, 8)
    a = train_view(x, 32, torch.Generator().manual_seed(1))
    b = train_view(x, 32, torch.Generator().manual_seed(1))
    c = train_view(x, 32, torch.Generator().manual_seed(2))
    assert a.shape == (5, 3, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)
    assert eval_view(x, 16).shape == (5, 3, 16, 16) and eval_view(x, 8) is x
    # with no scaling, shift or flip the view is a plain resize
    plain = train_view(x, 8, torch.Generator().manual_seed(0), scale=(1.0, 1.0), max_shift=0.0)
    assert torch.allclose(plain, x, atol=1e-5)


def test_generated_sequences_are_fixed_and_labelled_by_the_most_frequent_marker():
    data = load_data("sequences:600")
    assert data.n_classes == 4 and data.implied_options() == {"n_classes": 4, "vocab_size": 32, "max_len": 32}
    x, y = data.train.dataset.tensors
    assert x.dtype == torch.int64 and x.shape[1] == 32 and int(x.max()) < 32
    counts = torch.stack([(x == m).sum(1) for m in range(1, 5)], dim=1)
    assert torch.equal(counts.argmax(1), y)
    assert torch.equal(load_data("sequences:600").test.dataset.tensors[0], data.test.dataset.tensors[0])
    view = data.train_view(x[:3], None, torch.Generator().manual_seed(0))
    assert view is x[:3] or torch.equal(view, x[:3])
    with pytest.raises(ConfigError, match="number of sequences"):
        load_data("sequences:many")
