"""Training methods, registered by name: each turns a :class:`TrainConfig` into phases.

* ``ps``: Once-for-All progressive shrinking (full network, then elastic kernel, depth in two steps,
  expand ratio in two steps with channels re-sorted by importance as each starts), knowledge
  distillation from the frozen full network by default;
* ``deps``: Delayed ε-Shrinking: the full network alone for the first ``rho`` of the budget, then the
  sandwich rule (largest on labels, smallest and random subnets distilled in place from the largest)
  with subnet losses scaled by ε(t), on one cosine curve;
* ``full``: the largest subnet alone, the baseline at equal budget;
* ``sorted``: SortedNet's training of nested sub-models sampled uniformly over the grid.

The budget (``epochs``) is shared out over the phases; ``phase_epochs``/``phase_lr``/``phase_subnets``
override single phases by name; ``fair`` makes every phase draw its random subnets with strict
fairness (FairNAS: each gene's allowed values spread evenly over a step's subnets).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from nas.errors import ConfigError
from search_spaces.base import SearchSpace
from search_spaces.training.phases import EpsilonSchedule, Phase

KD_MODES = ("none", "frozen", "inplace")


@dataclass
class TrainConfig:
    """Everything that defines a training run; stored with its checkpoints and compared on resume."""

    space: str = "ofa_mbv3"
    space_options: dict[str, Any] = field(default_factory=dict)
    data: str = "digits"
    method: str = "ps"
    #: Total budget in epochs, shared out over the method's phases.
    epochs: int = 60
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 3e-5
    #: Learning rate of the sparse ops' importance scores as a fraction of ``lr`` (no weight decay on
    #: them: they only rank weights). On ``benchmarks/dass_elastic.py`` 0.1 left the sparsest subnet
    #: 14 points below the weights' own rate (1.0), elastic and per-ratio supernets alike.
    score_lr: float = 1.0
    label_smoothing: float = 0.1
    #: ``none``, ``frozen`` (the trained full network, as in OFA) or ``inplace`` (the supernet's own
    #: largest subnet in the same step); ``None`` takes the method's default.
    kd: str | None = None
    kd_ratio: float = 1.0
    #: Random subnets per step in sandwich phases (DεpS, sorted training).
    subnets: int = 2
    #: Strict fairness (FairNAS): every phase draws every gene fairly across a step's random subnets,
    #: each allowed value equally often within one (exactly once with ``subnets`` = its number of values).
    fair: bool = False
    #: Phases that sandwich some keys only (elastic sparsity: the keep ratios) train every random
    #: subnet's architecture at those keys' extremes, not only the first one's; ``None``: the method's
    #: choice (elastic sparsity: every one).
    sandwich_each: bool | None = None
    phase_epochs: dict[str, int] = field(default_factory=dict)
    phase_lr: dict[str, float] = field(default_factory=dict)
    phase_subnets: dict[str, int] = field(default_factory=dict)
    #: DεpS: fraction of the budget before shrinking starts, ε at the start, window (budget fraction).
    rho: float = 0.5
    eps0: float = 0.1
    eps_window: float = 0.2
    #: Sorted training: also train the full model in every step.
    sorted_include_max: bool = True
    #: Training images used to re-calibrate BatchNorm before each validation.
    calib_images: int = 500
    seed: int = 0

    def validate(self) -> None:
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1; got {self.epochs}"),
            (self.batch_size >= 1, f"batch_size must be >= 1; got {self.batch_size}"),
            (self.lr > 0, f"lr must be > 0; got {self.lr}"),
            (self.score_lr >= 0, f"score_lr must be >= 0; got {self.score_lr}"),
            (self.kd is None or self.kd in KD_MODES, f"kd must be one of {KD_MODES}; got {self.kd!r}"),
            (0 <= self.rho < 1, f"rho must be in [0, 1); got {self.rho}"),
            (0 <= self.eps0 <= 1, f"eps0 must be in [0, 1]; got {self.eps0}"),
            (self.eps_window >= 0, f"eps_window must be >= 0; got {self.eps_window}"),
            (self.subnets >= 0, f"subnets must be >= 0; got {self.subnets}"),
            (isinstance(self.fair, bool), f"fair must be true or false; got {self.fair!r}"),
            (self.sandwich_each is None or isinstance(self.sandwich_each, bool),
             f"sandwich_each must be true, false or null; got {self.sandwich_each!r}"),
            (self.calib_images >= 1, f"calib_images must be >= 1; got {self.calib_images}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"training config: {message}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"training config: unknown keys {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**data)


Method = Callable[[SearchSpace, TrainConfig], tuple[list[Phase], str]]
_METHODS: dict[str, Method] = {}


def register_method(name: str):
    """Decorator: ``method(space, config) -> (phases, kd_mode)``."""

    def decorator(method: Method) -> Method:
        _METHODS[name] = method
        return method

    return decorator


def method_names() -> list[str]:
    return sorted(_METHODS)


def build_phases(space: SearchSpace, config: TrainConfig) -> tuple[list[Phase], str]:
    """The phases of ``config.method`` on ``space``, with overrides applied, and the KD mode."""
    if config.method not in _METHODS:
        raise ConfigError(f"unknown training method {config.method!r}; known: {', '.join(method_names())}")
    phases, kd = _METHODS[config.method](space, config)
    names = {p.name for p in phases}
    for option in ("phase_epochs", "phase_lr", "phase_subnets"):
        unknown = sorted(set(getattr(config, option)) - names)
        if unknown:
            raise ConfigError(f"training config: {option} names phases {unknown} that method "
                              f"{config.method!r} does not have (its phases: {[p.name for p in phases]})")
    for p in phases:
        p.epochs = int(config.phase_epochs.get(p.name, p.epochs))
        p.lr = float(config.phase_lr.get(p.name, p.lr))
        p.subnets = int(config.phase_subnets.get(p.name, p.subnets))
    phases = [p for p in phases if p.epochs > 0]
    if config.fair:
        make_fair(phases, space, config.method)
    if config.sandwich_each is not None:
        sandwich_each(phases, config.method, config.sandwich_each)
    return phases, kd


def make_fair(phases: list[Phase], space: SearchSpace, method: str) -> None:
    """Every gene of every phase drawn fairly across a step's random subnets (FairNAS' strict fairness).

    Fairness spreads choices over the subnets of one step, so a method none of whose phases draws more
    than one random subnet per step is refused rather than run unchanged.
    """
    most = max((p.subnets for p in phases), default=0)
    if most < 2:
        raise ConfigError(f"training config: fair sampling spreads each gene's choices over the random subnets "
                          f"of a step, but method {method!r} draws at most {most} per step here; set subnets "
                          "(or phase_subnets) to the number of choices of a gene, e.g. 7 for dass_darts' ops")
    keys = tuple(entry.key for entry in space.config_layout)
    for p in phases:
        p.fair_keys = keys


def sandwich_each(phases: list[Phase], method: str, each: bool) -> None:
    """Every random subnet's architecture (``each``) or only the first one's at the sandwich ends of the
    phases that sandwich some keys only; ``each`` is refused where no phase does (it would change nothing)."""
    partial = [p for p in phases if p.sandwiches_some_keys]
    if each and not partial:
        raise ConfigError(f"training config: sandwich_each trains every random architecture at the extremes of "
                          f"some keys, but no phase of method {method!r} sandwiches some keys only "
                          "(elastic_sparsity does)")
    for p in partial:
        p.sandwich_each = each


def share_epochs(total: int, fractions: list[float]) -> list[int]:
    """Split ``total`` epochs over phases in proportion to ``fractions``, each phase at least one epoch
    (largest remainders get the spare epochs), so the phases add up to exactly ``total``."""
    if total < len(fractions):
        raise ConfigError(f"training config: epochs={total} is fewer than the method's {len(fractions)} phases")
    spare = total - len(fractions)
    ideal = [spare * f / sum(fractions) for f in fractions]
    counts = [int(x) for x in ideal]
    by_remainder = sorted(range(len(ideal)), key=lambda i: ideal[i] - counts[i], reverse=True)
    for i in by_remainder[:spare - sum(counts)]:
        counts[i] += 1
    return [c + 1 for c in counts]


def _kd(config: TrainConfig, default: str, allowed: tuple[str, ...]) -> str:
    kd = config.kd or default
    if kd not in allowed:
        raise ConfigError(f"training method {config.method!r} supports kd {allowed}; got {kd!r}")
    return kd


# Budget shares and learning-rate multipliers of the OFA phases. OFA's own schedule (120/25/120/25/120
# epochs after a separately trained teacher) is for ImageNet; on small data the later phases need a
# larger share of the base learning rate to adapt within few epochs.
PS_SHARES = {"full": 0.3, "kernel": 0.15, "depth_1": 0.05, "depth_2": 0.15, "expand_1": 0.05, "expand_2": 0.3}
PS_LR = {"full": 1.0, "kernel": 0.6, "depth_1": 0.2, "depth_2": 0.4, "expand_1": 0.2, "expand_2": 0.4}


@register_method("ps")
def progressive_shrinking(space: SearchSpace, config: TrainConfig) -> tuple[list[Phase], str]:
    supernet = space.supernet
    keys = {e.key for e in space.config_layout}
    if not {"ks", "e", "d"} <= keys or not hasattr(supernet, "reorder_channels"):
        raise ConfigError(f"progressive shrinking needs an OFA-style space (elastic ks, e, d); {space.name} is "
                          "not one: use --method deps or full")
    es, ds = space.expand_ratio_list, space.depth_list
    epochs = dict(zip(PS_SHARES, share_epochs(config.epochs, list(PS_SHARES.values()))))

    def phase(name: str, subnets: int, **choices) -> Phase:
        return Phase(name, epochs[name], config.lr * PS_LR[name], choices=choices, subnets=subnets)

    def reorder(stage: int):
        return lambda s: s.supernet.reorder_channels(stage)

    phases = [
        Phase("full", epochs["full"], config.lr, choices=_largest_choices(space), subnets=0, include_max=True),
        phase("kernel", 1, e=[es[-1]], d=[ds[-1]]),
        phase("depth_1", 2, e=[es[-1]], d=ds[-2:]),
        phase("depth_2", 2, e=[es[-1]]),
        phase("expand_1", 4, e=es[-2:]),
        phase("expand_2", 4),
    ]
    phases[4].on_start, phases[5].on_start = reorder(0), reorder(1)
    if len(ds) < 2:
        phases = [p for p in phases if p.name != "depth_1"]
    if len(es) < 2:
        phases = [p for p in phases if p.name != "expand_1"]
    return phases, _kd(config, "frozen", KD_MODES)


@register_method("deps")
def delayed_epsilon_shrinking(space: SearchSpace, config: TrainConfig) -> tuple[list[Phase], str]:
    warmup = round(config.epochs * config.rho)
    shrink = config.epochs - warmup
    if shrink < 1:
        raise ConfigError(f"training config: epochs={config.epochs} with rho={config.rho} leaves no epoch to shrink")
    rho = warmup / config.epochs
    epsilon = EpsilonSchedule(start=rho, eps0=config.eps0, window=config.eps_window)
    phases = [
        Phase("full", warmup, config.lr, choices=_largest_choices(space), subnets=0, include_max=True,
              lr_span=(0.0, rho)),
        Phase("shrink", shrink, config.lr, subnets=config.subnets, include_max=True, include_min=True,
              lr_span=(rho, 1.0), epsilon=epsilon, distill_only=True),
    ]
    return phases, _kd(config, "inplace", ("inplace", "none"))


@register_method("full")
def largest_alone(space: SearchSpace, config: TrainConfig) -> tuple[list[Phase], str]:
    return [Phase("full", config.epochs, config.lr, choices=_largest_choices(space), subnets=0,
                  include_max=True)], _kd(config, "none", ("none",))


@register_method("sorted")
def sorted_training(space: SearchSpace, config: TrainConfig) -> tuple[list[Phase], str]:
    """SortedNet: every step trains ``subnets`` sub-models drawn uniformly over the grid, plus the full
    model (``sorted_include_max``), gradients accumulated into one optimiser step; distillation from the
    full model in place (``kd=inplace``) is optional."""
    return [Phase("sorted", config.epochs, config.lr, subnets=config.subnets,
                  include_max=config.sorted_include_max)], _kd(config, "none", ("none", "inplace"))


def _largest_choices(space: SearchSpace) -> dict[str, list]:
    """Every gene restricted to its largest (last) choice: the full network at the largest input.

    One entry per config key whose genes share their choices; per gene name where they do not
    (each node of a ``dass_darts`` cell picks from its own list of input pairs).
    """
    largest: dict[str, list] = {}
    genes = iter(space.genes)
    for entry in space.config_layout:
        group = [next(genes) for _ in range(entry.n_genes)]
        if len({gene.choices for gene in group}) == 1:
            largest[entry.key] = [group[0].choices[-1]]
        else:
            largest.update({gene.name: [gene.choices[-1]] for gene in group})
    return largest


@register_method("elastic_sparsity")
def elastic_sparsity(space: SearchSpace, config: TrainConfig) -> tuple[list[Phase], str]:
    """Elastic sparsity (beyond DASS): one supernet whose sparse ops serve every keep ratio of the space.

    Every step draws ``subnets`` random subnets: one keep ratio for the whole network (every keep gene:
    each ``dass_darts`` cell, its stem and classifier; each ``ofa_mbv3`` block with ``sparsity_list``),
    drawn among the ratios between the densest and the sparsest where the list has any, and every other
    gene on its own (ops and kept edges, or kernel/expand/depth). Each random subnet's architecture also
    trains dense right before it and at the sparsest ratio right after it (the sandwich rule over the
    keep ratios, OFA/BigNAS, per architecture: ``sandwich_each``; ``sandwich_each=false`` sandwiches
    only the first one's), so the extremes train in every step. Losses on the labels, with
    ``kd=inplace`` also distilled from the architecture's own dense pass. Weights and scores train
    jointly: at a keep ratio ``k`` a layer's top-k mask of its scores decides which weights compute, and
    the straight-through gradient moves the scores (at ``score_lr`` times the learning rate), so one set
    of scores learns a nested order that serves every ratio. The scores start from the scaled score
    init of the weights.

    Why so, on ``benchmarks/dass_elastic.py`` (keep ratios 1.0/0.3/0.1; a supernet "trained for ratio k
    alone" is this method on the space built with ``keep_ratios=[k]``, where a step trains each of its
    subnets once). One genotype fixed, 8 epochs: without the sandwich the supernet scored 36/34/30 %
    against 98/96/86 % for per-ratio ones; with it but each group drawing its ratio on its own, 70 %
    at 0.3 against 97 %; one ratio per random subnet drawn among all three, 92.6 % at 0.3; drawn
    between the ends, medians over three seeds within 1 point at every ratio. Over sampled genotypes an
    op module of an edge computes only in the steps that keep its edge and draw its op (1 in 7 to 1 in
    21), so seven genotypes per step (``subnets=7``, gradients summed into one step) are needed to
    learn at all in a few epochs (24 -> 84 % at keep 1.0, 8 epochs). Sandwiching only the first of
    them left the elastic supernet at 29/33/19 % against 84/34/23 % per ratio: the other six trained
    at the inner ratio only. Sandwiching each (three times the passes, as many as the three per-ratio
    supernets together): 81/69/36 % after 8 epochs, 91.1/86.1/78.0 % against 92.0/73.0/38.2 % after 16
    (seed 0; seeds 1 and 2: 2.6 and 3.0 points behind at keep 1.0, 23 and 17 ahead at 0.1): the sparse
    subnets gain from the training their masks' weights get at denser ratios.
    ``fair`` (FairNAS) added nothing beyond one seed's noise.
    """
    keys = tuple(entry.key for entry in space.config_layout if entry.key.startswith("keep"))
    if not keys:
        raise ConfigError(f"elastic sparsity trains keep-ratio genes; {space.name} has none (dass_darts has; "
                          "ofa_mbv3 with the sparsity_list option has)")
    phase = Phase("elastic", config.epochs, config.lr, subnets=max(1, config.subnets), include_max=True,
                  include_min=True, sandwich_keys=keys, sandwich_each=True, tied_keys=keys)
    return [phase], _kd(config, "none", ("none", "inplace"))
