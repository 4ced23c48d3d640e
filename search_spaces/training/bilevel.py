"""Differentiable (bilevel) architecture search: DARTS' alternation of an architecture step on a
validation batch and a weight step on a training batch, in phases, with exact resume.

A *recipe* (registered by method name with :func:`register_recipe`) says what a method searches: its
phases (which parameter groups the weight step trains, whether architecture steps happen, what to set
up when a phase starts), its parameter groups (``arch`` plus named weight-side groups such as
``weights`` and ``scores``), an optional architecture-loss penalty (entropy, expected cost), what each
epoch logs (α, the derived genotype) and how the final architecture is derived. A *task* (injected,
see :class:`Task`) supplies batches of the train and validation splits, the loss and the validation
metric, so the same runner searches classifiers (cross-entropy, top-1) and super-resolution
networks (L1, PSNR) and depends on no data module.

Architecture step: first order (default; ``∇_α L_val(w, α)``) or DARTS' second order, where the
gradient is taken at the weights after one virtual SGD step ``w' = w − η (∇_w L_train + λ w)`` and the
Hessian-vector term is estimated by finite differences. Momentum is left out of the virtual step.

The run folder holds ``train.json`` (config, phases, task), ``state.pt`` (weights, both optimisers,
position, history; written atomically after every epoch), ``history.json`` (one record per epoch: losses,
validation metric, the recipe's log such as α and genotype), ``supernet.pt`` after every phase and
``derived.json`` (the derived architecture) at the end. Batch order and every random draw are seeded
from the config's seed and the position, so a resumed search continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Protocol

import numpy as np
import torch
from torch import nn

from nas.atomic import atomic_write_bytes
from nas.errors import CheckpointError, ConfigError
from search_spaces.base import Config, SearchSpace
from search_spaces.checkpoint import read_checkpoint
from search_spaces.training.loop import PhasedRun, plain
from search_spaces.training.trainer import Progress, read_run_file, refuse_existing_run

STATE_FORMAT = "nas.bilevel/1"
RUNNER = "bilevel"
ORDERS = ("first", "second")
WEIGHT_OPTIMIZERS = ("sgd", "adam")
Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class BilevelConfig:
    """Everything that defines a differentiable search; stored with its checkpoints, compared on resume."""

    space: str = "dass_darts"
    space_options: dict[str, Any] = field(default_factory=dict)
    data: str = "digits"
    method: str = "dass"
    #: Total budget in epochs, shared out over the recipe's phases.
    epochs: int = 30
    batch_size: int = 64
    #: Steps per epoch; ``None``: one pass over the training split.
    steps_per_epoch: int | None = None
    weight_optimizer: str = "sgd"
    lr: float = 0.025
    lr_min: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    arch_lr: float = 3e-4
    arch_betas: tuple[float, float] = (0.5, 0.999)
    arch_weight_decay: float = 1e-3
    order: str = "first"
    phase_epochs: dict[str, int] = field(default_factory=dict)
    #: Method-specific settings (a keep ratio, a hardware-loss weight, a genotype file...), checked by
    #: the recipe.
    options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0

    def validate(self) -> None:
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1; got {self.epochs}"),
            (self.batch_size >= 1, f"batch_size must be >= 1; got {self.batch_size}"),
            (self.steps_per_epoch is None or self.steps_per_epoch >= 1,
             f"steps_per_epoch must be >= 1; got {self.steps_per_epoch}"),
            (self.weight_optimizer in WEIGHT_OPTIMIZERS,
             f"weight_optimizer must be one of {WEIGHT_OPTIMIZERS}; got {self.weight_optimizer!r}"),
            (self.lr > 0 and self.arch_lr > 0, f"lr and arch_lr must be > 0; got {self.lr}, {self.arch_lr}"),
            (0 <= self.lr_min <= self.lr, f"lr_min must be in [0, lr]; got {self.lr_min}"),
            (self.grad_clip > 0, f"grad_clip must be > 0; got {self.grad_clip}"),
            (self.order in ORDERS, f"order must be one of {ORDERS}; got {self.order!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"search config: {message}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["arch_betas"] = list(self.arch_betas)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BilevelConfig":
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"search config: unknown keys {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        data = dict(data)
        if "arch_betas" in data:
            data["arch_betas"] = tuple(float(b) for b in data["arch_betas"])
        return cls(**data)


@dataclass
class SearchPhase:
    """A stretch of the search: which weight-side groups the weight step trains, whether α is trained."""

    name: str
    epochs: int
    train: tuple[str, ...] = ("weights",)
    arch: bool = True
    on_start: Callable[[SearchSpace], None] | None = None

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "epochs": self.epochs, "train": list(self.train), "arch": self.arch}


class Task(Protocol):
    """The data side of a search: batches, the loss, and the validation metric."""

    metric: str

    def batches(self, role: str, batch_size: int, steps: int | None, seed: int) -> Iterator[Batch]:
        """``(input, target)`` batches for the weight step (``role="weights"``) or the architecture step
        (``"arch"``): ``steps`` of them (``None``: one pass over the data), in an order fixed by ``seed``.
        The two roles draw on disjoint data (DARTS' split of the training set)."""
        ...

    def steps(self, batch_size: int) -> int:
        """Batches in one pass over the weight step's data."""
        ...

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor: ...

    def evaluate(self, net: nn.Module, split: str = "val") -> float:
        """The metric of ``net`` as it is now (BatchNorm in evaluation mode) on the validation split, or
        on ``split="test"``."""
        ...

    def describe(self) -> dict[str, Any]: ...


class Recipe:
    """What one differentiable method searches; subclasses are registered with :func:`register_recipe`.

    ``options`` names the method-specific settings (key → default) the recipe accepts in
    ``config.options``; anything else is refused. ``defaults`` are the method's own values of
    :class:`BilevelConfig` fields (its optimiser, learning rates, data), used where the user set none.
    """

    options: ClassVar[dict[str, Any]] = {}
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, space: SearchSpace, config: BilevelConfig):
        unknown = sorted(set(config.options) - set(self.options))
        if unknown:
            raise ConfigError(f"method {config.method!r} has no settings {unknown}; its settings: "
                              f"{sorted(self.options) or 'none'}")
        self.space, self.config = space, config
        self.settings = {**self.options, **config.options}

    def phases(self) -> list[SearchPhase]:
        raise NotImplementedError

    def groups(self) -> dict[str, list[nn.Parameter]]:
        """Named parameter groups; ``arch`` holds the architecture parameters (may be empty)."""
        raise NotImplementedError

    def arch_penalty(self, t: float) -> torch.Tensor | None:
        """A term added to the validation loss of the architecture step; ``t`` = budget fraction done."""
        return None

    def epoch_log(self) -> dict[str, Any]:
        """What each epoch's history record holds beside losses and the validation metric."""
        return {}

    def derive(self) -> Config:
        """The final architecture."""
        raise NotImplementedError

    def finish(self, out: Path, task: Task) -> dict[str, Any]:
        """Called once at the end, before ``derived.json`` is written: the method may write files of its
        own into ``out``; what it returns is added to ``derived.json`` (a test metric, say)."""
        return {}

    def state(self) -> dict[str, Any]:
        """Recipe state that must survive a resume (e.g. a cost measured at the first step)."""
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        pass


