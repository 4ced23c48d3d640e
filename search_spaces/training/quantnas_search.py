"""QuantNAS (Shvetsov, Osin et al. 2024; ALGORITHMS.md §6) as a recipe of the bilevel runner.

``quantnas`` searches ``quantnas_sr``'s joint (op, bits) α in two phases:

==========  =====  ==================================================================================
phase       share  steps
==========  =====  ==================================================================================
warmup      0.45   weight step only (plain L1; α frozen at uniform): the reference's 9 of 20 epochs
search      0.55   α step on a validation batch, then the weight step on a training batch
==========  =====  ==================================================================================

Every searchable layer computes its mixture over ``π = softmax(α)`` in the search mode ``mode``:
``noise`` (quantisation noise, the paper's method) or ``direct`` (LSQ/HWGQ averaged over the bit-widths
with shared weights, the baseline). The α step minimises::

    L1 + λ_H · w1(e) · w2(e) · Σ_layers H(softmax α)  +  λ_hw · BitOps(π) / BitOps(π at the first α step)

with the reference's entropy ramp: ``w1(e) = (e − e_w)/(E − 1 − e_w)`` after the warm-up of ``e_w``
epochs, ``w2(e) = 0`` for the first quarter ``q = ⌊(E − e_w)/4⌋`` of the post-warm-up epochs and
``log_{E−q−e_w+1}(e − q − e_w + 2)`` afterwards. ``BitOps(π)`` is the expected ``MACs · b_w · b_a`` of the
searchable layers (the fixed 8-bit layers are left out, as in the reference); the reference's penalty is
linear in ``b`` instead, see the README. Both steps use Adam (:data:`QUANTNAS_DEFAULTS`). Each epoch logs
the mean α entropy per layer, the expected BitOps (whole network) and the derived genotype with its
BitOps; the derived architecture is the true argmax of every α (:meth:`QuantNASSRSpace.derive`).

With the option ``genotype`` (a search's ``derived.json``) the method instead trains that architecture
as the final quantised network: each layer its op at its bit-width, directly quantised (LSQ weights,
HWGQ activations), from fresh weights, no α steps; ``derived.json`` then holds its test PSNR, BitOps,
MACs and parameters and the bicubic test PSNR for comparison.

A supernet searched in ``noise`` mode never uses its LSQ steps: before it is measured in direct
quantisation (``nas search --objectives psnr``), :func:`prepare_for_direct` initialises them from the
trained weights, as LSQ initialises a fresh layer.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nas.errors import ConfigError
from search_spaces.base import Config
from search_spaces.quantnas_sr import SEARCH_MODES
from search_spaces.training.bilevel import Recipe, SearchPhase, register_recipe
from search_spaces.training.methods import share_epochs

#: Budget shares of warm-up and search (the reference: 9 and 11 of 20 epochs).
QUANTNAS_SHARES = {"warmup": 0.45, "search": 0.55}
#: The reference's optimisers (``configs/entropy_4_8_adn_noise.yaml``), and the data and budget of an
#: epoch on the embedded photographs.
QUANTNAS_DEFAULTS = {"data": "photos", "epochs": 20, "batch_size": 16,
                     "steps_per_epoch": 50, "weight_optimizer": "adam", "lr": 1e-3, "lr_min": 1e-5,
                     "weight_decay": 3e-8, "grad_clip": 5.0, "arch_lr": 3e-4, "arch_betas": (0.5, 0.999),
                     "arch_weight_decay": 0.0, "order": "first"}


def read_derived(path: str | Path, space_name: str) -> dict[str, Any]:
    """The ``derived.json`` record of a ``space_name`` search in ``path``, or one clear error."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read genotype file {path}: {exc}") from None
    if not (isinstance(record, dict) and isinstance(record.get("config"), dict) and "space" in record):
        raise ConfigError(f"{path} is not a derived architecture (a search's derived.json with space and config)")
    if record["space"] != space_name:
        raise ConfigError(f"{path} is the derived architecture of a {record['space']!r} search, not {space_name!r}")
    if not isinstance(record.get("options", {}), dict):
        raise ConfigError(f"{path}: its space options are not a mapping")
    return record


def read_architecture(space, path: str | Path) -> Config:
    """The config of the ``derived.json`` in ``path``, checked against ``space`` (scale and genes)."""
    record = read_derived(path, space.name)
    scale = record.get("options", {}).get("scale", space.options["scale"])
    if scale != space.options["scale"]:
        raise ConfigError(f"{path} was searched at scale x{scale}; this space is built for x{space.options['scale']}")
    try:
        space.validate(record["config"])
    except ConfigError as exc:
        raise ConfigError(f"{path} does not fit this {space.name} space ({exc}); retrain with the search's "
                          "space options") from None
    return record["config"]


def entropy_weight(epoch: int, warmup: int, total: int) -> float:
    """``w1(e) · w2(e)`` of the reference's ramp (0 during the warm-up and the first post-warm-up quarter)."""
    if epoch < warmup:
        return 0.0
    q = (total - warmup) // 4
    if epoch - warmup < q:
        return 0.0
    w1 = (epoch - warmup) / max(total - 1 - warmup, 1)
    w2 = math.log(epoch - q - warmup + 2) / math.log(total - q - warmup + 1)
    return w1 * w2


