"""The weight-sharing trainer: phases of sampled subnets, one optimiser step per batch, exact resume.

Each step takes one training batch, makes one augmented view of it at the largest input size, and
for every subnet the phase samples (:meth:`ChoiceSampler.step_configs`) activates it, resizes the view
to its input size, and back-propagates its loss; gradients accumulate and one SGD (Nesterov) step
follows. Losses: label-smoothed cross-entropy, plus distillation from a teacher (the frozen full
network, or the largest subnet in the same step), scaled by ε(t) for the smaller subnets in DεpS.

The run folder holds ``train.json`` (the config), ``state.pt`` (weights, optimiser, teacher, position
and history; written atomically after every epoch), ``history.json`` and ``supernet.pt`` (the supernet
in the ``nas.supernet/1`` format, written after every phase). Every random draw is seeded from the
config's seed and the global step, so a resumed run continues exactly as an uninterrupted one would.
Data comes in through a duck-typed object (``train.batches``, ``train_view``, ``eval_view``: see
:class:`evaluators.data.Data`) and validation through a callable, so this module depends on neither.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from nas.atomic import atomic_write_bytes
from nas.errors import CheckpointError, ConfigError
from search_spaces.base import Config, SearchSpace
from search_spaces.checkpoint import read_checkpoint
from search_spaces.ops.sparse import sparse_layers
from search_spaces.training.loop import PhasedRun
from search_spaces.training.methods import TrainConfig, build_phases
from search_spaces.training.phases import ChoiceSampler, Phase, phase_summary

STATE_FORMAT = "nas.train/1"
#: ``validate(configs) -> accuracies (%)`` on the validation split, BatchNorm re-calibrated per subnet.
Validate = Callable[[list[Config]], list[float]]


class Progress(Protocol):
    """Receives the training's progress: an epoch starts, a step ends, a phase ends."""

    def epoch(self, phase: str, epoch: int, epochs: int, steps: int) -> None: ...

    def step(self, loss: float, images_per_second: float) -> None: ...

    def phase_done(self, record: dict[str, Any]) -> None: ...


