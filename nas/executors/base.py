"""The executor interface: evaluate a run's candidates and hand results back as each one finishes.

The search loop (``nas.search``) owns the run store and the searcher; an executor only turns encodings
into :class:`Outcome` objects, wherever it runs them. Lifecycle::

    executor = executors.create("ray", address="local")   # options only: nothing started yet
    with executor:                                         # close() at the end, also after an error
        executor.start(config, run, measures)              # a NasError here, before any evaluation
        executor.submit(vectors)                           # any number of times
        outcomes = executor.wait()                         # at least one finished candidate
        executor.free(in_flight)                           # how many new candidates it wants now

Executors are registered by name (``@register("name")``) like searchers and spaces. Not thread-safe:
one search loop drives one executor.
"""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np

from nas.errors import ConfigError, NasError
from nas.objectives import Objective
from nas.registry import Registry

EXECUTORS: Registry[type[Executor]] = Registry("executor")
register = EXECUTORS.register
names = EXECUTORS.names


def create(name: str, **options: Any) -> Executor:
    """An executor by name with its options (nothing is started until ``start``)."""
    cls = EXECUTORS.get_class(name)
    try:
        return cls(**options)
    except TypeError as exc:
        raise ConfigError(f"bad options for executor {name!r}: {exc}") from None


@dataclass(frozen=True)
class Outcome:
    """One evaluated candidate: its value for every measure (``nan`` when unknown), or why it failed."""

    vector: np.ndarray
    values: dict[str, float]
    error: str | None
    seconds: float


class Executor(abc.ABC):
    """Evaluates candidates of one run; see the module docstring for the lifecycle."""

    name: ClassVar[str] = "?"
    #: How many candidates it evaluates at once (set by ``start``).
    slots: int = 0

    @abc.abstractmethod
    def start(self, config: dict[str, Any], run: Path | None, measures: dict[str, Objective]) -> None:
        """Get ready to evaluate candidates of the run configured by ``config``.

        Args:
            config: the run's configuration (``SearchConfig.to_dict()``, as in ``config.json``).
            run: the run folder (relative predictor paths of ``config`` are inside it), or ``None``.
            measures: the driver's own measures, built from ``config``; an executor evaluating in
                this process uses them, remote workers build their own from ``config`` and ``run``.

        Raises:
            NasError: when it cannot evaluate (unreachable cluster, missing resources, workers that
                cannot build the measures); nothing has been evaluated then.
        """

    @abc.abstractmethod
    def submit(self, vectors: np.ndarray) -> None:
        """Queue candidates (``(k, genes)`` encodings) for evaluation."""

    @abc.abstractmethod
    def wait(self) -> list[Outcome]:
        """Block until at least one submitted candidate has finished; return every finished one."""

    def free(self, in_flight: int) -> int:
        """How many new candidates to ask the searcher for now, with ``in_flight`` submitted and not
        yet returned: by default, enough to keep every slot busy."""
        return max(self.slots - in_flight, 0)

    def close(self) -> None:
        """Release workers (the default holds none). Safe to call more than once."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def evaluate_candidates(measures: dict[str, Objective], vectors: np.ndarray) -> list[Outcome]:
    """Every measure of every candidate, each measure called once on the whole batch.

    A measure that raises for the batch is retried one candidate at a time, so only the candidates
    that fail are marked failed (with ``"measure: ExceptionType: message"``). A ``NasError`` is the
    user's to fix and stops the search instead.
    """
    start = time.perf_counter()
    values = {name: np.full(len(vectors), np.nan) for name in measures}
    errors: list[str | None] = [None] * len(vectors)
    for name, measure in measures.items():
        try:
            values[name] = np.asarray(measure.evaluate(vectors), dtype=float)
        except NasError:
            raise
        except Exception as exc:  # noqa: BLE001  (any failure of a measure is the candidate's result)
            if len(vectors) == 1:
                errors[0] = errors[0] or _message(name, exc)
                continue
            for i in range(len(vectors)):
                if errors[i]:
                    continue
                try:
                    values[name][i] = float(measure.evaluate(vectors[i:i + 1])[0])
                except Exception as exc_i:  # noqa: BLE001
                    errors[i] = _message(name, exc_i)
    seconds = (time.perf_counter() - start) / max(len(vectors), 1)
    return [Outcome(vector, {name: float(v[i]) for name, v in values.items()}, errors[i], seconds)
            for i, vector in enumerate(vectors)]


def _message(measure: str, exc: Exception) -> str:
    return f"{measure}: {type(exc).__name__}: {exc}"
