"""Phases of weight-sharing training: which subnets a step trains, at which learning rate.

A training method (progressive shrinking, DεpS, the largest network alone, sorted training) is a list
of :class:`Phase` objects; the trainer runs them in order. A phase restricts each config key to some
of its values (``choices``), says how a step picks subnets (the largest, the smallest, ``subnets``
random ones), and places itself on a cosine learning-rate curve (``lr_span``), so one curve can run
across several phases (DεpS) or restart in each (OFA).

Spaces order every gene's choices from the smallest network to the largest (kernel 3 < 5 < 7, depth,
width, resolution), so the largest subnet of a phase takes every gene's last allowed choice and the
smallest its first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from nas.errors import ConfigError
from search_spaces.base import Config, SearchSpace


@dataclass(frozen=True)
class EpsilonSchedule:
    """DεpS: subnet losses scaled by ``ε(t) = ε0 + (1 − ε0)·min(1, (t − start)/window)``, ``t`` the
    fraction of the whole training budget done."""

    start: float
    eps0: float
    window: float

    def __call__(self, t: float) -> float:
        if self.window <= 0:
            return 1.0
        return self.eps0 + (1.0 - self.eps0) * min(1.0, max(0.0, (t - self.start) / self.window))


@dataclass
class Phase:
    """One stretch of training with fixed choice lists and sampling rule."""

    name: str
    epochs: int
    lr: float
    #: Config key -> allowed values; keys left out keep all their values.
    choices: dict[str, list] = field(default_factory=dict)
    #: Random subnets (from the allowed choices) trained per step.
    subnets: int = 1
    #: Train the largest allowed subnet first in every step (on the labels; the in-place teacher).
    include_max: bool = False
    #: Train the smallest allowed subnet in every step (the sandwich rule).
    include_min: bool = False
    #: Where the phase sits on the cosine curve, as fractions ``(from, to)`` of its length.
    lr_span: tuple[float, float] = (0.0, 1.0)
    warmup_epochs: int = 0
    #: Scale of the losses of every subnet but the largest (DεpS); ``None``: 1.
    epsilon: EpsilonSchedule | None = None
    #: Subnets learn from the teacher's soft labels only (BigNAS/DεpS in-place distillation), not
    #: from the labels as well (OFA).
    distill_only: bool = False
    #: Called with the space when the phase starts (e.g. re-ordering channels by importance).
    on_start: Callable[[SearchSpace], None] | None = None

    def lr_at(self, progress: float, epoch_fraction: float) -> float:
        """Learning rate ``progress`` (0..1) through the phase, ``epoch_fraction`` epochs into it."""
        a, b = self.lr_span
        lr = self.lr * 0.5 * (1.0 + math.cos(math.pi * (a + (b - a) * progress)))
        if self.warmup_epochs and epoch_fraction < self.warmup_epochs:
            lr *= epoch_fraction / self.warmup_epochs
        return lr


class ChoiceSampler:
    """Subnets of ``space`` whose genes take only a phase's allowed values: random, smallest, largest."""

    def __init__(self, space: SearchSpace, choices: dict[str, list]):
        self.space = space
        keys = [e.key for e in space.config_layout]
        unknown = sorted(set(choices) - set(keys))
        if unknown:
            raise ConfigError(f"phase choices name unknown config keys {unknown} of {space.name} (keys {keys})")
        self.allowed: list[np.ndarray] = []
        genes = iter(space.genes)
        for entry in space.config_layout:
            for _ in range(entry.n_genes):
                gene = next(genes)
                values = choices.get(entry.key, gene.choices)
                index = sorted({gene.index_of(v) for v in values})
                if not index:
                    raise ConfigError(f"phase choices for {entry.key!r} are empty")
                self.allowed.append(np.asarray(index, dtype=np.int64))

    def random(self, n: int, rng: np.random.Generator) -> list[Config]:
        cols = [a[rng.integers(0, len(a), size=n)] for a in self.allowed]
        return self.space.decode(np.stack(cols, axis=1)) if n else []

    def largest(self) -> Config:
        return self.space.decode(np.array([a[-1] for a in self.allowed]))

    def smallest(self) -> Config:
        return self.space.decode(np.array([a[0] for a in self.allowed]))

    def step_configs(self, phase: Phase, rng: np.random.Generator) -> list[tuple[Config, str]]:
        """The subnets one step of ``phase`` trains, each tagged ``max``, ``min`` or ``random``."""
        out: list[tuple[Config, str]] = []
        if phase.include_max:
            out.append((self.largest(), "max"))
        out += [(c, "random") for c in self.random(phase.subnets, rng)]
        if phase.include_min:
            out.append((self.smallest(), "min"))
        return out


def phase_summary(phases: list[Phase]) -> list[dict[str, Any]]:
    """A JSON-able description of ``phases`` (for logs and checkpoints)."""
    return [{"name": p.name, "epochs": p.epochs, "lr": p.lr, "choices": p.choices, "subnets": p.subnets,
             "include_max": p.include_max, "include_min": p.include_min, "lr_span": list(p.lr_span),
             "warmup_epochs": p.warmup_epochs} for p in phases]