class Trainer(PhasedRun):
    """Trains ``space.supernet`` on ``data`` with the phases of ``config.method``, in folder ``out``."""

    def __init__(self, space: SearchSpace, data, config: TrainConfig, out: str | Path,
                 validate: Validate | None = None, progress: Progress | None = None):
        config.validate()
        self.space, self.data, self.config, self.out = space, data, config, Path(out)
        self.validate, self.progress = validate, progress
        with torch.random.fork_rng():
            torch.manual_seed(config.seed)          # a supernet built here starts from the seed's weights
            self.net = space.supernet
        self.phases, self.kd = build_phases(space, config)
        self.largest = ChoiceSampler(space, {}).largest()
        self.teacher: torch.nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.position = {"phase": 0, "epoch": 0, "step": 0}
        self.history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ run folder
    @classmethod
    def start(cls, space, data, config: TrainConfig, out, validate=None, progress=None) -> "Trainer":
        """A new run in ``out`` (which must not hold one yet)."""
        out = Path(out)
        refuse_existing_run(out)
        trainer = cls(space, data, config, out, validate, progress)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out / "train.json", json.dumps(
            {"config": config.to_dict(), "phases": phase_summary(trainer.phases), "kd": trainer.kd,
             "data": data.describe()}, indent=2).encode())
        return trainer

    @classmethod
    def resume(cls, space, data, out, config: TrainConfig | None = None, validate=None, progress=None) -> "Trainer":
        """The run in ``out``, restored to its last completed epoch. ``config``, if given, must be the
        run's own (a changed hyper-parameter is refused, naming it)."""
        stored = stored_config(out)
        if config is not None:
            refuse_changes(out, stored, config.to_dict())
        trainer = cls(space, data, stored, out, validate, progress)
        if (Path(out) / "state.pt").exists():
            trainer._load_state(read_checkpoint(Path(out) / "state.pt"))
        return trainer

    # ------------------------------------------------------------------ the loop
    def _enter_phase(self, phase: Phase, fresh: bool) -> None:
        """Set a starting phase up (teacher, ``on_start``); after a resume only its optimiser is rebuilt."""
        if fresh and self.kd == "frozen" and self.teacher is None and (phase.subnets > 0 or phase.include_min):
            self.teacher = self._frozen_teacher()
        if fresh and phase.on_start is not None:
            phase.on_start(self.space)
        self.optimizer = self._optimizer()

    def _end_phase(self, phase: Phase, seconds: float) -> None:
        sampler = ChoiceSampler(self.space, phase.choices)
        record: dict[str, Any] = {"phase": phase.name, "epochs": phase.epochs, "seconds": round(seconds, 2)}
        if self.validate is not None:
            with preserved_buffers(self.net):
                acc_min, acc_max = self.validate([sampler.smallest(), sampler.largest()])
            record.update(val_acc_min=acc_min, val_acc_max=acc_max)
        self.history.append(record)
        self._next_phase(record)

    def _epoch(self, phase: Phase) -> None:
        cfg = self.config
        sampler = ChoiceSampler(self.space, phase.choices)
        n_steps = max(1, len(self.data.train) // cfg.batch_size)
        total_steps = sum(p.epochs for p in self.phases) * n_steps
        if self.progress is not None:
            self.progress.epoch(phase.name, self.position["epoch"] + 1, phase.epochs, n_steps)
        seed = np.random.SeedSequence([cfg.seed, self.position["phase"], self.position["epoch"]])
        batches = self.data.train.batches(cfg.batch_size, shuffle=True, seed=int(seed.generate_state(1)[0]),
                                          drop_last=True)
        self.net.train()
        for i, (x, y) in enumerate(batches):
            progress = (self.position["epoch"] * n_steps + i) / (phase.epochs * n_steps)
            lr = phase.lr_at(progress, self.position["epoch"] + i / n_steps)
            for group in self.optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            start = time.perf_counter()
            loss = self._step(phase, sampler, x, y, self.position["step"] / total_steps)
            self.position["step"] += 1
            if self.progress is not None:
                self.progress.step(loss, len(x) / (time.perf_counter() - start))

    def _step(self, phase: Phase, sampler: ChoiceSampler, x: torch.Tensor, y: torch.Tensor, t: float) -> float:
        """One optimiser step over the phase's subnets on batch ``(x, y)``; ``t`` = budget fraction done."""
        step = self.position["step"]
        rng = np.random.default_rng([self.config.seed, step])
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        torch.manual_seed(int(rng.integers(2**62)))                      # dropout
        view = self.data.train_view(x, self.space.input_size(self.largest), generator)
        configs = sampler.step_configs(phase, rng)
        teacher = self._teacher_logits(view, configs)
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for config, tag in configs:
            self.space.activate(config)
            logits = self.net(self.data.eval_view(view, self.space.input_size(config)))
            loss = self._loss(logits, y, None if tag == "max" else teacher, phase)
            if tag != "max" and phase.epsilon is not None:
                loss = loss * phase.epsilon(t)
            loss.backward()
            total += float(loss.detach())
            if tag == "max" and self.kd == "inplace":
                teacher = logits.detach()
        self.optimizer.step()
        return total / max(1, len(configs))

    def _teacher_logits(self, view: torch.Tensor, configs: list[tuple[Config, str]]) -> torch.Tensor | None:
        if self.kd == "frozen" and self.teacher is not None:
            with torch.no_grad():
                return self.teacher(view)
        if self.kd == "inplace" and configs and configs[0][1] != "max":
            with torch.no_grad():                                       # no trained max in this phase
                self.space.activate(self.largest)
                return self.net(view).detach()
        return None

    def _loss(self, logits: torch.Tensor, y: torch.Tensor, teacher: torch.Tensor | None, phase: Phase) -> torch.Tensor:
        loss = F.cross_entropy(logits, y, label_smoothing=self.config.label_smoothing)
        if teacher is None:
            return loss
        distill = -(F.softmax(teacher, dim=1) * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
        if phase.distill_only:
            return self.config.kd_ratio * distill
        return loss + self.config.kd_ratio * distill

    # ------------------------------------------------------------------ pieces
    def _optimizer(self) -> torch.optim.Optimizer:
        """SGD with Nesterov momentum; no weight decay on BatchNorm parameters and biases. The sparse
        ops' scores, where the supernet has any, form a third group: no weight decay, the learning rate
        scaled by ``score_lr``."""
        cfg = self.config
        scores = {id(layer.scores) for layer in sparse_layers(self.net)}
        trainable = [p for p in self.net.parameters() if p.requires_grad]
        groups = [{"params": [p for p in trainable if p.dim() > 1 and id(p) not in scores],
                   "weight_decay": cfg.weight_decay},
                  {"params": [p for p in trainable if p.dim() <= 1], "weight_decay": 0.0}]
        score_params = [p for p in trainable if id(p) in scores]
        if score_params:
            groups.append({"params": score_params, "weight_decay": 0.0, "lr_scale": cfg.score_lr})
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)

    def _frozen_teacher(self) -> torch.nn.Module:
        """The full network as it is now, frozen (OFA's teacher: the trained largest subnet)."""
        self.space.activate(self.largest)
        teacher = copy.deepcopy(self.net).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        return teacher

    def meta(self) -> dict[str, Any]:
        return {"trained": {"config": self.config.to_dict(), "data": self.data.describe(), "kd": self.kd,
                            "history": self.history, "finished": self.finished}}

    def _state(self) -> dict[str, Any]:
        return {"format": STATE_FORMAT, "config": self.config.to_dict(), "position": dict(self.position),
                "history": self.history, "supernet": self.net.state_dict(),
                "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
                "teacher": None if self.teacher is None else self.teacher.state_dict()}

    def _load_state(self, state: dict) -> None:
        path = self.out / "state.pt"
        if state.get("format") != STATE_FORMAT:
            raise CheckpointError(f"{path} is not a nas training state (format {state.get('format')!r})")
        if not isinstance(state.get("config"), dict) or as_current(state["config"]) != self.config.to_dict():
            raise CheckpointError(f"{path} belongs to another training config than {self.out / 'train.json'}")
        try:
            self.net.load_state_dict(state["supernet"])
            if state["teacher"] is not None:
                self.teacher = self._frozen_teacher()
                self.teacher.load_state_dict(state["teacher"])
            self.position, self.history = dict(state["position"]), list(state["history"])
            if state["optimizer"] is not None:
                self.optimizer = self._optimizer()
                self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"{path} does not fit this supernet: {str(exc).splitlines()[0]}") from None


