"""The ``quantnas`` recipe: the entropy ramp and BitOps penalty by hand, a tiny search that resumes
bit-exactly, retraining a derived genotype, and bad input refused with exit 2 and nothing changed."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

import search_spaces
from nas.errors import ConfigError
from nas.train import search_differentiable
from search_spaces.training.bilevel import BilevelConfig, config_for
from search_spaces.training.quantnas_search import QuantNASSearch, entropy_weight

TINY = {"scale": 2, "channels": 6, "cells": 1, "layers": 2, "ops": ["conv1x1", "conv3x3"], "bits": [4, 8],
        "lr_size": 16}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """``folder:PATH`` of 10 random 40x48 images (8 train, 1 val, 1 test at x2: LR 20x24)."""
    folder = tmp_path_factory.mktemp("sr")
    rng = np.random.default_rng(0)
    for i in range(10):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / f"img{i:02d}.png")
    return f"folder:{folder}"


def _config(data, **settings):
    options = settings.pop("options", {})
    return config_for({"method": "quantnas", "space": "quantnas_sr", "space_options": dict(TINY), "data": data,
                       "epochs": 3, "steps_per_epoch": 2, "batch_size": 2, "options": options, **settings})


def test_entropy_ramp_by_hand():
    # warm-up 2 of 10 epochs: q = ⌊8/4⌋ = 2, so epochs 0-3 get 0; epoch 4: w1 = 2/7, w2 = log 2 / log 7
    assert [entropy_weight(e, 2, 10) for e in range(4)] == [0.0] * 4
    assert entropy_weight(4, 2, 10) == pytest.approx(2 / 7 * math.log(2) / math.log(7))
    assert entropy_weight(9, 2, 10) == pytest.approx(1.0)      # w1 = 7/7, w2 = log 7 / log 7


def test_bitops_penalty_is_relative_to_the_first_step_and_survives_resume():
    space = search_spaces.get("quantnas_sr", **TINY)
    config = BilevelConfig(space="quantnas_sr", space_options=dict(TINY), method="quantnas", epochs=4,
                           options={"lambda_hw": 0.5, "lambda_entropy": 0.0})
    recipe = QuantNASSearch(space, config)
    recipe.phases()
    assert recipe.arch_penalty(0.0).item() == pytest.approx(0.5)          # uniform π: ratio 1
    first = recipe.state()["bitops0"]
    assert first == pytest.approx(space.expected_cost("bitops", space.supernet.probabilities(), fixed=False).item())
    with torch.no_grad():                                                  # favour the 4-bit choices
        for alpha in space.supernet.arch_parameters():
            alpha[0::2] = 3.0
    cheaper = recipe.arch_penalty(0.9).item()
    assert cheaper < 0.5
    again = QuantNASSearch(space, config)
    again.phases()
    again.load_state(recipe.state())
    assert again.arch_penalty(0.9).item() == pytest.approx(cheaper)


def test_options_are_checked():
    space = search_spaces.get("quantnas_sr", **TINY)
    for options, match in (({"mode": "float"}, "mode must be one of"), ({"lambda_hw": -1}, "lambda_hw"),
                           ({"keep_ratio": 0.5}, "no settings")):
        with pytest.raises(ConfigError, match=match):
            QuantNASSearch(space, BilevelConfig(space="quantnas_sr", method="quantnas", options=options))


class _Interrupt(Exception):
    pass


class _StopAt:
    """Progress that interrupts the run at its ``at``-th step (as Ctrl-C would)."""

    def __init__(self, at: int):
        self.at, self.seen = at, 0

    def epoch(self, *args) -> None:
        pass

    def step(self, *args) -> None:
        self.seen += 1
        if self.seen == self.at:
            raise _Interrupt

    def phase_done(self, record) -> None:
        pass


@pytest.mark.parametrize("mode", ["noise", "direct"])
def test_tiny_search_runs_and_resumes_bit_exactly(tmp_path, images, mode):
    options = {"mode": mode, "lambda_hw": 0.1}
    whole = search_differentiable(_config(images, options=options), tmp_path / "whole")
    with pytest.raises(_Interrupt):                # step 5 of 6: in the last epoch of the search phase
        search_differentiable(_config(images, options=options), tmp_path / "cut", progress=_StopAt(5))
    assert not (tmp_path / "cut" / "derived.json").exists()
    resumed = search_differentiable(None, tmp_path / "cut", resume=True)
    assert resumed.history == whole.history
    for key, value in whole.net.state_dict().items():
        assert torch.equal(value, resumed.net.state_dict()[key]), key
    derived = json.loads((tmp_path / "whole" / "derived.json").read_text())
    assert derived == json.loads((tmp_path / "cut" / "derived.json").read_text())
    assert [h["phase"] for h in whole.history] == ["warmup", "search", "search"]
    last = whole.history[-1]
    assert {"entropy", "expected_bitops", "genotype", "bitops", "val_psnr"} <= set(last)
    assert 0 < last["entropy"] <= math.log(4) + 1e-6
    space = whole.space
    assert derived["config"] == space.derive() == last["genotype"]
    assert derived["bitops"] == space.bitops(space.encode(derived["config"])[None])[0]
    assert whole.recipe.state()["bitops0"] is not None


def test_retrain_a_derived_genotype_reports_test_psnr_and_bitops(tmp_path, images, cli):
    search_differentiable(_config(images, epochs=2, options={"lambda_hw": 0.1}), tmp_path / "search")
    derived = tmp_path / "search" / "derived.json"
    code, out, err = cli(["train", "quantnas_sr", "--out", str(tmp_path / "final"), "--data", images,
                          "--genotype", str(derived), "--epochs", "1", "--set", "steps_per_epoch=2",
                          "--set", "batch_size=2"])
    assert code == 0, err
    final = json.loads((tmp_path / "final" / "derived.json").read_text())
    searched = json.loads(derived.read_text())
    assert final["config"] == searched["config"] and final["options"] == searched["options"]
    space = search_spaces.get("quantnas_sr", **final["options"])
    assert final["bitops"] == space.bitops(space.encode(final["config"])[None])[0]
    history = json.loads((tmp_path / "final" / "history.json").read_text())["history"]
    assert [h["phase"] for h in history] == ["train"] and "genotype" not in history[0]
    # the test PSNR is the extracted (fake-quantised) network's on the test images
    from evaluators.sr_data import load_sr_data, psnr
    from search_spaces.checkpoint import load_supernet

    trained = load_supernet(tmp_path / "final" / "supernet.pt")
    net = trained.extract(final["config"]).eval()
    lr, hr = load_sr_data(images, 2).test[0].pair()
    with torch.no_grad():
        assert final["test_psnr"] == pytest.approx(psnr(net(lr), hr, 2).item(), abs=1e-4)


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_bad_input_exits_2_and_changes_nothing(tmp_path, images, cli):
    search_differentiable(_config(images, epochs=2), tmp_path / "run")
    before = _digest(tmp_path / "run")
    derived = json.loads((tmp_path / "run" / "derived.json").read_text())
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps({**derived, "space": "dass_darts"}))
    other_scale = tmp_path / "x4.json"
    other_scale.write_text(json.dumps({**derived, "options": {**derived["options"], "scale": 4}}))
    bad_bits = tmp_path / "bits.json"
    bad_bits.write_text(json.dumps({**derived, "config": {**derived["config"], "upsample": "conv3x3@16"}}))
    tiny = [a for key, value in TINY.items() for a in ("-o", f"{key}={value}".replace("'", "").replace(" ", ""))]
    base = ["train", "quantnas_sr", "--data", images, "--epochs", "2", "--set", "steps_per_epoch=1", *tiny]
    cases = [
        (["--out", str(tmp_path / "new"), "--genotype", str(foreign)], "dass_darts"),
        (["--out", str(tmp_path / "new"), "--genotype", str(other_scale), "-o", "scale=2"], "scale x4"),
        (["--out", str(tmp_path / "new"), "--genotype", str(bad_bits)], "conv3x3@16"),
        (["--out", str(tmp_path / "new"), "-o", "bits=[4,5]"], "bits must be"),
        (["--out", str(tmp_path / "new"), "-o", "scale=3"], "scale must be one of"),
        (["--out", str(tmp_path / "new"), "--mode", "exact"], "mode must be one of"),
        (["--out", str(tmp_path / "new"), "-o", "lr_size=40"], "smaller than the 40-pixel LR crop"),
        (["--out", str(tmp_path / "run")], "already holds"),
        (["--out", str(tmp_path / "run"), "--resume", "--genotype", str(foreign)], "resume without them"),
    ]
    for args, match in cases:
        code, out, err = cli(base + args)
        assert code == 2, (args, out, err)
        assert any(m in out + err for m in match.split("|")), (args, out + err)
    assert not (tmp_path / "new").exists()
    assert _digest(tmp_path / "run") == before
