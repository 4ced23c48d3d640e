"""The search engine: ask the searcher, evaluate, log, tell; resume exactly from the run store.

An executor (``nas.executors``) evaluates: in this process a batch at a time (ask, evaluate, tell), or
on Ray workers, asking for new candidates as results come back. The searcher's proposals are logged
(``ask``) and every evaluation is logged by this process as it finishes (``result``); the searcher is
told the results logged since its previous ask right before its next ask (and at the end), and
checkpointed every ``batch`` results. So the log alone fixes every call made to the searcher: resume
loads the checkpoint and replays the events after it (searchers are deterministic given their seed and
calls), completed evaluations are never repeated, and candidates left in flight are re-issued.
"""

from __future__ import annotations

import platform
import shutil
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

import nas
import search_spaces
from nas import executors
from nas.errors import ConfigError
from nas.executors import Executor, Outcome
from nas.objectives import Constraint, Context, Objective, parse_constraint, resolve
from nas.pareto import hypervolume, non_dominated
from nas.runs import RunError, RunStore

if TYPE_CHECKING:
    from nas.searchers import Searcher


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
    #: Latency budgets (ms) per device of the device list the search serves (``--devices``), for ``nas extract``.
    device_budgets: dict[str, list[float]] = field(default_factory=dict)
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
        self.measures = build_measures(config, store.path if store is not None else None, self.space)
        self.objectives: list[Objective] = [self.measures[n] for n in self.config.objectives]
        self.constraints: list[Constraint] = [parse_constraint(c) for c in self.config.constraints]
        self.searcher = self._new_searcher()
        self._config = config
        self.cache: dict[bytes, dict[str, Any]] = {}      # every logged result, by network
        self.open: dict[bytes, np.ndarray] = {}           # asked, no result yet (in flight; re-issued on resume)
        self.untold: list[np.ndarray] = []                # results (or answers from the log) not told yet
        self.results_logged = 0

    def _new_searcher(self) -> Searcher:
        # Imported here, not above: Ray workers import this module for build_measures and need no searcher.
        from nas import searchers

        return searchers.create(self.config.searcher, self.space, len(self.objectives), len(self.constraints),
                                self.config.seed, **self.config.searcher_options)

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
        """Bring the searcher to the state the log describes: its checkpoint, then the events after it.

        The loop tells the searcher only right before an ask (every result logged since, for the
        candidates it had asked) and at the end, so replaying the log repeats every call. Afterwards
        ``open`` holds the candidates asked without a result (to re-issue) and ``untold`` the results
        the searcher was not told yet. A searcher that does not repeat a logged proposal (another
        version, say) voids that ask and every later one (a ``diverged`` event records it, so later
        resumes replay the same calls) and goes on with new proposals; logged results stay in the
        archive and answer repeats.
        """
        events = self.store.events
        start = self._load_checkpoint(len(events))
        void = _voided_asks(events)
        self.cache, self.open, self.untold = {}, {}, []
        for index, event in enumerate(events):
            if event["type"] == "result":
                self._note_result(event)
            elif event["type"] == "ask" and index not in void:
                recorded = np.asarray(event["vectors"], dtype=np.int64).reshape(-1, self.space.n_genes)
                if index >= start:
                    self._tell_untold()
                    if not np.array_equal(self.searcher.ask(event["requested"]), recorded):
                        return self._diverged(index)
                self._take(recorded)
            if index + 1 == start:
                self.untold = []                  # the checkpoint was saved right after a tell
        self.results_logged = sum(e["type"] == "result" for e in events)

    def _load_checkpoint(self, n_events: int) -> int:
        """Load the searcher checkpoint if usable; the number of log events it covers (0 without one)."""
        checkpoint = self.store.load_checkpoint()
        if checkpoint is None or checkpoint[0] > n_events:
            return 0
        try:
            self.searcher.load_state_dict(checkpoint[1])
            return checkpoint[0]
        except Exception as exc:  # a checkpoint from another version: replaying is always possible
            warnings.warn(f"searcher checkpoint not usable ({exc}); replaying the log instead", stacklevel=3)
            self.searcher = self._new_searcher()
            return 0

    def _diverged(self, index: int) -> None:
        warnings.warn(f"searcher {self.config.searcher!r} did not repeat its proposals at log event {index}; it "
                      "continues with new proposals (earlier results stay in the archive and answer repeats)",
                      stacklevel=3)
        self.store.append({"type": "diverged", "at": index})
        self.searcher = self._new_searcher()
        self.restore()

    def _note_result(self, event: dict[str, Any]) -> None:
        key = self._key(event["vector"])
        self.cache[key] = event
        if key in self.open:
            self.untold.append(self.open.pop(key))

    def _take(self, vectors: np.ndarray) -> None:
        """Asked candidates: those with a logged result are answered from the log, the others are open."""
        for vector in vectors:
            key = self._key(vector)
            if key in self.cache:
                self.untold.append(vector)
            else:
                self.open[key] = vector

    def _tell_untold(self) -> int:
        told, self.untold = self.untold, []
        if told:
            self._tell(np.array(told))
        return len(told)

    # ------------------------------------------------------------------ the loop
    def run(self, progress: Progress | None = None, executor: Executor | None = None) -> dict[str, Any]:
        """Search to the run's budget and return the archive.

        ``executor`` (started; closed by whoever started it) evaluates; by default this process, a
        batch at a time. The searcher is asked for candidates whenever the executor has free slots.
        """
        if executor is None:
            with executors.create("in-process") as local:
                local.start(self._config, self.store.path, self.measures)
                return self.run(progress, local)
        self.check_budgets()
        self.restore()
        budget, status, since_checkpoint = self.store.budget(), "", 0
        report = progress or (lambda done, total, line: None)
        if self.open:
            executor.submit(np.array(list(self.open.values())))      # re-issue what the log left in flight
        while True:
            room = min(executor.free(len(self.open)), budget - self.results_logged - len(self.open))
            if room > 0:
                since_checkpoint += self._tell_untold()
                if since_checkpoint >= self.config.batch:
                    status, since_checkpoint = self.status_line(self._checkpoint()), 0
                    report(self.results_logged, budget, status)
                if self._ask(room, executor) and self.untold:
                    continue                      # some were answered from the log: tell them, ask again
            if not self.open:
                break                             # the budget is spent or the space exhausted
            for outcome in executor.wait():
                self._record(outcome)
            report(self.results_logged, budget, status)
        self._tell_untold()
        archive = self._checkpoint()
        report(self.results_logged, budget, self.status_line(archive))
        return archive

    def _ask(self, n: int, executor: Executor) -> int:
        """Ask for ``n`` candidates, submit the new ones, log the ask; how many were proposed.

        Submitting first lets a worker start while the log is written; no result is logged (or acted
        on) before the ask, and one lost with the driver was never acted on either.
        """
        vectors = self.searcher.ask(n)
        opened = len(self.open)
        self._take(vectors)
        fresh = list(self.open.values())[opened:]
        if fresh:
            executor.submit(np.array(fresh))
        self.store.append({"type": "ask", "requested": n, "vectors": vectors.tolist()})
        return len(vectors)

    def _record(self, outcome: Outcome) -> None:
        """Log one finished evaluation (durably, before anything acts on it)."""
        vector = self.open[self._key(outcome.vector)]
        self.results_logged += 1
        event = {"type": "result", "n": self.results_logged, "vector": vector.tolist(),
                 "config": self.space.decode(vector[None, :])[0],
                 "values": {k: _json_float(v) for k, v in outcome.values.items()},
                 "status": "failed" if outcome.error else "ok", "error": outcome.error, "seconds": outcome.seconds}
        self.store.append(event)
        self._note_result(event)

    def _checkpoint(self) -> dict[str, Any]:
        """Save the searcher's state (right after a tell) and the archive; return the archive."""
        self.store.save_checkpoint(self.searcher.state_dict())
        archive = self.archive()
        self.store.save_archive(archive)
        return archive

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
        out["best"] = out["front"][0]      # the best first objective; ties go to the one that dominates
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


