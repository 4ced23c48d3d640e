"""DASS and its dense baseline DARTS as recipes of the bilevel runner (:mod:`search_spaces.training.bilevel`).

``dass`` (Mousavi et al. 2023, as the authors' code does it) searches ``dass_darts``' supernet in three
phases, every step an α step on the architecture half of the data and a weight-side step on the other:

============  ==========  =====================================  =======================================
phase         share       keep ratio                             weight step trains
============  ==========  =====================================  =======================================
pretrain      2/5         1 (dense)                              weights (and BatchNorm)
prune         1/5         ``keep_ratio``; scaled score init      scores only, weights frozen
finetune      2/5         ``keep_ratio``                         weights, scores frozen
============  ==========  =====================================  =======================================

(the reference runs 100/50/100 epochs). ``darts`` is the same code with no sparsity during the search:
one dense phase over the same budget, weights and α. Both log softmax(α) per cell kind and the derived
genotype each epoch, derive DARTS' discretisation (per node the two strongest incoming edges, their
strongest non-``none`` op), and write ``genotype.json`` (``space.save_genotype``) beside ``derived.json``.

With the option ``genotype`` (a ``derived.json`` of a search or a genotype file) the same method
*retrains* that architecture instead (HYDRA's three steps on the discrete network: dense training,
pruning with scaled score init at the keep ratio, fine-tuning the surviving weights; no α). The
space options may differ from the search's (more channels or cells). The keep ratio is the option
``keep_ratio`` in every cell, or, without it, the per-cell keep ratios of the genotype file.
``derived.json`` then holds the test accuracy too.

Differences from the reference code, on purpose: α has its own Adam optimiser only (the reference
also put it into the weight optimiser); the prune phase uses the common learning rate (the reference
prunes at 0.1, weights at 0.025), since the runner has one learning-rate schedule per search.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nas.errors import ConfigError
from search_spaces.base import Config
from search_spaces.dass_supernet import KINDS, DartsNetwork
from search_spaces.ops.sparse import check_keep_ratio, init_scores_from_weights, sparse_layers
from search_spaces.training.bilevel import Recipe, SearchPhase, register_recipe
from search_spaces.training.methods import share_epochs

#: Budget shares of the three DASS phases (the reference: 100, 50 and 100 epochs).
DASS_SHARES = {"pretrain": 0.4, "prune": 0.2, "finetune": 0.4}
#: DASS' optimisers (the reference's ``train_search.py``), applied where the user set none.
DASS_DEFAULTS = {"weight_optimizer": "sgd", "lr": 0.025, "lr_min": 0.001, "momentum": 0.9, "weight_decay": 3e-4,
                 "grad_clip": 5.0, "arch_lr": 3e-4, "arch_betas": (0.5, 0.999), "arch_weight_decay": 1e-3,
                 "order": "first"}
GENOTYPE_FILE = "genotype.json"


def split_parameters(module: nn.Module) -> dict[str, list[nn.Parameter]]:
    """``{"weights": [...], "scores": [...]}`` of ``module``: the sparse ops' scores apart from every
    other parameter (weights, biases, BatchNorm); architecture weights are the caller's to leave out."""
    scores = [layer.scores for layer in sparse_layers(module)]
    ids = {id(p) for p in scores}
    return {"weights": [p for p in module.parameters() if id(p) not in ids], "scores": scores}


