"""``tpe`` and ``gp``: optuna samplers behind ask/tell, on an in-memory study.

Every gene is one optuna parameter named after the gene (``IntDistribution`` over the choice index
when the choices are increasing numbers, so the sampler can use their order, else
``CategoricalDistribution``); a candidate is one ``study.ask`` with these fixed distributions.

* ``tpe``: ``TPESampler(multivariate=True, constant_liar=True)``. Pending trials stay RUNNING, so the
  constant liar spreads concurrent asks apart.
* ``gp``: ``GPSampler``. In optuna 5 it handles several objectives *with* constraints (log constrained
  EHVI) and RUNNING trials (its q-batch variants), so no substitute is needed. It is slow: in the 46-gene
  small ``ofa_mbv3`` space one model-based ask takes 1-4 s on a CPU core; worth it only when evaluations
  cost far more than that.

Constraints are set with ``trial.set_constraint`` (``c0``, ``c1``, ... plus ``failed``, 1.0 for a failed
evaluation, else 0.0). A failed evaluation (non-finite objectives) is told as COMPLETE with the worst
finite value told so far for each objective (0.0 before any) and its unknown constraint values replaced
by the worst told so far: the ``failed`` constraint makes it infeasible, which both samplers rank
below every feasible trial.

Re-proposals: when the sampler proposes a network already evaluated, the cached result is told to
that trial at once and the sampler is asked again; a network still pending gets its trial attached to
the pending one (told the same result later, RUNNING until then). After ``max_reproposals`` such
tries a uniform unseen encoding is enqueued instead, so the search never stalls and never hands a
network out twice. ``ask`` never waits for results: any number of asks may be outstanding.

Resume: ``state_dict`` lists every trial (params, state, values, system attributes such as the
constraints) and the pickled sampler (its RNGs and, for ``gp``, its cached kernel fits).
``load_state_dict`` rebuilds the study with ``study.add_trial`` in the same order, so trial numbers,
the trial history and the sampler state all match: the restored searcher continues *exactly* as the
original (checked by the conformance tests for both samplers).
"""

from __future__ import annotations

import abc
import contextlib
import pickle
import warnings
from typing import Any, Iterator

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution
from optuna.exceptions import ExperimentalWarning
from optuna.trial import Trial, TrialState, create_trial

from nas.errors import ConfigError
from nas.searchers.base import Searcher, register
from nas.searchers.sampling import ResultCache, draw_unseen, exhausted, failed_rows, row_keys
from search_spaces import SearchSpace
from search_spaces.base import Gene

FAILED_CONSTRAINT = "failed"


def gene_distribution(gene: Gene) -> BaseDistribution:
    """An integer index distribution for ordered numeric choices, else a categorical one."""
    n = len(gene.choices)
    numeric = all(isinstance(c, (int, float, np.integer, np.floating)) and not isinstance(c, bool)
                  for c in gene.choices)
    if numeric and all(a < b for a, b in zip(gene.choices, gene.choices[1:])):
        return IntDistribution(0, n - 1)
    return CategoricalDistribution(tuple(range(n)))


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Silence optuna's per-trial INFO lines (the engine logs its own) for the duration of a call."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(max(verbosity, optuna.logging.WARNING))
    try:
        yield
    finally:
        optuna.logging.set_verbosity(verbosity)