def build_measures(config: dict[str, Any], run: Path | None = None,
                   space: search_spaces.SearchSpace | None = None) -> dict[str, Objective]:
    """Every objective of a run's ``config``, then every measure only a constraint names, by name.

    ``Search`` and every remote worker (``nas.executors``) build theirs with it, once per process.

    Args:
        config: the run's configuration (``config.json``).
        run: the run folder, in which relative latency predictor paths are; ``None`` for none.
        space: the space opened from ``config`` already, to save opening it again.
    """
    search = SearchConfig.from_dict(config)
    space = open_space(search) if space is None else space
    local = {d: str(run / f) if run is not None and not Path(f).is_absolute() else f
             for d, f in search.latency_predictors.items()}
    context = Context(space, search.devices_file, local, search.supernet, search.data)
    names = [*search.objectives, *(parse_constraint(c).name for c in search.constraints)]
    return {name: resolve(name, context) for name in dict.fromkeys(names)}


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


def with_supernet(config: SearchConfig) -> None:
    """Fill in the supernet's absolute path, fingerprint, space options and training data."""
    from search_spaces.checkpoint import file_sha256, read_checkpoint

    path = Path(config.supernet).resolve()
    config.supernet, config.supernet_sha256 = str(path), file_sha256(path)
    stored = read_checkpoint(path)
    config.space_options = {**stored.get("options", {}), **config.space_options}
    trained = stored.get("meta", {}).get("trained", {})
    config.data = config.data or trained.get("data", {}).get("spec")


