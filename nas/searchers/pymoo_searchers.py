"""``nsga2``, ``agemoea``, ``nsga3``: pymoo's generational algorithms behind ask/tell.

pymoo sees the encoding as integer genes (``xl=0``, ``xu=cardinality-1``) with integer sampling, SBX
crossover and polynomial mutation both rounded by ``RoundingRepair``, and duplicate elimination. It is
driven with its own ask/tell: one pymoo ``ask`` is one *generation*, handed out by ``Searcher.ask`` in
pieces; pymoo's ``tell`` runs when every member of the generation has a result. Until then ``ask``
returns only what is left of the generation (possibly nothing), so asynchronous callers can keep at
most one generation (``pop_size`` networks; ``n_offsprings`` after the first) in flight.

pymoo works on raw genes (including genes that cannot affect the network, which keeps the dormant
genetic material of shallow networks for when mutation deepens them); what leaves the searcher is
canonical and new. Each member of a generation is one of:

* **new**: handed out, then answered by ``tell``;
* **cached**: its network was evaluated before, so pymoo is answered from the searcher's result cache
  and the network is not handed out again;
* **duplicate** of a network still pending (or of an earlier member of the same generation): replaced
  by a fresh mutant of itself or a uniform unseen encoding, so every generation is filled with new
  networks. If none can be found (space nearly exhausted) it waits for the same result as its twin.

A generation that would contain no new network at all is refilled with fresh mutants of its members
(pymoo has stalled), so the search never stops while unseen networks remain.

Failed evaluations (non-finite objectives) are given to pymoo as ``FAILED_VALUE`` objectives and
constraints: pymoo ranks infeasible individuals by total violation only, so they lose every
comparison. pymoo always sees ``n_constraints + 1`` inequality constraints; the last is this
"evaluation failed" indicator.

``state_dict`` holds the pickled pymoo algorithm (its RNG included) and the pending generation, plus
the searcher's RNG, result cache and seen set: a searcher restored from it continues exactly as the
original would have.
"""

from __future__ import annotations

import abc
import math
import pickle
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pymoo.algorithms.moo.age import AGEMOEA
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.algorithms.moo.nsga3 import NSGA3, comp_by_cv_then_random
from pymoo.core.algorithm import Algorithm
from pymoo.core.population import Population
from pymoo.core.problem import Problem
from pymoo.core.termination import NoTermination
from pymoo.operators.crossover.sbx import SBX
from pymoo.operators.mutation.pm import PM
from pymoo.operators.repair.rounding import RoundingRepair
from pymoo.operators.sampling.rnd import IntegerRandomSampling
from pymoo.operators.selection.tournament import TournamentSelection
from pymoo.problems.static import StaticProblem
from pymoo.util.ref_dirs import get_reference_directions

from nas.errors import ConfigError
from nas.searchers.base import MANY_OBJECTIVES, Searcher, default_for, register
from nas.searchers.sampling import ResultCache, draw_unseen, exhausted, failed_rows, row_keys
from search_spaces import SearchSpace

#: Objective and constraint value pymoo is given for a failed evaluation (finite, so every pymoo
#: operator stays well defined; larger than any real objective or violation).
FAILED_VALUE = 1e30
#: Generations one ``ask`` may open and close without handing anything out (all re-proposals answered
#: from the cache and nothing new to be found) before it returns what it has.
MAX_IDLE_GENERATIONS = 4


class EncodingProblem(Problem):
    """Declares an integer encoding to pymoo; evaluation happens outside, results come through ``tell``.

    Module level so that a pickled algorithm (which holds its problem) loads in another process.
    """

    def __init__(self, cardinalities: np.ndarray, n_obj: int, n_ieq_constr: int):
        cardinalities = np.asarray(cardinalities, dtype=np.int64)
        super().__init__(n_var=len(cardinalities), n_obj=n_obj, n_ieq_constr=n_ieq_constr,
                         xl=np.zeros(len(cardinalities), dtype=np.int64), xu=cardinalities - 1, vtype=int)

    def _evaluate(self, x, out, *args, **kwargs):
        raise RuntimeError("EncodingProblem is evaluated by the searcher's tell(), not by pymoo")


@dataclass
class Generation:
    """One pymoo ``ask``: its population (raw genes), members' canonical keys and hand-out queue."""

    pop: Population
    keys: list[bytes]
    vectors: np.ndarray                               # canonical encodings, (members, genes)
    queue: list[int] = field(default_factory=list)    # members still to hand out, in order