def entropies(probabilities: list[torch.Tensor]) -> torch.Tensor:
    """``H(π) = −Σ π log π`` (nats) of each layer's probabilities."""
    return torch.stack([-(p * torch.log(p.clamp_min(1e-30))).sum() for p in probabilities])


def prepare_for_direct(space) -> None:
    """Initialise every LSQ step of the supernet from its weights (after a ``noise``-mode search)."""
    space.supernet.init_quant_steps()


@register_recipe("quantnas")
class QuantNASSearch(Recipe):
    """Joint op and bit-width search of ``quantnas_sr`` (or, with ``genotype``, the final training)."""

    options = {"mode": "noise", "lambda_hw": 0.0, "lambda_entropy": 1e-3, "genotype": None}
    defaults = QUANTNAS_DEFAULTS

    def __init__(self, space, config):
        super().__init__(space, config)
        if space.name != "quantnas_sr":
            raise ConfigError(f"method quantnas searches quantnas_sr, not {space.name!r}")
        self.mode = self.settings["mode"]
        if self.mode not in SEARCH_MODES:
            raise ConfigError(f"quantnas: mode must be one of {', '.join(SEARCH_MODES)}; got {self.mode!r}")
        for key in ("lambda_hw", "lambda_entropy"):
            value = self.settings[key]
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
                raise ConfigError(f"quantnas: {key} must be a number >= 0; got {value!r}")
        self.supernet = space.supernet
        self.retrain: Config | None = None
        if self.settings["genotype"] is not None:
            self.retrain = read_architecture(space, self.settings["genotype"])
        self.bitops0: float | None = None
        self._phases: list[SearchPhase] = []

    # ------------------------------------------------------------------ phases
    def phases(self) -> list[SearchPhase]:
        if self.retrain is not None:
            self._phases = [SearchPhase("train", self.config.epochs, ("weights",), False, self._discrete)]
        else:
            warmup, search = share_epochs(self.config.epochs, list(QUANTNAS_SHARES.values()))
            self._phases = [SearchPhase("warmup", warmup, ("weights",), False, self._mixture),
                            SearchPhase("search", search, ("weights",), True, self._mixture)]
        return self._phases

    def _mixture(self, space) -> None:
        self.supernet.set_search_mode(self.mode)

    def _discrete(self, space) -> None:
        space.activate(self.retrain)

    def groups(self) -> dict[str, list[nn.Parameter]]:
        if self.retrain is not None:
            return {"arch": [], "weights": self.supernet.weight_parameters()}
        return {"arch": self.supernet.arch_parameters(), "weights": self.supernet.weight_parameters()}

    # ------------------------------------------------------------------ the architecture loss
    def arch_penalty(self, t: float) -> torch.Tensor | None:
        probabilities = self.supernet.probabilities()
        total = sum(p.epochs for p in self._phases)
        warmup = sum(p.epochs for p in self._phases if not p.arch)
        weight = self.settings["lambda_entropy"] * entropy_weight(int(t * total), warmup, total)
        penalty = weight * entropies(probabilities).sum()
        if self.settings["lambda_hw"] > 0:
            bitops = self.space.expected_cost("bitops", probabilities, fixed=False)
            if self.bitops0 is None:
                self.bitops0 = float(bitops.detach())
            penalty = penalty + self.settings["lambda_hw"] * bitops / self.bitops0
        return penalty

    # ------------------------------------------------------------------ results
    def epoch_log(self) -> dict[str, Any]:
        if self.retrain is not None:
            return {}
        with torch.no_grad():
            probabilities = self.supernet.probabilities()
            config = self.derive()
            return {"entropy": round(float(entropies(probabilities).mean()), 5),
                    "expected_bitops": float(self.space.expected_cost("bitops", probabilities)),
                    "genotype": config, "bitops": int(self.space.bitops(self.space.encode(config)[None])[0])}

    def derive(self) -> Config:
        if self.retrain is not None:
            return self.retrain
        return self.space.derive()

    def finish(self, out: Path, task) -> dict[str, Any]:
        """After the final training: test PSNR, costs and the bicubic baseline of the network."""
        config = self.derive()
        vector = self.space.encode(config)[None]
        costs = {name: int(self.space.cost(name, vector)[0]) for name in ("bitops", "macs", "params")}
        if self.retrain is None:
            return {"mode": self.mode, **costs}
        from evaluators.sr_data import bicubic_psnr

        self.space.activate(config)
        return {f"test_{task.metric}": task.evaluate(self.supernet, split="test"),
                "bicubic_test_psnr": bicubic_psnr(task.data, "test"), **costs}

    def state(self) -> dict[str, Any]:
        return {"bitops0": self.bitops0}

    def load_state(self, state: dict[str, Any]) -> None:
        self.bitops0 = state.get("bitops0")
