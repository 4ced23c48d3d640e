"""The ``psnr`` task: which images each step sees, PSNR of whole images, scale checks, and ``psnr`` as a
search objective through a searched supernet."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import search_spaces
from evaluators.sr_data import SRData, bicubic_psnr, bicubic_upscale, make_image
from evaluators.sr_task import SRTask
from nas.errors import ConfigError

TINY = {"scale": 2, "channels": 6, "cells": 1, "layers": 2, "ops": ["conv1x1", "conv3x3"], "bits": [4, 8],
        "lr_size": 16}


def _data(scale=2, side=40):
    def image(name, value):
        return make_image(name, np.full((side, side + 8, 3), value, dtype=np.uint8), scale)

    rng = np.random.default_rng(0)
    val = make_image("val", rng.integers(0, 256, (side, side, 3), dtype=np.uint8), scale)
    return SRData("hand", scale, [image("a", 50), image("b", 50)], [val], [image("t", 200)])


class _Bicubic(nn.Module):
    def forward(self, x):
        return bicubic_upscale(x, 2)


def test_weight_patches_come_from_training_images_and_arch_patches_from_validation_images():
    task = SRTask(search_spaces.get("quantnas_sr", **TINY), _data())
    lr, hr = next(task.batches("weights", 3, 1, seed=0))
    assert lr.shape == (3, 3, 16, 16) and hr.shape == (3, 3, 32, 32)
    assert torch.allclose(hr, torch.full_like(hr, 50 / 255))
    lr, hr = next(task.batches("arch", 3, 1, seed=0))
    assert hr.std() > 0.1                       # random validation pixels, not the flat training images
    assert task.steps(2) == (2 * 20 * 24) // (16 * 16 * 2)    # one pass: the training LR pixels once
    assert len(list(task.batches("arch", 1, None, seed=0))) == (20 * 20) // (16 * 16)


def test_evaluate_is_the_mean_psnr_of_whole_images():
    data = _data()
    task = SRTask(search_spaces.get("quantnas_sr", **TINY), data)
    assert task.evaluate(_Bicubic(), "val") == pytest.approx(bicubic_psnr(data, "val"))
    assert task.evaluate(_Bicubic(), "test") == pytest.approx(bicubic_psnr(data, "test"))


def test_a_fresh_network_scores_exactly_the_bicubic_baseline():
    # the networks learn a residual on bicubic up-scaling, and both are scored by one protocol
    data = _data()
    space = search_spaces.get("quantnas_sr", **TINY)
    task = SRTask(space, data)
    space.activate(space.sample(1, seed=0)[0])
    assert task.evaluate(space.supernet, "val") == pytest.approx(bicubic_psnr(data, "val"), abs=1e-9)


def test_scale_and_crop_mismatches_are_refused():
    with pytest.raises(ConfigError, match="built for x2"):
        SRTask(search_spaces.get("quantnas_sr", **TINY), _data(scale=4))
    with pytest.raises(ConfigError, match="smaller than the 16-pixel LR crop"):
        SRTask(search_spaces.get("quantnas_sr", **TINY), _data(side=24))


def test_psnr_objective_searches_a_searched_supernet(tmp_path, cli):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / f"img{i:02d}.png")
    options = [a for k, v in TINY.items() for a in ("-o", f"{k}={v}".replace("'", "").replace(" ", ""))]
    code, _, err = cli(["train", "quantnas_sr", "--out", str(tmp_path / "run"), "--data", f"folder:{folder}",
                        "--epochs", "2", "--set", "steps_per_epoch=1", "--set", "batch_size=2", *options])
    assert code == 0, err
    code, out, err = cli(["search", "--space", "quantnas_sr", "--supernet", str(tmp_path / "run" / "supernet.pt"),
                          "--objectives", "psnr,bitops", "--evaluations", "2", "--batch", "2", "--searcher",
                          "random", "--run", str(tmp_path / "search")])
    assert code == 0, out + err
    assert "psnr" in out and "bitops" in out
    events = [json.loads(line) for line in (tmp_path / "search" / "events.jsonl").read_text().splitlines()] \
        if (tmp_path / "search" / "events.jsonl").exists() else []
    values = [e["values"]["psnr"] for e in events if e.get("type") == "tell" and "values" in e]
    assert all(np.isfinite(v) and v > 0 for v in values)