_RECIPES: dict[str, type[Recipe]] = {}


def register_recipe(name: str):
    """Class decorator: the differentiable search method ``name``."""

    def decorator(cls: type[Recipe]) -> type[Recipe]:
        _RECIPES[name] = cls
        return cls

    return decorator


def recipe_names() -> list[str]:
    return sorted(_RECIPES)


def _recipe_class(method: str) -> type[Recipe]:
    if method not in _RECIPES:
        raise ConfigError(f"unknown differentiable search method {method!r}; known: "
                          f"{', '.join(recipe_names()) or 'none'}")
    return _RECIPES[method]


def make_recipe(space: SearchSpace, config: BilevelConfig) -> Recipe:
    return _recipe_class(config.method)(space, config)


def config_for(settings: dict[str, Any]) -> BilevelConfig:
    """The config of ``settings`` (which must name the ``method``), the method's defaults filling in
    what the settings leave out."""
    return BilevelConfig.from_dict({**_recipe_class(settings["method"]).defaults, **settings})


class BilevelSearch(PhasedRun):
    """Runs ``config.method``'s recipe on ``space.supernet`` with ``task``'s data, in folder ``out``."""

    def __init__(self, space: SearchSpace, task: Task, config: BilevelConfig, out: str | Path,
                 progress: Progress | None = None):
        config.validate()
        self.space, self.task, self.config, self.out, self.progress = space, task, config, Path(out), progress
        with torch.random.fork_rng():
            torch.manual_seed(config.seed)
            self.net = space.supernet
        self.recipe = make_recipe(space, config)
        self.phases = self._phases()
        self.groups = self.recipe.groups()
        self.arch_optimizer = self._arch_optimizer()
        self.optimizer: torch.optim.Optimizer | None = None
        self.position = {"phase": 0, "epoch": 0, "step": 0}
        self.history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ run folder
    @classmethod
    def start(cls, space, task, config: BilevelConfig, out, progress=None) -> "BilevelSearch":
        out = Path(out)
        refuse_existing_run(out)
        search = cls(space, task, config, out, progress)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out / "train.json", json.dumps(
            {"runner": RUNNER, "config": config.to_dict(), "phases": [p.summary() for p in search.phases],
             "data": task.describe()}, indent=2).encode())
        return search

    @classmethod
    def resume(cls, space, task, out, progress=None) -> "BilevelSearch":
        search = cls(space, task, stored_bilevel_config(out), out, progress)
        if (Path(out) / "state.pt").exists():
            search._load_state(read_checkpoint(Path(out) / "state.pt"))
        return search

    # ------------------------------------------------------------------ the loop
    def run(self) -> list[dict[str, Any]]:
        """Search to the end of the last phase, then write the derived architecture; returns the history."""
        history = super().run()
        self._write_derived()
        return history

    def _enter_phase(self, phase: SearchPhase, fresh: bool) -> None:
        """Set the phase up (``on_start`` runs once, when the phase starts, not again on resume: its
        effects are in the saved weights) and make its weight optimiser."""
        for name, params in self.groups.items():
            if name != "arch":
                for p in params:
                    p.requires_grad_(name in phase.train)
        if fresh and phase.on_start is not None:
            phase.on_start(self.space)
        if not fresh and phase.on_start is not None:
            self._replay_setup(phase)
        self.optimizer = self._weight_optimizer(phase)

    def _replay_setup(self, phase: SearchPhase) -> None:
        """Re-apply a phase's settings without touching weights (keep ratios, modes) after a resume:
        ``on_start`` may also initialise parameters, so the saved ones are put back afterwards."""
        saved = {k: v.clone() for k, v in self.net.state_dict().items()}
        phase.on_start(self.space)
        self.net.load_state_dict(saved)

    def _end_phase(self, phase: SearchPhase, seconds: float) -> None:
        record = {"phase": phase.name, "epochs": phase.epochs, "seconds": round(seconds, 2),
                  f"val_{self.task.metric}": self.history[-1][f"val_{self.task.metric}"] if self.history else None}
        self._next_phase(record)

    def _epoch(self, phase: SearchPhase) -> None:
        cfg = self.config
        steps = cfg.steps_per_epoch or self.task.steps(cfg.batch_size)
        if self.progress is not None:
            self.progress.epoch(phase.name, self.position["epoch"] + 1, phase.epochs, steps)
        seed = np.random.SeedSequence([cfg.seed, self.position["phase"], self.position["epoch"]]).generate_state(2)
        train = self.task.batches("weights", cfg.batch_size, steps, int(seed[0]))
        val = _cycle(lambda s: self.task.batches("arch", cfg.batch_size, None, s), int(seed[1])) if phase.arch else None
        total_steps = sum(p.epochs for p in self.phases) * steps
        losses = []
        self.net.train()
        for i, (x, y) in enumerate(train):
            lr = self._lr(phase, (self.position["epoch"] * steps + i) / (phase.epochs * steps))
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            start = time.perf_counter()
            torch.manual_seed(int(np.random.default_rng([cfg.seed, self.position["step"]]).integers(2**62)))
            if val is not None:
                self._arch_step(*next(val), x, y, lr, self.position["step"] / total_steps)
            losses.append(self._weight_step(phase, x, y))
            self.position["step"] += 1
            if self.progress is not None:
                self.progress.step(losses[-1], len(x) / (time.perf_counter() - start))
        self.net.eval()
        self.history.append({"phase": phase.name, "epoch": self.position["epoch"] + 1,
                             "train_loss": float(np.mean(losses)) if losses else None,
                             f"val_{self.task.metric}": self.task.evaluate(self.net), **self.recipe.epoch_log()})
        self.net.train()

    def _lr(self, phase: SearchPhase, progress: float) -> float:
        """Cosine from ``lr`` to ``lr_min`` over each phase (the DASS schedule restarts per phase)."""
        cfg = self.config
        return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * progress))

    def _trained(self, phase: SearchPhase) -> list[nn.Parameter]:
        return [p for name in phase.train for p in self.groups.get(name, [])]

    def _weight_step(self, phase: SearchPhase, x: torch.Tensor, y: torch.Tensor) -> float:
        params = self._trained(phase)
        loss = self.task.loss(self.net(x), y)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        for p, g in zip(params, grads):
            p.grad = g
        nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], self.config.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    def _arch_step(self, xv: torch.Tensor, yv: torch.Tensor, xt: torch.Tensor, yt: torch.Tensor, lr: float,
                   t: float) -> None:
        arch = self.groups["arch"]
        if self.config.order == "second":
            grads = self._unrolled_arch_grads(xv, yv, xt, yt, lr, t)
        else:
            grads = torch.autograd.grad(self._arch_loss(xv, yv, t), arch, allow_unused=True)
        for a, g in zip(arch, grads):
            a.grad = g
        self.arch_optimizer.step()
        self.arch_optimizer.zero_grad(set_to_none=True)

    def _arch_loss(self, x: torch.Tensor, y: torch.Tensor, t: float) -> torch.Tensor:
        loss = self.task.loss(self.net(x), y)
        penalty = self.recipe.arch_penalty(t)
        return loss if penalty is None else loss + penalty

    def _unrolled_arch_grads(self, xv, yv, xt, yt, lr: float, t: float) -> list[torch.Tensor]:
        """DARTS' second-order gradient: ``∇_α L_val(w', α) − η (∇_α L_train(w⁺) − ∇_α L_train(w⁻)) / 2ε``
        with ``w' = w − η ∇_w L_train(w, α)`` and ``w± = w ± ε ∇_w' L_val(w', α)``."""
        arch, weights = self.groups["arch"], [p for p in self._trained(self.phases[self.position["phase"]])]
        saved = [w.detach().clone() for w in weights]
        train_grads = torch.autograd.grad(self.task.loss(self.net(xt), yt), weights, allow_unused=True)
        with torch.no_grad():
            for w, g in zip(weights, train_grads):
                if g is not None:
                    w.sub_(lr * (g + self.config.weight_decay * w))
        val_loss = self._arch_loss(xv, yv, t)
        grads = torch.autograd.grad(val_loss, arch + weights, allow_unused=True)
        arch_grads, weight_grads = grads[:len(arch)], grads[len(arch):]
        norm = torch.sqrt(sum((g ** 2).sum() for g in weight_grads if g is not None))
        eps = 0.01 / max(float(norm), 1e-12)
        finite = []
        for sign in (1.0, -1.0):
            with torch.no_grad():
                for w, s, g in zip(weights, saved, weight_grads):
                    w.copy_(s if g is None else s + sign * eps * g)
            finite.append(torch.autograd.grad(self.task.loss(self.net(xt), yt), arch, allow_unused=True))
        with torch.no_grad():
            for w, s in zip(weights, saved):
                w.copy_(s)
        return [_combine(a, p, n, lr / (2 * eps)) for a, p, n in zip(arch_grads, *finite)]

    # ------------------------------------------------------------------ pieces
    def _phases(self) -> list[SearchPhase]:
        phases = self.recipe.phases()
        names = {p.name for p in phases}
        unknown = sorted(set(self.config.phase_epochs) - names)
        if unknown:
            raise ConfigError(f"search config: phase_epochs names phases {unknown} that method "
                              f"{self.config.method!r} does not have (its phases: {[p.name for p in phases]})")
        for p in phases:
            p.epochs = int(self.config.phase_epochs.get(p.name, p.epochs))
        return [p for p in phases if p.epochs > 0]

    def _weight_optimizer(self, phase: SearchPhase) -> torch.optim.Optimizer:
        cfg = self.config
        params = self._trained(phase)
        if cfg.weight_optimizer == "adam":
            return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)

    def _arch_optimizer(self) -> torch.optim.Optimizer | None:
        """Adam over α only (the reference DASS code also put α into the weight optimiser; we do not)."""
        arch = self.groups.get("arch", [])
        if not arch:
            return None
        cfg = self.config
        return torch.optim.Adam(arch, lr=cfg.arch_lr, betas=cfg.arch_betas, weight_decay=cfg.arch_weight_decay)

    def meta(self) -> dict[str, Any]:
        return {"trained": {"runner": RUNNER, "config": self.config.to_dict(), "data": self.task.describe(),
                            "history": self.history, "finished": self.finished}}

    def _write_derived(self) -> None:
        config = self.recipe.derive()
        extra = self.recipe.finish(self.out, self.task)
        atomic_write_bytes(self.out / "derived.json", json.dumps(
            {"space": self.space.name, "options": self.space.options, "config": config,
             "final": self.history[-1] if self.history else None, **extra}, indent=2, default=plain).encode())

    def _state(self) -> dict[str, Any]:
        return {"format": STATE_FORMAT, "config": self.config.to_dict(), "position": dict(self.position),
                "history": self.history, "supernet": self.net.state_dict(), "recipe": self.recipe.state(),
                "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
                "arch_optimizer": None if self.arch_optimizer is None else self.arch_optimizer.state_dict()}

    def _load_state(self, state: dict) -> None:
        path = self.out / "state.pt"
        if state.get("format") != STATE_FORMAT:
            raise CheckpointError(f"{path} is not a nas differentiable-search state (format {state.get('format')!r})")
        if state.get("config") != self.config.to_dict():
            raise CheckpointError(f"{path} belongs to another search config than {self.out / 'train.json'}")
        try:
            self.net.load_state_dict(state["supernet"])
            self.recipe.load_state(state["recipe"])
            self.position, self.history = dict(state["position"]), list(state["history"])
            if state["arch_optimizer"] is not None:
                self.arch_optimizer.load_state_dict(state["arch_optimizer"])
            if state["optimizer"] is not None and not self.finished:
                self._enter_phase(self.phases[self.position["phase"]], fresh=False)
                self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError, AttributeError) as exc:
            raise CheckpointError(f"{path} does not fit this supernet: {str(exc).splitlines()[0]}") from None


def stored_bilevel_config(out: str | Path) -> BilevelConfig:
    """The config of the differentiable search in ``out``, or a clear error if there is none."""
    stored = read_run_file(out)
    if stored.get("runner") != RUNNER:
        raise ConfigError(f"{out} holds a weight-sharing training run, not a differentiable search")
    try:
        return BilevelConfig.from_dict(stored["config"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{Path(out) / 'train.json'} is not a valid search config: {exc}") from None


def _cycle(make: Callable[[int], Iterator[Batch]], seed: int) -> Iterator[Batch]:
    """Batches of ``make(seed)``, then of ``make(seed + 1)``...: architecture batches for as many weight
    steps as there are, however the two data sizes compare."""
    while True:
        empty = True
        for batch in make(seed):
            empty = False
            yield batch
        if empty:
            raise ConfigError("the architecture step's data yields no batch; it is smaller than the batch size")
        seed += 1


def _combine(val: torch.Tensor | None, plus: torch.Tensor | None, minus: torch.Tensor | None,
             scale: float) -> torch.Tensor | None:
    if val is None:
        return None
    if plus is None or minus is None:
        return val
    return val - scale * (plus - minus)
