"""Objectives and constraints of a search: parsing, resolving to evaluators, units.

``--objectives accuracy,latency@cpu,macs`` names values to optimise: the space's task metric (maximised;
``space.metric``), any cost the space names (``macs``, ``params``, ...), and ``latency@DEVICE`` for any
device of the registry (a table lookup, an imported lookup table, a predictor file, or a measurement).
``--constraint "latency@cpu<=12ms"`` bounds any of them (units: ``ms`` for latency, ``K``/``M``/``G`` for
counts, ``%`` for metrics). Searchers only see minimised values: a maximised objective is negated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import numpy as np

from nas.errors import ConfigError
from search_spaces import SearchSpace

Evaluate = Callable[[np.ndarray], np.ndarray]
_METRIC_SOURCES: dict[str, Callable[["Context"], Evaluate]] = {}
_UNITS = {"ms": 1.0, "%": 1.0, "": 1.0, "K": 1e3, "M": 1e6, "G": 1e9}


def register_metric_source(metric_name: str):
    """Decorator: ``factory(context) -> evaluate(vectors)`` measuring the task metric ``metric_name``
    (``accuracy``, ``psnr``, ...) of a space that has no table of it: on a trained supernet."""

    def decorator(factory):
        _METRIC_SOURCES[metric_name] = factory
        return factory

    return decorator


@dataclass
class Context:
    """What objectives may draw on: the space, the device file, predictor files, a supernet and data."""

    space: SearchSpace
    devices_file: str | None = None
    latency_predictors: dict[str, str] | None = None
    #: The trained supernet checkpoint the space's weights came from, if any.
    supernet: str | None = None
    #: Data spec for measured task metrics (``digits``, ``npz:PATH``, ...).
    data: str | None = None


@dataclass
class Objective:
    """A named value of a subnet, how to obtain it for a batch, and whether larger is better."""

    name: str
    evaluate: Evaluate
    maximise: bool = False
    unit: str = ""
    #: Smallest value any subnet reaches, if known (for budget checks): (value, exact?).
    lower_bound: Callable[[], tuple[float, bool]] | None = None

    def minimised(self, values: np.ndarray) -> np.ndarray:
        return -values if self.maximise else values


@dataclass(frozen=True)
class Constraint:
    """``name OP bound`` with the bound in the objective's own unit (ms, raw counts, %)."""

    name: str
    op: str
    bound: float
    text: str

    def violation(self, values: np.ndarray) -> np.ndarray:
        """pymoo/optuna convention: feasible iff ``<= 0``."""
        return values - self.bound if self.op == "<=" else self.bound - values


_CONSTRAINT = re.compile(r"^\s*([A-Za-z_][\w@:.\-]*)\s*(<=|>=)\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ms|%|K|M|G)?\s*$")


def parse_constraint(text: str) -> Constraint:
    match = _CONSTRAINT.match(text)
    if not match:
        raise ConfigError(f"constraint {text!r} is not NAME<=VALUE[unit] or NAME>=VALUE[unit] "
                          "(e.g. \"latency@cpu<=12ms\", \"macs<=300M\", \"accuracy>=90%\")")
    name, op, value, unit = match.groups()
    unit = unit or ""
    if name.startswith("latency@") and unit not in ("", "ms"):
        raise ConfigError(f"constraint {text!r}: latency bounds are in ms")
    bound = float(value) * _UNITS[unit]
    if bound <= 0 and name.startswith("latency@"):
        raise ConfigError(f"constraint {text!r}: a latency budget must be positive")
    return Constraint(name, op, bound, text.strip())


def parse_objective_names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ConfigError("--objectives names no objective (e.g. --objectives accuracy,latency@cpu)")
    if len(set(names)) != len(names):
        raise ConfigError(f"--objectives lists a name twice: {text!r}")
    return names


def resolve(name: str, context: Context) -> Objective:
    """The ``Objective`` called ``name`` for ``context.space``."""
    space = context.space
    if name == space.metric.name and space.has_metric_table:
        return Objective(name, space.metric_table, maximise=space.metric.direction == "max", unit=space.metric.unit)
    if name == space.metric.name:
        if name not in _METRIC_SOURCES:
            raise ConfigError(f"no way to measure {name!r} is registered (space {space.name!r})")
        return Objective(name, _METRIC_SOURCES[name](context), maximise=space.metric.direction == "max",
                         unit=space.metric.unit)
    if name in space.costs:
        return Objective(name, lambda v, n=name: space.cost(n, v).astype(float), unit="",
                         lower_bound=lambda n=name: _minimum(space, lambda v: space.cost(n, v)))
    if name.startswith("latency@"):
        return _latency_objective(name, name.split("@", 1)[1], context)
    known = [space.metric.name, *space.costs, "latency@DEVICE"]
    raise ConfigError(f"unknown objective {name!r} for space {space.name!r}; known: {', '.join(known)}")


