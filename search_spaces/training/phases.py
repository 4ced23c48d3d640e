"""Phases of weight-sharing training: which subnets a step trains, at which learning rate.

A training method (progressive shrinking, DεpS, the largest network alone, sorted training) is a list
of :class:`Phase` objects; the trainer runs them in order. A phase restricts each config key to some
of its values (``choices``), says how a step picks subnets (the largest, the smallest, ``subnets``
random ones), and places itself on a cosine learning-rate curve (``lr_span``), so one curve can run
across several phases (DεpS) or restart in each (OFA).

Spaces order every gene's choices from the smallest network to the largest (kernel 3 < 5 < 7, depth,
width, resolution), so the largest subnet of a phase takes every gene's last allowed choice and the
smallest its first.

Strict fairness (FairNAS, Chu et al., ICCV 2021): the genes of a phase's ``fair_keys`` are drawn
without replacement across a step's random subnets, so with ``subnets`` equal to a gene's number of
allowed values every value trains exactly once per step, and otherwise each value the same number of
times within one (the trainer accumulates every subnet's gradient into one optimiser step).
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
    #: Config key (every gene of it) or gene name (that gene alone) -> allowed values; genes left out
    #: keep all their values.
    choices: dict[str, list] = field(default_factory=dict)
    #: Random subnets (from the allowed choices) trained per step.
    subnets: int = 1
    #: Train the largest allowed subnet first in every step (on the labels; the in-place teacher).
    include_max: bool = False
    #: Train the smallest allowed subnet in every step (the sandwich rule).
    include_min: bool = False
    #: Config keys the largest and smallest subnets take at their extremes, their other genes those of
    #: the step's first random subnet (elastic sparsity: one random architecture, dense, sparsest and at
    #: random keep ratios). ``None``: every key at its extreme.
    sandwich_keys: tuple[str, ...] | None = None
    #: With ``sandwich_keys``: every random subnet's architecture, not only the first one's, also trains
    #: at those keys' extremes, each right before and after it (its own dense teacher for ``inplace``).
    sandwich_each: bool = False
    #: Config keys whose genes a random subnet draws together: one value, among those all of them
    #: allow, for every gene of these keys (elastic sparsity: one keep ratio for the whole network).
    tied_keys: tuple[str, ...] = ()
    #: Config keys or gene names whose genes the step's random subnets draw fairly: each gene a random
    #: permutation of its allowed values across them (a fresh one for every further ``len(values)``
    #: subnets), so each value comes equally often within one. Tied keys are fair when all their genes
    #: are: the tied value is then drawn fairly.
    fair_keys: tuple[str, ...] = ()
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

    @property
    def sandwiches_some_keys(self) -> bool:
        """The phase trains sandwich ends that take only ``sandwich_keys`` at their extremes."""
        return self.sandwich_keys is not None and (self.include_max or self.include_min)

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
        self._check_names(choices, "choices")
        self.allowed: list[np.ndarray] = []
        self._gene_keys: list[str] = []
        genes = iter(space.genes)
        for entry in space.config_layout:
            for _ in range(entry.n_genes):
                gene = next(genes)
                self._gene_keys.append(entry.key)
                values = choices.get(gene.name, choices.get(entry.key, gene.choices))
                index = sorted({gene.index_of(v) for v in values})
                if not index:
                    raise ConfigError(f"phase choices for {gene.name!r} are empty")
                self.allowed.append(np.asarray(index, dtype=np.int64))

    def random(self, n: int, rng: np.random.Generator, fair: frozenset[int] = frozenset()) -> list[Config]:
        """``n`` random subnets; the genes at indices ``fair`` drawn fairly across them (:func:`fair_draw`)."""
        cols = [fair_draw(a, n, rng) if i in fair else a[rng.integers(0, len(a), size=n)]
                for i, a in enumerate(self.allowed)]
        return self.space.decode(np.stack(cols, axis=1)) if n else []

    def largest(self) -> Config:
        return self.space.decode(np.array([a[-1] for a in self.allowed]))

    def smallest(self) -> Config:
        return self.space.decode(np.array([a[0] for a in self.allowed]))

    def step_configs(self, phase: Phase, rng: np.random.Generator) -> list[tuple[Config, str]]:
        """The subnets one step of ``phase`` trains, each tagged ``max``, ``min`` or ``random``.

        Each distinct subnet once (the first time it comes): where the allowed choices leave few
        subnets, training one twice in a step would only double its gradient.
        """
        fair = self.gene_indices(phase.fair_keys, "fair_keys")
        randoms = self.tie(self.random(phase.subnets, rng, fair), phase.tied_keys, rng,
                           inner=phase.include_max and phase.include_min, fair=fair)
        if phase.sandwich_each and phase.sandwiches_some_keys and randoms:
            tagged = [t for anchor in randoms for t in self._sandwich(phase, [anchor], anchor)]
        else:
            tagged = self._sandwich(phase, randoms, self._anchor(phase, randoms, rng))
        out, seen = [], []
        for config, tag in tagged:
            if config not in seen:
                seen.append(config)
                out.append((config, tag))
        return out

    def _anchor(self, phase: Phase, randoms: list[Config], rng: np.random.Generator) -> Config | None:
        """The architecture whose ``sandwich_keys`` the sandwich ends set: the first random subnet's."""
        if not phase.sandwiches_some_keys:
            return None
        return randoms[0] if randoms else self.random(1, rng)[0]

    def _sandwich(self, phase: Phase, randoms: list[Config], anchor: Config | None) -> list[tuple[Config, str]]:
        """``randoms`` tagged, after the largest and before the smallest subnet where ``phase`` trains them."""
        tagged = [(self._sandwich_end(self.largest(), phase.sandwich_keys, anchor), "max")] if phase.include_max else []
        tagged += [(c, "random") for c in randoms]
        if phase.include_min:
            tagged.append((self._sandwich_end(self.smallest(), phase.sandwich_keys, anchor), "min"))
        return tagged

    def tie(self, configs: list[Config], keys: tuple[str, ...], rng: np.random.Generator,
            inner: bool = False, fair: frozenset[int] = frozenset()) -> list[Config]:
        """``configs`` with every gene of ``keys`` set to one value per config, drawn uniformly from the
        values every one of those genes allows; with ``inner``, from those between the first and the
        last where there are any (the sandwich trains both ends in every step already); fairly across
        ``configs`` (:func:`fair_draw`) where ``fair`` holds every tied gene."""
        if not keys or not configs:
            return configs
        columns = [i for i, key in enumerate(self._gene_keys) if key in keys]
        if fair & set(columns) and not set(columns) <= fair:
            raise ConfigError(f"phase ties keys {list(keys)}, but its fair_keys cover only some of their genes; "
                              "make all of them fair or none")
        common = set.intersection(*({self.space.genes[i].choices[j] for j in self.allowed[i]} for i in columns))
        if not common:
            raise ConfigError(f"phase ties keys {list(keys)}, but their genes allow no value in common")
        values = [v for v in self.space.genes[columns[0]].choices if v in common]
        if inner and len(values) > 2:
            values = values[1:-1]
        vectors = self.space.encode(configs)
        if set(columns) <= fair:
            draws = fair_draw(np.arange(len(values)), len(configs), rng)
        else:
            draws = rng.choice(len(values), size=len(configs))
        for row, value in zip(vectors, draws):
            for i in columns:
                row[i] = self.space.genes[i].index_of(values[value])
        return self.space.decode(vectors)

    def gene_indices(self, names: tuple[str, ...], what: str) -> frozenset[int]:
        """Indices of the genes that ``names`` (config keys or gene names) cover; ``what`` names the
        setting in the error for an unknown name."""
        self._check_names(names, what)
        return frozenset(i for i, (gene, key) in enumerate(zip(self.space.genes, self._gene_keys))
                         if gene.name in names or key in names)

    def _check_names(self, names, what: str) -> None:
        """Raise unless every name is a config key or a gene name of the space."""
        keys = [e.key for e in self.space.config_layout]
        unknown = sorted(set(names) - set(keys) - {gene.name for gene in self.space.genes})
        if unknown:
            raise ConfigError(f"phase {what} name unknown config keys or genes {unknown} of {self.space.name} "
                              f"(keys {keys})")

    @staticmethod
    def _sandwich_end(end: Config, keys: tuple[str, ...] | None, anchor: Config | None) -> Config:
        """``end`` (the largest or smallest subnet), or ``anchor`` with ``keys`` taken from ``end``."""
        return end if keys is None else {**anchor, **{key: end[key] for key in keys}}


def fair_draw(values: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` draws from ``values`` in which each value comes ``n // len(values)`` or one more times:
    random permutations of ``values`` one after another, the last one cut short (FairNAS' strict
    fairness where ``n`` is a multiple of ``len(values)``)."""
    rounds = -(-n // len(values))
    return np.concatenate([rng.permutation(values) for _ in range(rounds)])[:n] if n else values[:0]


def phase_summary(phases: list[Phase]) -> list[dict[str, Any]]:
    """A JSON-able description of ``phases`` (for logs and checkpoints)."""
    return [{"name": p.name, "epochs": p.epochs, "lr": p.lr, "choices": p.choices, "subnets": p.subnets,
             "include_max": p.include_max, "include_min": p.include_min, "sandwich_each": p.sandwich_each,
             "sandwich_keys": None if p.sandwich_keys is None else list(p.sandwich_keys),
             "tied_keys": list(p.tied_keys), "fair_keys": list(p.fair_keys), "lr_span": list(p.lr_span),
             "warmup_epochs": p.warmup_epochs} for p in phases]
