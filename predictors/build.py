"""Build a latency predictor for (space, device): measure, look up or import what it needs, fit, report."""

from __future__ import annotations

from typing import Callable

import numpy as np

from evaluators.devices import Device
from evaluators.measure import measure_subnets, unique_random_vectors
from predictors.base import Predictor, PredictorError, create
from predictors.lut import LookupTablePredictor
from search_spaces import SearchSpace, get as get_space

TARGET = "latency_ms"
Progress = Callable[[str, int | None], Callable[[], None]]   # (task, total) -> advance()


def space_for_device(device: Device, space_name: str | None, options: dict) -> SearchSpace:
    """The space a predictor for ``device`` is built on: lut/table devices fix theirs."""
    if device.space is None:
        if space_name is None:
            raise PredictorError(f"device {device.name!r} can measure any space: pass --space")
        return get_space(space_name, **options)
    if space_name not in (None, device.space):
        raise PredictorError(f"device {device.name!r} describes the {device.space!r} space, not {space_name!r}")
    return get_space(device.space, **{**device.space_options, **options})


def build_latency_predictor(space: SearchSpace, device: Device, kind: str, samples: int, seed: int = 0,
                            warmup: int = 5, runs: int = 10, progress: Progress | None = None) -> Predictor:
    """A fitted latency predictor with its held-out quality report (where held-out data exists)."""
    if device.kind == "lut":
        if kind != "lut":
            raise PredictorError(f"device {device.name!r} is an imported lookup table: use --kind lut")
        return LookupTablePredictor.from_ofa_tables(space, device.lut, device=device.name)
    if kind == "lut" and device.kind == "table":
        raise PredictorError(f"device {device.name!r} is a table of whole architectures; it has no per-layer "
                             "latencies: use a learned kind (ridge, gbdt, rf, mlp, ensemble)")
    if samples < 2:
        raise PredictorError("--samples must be at least 2 (one to fit, one to report on)")
    vectors = unique_random_vectors(space, samples, seed)
    values = _latencies(space, device, vectors, warmup, runs, progress)
    keep = np.isfinite(values)
    vectors, values = vectors[keep], values[keep]
    if kind == "lut":
        predictor = LookupTablePredictor(space, TARGET, device.name)
        advance = progress("measuring layers", None) if progress else None
        predictor.measure_entries(device, warmup=warmup, runs=runs, on_layer=(lambda _: advance()) if advance else None)
        predictor.fit_with_report(vectors, values, holdout=0.5, seed=seed)   # the overhead needs few networks
        return predictor
    predictor = create(kind, space, TARGET, device.name)
    if len(values) < predictor.min_samples + 1:
        raise PredictorError(f"only {len(values)} usable samples; a {kind} predictor needs "
                             f"{predictor.min_samples + 1} (fit plus held-out)")
    predictor.fit_with_report(vectors, values, holdout=0.2, seed=seed)
    return predictor


def _latencies(space: SearchSpace, device: Device, vectors: np.ndarray, warmup: int, runs: int,
               progress: Progress | None) -> np.ndarray:
    if device.kind == "table":
        return space.table_value(vectors, device.column)
    advance = progress(f"measuring {len(vectors)} subnets on {device.name}", len(vectors)) if progress else None
    return measure_subnets(space, device, vectors, warmup=warmup, runs=runs,
                           on_done=(lambda _: advance()) if advance else None)
