"""Ray Tune: drive a Tune experiment with a ``nas`` searcher, which ``Tuner.restore`` resumes.

::

    from ray import tune
    from nas.tune import NasSearcher

    def trainable(config):                         # config["subnet"]: what space.extract(...) takes
        vector = space.encode(config["subnet"])[None, :]
        tune.report({"accuracy": ..., "latency@pixel3": ...})

    searcher = NasSearcher("nb201", metric=["accuracy", "latency@pixel3"], mode=["max", "min"],
                           searcher="nsga2", constraints=["latency@pixel3<=8ms"], seed=0)
    tune.Tuner(trainable, tune_config=tune.TuneConfig(search_alg=searcher, num_samples=50)).fit()

Each suggestion is ``{"subnet": config}``, the decoded configuration of a new encoding (constants of
the Tuner's ``param_space`` are merged in by Tune). When a trial completes, its reported metrics are
told to the searcher (``max`` metrics negated, constraints as violations); an errored trial, or one
that did not report every metric and constrained value, is told as a failed evaluation. While a
searcher waits for results (a pymoo generation), ``suggest`` returns ``None``; when it has nothing
left to propose and no trial is running, ``FINISHED``.

``save``/``restore`` (called by Tune with its experiment checkpoints) write and read the searcher's
``state_dict`` plus the trials in flight, atomically. The object pickles through the same state (Tune
pickles its search algorithm with the experiment), so a restored experiment continues the search
instead of starting it again.
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path
from typing import Any

import numpy as np
from ray.tune.search import Searcher

import search_spaces
from nas import searchers
from nas.atomic import atomic_write_bytes
from nas.errors import ConfigError
from nas.objectives import parse_constraint


class NasSearcher(Searcher):
    """A ``nas`` searcher (``random``, ``nsga2``, ``tpe``, ``linas``, ...) as a Ray Tune ``Searcher``.

    Args:
        space: the search space's name; ``space_options`` its options.
        metric, mode: the objectives the trainable reports, and ``"min"`` or ``"max"`` for each.
        searcher: the searcher's name; ``searcher_options`` its options; ``seed`` its seed.
        constraints: bounds such as ``"latency@pixel3<=8ms"`` on reported metrics.
    """

    def __init__(self, space: str, metric: str | list[str], mode: str | list[str], searcher: str = "nsga2",
                 constraints: list[str] | None = None, seed: int = 0, space_options: dict[str, Any] | None = None,
                 searcher_options: dict[str, Any] | None = None):
        metrics = [metric] if isinstance(metric, str) else list(metric)
        modes = [mode] if isinstance(mode, str) else list(mode)
        if len(metrics) != len(modes) or not set(modes) <= {"min", "max"}:
            raise ConfigError(f"mode must give 'min' or 'max' for each metric; got metric={metric!r}, mode={mode!r}")
        super().__init__(metric=metric, mode=mode)
        self.args = {"space": space, "metric": metrics, "mode": modes, "searcher": searcher,
                     "constraints": list(constraints or []), "seed": seed, "space_options": dict(space_options or {}),
                     "searcher_options": dict(searcher_options or {})}
        self.space = search_spaces.get(space, **self.args["space_options"])
        self.constraints = [parse_constraint(c) for c in self.args["constraints"]]
        # Not ``self.searcher``: Tune takes an object with that attribute for a wrapper (ConcurrencyLimiter).
        self.nas_searcher = searchers.create(searcher, self.space, len(metrics), len(self.constraints), seed,
                                         **self.args["searcher_options"])
        self.live: dict[str, np.ndarray] = {}           # trial id -> encoding, until the trial completes

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        vectors = self.nas_searcher.ask(1)
        if len(vectors) == 0:
            return None if self.live else Searcher.FINISHED
        self.live[trial_id] = vectors[0]
        return {"subnet": self.space.decode(vectors)[0]}

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        vector = self.live.pop(trial_id, None)
        if vector is None:
            return
        objectives, violations = self._told_values(None if error else result)
        self.nas_searcher.tell(vector[None, :], objectives[None, :], violations[None, :])

    def _told_values(self, result: dict[str, Any] | None) -> tuple[np.ndarray, np.ndarray]:
        """Minimised objectives and constraint violations; ``nan``/``inf`` for a failed trial."""
        metrics = self.args["metric"]
        needed = [*metrics, *(c.name for c in self.constraints)]
        if result is None or not all(_is_finite_number(result.get(name)) for name in needed):
            return np.full(len(metrics), np.nan), np.full(len(self.constraints), np.inf)
        objectives = [-float(result[m]) if mode == "max" else float(result[m])
                      for m, mode in zip(metrics, self.args["mode"])]
        violations = [c.violation(float(result[c.name])) for c in self.constraints]
        return np.array(objectives, dtype=float), np.array(violations, dtype=float)

    # ------------------------------------------------------------------ state
    def save(self, checkpoint_path: str) -> None:
        atomic_write_bytes(checkpoint_path, pickle.dumps(self.__getstate__()))

    def restore(self, checkpoint_path: str) -> None:
        self.__setstate__(pickle.loads(Path(checkpoint_path).read_bytes()))

    def __getstate__(self) -> dict[str, Any]:
        return {"args": self.args, "searcher": self.nas_searcher.state_dict(),
                "live": {trial: vector.tolist() for trial, vector in self.live.items()}}

    def __setstate__(self, state: dict[str, Any]) -> None:
        NasSearcher.__init__(self, **state["args"])
        self.nas_searcher.load_state_dict(state["searcher"])
        self.live = {trial: np.asarray(vector, dtype=np.int64) for trial, vector in state["live"].items()}


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) \
        and math.isfinite(float(value))
