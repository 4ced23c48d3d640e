"""The ``Predictor`` interface, its registry, and its file format.

A predictor maps encodings of one search space to one measured quantity (``target``: latency on a
device, accuracy, ...). ``fit``/``predict`` work on ``(n, genes)`` batches; features come from the
space (``space.features`` of the canonical encodings), so equivalent networks get equal predictions.

File format (no pickle): one ``.npz`` holding the model's arrays plus ``__meta__``, a JSON string
with the kind, space name and options, device, target, hyper-parameters and the quality report.
Files are written atomically. Loading checks the file against the space/device/target the caller
expects and raises one clear :class:`PredictorError` on a mismatch.
"""

from __future__ import annotations

import abc
import json
import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from nas.atomic import atomic_write, atomic_write_bytes
from nas.errors import NasError
from nas.registry import Registry
from predictors.metrics import format_report, quality_report
from search_spaces import SearchSpace, get as get_space

FORMAT = "nas.predictor/1"
KINDS: Registry[type["Predictor"]] = Registry("predictor kind", name_attribute="kind")
register = KINDS.register
kinds = KINDS.names


class PredictorError(NasError):
    """A predictor that cannot be fitted, read, or used for the requested space/device."""


def create(kind: str, space: SearchSpace, target: str, device: str | None = None, **hyper) -> "Predictor":
    """A new, unfitted predictor of ``kind``."""
    return KINDS.get_class(kind)(space, target, device, **hyper)


class Predictor(abc.ABC):
    """Fit on ``(encodings, values)``, predict batches, save and load, report quality."""

    kind: ClassVar[str] = "?"
    #: Fewest training samples the model can be fitted on.
    min_samples: ClassVar[int] = 5
    #: Whether ``_predict`` range-checks the genes itself as it reads them (the spaces' additive-cost
    #: scorers do), so that ``predict`` checks only shape and type and the batch is read once, not twice.
    checks_range: ClassVar[bool] = False

    def __init__(self, space: SearchSpace, target: str, device: str | None = None, **hyper: Any):
        self.space, self.target, self.device = space, target, device
        self.hyper = hyper
        self.report: dict[str, float] | None = None
        self.n_train = 0
        self.fitted = False

    # ------------------------------------------------------------------ model
    def features(self, vectors: np.ndarray) -> np.ndarray:
        return self.space.features(self.space.canonical(self.space.check_vectors(vectors)))

    def fit(self, vectors: np.ndarray, values: np.ndarray) -> "Predictor":
        vectors, values = self.space.check_vectors(vectors), np.asarray(values, dtype=float)
        if len(vectors) != len(values):
            raise PredictorError(f"{len(vectors)} encodings but {len(values)} values")
        if len(vectors) < self.min_samples:
            raise PredictorError(f"a {self.kind} predictor needs at least {self.min_samples} samples; got {len(vectors)}")
        if not np.all(np.isfinite(values)):
            raise PredictorError("training values must be finite (drop failed measurements first)")
        self._fit(vectors, values)
        self.n_train, self.fitted, self.report = len(vectors), True, None   # a report belongs to one fit
        return self

    def predict(self, vectors: np.ndarray) -> np.ndarray:
        """Predicted values, shape ``(n,)``."""
        return self.predict_with_std(vectors)[0]

    def predict_with_std(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """``(mean, std)``; ``std`` is ``None`` for models without an uncertainty estimate."""
        if not self.fitted:
            raise PredictorError(f"the {self.kind} predictor for {self.target} has not been fitted")
        return self._predict(self.space.check_vectors(vectors, check_range=not self.checks_range))

    @abc.abstractmethod
    def _fit(self, vectors: np.ndarray, values: np.ndarray) -> None:
        """Fit on a validated batch."""

    @abc.abstractmethod
    def _predict(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Predict a validated batch."""

    @abc.abstractmethod
    def arrays(self) -> dict[str, np.ndarray]:
        """The fitted model as named numpy arrays (what ``save`` stores)."""

    @abc.abstractmethod
    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Restore the fitted model from ``arrays``."""

    # ------------------------------------------------------------------ quality
    def fit_with_report(self, vectors: np.ndarray, values: np.ndarray, holdout: float = 0.2,
                        seed: int = 0) -> dict[str, float]:
        """Fit on a random ``1 - holdout`` share, report on the rest; the model kept is the one reported."""
        vectors, values = self.space.check_vectors(vectors), np.asarray(values, dtype=float)
        order = np.random.default_rng(seed).permutation(len(vectors))
        n_test = max(1, int(round(holdout * len(vectors))))
        test, train = order[:n_test], order[n_test:]
        self.fit(vectors[train], values[train])
        return self.evaluate(vectors[test], values[test])

    def evaluate(self, vectors: np.ndarray, values: np.ndarray) -> dict[str, float]:
        """Quality on held-out data; stored as this predictor's report."""
        self.report = quality_report(values, self.predict(vectors))
        return self.report

    def report_line(self) -> str:
        return format_report(self.report) if self.report else "no quality report (not evaluated on held-out data)"

    # ------------------------------------------------------------------ persistence
    def meta(self) -> dict[str, Any]:
        return {"format": FORMAT, "kind": self.kind, "space": self.space.name, "space_options": self.space.options,
                "device": self.device, "target": self.target, "hyper": self.hyper, "report": self.report,
                "n_train": self.n_train}

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically to ``path`` (``.npz``), and the quality report beside it (``.report.json``)."""
        path = Path(path)
        arrays = {**self.arrays(), "__meta__": np.array(json.dumps(self.meta()))}
        atomic_write(path, lambda fh: np.savez(fh, **arrays))
        if self.report is not None:
            report = json.dumps({k: v for k, v in self.meta().items() if k != "format"}, indent=2).encode()
            atomic_write_bytes(report_path(path), report)


def report_path(path: str | os.PathLike) -> Path:
    """Where the quality report of the predictor file ``path`` is stored."""
    path = Path(path)
    return path.with_name(path.stem + ".report.json")


def read_meta(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    path = Path(path)
    if not path.is_file():
        raise PredictorError(f"predictor file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        meta = json.loads(str(arrays.pop("__meta__")))
    except Exception as exc:
        raise PredictorError(f"{path} is not a readable predictor file: {str(exc).splitlines()[0]}") from None
    if meta.get("format") != FORMAT:
        raise PredictorError(f"{path} is not a nas predictor file (format {meta.get('format')!r})")
    return meta, arrays


def load(path: str | os.PathLike, space: SearchSpace | None = None, device: str | None = None,
         target: str | None = None) -> Predictor:
    """Read a predictor; when ``space``/``device``/``target`` are given, the file must match them."""
    meta, arrays = read_meta(path)
    if space is not None and (meta["space"] != space.name or meta["space_options"] != space.options):
        raise PredictorError(f"{path} was fitted for space {meta['space']} {meta['space_options']}, "
                             f"not {space.name} {space.options}")
    for name, expected in (("device", device), ("target", target)):
        if expected is not None and meta[name] != expected:
            raise PredictorError(f"{path} predicts {name} {meta[name]!r}, not {expected!r}")
    space = space or get_space(meta["space"], **meta["space_options"])
    predictor = create(meta["kind"], space, meta["target"], meta["device"], **meta["hyper"])
    predictor.load_arrays(arrays)
    predictor.report, predictor.n_train, predictor.fitted = meta["report"], meta["n_train"], True
    return predictor