def read_architecture(space, path: str | Path, keep_ratio: float | None) -> Config:
    """The config to retrain from ``path``: a search's ``derived.json`` (its cells; every keep gene
    ``keep_ratio``, or the search's own keep ratios when none is given) or a genotype file."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read genotype file {path}: {exc}") from None
    if not (isinstance(record, dict) and "config" in record and "space" in record):
        return space.load_genotype(path, keep_ratio)
    if record["space"] != space.name or not isinstance(record["config"], dict):
        raise ConfigError(f"{path} is the derived architecture of a {record['space']!r} search, not {space.name!r}")
    derived = record["config"]
    try:
        genotypes = {}
        for kind in KINDS:   # per node: its input pair "i,j", the op on i then the op on j
            states = [int(s) for pair in derived[f"{kind}_inputs"] for s in str(pair).split(",")]
            genotypes[kind] = [[str(op), s] for op, s in zip(derived[f"{kind}_ops"], states, strict=True)]
    except (KeyError, ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: not a dass_darts derived architecture ({exc})") from None
    for kind in KINDS:
        unknown = sorted({op for op, _ in genotypes[kind]} - set(space.discrete_ops))
        if unknown:
            raise ConfigError(f"{path}: {kind} cell names unknown op(s) {unknown}; this space's ops are "
                              f"{list(space.discrete_ops)}")
    if keep_ratio is not None:
        return space.config_of(genotypes, [keep_ratio] * space.layers, keep_ratio, keep_ratio)
    keep = derived.get("keep")
    if not isinstance(keep, list) or len(keep) != space.layers:
        n = len(keep) if isinstance(keep, list) else keep
        raise ConfigError(f"{path}: keep ratios for {n} cells, but this space has {space.layers} cells; give "
                          "--keep-ratio or the search's number of cells (-o layers=...)")
    return space.config_of(genotypes, keep, derived.get("keep_stem"), derived.get("keep_classifier"))


class _DartsCellSearch(Recipe):
    """What ``dass`` and ``darts`` share: α logging, derivation, the genotype file, retraining."""

    options = {"keep_ratio": None, "genotype": None}
    defaults = DASS_DEFAULTS

    def __init__(self, space, config):
        super().__init__(space, config)
        if space.name != "dass_darts":
            raise ConfigError(f"method {config.method!r} searches dass_darts cells, not {space.name!r}")
        # retraining takes the genotype file's per-cell keep ratios unless a keep ratio is given
        keep = config.options.get("keep_ratio") if self.settings["genotype"] else self.settings["keep_ratio"]
        self.keep_ratio = None if keep is None else check_keep_ratio(keep)
        if self.keep_ratio is not None and self.keep_ratio not in space.keep_ratios:
            raise ConfigError(f"keep ratio {self.keep_ratio} is not among the space's keep_ratios "
                              f"{list(space.keep_ratios)}; add it with -o keep_ratios=[...]")
        self.supernet = space.supernet
        self.retrain: Config | None = None
        if self.settings["genotype"] is not None:
            self.retrain = read_architecture(space, self.settings["genotype"], self.keep_ratio)
            space.activate(self.retrain)
            self.network = DartsNetwork(self.supernet.stem, [cell.discrete() for cell in self.supernet.cells],
                                        self.supernet.classifier)

    # ------------------------------------------------------------------ phases
    def phases(self) -> list[SearchPhase]:
        if self.retrain is not None:
            return self._retrain_phases()
        return self.search_phases()

    def search_phases(self) -> list[SearchPhase]:
        raise NotImplementedError

    def _retrain_phases(self) -> list[SearchPhase]:
        """HYDRA's three steps on the discrete network of the genotype; no architecture steps."""
        pretrain, prune, finetune = share_epochs(self.config.epochs, list(DASS_SHARES.values()))
        return [SearchPhase("pretrain", pretrain, ("weights",), False, self._discrete(dense=True)),
                SearchPhase("prune", prune, ("scores",), False, self._discrete(dense=False, init_scores=True)),
                SearchPhase("finetune", finetune, ("weights",), False, self._discrete(dense=False))]

    def _discrete(self, dense: bool, init_scores: bool = False):
        def start(space) -> None:
            space.activate(self.retrain)
            if dense:
                self.supernet.set_keep_ratios(1.0, [1.0] * space.layers, 1.0)
            if init_scores:
                init_scores_from_weights(self.network)
        return start

    def _mixed(self, keep: float, init_scores: bool = False):
        def start(space) -> None:
            self.supernet.set_mode("mixed")
            self.supernet.set_keep_ratios(keep, [keep] * space.layers, keep)
            if init_scores:
                init_scores_from_weights(self.supernet)
        return start

    def groups(self) -> dict[str, list[nn.Parameter]]:
        if self.retrain is not None:
            return {"arch": [], **split_parameters(self.network)}
        arch = self.supernet.arch_parameters()
        ids = {id(a) for a in arch}
        groups = split_parameters(self.supernet)
        return {"arch": arch, **{name: [p for p in ps if id(p) not in ids] for name, ps in groups.items()}}

    # ------------------------------------------------------------------ results
    def epoch_log(self) -> dict[str, Any]:
        if self.retrain is not None:
            return {}
        weights = {kind: np.round(torch.softmax(a.detach(), -1).numpy(), 4).tolist()
                   for kind, a in self.supernet.alphas.items()}
        return {"alphas": weights, "genotype": self.space.genotypes(self.derive())}

    def derive(self) -> Config:
        if self.retrain is not None:
            return self.retrain
        return self.space.derive({k: a.detach() for k, a in self.supernet.alphas.items()}, self.keep_ratio)

    def finish(self, out: Path, task) -> dict[str, Any]:
        """Write ``genotype.json``; after retraining, measure the test metric of the network."""
        config = self.derive()
        self.space.save_genotype(config, Path(out) / GENOTYPE_FILE)
        if self.retrain is None:
            return {}
        self.space.activate(self.retrain)
        return {f"test_{task.metric}": task.evaluate(self.supernet, split="test")}


@register_recipe("dass")
class DassSearch(_DartsCellSearch):
    """Sparsity-aware search: dense pretraining, pruning by scores at the keep ratio, fine-tuning."""

    options = {"keep_ratio": 0.01, "genotype": None}

    def search_phases(self) -> list[SearchPhase]:
        pretrain, prune, finetune = share_epochs(self.config.epochs, list(DASS_SHARES.values()))
        return [SearchPhase("pretrain", pretrain, ("weights",), True, self._mixed(1.0)),
                SearchPhase("prune", prune, ("scores",), True, self._mixed(self.keep_ratio, init_scores=True)),
                SearchPhase("finetune", finetune, ("weights",), True, self._mixed(self.keep_ratio))]


@register_recipe("darts")
class DartsSearch(_DartsCellSearch):
    """Plain DARTS on the same supernet and budget: dense throughout (``keep_ratio`` only goes into the
    derived config, the ratio it is meant to be retrained at)."""

    def search_phases(self) -> list[SearchPhase]:
        return [SearchPhase("search", self.config.epochs, ("weights",), True, self._mixed(1.0))]