@register_metric_source("accuracy")
def _supernet_accuracy(context: Context) -> Evaluate:
    """Validation top-1 of each subnet of the trained supernet, BatchNorm re-calibrated per subnet."""
    from evaluators.accuracy import SubnetAccuracy, data_for

    space = context.space
    _require_supernet(context, "accuracy", f"train one with `nas train {space.name} --data digits --out DIR`")
    if context.data is None:
        raise ConfigError(f"{context.supernet} does not say which data it was trained on: pass --data")
    data = data_for(space, context.data, context.supernet)
    return SubnetAccuracy(space, data, "val").vectors


@register_metric_source("psnr")
def _supernet_psnr(context: Context) -> Evaluate:
    """Validation PSNR of each subnet through the trained supernet (:class:`evaluators.sr_task.SubnetPSNR`)."""
    from evaluators.sr_task import supernet_psnr

    space = context.space
    _require_supernet(context, "PSNR", f"search one with `nas train {space.name} --out DIR`")
    return supernet_psnr(space, context.supernet, context.data or "photos").vectors


def _require_supernet(context: Context, metric: str, how: str) -> None:
    """A measured metric needs a trained supernet; ``how`` tells the user how to make one."""
    if context.supernet is None:
        raise ConfigError(f"the {metric} of {context.space.name} subnets is measured on a trained supernet: "
                          f"pass --supernet FILE ({how})")


def _latency_objective(name: str, device_name: str, context: Context) -> Objective:
    from evaluators.devices import get_device

    space = context.space
    device = get_device(device_name, context.devices_file)
    predictor_file = (context.latency_predictors or {}).get(device_name)
    if predictor_file:
        import predictors

        predictor = predictors.load(predictor_file, space=space, device=device_name)
        evaluate = predictor.predict
    elif device.kind == "table":
        if device.space != space.name:
            raise ConfigError(f"device {device_name!r} is a table of the {device.space!r} space, not {space.name!r}")
        evaluate = lambda v: space.table_value(v, device.column)  # noqa: E731
    elif device.kind == "lut":
        from predictors.lut import LookupTablePredictor

        if device.space != space.name:
            raise ConfigError(f"device {device_name!r} has lookup tables for the {device.space!r} space, not {space.name!r}")
        # Any options whose layers the tables cover work (e.g. a subset of the resolutions); the import
        # names the first layer the tables lack otherwise.
        evaluate = LookupTablePredictor.from_ofa_tables(space, device.lut, device=device_name).predict
    else:
        return Objective(name, lambda v: _measure(space, device, v), unit="ms")
    return Objective(name, evaluate, unit="ms", lower_bound=lambda: _minimum(space, evaluate))


def _measure(space: SearchSpace, device, vectors: np.ndarray) -> np.ndarray:
    from evaluators.measure import measure_subnets

    return measure_subnets(space, device, vectors)


def _minimum(space: SearchSpace, evaluate: Evaluate, samples: int = 100_000) -> tuple[float, bool]:
    """Smallest value of ``evaluate`` over the space: exact by enumeration for small spaces; otherwise
    the best of random samples and the all-first-choices subnet, refined by coordinate descent (exact
    for costs that add up over independent genes, such as MACs or lookup-table latency)."""
    if int(np.prod(space.cardinalities.astype(float))) <= samples:
        grids = np.meshgrid(*[np.arange(c) for c in space.cardinalities], indexing="ij")
        every = np.stack([g.ravel() for g in grids], axis=1)
        return float(np.nanmin(evaluate(every))), True
    candidates = np.vstack([np.zeros((1, space.n_genes), dtype=np.int64),
                            space.random_vectors(samples, np.random.default_rng(0))])
    values = evaluate(candidates)
    best, best_value = candidates[np.nanargmin(values)], float(np.nanmin(values))
    for _ in range(50):
        neighbours = _single_gene_changes(space, best)
        values = evaluate(neighbours)
        if not np.nanmin(values) < best_value:
            break
        best, best_value = neighbours[np.nanargmin(values)], float(np.nanmin(values))
    return best_value, False


def _single_gene_changes(space: SearchSpace, vector: np.ndarray) -> np.ndarray:
    """Every encoding that differs from ``vector`` in exactly one gene."""
    rows = []
    for gene, cardinality in enumerate(space.cardinalities):
        block = np.repeat(vector[None, :], cardinality, axis=0)
        block[:, gene] = np.arange(cardinality)
        rows.append(block)
    return np.vstack(rows)