#: Settings added since the first training runs whose default now does something else than runs
#: written before them did, with the value that reproduces those runs.
BEFORE_ADDED = {"sandwich_each": False}


def as_current(config: dict[str, Any]) -> dict[str, Any]:
    """A stored config dict with the settings added since it was written at the values that reproduce
    what the run did then (their defaults, or :data:`BEFORE_ADDED`), so older runs still resume."""
    return {**TrainConfig().to_dict(), **BEFORE_ADDED, **config}


def refuse_existing_run(out: Path) -> None:
    """Raise if ``out`` already holds a training run (a new run never overwrites one)."""
    if (out / "train.json").exists() or (out / "state.pt").exists():
        raise ConfigError(f"{out} already holds a training run; pass --resume to continue it, or choose "
                          "another --out")


def read_run_file(out: str | Path) -> dict[str, Any]:
    """The ``train.json`` of the run in ``out`` (either kind of run), or a clear error if there is none."""
    path = Path(out) / "train.json"
    if not path.is_file():
        raise ConfigError(f"{out} holds no training run (no train.json); start one without --resume")
    try:
        stored = json.loads(path.read_text())
    except ValueError as exc:
        raise CheckpointError(f"{path} is not a valid training run file: {exc}") from None
    if not isinstance(stored, dict):
        raise CheckpointError(f"{path} is not a valid training run file: not a mapping")
    return stored


def stored_config(out: str | Path) -> TrainConfig:
    """The config of the training run in ``out``, or a clear error if there is none."""
    stored = read_run_file(out)
    try:
        return TrainConfig.from_dict(as_current(stored["config"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{Path(out) / 'train.json'} is not a valid training config: {exc}") from None


def refuse_changes(out: str | Path, stored: TrainConfig, asked: dict[str, Any]) -> None:
    """Raise unless every setting in ``asked`` equals the stored run's (resume never changes a run)."""
    changed = {k: v for k, v in asked.items() if getattr(stored, k) != v}
    if changed:
        raise ConfigError(f"{out} was trained with other settings: " + "; ".join(
            f"{k} {getattr(stored, k)!r} (asked: {v!r})" for k, v in changed.items())
            + "; resume without them, or start a new run in another --out")


class preserved_buffers:
    """Context manager: restore every buffer of ``module`` on exit (validation re-calibrates
    BatchNorm statistics in place; training must go on from the statistics it had)."""

    def __init__(self, module: torch.nn.Module):
        self.module = module

    def __enter__(self):
        self.saved = {name: b.clone() for name, b in self.module.named_buffers()}
        return self

    def __exit__(self, *exc):
        with torch.no_grad():
            for name, b in self.module.named_buffers():
                b.copy_(self.saved[name])