class OptunaSearcher(Searcher):
    """Ask/tell over an in-memory optuna study (see the module docstring)."""

    def __init__(self, space: SearchSpace, n_objectives: int, n_constraints: int = 0, seed: int = 0,
                 n_startup_trials: int = 10, max_reproposals: int = 8):
        super().__init__(space, n_objectives, n_constraints, seed)
        if n_startup_trials < 0 or max_reproposals < 0:
            raise ConfigError("n_startup_trials and max_reproposals must be >= 0")
        self.n_startup_trials, self.max_reproposals = n_startup_trials, max_reproposals
        self.rng = np.random.default_rng(seed)       # fallback draws only
        self.results = ResultCache(n_objectives, n_constraints)
        self.names = [g.name for g in space.genes]
        self.distributions = {g.name: gene_distribution(g) for g in space.genes}
        self.constraint_names = [f"c{i}" for i in range(n_constraints)] + [FAILED_CONSTRAINT]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            self.sampler = self.make_sampler()
        self._build_study([])

    @abc.abstractmethod
    def make_sampler(self) -> optuna.samplers.BaseSampler:
        """A sampler seeded from ``self.seed``."""

    def _build_study(self, trials: list[optuna.trial.FrozenTrial]) -> None:
        with quiet_optuna():
            self.study = optuna.create_study(directions=["minimize"] * self.n_objectives, sampler=self.sampler)
            for trial in trials:
                self.study.add_trial(trial)
        #: RUNNING trials by number, and the trial numbers waiting for each pending network's result.
        self.running: dict[int, Trial] = {
            t.number: Trial(self.study, t._trial_id)
            for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        self.pending: dict[bytes, list[int]] = {}

    # ------------------------------------------------------------------ ask
    def ask(self, n: int) -> np.ndarray:
        out = []
        with quiet_optuna():
            while len(out) < n and not exhausted(self):
                vector = self._ask_one()
                if vector is None:
                    break
                out.append(vector)
        return np.array(out, dtype=np.int64).reshape(len(out), self.space.n_genes)

    def _ask_one(self) -> np.ndarray | None:
        """One new canonical encoding with a RUNNING trial, or ``None`` when none can be found."""
        for _ in range(self.max_reproposals + 1):
            trial = self.study.ask(self.distributions)
            vector = self.space.canonical(np.array([trial.params[k] for k in self.names], dtype=np.int64))
            key = vector.tobytes()
            if key not in self._seen:
                return self._hand_out(trial, key, vector)
            self._answer_reproposal(trial, key)
        fresh = draw_unseen(self, 1, self.rng)
        if len(fresh) == 0:
            return None
        self.study.enqueue_trial({k: int(v) for k, v in zip(self.names, fresh[0])})
        trial = self.study.ask(self.distributions)
        return self._hand_out(trial, fresh[0].tobytes(), fresh[0])

    def _hand_out(self, trial: Trial, key: bytes, vector: np.ndarray) -> np.ndarray:
        self._seen.add(key)
        self.running[trial.number] = trial
        self.pending.setdefault(key, []).append(trial.number)
        return vector

    def _answer_reproposal(self, trial: Trial, key: bytes) -> None:
        """A proposal of a seen network: tell its cached result, or let it wait for the pending one."""
        self.running[trial.number] = trial
        if key in self.results:
            objectives, constraints = self.results.get([key])
            self._finish(trial.number, objectives[0], constraints[0])
        else:
            self.pending.setdefault(key, []).append(trial.number)

    # ------------------------------------------------------------------ tell
    def tell(self, vectors: np.ndarray, objectives: np.ndarray, constraints: np.ndarray | None = None) -> None:
        vectors, objectives, constraints = self.check_results(vectors, objectives, constraints)
        keys = row_keys(self.space, vectors)
        self.results.add(keys, objectives, constraints)
        self.mark_seen(vectors)
        with quiet_optuna():
            for key, f, g in zip(keys, objectives, constraints):
                for number in self.pending.pop(key, []):
                    self._finish(number, f, g)

    def _finish(self, number: int, objectives: np.ndarray, constraints: np.ndarray) -> None:
        values, constraint_values = self._optuna_values(objectives, constraints)
        trial = self.running.pop(number)
        for name, value in zip(self.constraint_names, constraint_values):
            trial.set_constraint(name, value)
        self.study.tell(trial, values)

    def _optuna_values(self, objectives: np.ndarray, constraints: np.ndarray) -> tuple[list[float], list[float]]:
        """Objectives and constraints (``failed`` last) as told to optuna; see the module docstring."""
        failed = bool(failed_rows(objectives[None, :])[0])
        unknown = ~np.isfinite(constraints)
        if failed or unknown.any():
            worst_f, worst_g = self._worst_told()
            objectives = worst_f if failed else objectives
            constraints = np.where(unknown, worst_g, constraints)
        return [float(v) for v in objectives], [float(v) for v in constraints] + [float(failed)]

    def _worst_told(self) -> tuple[np.ndarray, np.ndarray]:
        """Per column, the largest finite objective and constraint value told so far (0.0 if none)."""
        told = self.results.state()
        f, g = told["objectives"], told["constraints"]

        def column_max(a: np.ndarray) -> np.ndarray:
            finite = np.where(np.isfinite(a), a, -np.inf)
            worst = finite.max(axis=0, initial=-np.inf)
            return np.where(np.isfinite(worst), worst, 0.0)

        return column_max(f), column_max(g)

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        trials = [{"number": t.number, "state": t.state.name, "params": {k: int(v) for k, v in t.params.items()},
                   "values": None if t.values is None else list(t.values), "system_attrs": dict(t.system_attrs)}
                  for t in self.study.get_trials(deepcopy=False)]
        return {
            "sampler": pickle.dumps(self.sampler),
            "trials": trials,
            "pending": [(key, list(numbers)) for key, numbers in self.pending.items()],
            "rng": self.rng.bit_generator.state,
            "results": self.results.state(),
            "seen": self.seen_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler = pickle.loads(state["sampler"])
        frozen = [create_trial(state=TrialState[t["state"]], params=t["params"],
                               distributions={k: self.distributions[k] for k in t["params"]},
                               values=t["values"], system_attrs=t["system_attrs"])
                  for t in sorted(state["trials"], key=lambda t: t["number"])]
        self._build_study(frozen)
        self.pending = {key: list(numbers) for key, numbers in state["pending"]}
        self.rng.bit_generator.state = state["rng"]
        self.results.load(state["results"])
        self.load_seen_state(state["seen"])


@register("tpe")
class TPESearcher(OptunaSearcher):
    """Multivariate TPE with the constant liar for pending trials (MOTPE with several objectives)."""

    many_objective = True          # splits trials by hypervolume contribution, not by crowding

    def make_sampler(self) -> optuna.samplers.BaseSampler:
        return optuna.samplers.TPESampler(multivariate=True, constant_liar=True, seed=self.seed,
                                          n_startup_trials=self.n_startup_trials)


@register("gp")
class GPSearcher(OptunaSearcher):
    """Gaussian-process Bayesian optimisation (log constrained EHVI; q-batch while trials are pending)."""

    many_objective = True          # expected hypervolume improvement is defined for any objective count

    def make_sampler(self) -> optuna.samplers.BaseSampler:
        return optuna.samplers.GPSampler(seed=self.seed, n_startup_trials=self.n_startup_trials)
