"""The search engine: ask the searcher, evaluate, log, tell; resume exactly from the run store.

One batch at a time: the searcher's proposals are logged (``ask``), each evaluation is logged as it
finishes (``result``), then the searcher is told and checkpointed. Resume rebuilds the searcher from
its checkpoint and replays the events after it (searchers are deterministic given their seed), so
completed evaluations are never repeated and an interrupted batch is re-issued where it stopped.
"""

from __future__ import annotations

import platform
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

import nas
import nas.searchers as searchers
import search_spaces
from nas.errors import ConfigError, NasError
from nas.objectives import Constraint, Context, Objective, parse_constraint, resolve
from nas.pareto import hypervolume, non_dominated
from nas.runs import RunError, RunStore


@dataclass
class SearchConfig:
    """Everything that defines a search; stored in the run's ``config.json``."""

    space: str
    objectives: list[str]
    evaluations: int
    searcher: str = "nsga2"
    space_options: dict[str, Any] = field(default_factory=dict)
    constraints: list[str] = field(default_factory=list)
    searcher_options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    batch: int = 10
    devices_file: str | None = None
    latency_predictors: dict[str, str] = field(default_factory=dict)
    #: A trained supernet checkpoint (``nas train``): the space's weights, and what ``accuracy`` measures.
    supernet: str | None = None
    #: Its data (``digits``, ``npz:PATH``, ...); by default the data it was trained on.
    data: str | None = None
    #: Fingerprint of ``supernet`` when the search started: a replaced checkpoint is refused on resume.
    supernet_sha256: str | None = None

    def validate(self) -> None:
        if self.evaluations < 1:
            raise ConfigError(f"--evaluations must be a positive number; got {self.evaluations}")
        if self.batch < 1:
            raise ConfigError(f"--batch must be a positive number; got {self.batch}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "versions": library_versions()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SearchConfig":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def library_versions() -> dict[str, str]:
    import numpy
    import optuna
    import pymoo
    import torch

    return {"nas": nas.__version__, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": numpy.__version__, "pymoo": pymoo.__version__, "optuna": optuna.__version__}


Progress = Callable[[int, int, str], None]          # (done, budget, status line)


class Search:
    """A search over an open run: builds the space, objectives and searcher from the run's config."""

    def __init__(self, config: dict[str, Any], store: RunStore | None = None):
        """Resolve ``config`` (space, objectives, constraints, searcher); ``store`` is needed to ``run``."""
        self.store = store
        self.config = SearchConfig.from_dict(config)
        self.space = open_space(self.config)
        local = {d: str(store.path / f) if store is not None and not Path(f).is_absolute() else f
                 for d, f in self.config.latency_predictors.items()}
        context = Context(self.space, self.config.devices_file, local, self.config.supernet, self.config.data)
        self.objectives: list[Objective] = [resolve(n, context) for n in self.config.objectives]
        self.constraints: list[Constraint] = [parse_constraint(c) for c in self.config.constraints]
        extra = [c.name for c in self.constraints if c.name not in self.config.objectives]
        self.measures: dict[str, Objective] = {o.name: o for o in self.objectives}
        self.measures.update({n: resolve(n, context) for n in dict.fromkeys(extra)})
        self.searcher = searchers.create(self.config.searcher, self.space, len(self.objectives),
                                         len(self.constraints), self.config.seed, **self.config.searcher_options)
        self.cache: dict[bytes, dict[str, Any]] = {}
        self.pending: list[np.ndarray] = []
        self._pending_batch: np.ndarray | None = None

    # ------------------------------------------------------------------ checks
    def check_budgets(self) -> None:
        """Refuse constraints no subnet can meet, stating the smallest achievable value."""
        for c in self.constraints:
            measure = self.measures[c.name]
            if c.op != "<=" or measure.maximise or measure.lower_bound is None:
                continue
            smallest, exact = measure.lower_bound()
            if smallest > c.bound:
                unit = " ms" if c.name.startswith("latency@") else ""
                qualifier = "" if exact else " (about; from a search of the space)"
                raise ConfigError(f"no subnet of {self.space.name} meets {c.text}: the smallest achievable "
                                  f"{c.name} is {smallest:.6g}{unit}{qualifier}")

    # ------------------------------------------------------------------ resume
    def restore(self) -> None:
        """Bring the searcher to the state the log describes (checkpoint, then replay the rest)."""
        events = self.store.events
        start = 0
        checkpoint = self.store.load_checkpoint()
        if checkpoint is not None and checkpoint[0] <= len(events):
            try:
                self.searcher.load_state_dict(checkpoint[1])
                start = checkpoint[0]
            except Exception as exc:  # a checkpoint from another version: replaying is always possible
                warnings.warn(f"searcher checkpoint not usable ({exc}); replaying the log instead", stacklevel=2)
                self.searcher = searchers.create(self.config.searcher, self.space, len(self.objectives),
                                                 len(self.constraints), self.config.seed,
                                                 **self.config.searcher_options)
        for event in events:
            if event["type"] == "result":
                self.cache[self._key(event["vector"])] = event
        batch: dict[str, Any] | None = None
        for index, event in enumerate(events[start:], start):
            if event["type"] != "ask":
                continue
            if batch is not None and not self._tell_if_complete(batch):
                break
            asked = self.searcher.ask(event["requested"])
            recorded = np.asarray(event["vectors"], dtype=np.int64).reshape(-1, self.space.n_genes)
            if not np.array_equal(asked, recorded):
                warnings.warn(f"searcher {self.config.searcher!r} did not repeat its proposals at log event "
                              f"{index}; it continues with its new proposals (earlier results stay in the "
                              "archive and answer repeats)", stacklevel=2)
                self.store.append({"type": "ask", "requested": event["requested"], "vectors": asked.tolist()})
                batch = {"vectors": asked}
                break
            batch = {"vectors": recorded}
        if batch is not None and not self._tell_if_complete(batch):
            self.pending = [v for v in batch["vectors"] if self._key(v) not in self.cache]
            self._pending_batch = batch["vectors"]

    def _tell_if_complete(self, batch: dict[str, Any]) -> bool:
        if not all(self._key(v) in self.cache for v in batch["vectors"]):
            return False
        self._tell(batch["vectors"])
        return True

    # ------------------------------------------------------------------ the loop
    def run(self, progress: Progress | None = None) -> dict[str, Any]:
        self.check_budgets()
        self.restore()
        budget = self.store.budget()
        while True:
            done = len(self.store.results())
            if self.pending:
                vectors, to_evaluate = self._pending_batch, np.array(self.pending)
                self.pending = []
            else:
                remaining = budget - done
                if remaining <= 0:
                    break
                requested = min(self.config.batch, remaining)
                vectors = self.searcher.ask(requested)
                if len(vectors) == 0:
                    break                                              # the space is exhausted
                self.store.append({"type": "ask", "requested": requested, "vectors": vectors.tolist()})
                to_evaluate = np.array([v for v in vectors if self._key(v) not in self.cache])
            self._evaluate(to_evaluate)
            self._tell(vectors)
            self.store.save_checkpoint(self.searcher.state_dict())
            archive = self.archive()
            self.store.save_archive(archive)
            if progress is not None:
                progress(len(self.store.results()), budget, self.status_line(archive))
        archive = self.archive()
        self.store.save_archive(archive)
        return archive

    def _evaluate(self, vectors: np.ndarray) -> None:
        if len(vectors) == 0:
            return
        start = time.perf_counter()
        values, errors = self.evaluate(vectors)
        seconds = (time.perf_counter() - start) / len(vectors)
        configs = self.space.decode(vectors)
        for i, (vector, config) in enumerate(zip(vectors, configs)):
            event = {"type": "result", "n": len(self.store.results()) + 1, "vector": vector.tolist(),
                     "config": config, "values": {k: _json_float(v[i]) for k, v in values.items()},
                     "status": "failed" if errors[i] else "ok", "error": errors[i], "seconds": seconds}
            self.store.append(event)
            self.cache[self._key(vector)] = event

    def evaluate(self, vectors: np.ndarray) -> tuple[dict[str, np.ndarray], list[str | None]]:
        """Every objective and constraint value of a batch; a failing candidate gets its error message."""
        values = {name: np.full(len(vectors), np.nan) for name in self.measures}
        errors: list[str | None] = [None] * len(vectors)
        for name, measure in self.measures.items():
            try:
                values[name] = np.asarray(measure.evaluate(vectors), dtype=float)
            except NasError:
                raise
            except Exception:                       # isolate the candidates that fail
                for i in range(len(vectors)):
                    if errors[i]:
                        continue
                    try:
                        values[name][i] = float(measure.evaluate(vectors[i:i + 1])[0])
                    except Exception as exc:
                        errors[i] = f"{name}: {type(exc).__name__}: {exc}"
        return values, errors

    def _tell(self, vectors: np.ndarray) -> None:
        events = [self.cache[self._key(v)] for v in vectors]
        objectives, constraints = self._matrices(events)
        self.searcher.tell(np.asarray(vectors), objectives, constraints)

    def _matrices(self, events: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
        """Minimised objectives ``(k, m)`` (nan for failures) and constraint violations ``(k, c)``."""
        f = np.array([[o.minimised(_value(e, o.name)) for o in self.objectives] for e in events], dtype=float)
        g = np.array([[c.violation(_value(e, c.name)) for c in self.constraints] for e in events],
                     dtype=float).reshape(len(events), len(self.constraints))
        failed = np.array([e["status"] != "ok" for e in events])
        f[failed] = np.nan
        g[failed] = np.inf
        return f, g

    # ------------------------------------------------------------------ results
    def archive(self) -> dict[str, Any]:
        """The feasible Pareto front, the best feasible subnet for the task metric, and counts."""
        results = [e for e in self.store.results() if e["status"] == "ok"]
        out: dict[str, Any] = {"objectives": [o.name for o in self.objectives], "constraints": self.config.constraints,
                               "evaluations": len(self.store.results()), "failed": len(self.store.results()) - len(results),
                               "front": [], "best": None}
        if not results:
            return out
        f, g = self._matrices(results)
        feasible = np.all(g <= 0, axis=1)
        out["feasible"] = int(feasible.sum())
        if not feasible.any():
            closest = [min(_value(e, c.name) for e in results) for c in self.constraints]
            out["closest"] = {c.name: v for c, v in zip(self.constraints, closest)}
            return out
        idx = np.flatnonzero(feasible)
        front = idx[non_dominated(f[idx])]
        front = front[np.argsort(f[front, 0])]
        out["front"] = [results[i]["n"] for i in front]
        best = idx[np.nanargmin(f[idx, 0])]
        out["best"] = results[best]["n"]
        out["hypervolume"] = self.normalised_hypervolume(f[idx])
        return out

    def normalised_hypervolume(self, f: np.ndarray) -> float:
        """Hypervolume of ``f`` after scaling each objective to [0, 1] over all results (reference 1.1)."""
        all_f, _ = self._matrices([e for e in self.store.results() if e["status"] == "ok"])
        lo, hi = np.nanmin(all_f, axis=0), np.nanmax(all_f, axis=0)
        scaled = (f - lo) / np.where(hi > lo, hi - lo, 1.0)
        return hypervolume(scaled, np.full(f.shape[1], 1.1))

    def status_line(self, archive: dict[str, Any]) -> str:
        if archive.get("best") is None:
            return "no feasible subnet yet"
        best = next(e for e in self.store.results() if e["n"] == archive["best"])
        first = self.objectives[0]
        return f"best feasible {first.name} {_value(best, first.name):.4g} | HV {archive.get('hypervolume', 0):.3f}"

    def _key(self, vector) -> bytes:
        return self.space.canonical(np.asarray(vector, dtype=np.int64)).tobytes()


def open_space(config: SearchConfig) -> search_spaces.SearchSpace:
    """The search's space: built from its options, or loaded from its trained supernet checkpoint."""
    if config.supernet is None:
        return search_spaces.get(config.space, **config.space_options)
    from search_spaces.checkpoint import file_sha256, load_supernet

    if config.supernet_sha256 is not None and file_sha256(config.supernet) != config.supernet_sha256:
        raise ConfigError(f"supernet {config.supernet} changed since this search started (its sha256 differs); "
                          "restore the original file or start a new search")
    space = load_supernet(config.supernet, expect_space=config.space)
    differing = {k: v for k, v in config.space_options.items() if space.options.get(k) != v}
    if differing:
        raise ConfigError(f"space options {differing} differ from those of the supernet {config.supernet} "
                          f"({ {k: space.options.get(k) for k in differing} }); drop them")
    return space


def _with_supernet(config: SearchConfig) -> None:
    """Fill in the supernet's absolute path, fingerprint, space options and training data."""
    from search_spaces.checkpoint import file_sha256, read_checkpoint

    path = Path(config.supernet).resolve()
    config.supernet, config.supernet_sha256 = str(path), file_sha256(path)
    stored = read_checkpoint(path)
    config.space_options = {**stored.get("options", {}), **config.space_options}
    trained = stored.get("meta", {}).get("trained", {})
    config.data = config.data or trained.get("data", {}).get("spec")


def _value(event: dict[str, Any], name: str) -> float:
    value = event["values"].get(name)
    return np.nan if value is None else float(value)


def _json_float(value: float) -> float | None:
    return None if not np.isfinite(value) else float(value)


# ---------------------------------------------------------------------- entry points
def start_search(run: str | Path, config: SearchConfig, progress: Progress | None = None) -> tuple[RunStore, dict]:
    """Create the run folder and search to the budget. Bad configurations fail before anything is written."""
    config.validate()
    if config.supernet is not None:
        _with_supernet(config)
    Search(config.to_dict()).check_budgets()              # resolve everything first: errors write nothing
    sources = dict(config.latency_predictors)
    config.latency_predictors = {d: f"predictors/latency@{d}.npz" for d in sources}   # the run keeps its copies
    store = RunStore.create(run, config.to_dict())
    for device, source in sources.items():
        (store.path / "predictors").mkdir(exist_ok=True)
        shutil.copyfile(source, store.path / config.latency_predictors[device])
    try:
        return store, Search(store.config, store).run(progress)
    finally:
        store.close()


def resume_search(run: str | Path, evaluations: int | None = None, progress: Progress | None = None,
                  expect: dict[str, Any] | None = None) -> tuple[RunStore, dict]:
    """Continue the run at ``run`` to its budget, or to ``evaluations`` if that is larger."""
    store = RunStore.open(run)
    try:
        differences = [k for k, v in (expect or {}).items() if v is not None and store.config.get(k) != v]
        if differences:
            raise RunError(f"{run} was started with other settings: "
                           + "; ".join(f"{k} {store.config.get(k)!r} (asked: {expect[k]!r})" for k in differences)
                           + "; start a new run to change them")
        done = len(store.results())
        if evaluations is not None:
            if evaluations < 1:
                raise ConfigError(f"--evaluations must be a positive number; got {evaluations}")
            if evaluations < done:
                raise RunError(f"{run} already holds {done} evaluations; --evaluations must be at least that")
            if evaluations != store.budget():
                store.append({"type": "budget", "evaluations": evaluations})
        elif done >= store.budget():
            raise RunError(f"{run} is finished ({done} of {store.budget()} evaluations); "
                           "pass a larger --evaluations to continue it")
        return store, Search(store.config, store).run(progress)
    finally:
        store.close()
