"""Super-resolution data: PSNR by hand, aligned LR/HR crops, fixed splits by image, bicubic, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from evaluators.sr_data import (
    PHOTOS, SRData, bicubic_downscale, bicubic_psnr, bicubic_upscale, load_sr_data, make_image, psnr,
    split_by_image,
)
from nas.errors import ConfigError


@pytest.fixture(scope="module")
def photos():
    return load_sr_data("photos", 2)


def test_psnr_on_the_y_channel_by_hand():
    hr = torch.zeros(3, 8, 8)
    sr = hr.clone()
    sr[0] = 0.5
    # ΔY = 0.5·65.481/255 = 0.1283941 everywhere; PSNR = −20·log10(0.1283941) = 17.829097 dB
    assert psnr(sr, hr, 2).item() == pytest.approx(17.829097, abs=1e-5)
    sr = hr.clone()
    sr[1, 3, 4] = 1.0                        # one pixel of the 4x4 interior left by shaving 2 pixels
    sr[:, 0, 0] = sr[:, 7, 5] = 1.0          # border pixels: shaved off
    # ΔY = 128.553/255 = 0.5041294 at 1 of 16 pixels: PSNR = −10·log10(0.5041294²/16) = 17.990359 dB
    assert psnr(sr, hr, 2).item() == pytest.approx(17.990359, abs=1e-5)
    assert psnr(hr[None].repeat(2, 1, 1, 1), hr[None].repeat(2, 1, 1, 1), 2).tolist() == [float("inf")] * 2
    assert psnr(hr + 2.0, hr + 1.0, 2).item() == float("inf")   # SR output clamped to [0, 1]
    with pytest.raises(ValueError, match="RGB"):
        psnr(sr, hr[:, :4], 2)


def test_train_crops_are_aligned(photos):
    lr, hr = next(photos.train_batches(32, 12, steps=1, seed=3))
    assert lr.shape == (32, 3, 12, 12) and hr.shape == (32, 3, 24, 24)
    assert lr.min() >= 0 and lr.max() <= 1
    down = bicubic_downscale(hr, 2)
    inner = (..., slice(2, -2), slice(2, -2))          # away from the patch border, where padding differs
    aligned = (down - lr)[inner].abs().mean().item()
    shifted = (down[..., 2:-2, 3:-1] - lr[..., 2:-2, 2:-2]).abs().mean().item()
    assert aligned < 0.01 < shifted
    batches = list(photos.train_batches(4, 12, steps=3, seed=3))
    assert len(batches) == 3 and torch.equal(batches[0][0], lr[:4])   # reproducible for a seed


def test_train_crops_take_every_flip_and_flip_lr_and_hr_alike():
    image = make_image("noise", np.random.default_rng(1).integers(0, 256, (24, 24, 3), dtype=np.uint8), 2)
    data = SRData("one", 2, [image], [image], [image])
    lr, hr = next(data.train_batches(64, 12, steps=1))   # the LR image is the patch: only flips vary
    plain_lr, plain_hr = image.pair()
    seen = set()
    for dims in ([], [-1], [-2], [-1, -2]):
        match = [torch.equal(a, plain_lr[0].flip(dims)) for a in lr]
        assert all(torch.equal(b, plain_hr[0].flip(dims)) for b, m in zip(hr, match, strict=True) if m)
        seen.add(any(match))
    assert seen == {True}


def test_embedded_photos_are_split_by_image_once_and_for_all(photos):
    names = {s: [i.name for i in photos.split(s)] for s in ("train", "val", "test")}
    assert names["val"] == ["chelsea", "motorcycle"] and names["test"] == ["coffee", "flower"]
    assert set(names["train"]) | set(names["val"]) | set(names["test"]) == set(PHOTOS)
    assert len(names["train"]) == len(PHOTOS) - 4
    again = load_sr_data("photos", 2)
    assert all(torch.equal(a.lr, b.lr) for a, b in zip(photos.train, again.train, strict=True))


def test_whole_images_are_cropped_to_the_scale_and_downscaled(photos):
    data4 = load_sr_data("photos", 4)
    for data in (photos, data4):
        for image in data.val + data.test:
            h, w = image.hr.shape[-2:]
            assert h % data.scale == 0 and w % data.scale == 0
            assert image.lr.shape[-2:] == (h // data.scale, w // data.scale)
            lr, hr = image.pair()
            assert torch.equal((bicubic_downscale(hr, data.scale) * 255).round() / 255, lr)
    chelsea = photos.val[0]
    assert tuple(chelsea.hr.shape) == (3, 300, 450)       # 300 x 451 in skimage: one column cropped


def test_bicubic_baseline(photos):
    flat = torch.full((1, 3, 6, 7), 0.25)
    torch.testing.assert_close(bicubic_upscale(flat, 2), torch.full((1, 3, 12, 14), 0.25))
    x2, x4 = bicubic_psnr(photos, "test"), bicubic_psnr(load_sr_data("photos", 4), "test")
    assert 28 < x2 < 40 and 22 < x4 < x2                  # x4 is harder than x2


def _write_images(folder, n, size=40):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size + i, 3), dtype=np.uint8)).save(folder / f"img{i:02d}.png")


def test_folder_is_split_by_image_with_a_fixed_seed(tmp_path):
    _write_images(tmp_path / "hr", 10)
    data = load_sr_data(f"folder:{tmp_path / 'hr'}", 2)
    names = {s: [i.name for i in data.split(s)] for s in ("train", "val", "test")}
    assert [len(v) for v in names.values()] == [8, 1, 1]
    assert sorted(sum(names.values(), [])) == [f"img{i:02d}.png" for i in range(10)]
    assert names == {s: [i.name for i in load_sr_data(f"folder:{tmp_path / 'hr'}", 2).split(s)] for s in names}
    assert split_by_image(10)["val"].tolist() == [int(data.val[0].name[3:5])]
    image = data.train[0]
    assert image.hr.shape[-1] % 2 == 0 and image.lr.shape[-1] == image.hr.shape[-1] // 2


def test_folder_with_train_and_val_subfolders(tmp_path):
    _write_images(tmp_path / "sr" / "train", 3)
    _write_images(tmp_path / "sr" / "val", 2)
    data = load_sr_data(f"folder:{tmp_path / 'sr'}", 4)
    assert (len(data.train), len(data.val), len(data.test)) == (3, 2, 2)   # val doubles as test


def test_bad_input_raises_one_clear_error(tmp_path, photos):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no images"):
        load_sr_data(f"folder:{tmp_path / 'empty'}", 2)
    with pytest.raises(ConfigError, match="does not exist"):
        load_sr_data(f"folder:{tmp_path / 'missing'}", 2)
    _write_images(tmp_path / "few", 2)
    with pytest.raises(ConfigError, match="at least 3 images"):
        load_sr_data(f"folder:{tmp_path / 'few'}", 2)
    _write_images(tmp_path / "broken", 3)
    (tmp_path / "broken" / "img01.png").write_bytes(b"not a png")
    with pytest.raises(ConfigError, match="cannot read image"):
        load_sr_data(f"folder:{tmp_path / 'broken'}", 2)
    with pytest.raises(ConfigError, match="scale"):
        load_sr_data("photos", 5)
    with pytest.raises(ConfigError, match="unknown super-resolution data"):
        load_sr_data("div2k", 2)
    with pytest.raises(ConfigError, match="smaller than the 160-pixel LR crop"):
        next(photos.train_batches(2, 160, steps=1))