def _voided_asks(events: list[dict[str, Any]]) -> set[int]:
    """Indices of the asks a ``diverged`` event voided: every ask from its ``at`` up to itself."""
    void: set[int] = set()
    for index, event in enumerate(events):
        if event["type"] == "diverged":
            void.update(i for i in range(event["at"], index) if events[i]["type"] == "ask")
    return void


def _value(event: dict[str, Any], name: str) -> float:
    value = event["values"].get(name)
    return np.nan if value is None else float(value)


def _json_float(value: float) -> float | None:
    return None if not np.isfinite(value) else float(value)


# ---------------------------------------------------------------------- entry points
def start_search(run: str | Path, config: SearchConfig, progress: Progress | None = None,
                 executor: Executor | None = None) -> tuple[RunStore, dict]:
    """Create the run folder and search to the budget. Bad configurations fail before anything is written.

    ``executor`` (not started; by default in this process) is started before the run folder is made,
    so an executor that cannot evaluate writes nothing either, and closed at the end.
    """
    config.validate()
    if config.supernet is not None:
        with_supernet(config)
    first = Search(config.to_dict())                      # resolve everything first: errors write nothing
    first.check_budgets()
    with executor or executors.create("in-process") as evaluator:
        evaluator.start(config.to_dict(), None, first.measures)
        sources = dict(config.latency_predictors)
        config.latency_predictors = {d: f"predictors/latency@{d}.npz" for d in sources}   # the run keeps copies
        store = RunStore.create(run, config.to_dict())
        for device, source in sources.items():
            (store.path / "predictors").mkdir(exist_ok=True)
            shutil.copyfile(source, store.path / config.latency_predictors[device])
        try:
            return store, Search(store.config, store).run(progress, evaluator)
        finally:
            store.close()


def resume_search(run: str | Path, evaluations: int | None = None, progress: Progress | None = None,
                  expect: dict[str, Any] | None = None, executor: Executor | None = None) -> tuple[RunStore, dict]:
    """Continue the run at ``run`` to its budget, or to ``evaluations`` if that is larger.

    ``executor`` (not started; by default in this process) may differ from the one the run began
    with; it is started before anything is evaluated and closed at the end.
    """
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
        elif done >= store.budget():
            raise RunError(f"{run} is finished ({done} of {store.budget()} evaluations); "
                           "pass a larger --evaluations to continue it")
        search = Search(store.config, store)
        with executor or executors.create("in-process") as evaluator:
            evaluator.start(store.config, store.path, search.measures)      # refused: the log is untouched
            if evaluations is not None and evaluations != store.budget():
                store.append({"type": "budget", "evaluations": evaluations})
            return store, search.run(progress, evaluator)
    finally:
        store.close()