def integer_operators(eta_crossover: float = 15.0, eta_mutation: float = 20.0) -> dict[str, Any]:
    """Integer sampling, rounded SBX and polynomial mutation, with duplicate elimination."""
    return {
        "sampling": IntegerRandomSampling(),
        "crossover": SBX(prob=0.9, eta=eta_crossover, vtype=float, repair=RoundingRepair()),
        "mutation": PM(eta=eta_mutation, vtype=float, repair=RoundingRepair()),
        "eliminate_duplicates": True,
    }


def pymoo_values(objectives: np.ndarray, constraints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Told results -> pymoo's ``F (k, m)`` and ``G (k, c + 1)``; failed rows get ``FAILED_VALUE``."""
    failed = failed_rows(objectives)
    F = np.where(failed[:, None], FAILED_VALUE, objectives)
    G = np.hstack([np.nan_to_num(constraints, nan=FAILED_VALUE, posinf=FAILED_VALUE, neginf=-FAILED_VALUE),
                   np.zeros((len(objectives), 1))])
    G[failed] = FAILED_VALUE
    return F, G


class PymooSearcher(Searcher):
    """Generation-based ask/tell over a pymoo genetic algorithm (see the module docstring)."""

    def __init__(self, space: SearchSpace, n_objectives: int, n_constraints: int = 0, seed: int = 0,
                 pop_size: int = 20, n_offsprings: int | None = None, eta_crossover: float = 15.0,
                 eta_mutation: float = 20.0):
        super().__init__(space, n_objectives, n_constraints, seed)
        if pop_size < 2:
            raise ConfigError(f"pop_size must be at least 2; got {pop_size}")
        self.rng = np.random.default_rng(seed)   # replacements only; pymoo draws from its own RNG
        self.results = ResultCache(n_objectives, n_constraints)
        self.algorithm = self.make_algorithm(pop_size, n_offsprings,
                                             integer_operators(eta_crossover, eta_mutation))
        problem = EncodingProblem(space.cardinalities, n_objectives, n_constraints + 1)
        self.algorithm.setup(problem, termination=NoTermination(), seed=seed, verbose=False)
        self.generation: Generation | None = None

    @abc.abstractmethod
    def make_algorithm(self, pop_size: int, n_offsprings: int | None, operators: dict[str, Any]) -> Algorithm:
        """The pymoo algorithm, not yet set up."""

    # ------------------------------------------------------------------ ask
    def ask(self, n: int) -> np.ndarray:
        out: list[np.ndarray] = [np.zeros((0, self.space.n_genes), dtype=np.int64)]
        handed, idle = 0, 0
        while handed < n and idle < MAX_IDLE_GENERATIONS:
            if self.generation is None:
                self.generation = None if exhausted(self) else self._open_generation()
                if self.generation is None:
                    break
            gen = self.generation
            take, gen.queue = gen.queue[: n - handed], gen.queue[n - handed:]
            out.append(gen.vectors[take])
            handed += len(take)
            if not self._complete(gen):
                break                      # the rest of the generation is out: wait for results
            idle += 1                      # nothing new in it: answer pymoo from the cache, go on
            self._close_generation()
        return np.concatenate(out)

    def _open_generation(self) -> Generation | None:
        """pymoo's next population, with re-proposals resolved (see the module docstring); ``None``
        when neither pymoo nor uniform draws can propose anything new."""
        pop = self.algorithm.ask()
        if pop is None or len(pop) == 0:
            # Mating found no unique offspring (tiny or nearly exhausted space): pymoo flags
            # termination; undo that and offer it fresh uniform encodings instead.
            self.algorithm.termination.force_termination = False
            X = draw_unseen(self, self.algorithm.n_offsprings or self.algorithm.pop_size, self.rng)
            if len(X) == 0:
                return None
            pop = Population.new(X=X)
            pop.set("n_gen", self.algorithm.n_iter, "n_iter", self.algorithm.n_iter)
            return Generation(pop, row_keys(self.space, X), X, list(range(len(X))))
        X = np.asarray(pop.get("X")).astype(np.int64)
        keys = row_keys(self.space, X)
        new, duplicate = self._classify(keys)
        queue = new + self._replace(X, keys, duplicate)
        if not queue:   # pymoo proposed nothing new: refill its re-proposals with fresh mutants
            queue = self._replace(X, keys, [i for i, k in enumerate(keys) if k in self.results])
        pop.set("X", X)
        return Generation(pop, keys, self.space.canonical(X), sorted(queue))

    def _classify(self, keys: list[bytes]) -> tuple[list[int], list[int]]:
        """Member indices that are new (now marked seen) and that duplicate a pending/earlier network."""
        new, duplicate = [], []
        for i, key in enumerate(keys):
            if key in self.results:
                continue
            if key in self._seen:
                duplicate.append(i)
            else:
                self._seen.add(key)
                new.append(i)
        return new, duplicate

    def _replace(self, X: np.ndarray, keys: list[bytes], members: list[int]) -> list[int]:
        """Overwrite ``members`` in place with fresh unseen mutants of them (or uniform draws); return
        those replaced. The others keep their genes (a twin waits for its original's result)."""
        if not members:
            return []
        fresh = draw_unseen(self, len(members), self.rng, around=X[members])
        for i, vector in zip(members, fresh):
            X[i] = vector
            keys[i] = vector.tobytes()
        return members[: len(fresh)]

    # ------------------------------------------------------------------ tell
    def tell(self, vectors: np.ndarray, objectives: np.ndarray, constraints: np.ndarray | None = None) -> None:
        vectors, objectives, constraints = self.check_results(vectors, objectives, constraints)
        self.results.add(row_keys(self.space, vectors), objectives, constraints)
        self.mark_seen(vectors)
        if self.generation is not None and self._complete(self.generation):
            self._close_generation()

    def _complete(self, gen: Generation) -> bool:
        return not gen.queue and all(k in self.results for k in gen.keys)

    def _close_generation(self) -> None:
        """Every member has a result: evaluate the population from the cache and run pymoo's tell."""
        gen, self.generation = self.generation, None
        F, G = pymoo_values(*self.results.get(gen.keys))
        self.algorithm.evaluator.eval(StaticProblem(self.algorithm.problem, F=F, G=G), gen.pop)
        self.algorithm.tell(infills=gen.pop)

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        return {
            "algorithm": pickle.dumps(self.algorithm),
            "generation": None if self.generation is None else pickle.dumps(self.generation),
            "rng": self.rng.bit_generator.state,
            "results": self.results.state(),
            "seen": self.seen_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.algorithm = pickle.loads(state["algorithm"])
        self.generation = None if state["generation"] is None else pickle.loads(state["generation"])
        self.rng.bit_generator.state = state["rng"]
        self.results.load(state["results"])
        self.load_seen_state(state["seen"])


@default_for(1)
@register("nsga2")
class NSGA2Searcher(PymooSearcher):
    """NSGA-II: non-dominated sorting with crowding distance."""

    def make_algorithm(self, pop_size: int, n_offsprings: int | None, operators: dict[str, Any]) -> Algorithm:
        return NSGA2(pop_size=pop_size, n_offsprings=n_offsprings, **operators)


@register("agemoea")
class AGEMOEASearcher(PymooSearcher):
    """AGE-MOEA: survival by the estimated geometry of the front (needs numba)."""

    many_objective = True

    def make_algorithm(self, pop_size: int, n_offsprings: int | None, operators: dict[str, Any]) -> Algorithm:
        return AGEMOEA(pop_size=pop_size, n_offsprings=n_offsprings, **operators)


@default_for(MANY_OBJECTIVES)
@register("nsga3")
class NSGA3Searcher(PymooSearcher):
    """NSGA-III for many objectives: survival by reference directions sized to the objective count."""

    many_objective = True

    def make_algorithm(self, pop_size: int, n_offsprings: int | None, operators: dict[str, Any]) -> Algorithm:
        ref_dirs = reference_directions(self.n_objectives, pop_size, self.seed)
        return NSGA3(ref_dirs=ref_dirs, pop_size=max(pop_size, len(ref_dirs)), n_offsprings=n_offsprings,
                     selection=TournamentSelection(func_comp=compare_by_cv_then_random), **operators)


def compare_by_cv_then_random(pop, P, random_state=None, **kwargs):
    """NSGA-III's default tournament, by reference: pymoo's own function is a closure made by a
    decorator and cannot be pickled, so an algorithm holding it could not be checkpointed."""
    return comp_by_cv_then_random(pop, P, random_state=random_state, **kwargs)


def reference_directions(n_objectives: int, max_points: int, seed: int) -> np.ndarray:
    """Das-Dennis directions with the most partitions that give at most ``max_points`` directions;
    when even one partition gives too many (more objectives than points), Riesz energy directions."""
    partitions = 0
    while math.comb(partitions + 1 + n_objectives - 1, n_objectives - 1) <= max_points:
        partitions += 1
        if n_objectives == 1:
            break
    if partitions == 0:
        return get_reference_directions("energy", n_objectives, max(max_points, n_objectives), seed=seed)
    return get_reference_directions("das-dennis", n_objectives, n_partitions=partitions)
