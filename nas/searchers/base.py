"""The ``Searcher`` interface: ask for candidates, tell their results.

Everything a searcher sees is an integer encoding of the space (``(n, genes)`` arrays). Objectives
are all **minimised** (the engine negates metrics to maximise, such as accuracy); constraint values
are feasible iff ``<= 0`` (pymoo's ``G`` convention, optuna's ``set_constraint``).

Contract (checked by ``tests/nas/searchers/test_conformance.py`` for every registered searcher):

* ``ask(n)`` returns at most ``n`` canonical encodings, none of which was returned before (repeats are
  removed by canonical encoding); fewer than ``n`` (even zero) means "tell me results first" or
  "space exhausted". ``ask`` may be called several times before the matching ``tell``.
* ``tell(vectors, objectives, constraints)`` accepts any subset of asked candidates in any order. A
  failed evaluation is told with a row of ``nan`` objectives; the searcher treats it as infeasible and
  worst, and never proposes it again.
* Determinism: two searchers built with the same arguments and fed the same calls return the same
  candidates. Resume relies on it: a searcher can always be rebuilt by replaying the run store's
  asks and tells; ``state_dict``/``load_state_dict`` are a faster path to the same state.
"""

from __future__ import annotations

import abc
import warnings
from typing import Any, ClassVar

import numpy as np

from nas.errors import ConfigError
from nas.registry import Registry
from search_spaces import SearchSpace

SEARCHERS: Registry[type["Searcher"]] = Registry("searcher")
register = SEARCHERS.register
names = SEARCHERS.names

#: From this many objectives on a search is *many-objective*: most candidates are mutually
#: non-dominated, so Pareto rank alone hardly separates them and NSGA-II's crowding distance stops
#: spreading the front; reference directions (NSGA-III) or the front's geometry (AGE-MOEA) are needed.
MANY_OBJECTIVES = 3
_DEFAULTS: dict[int, str] = {}          # fewest objectives -> the searcher used when none is named


def default_for(fewest_objectives: int):
    """Class decorator (above ``@register``): this searcher is the one used, when none is named, by
    searches with at least ``fewest_objectives`` objectives (up to the next default's threshold)."""

    def decorator(cls: type["Searcher"]) -> type["Searcher"]:
        _DEFAULTS[fewest_objectives] = cls.name
        return cls

    return decorator


def choose(name: str | None, n_objectives: int) -> str:
    """The searcher a search with ``n_objectives`` objectives uses: ``name``, or the registered default
    for that count; warns when a named searcher is not built for that many objectives."""
    if name is None:
        return _DEFAULTS[max(k for k in _DEFAULTS if k <= max(n_objectives, 1))]
    cls = SEARCHERS.get_class(name)
    if n_objectives >= MANY_OBJECTIVES and not cls.many_objective:
        suited = sorted(n for n in names() if SEARCHERS.get_class(n).many_objective)
        warnings.warn(f"searcher {name!r} is not built for {n_objectives} objectives; many-objective searchers: "
                      f"{', '.join(suited)}", stacklevel=2)
    return name


def create(name: str, space: SearchSpace, n_objectives: int, n_constraints: int = 0, seed: int = 0,
           **options: Any) -> "Searcher":
    cls = SEARCHERS.get_class(name)
    try:
        return cls(space, n_objectives, n_constraints, seed, **options)
    except TypeError as exc:
        raise ConfigError(f"bad options for searcher {name!r}: {exc}") from None


class Searcher(abc.ABC):
    """Ask/tell multi-objective search over a space's encodings."""

    name: ClassVar[str] = "?"
    #: Whether it keeps a well-spread front with ``MANY_OBJECTIVES`` or more objectives.
    many_objective: ClassVar[bool] = False

    def __init__(self, space: SearchSpace, n_objectives: int, n_constraints: int = 0, seed: int = 0):
        if n_objectives < 1:
            raise ConfigError("a search needs at least one objective")
        self.space, self.n_objectives, self.n_constraints, self.seed = space, n_objectives, n_constraints, seed
        self._seen: set[bytes] = set()

    # ------------------------------------------------------------------ the interface
    @abc.abstractmethod
    def ask(self, n: int) -> np.ndarray:
        """Up to ``n`` new canonical encodings, shape ``(k, genes)``, ``k <= n``."""

    @abc.abstractmethod
    def tell(self, vectors: np.ndarray, objectives: np.ndarray, constraints: np.ndarray | None = None) -> None:
        """Results for previously asked encodings: ``objectives (k, m)``, ``constraints (k, c)``."""

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly (values may be bytes)."""

    @abc.abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state produced by ``state_dict`` of a searcher built with the same arguments."""

    # ------------------------------------------------------------------ shared helpers
    def is_new(self, vector: np.ndarray) -> bool:
        return self.space.canonical(vector).tobytes() not in self._seen

    def mark_seen(self, vectors: np.ndarray) -> None:
        for v in self.space.canonical(np.atleast_2d(vectors)):
            self._seen.add(v.tobytes())

    def take_new(self, candidates: np.ndarray, n: int) -> np.ndarray:
        """The first ``n`` candidates (canonicalised) not seen before, marked as seen."""
        out = []
        for v in self.space.canonical(np.atleast_2d(candidates)):
            key = v.tobytes()
            if key not in self._seen:
                self._seen.add(key)
                out.append(v)
                if len(out) == n:
                    break
        return np.array(out, dtype=np.int64).reshape(len(out), self.space.n_genes)

    def check_results(self, vectors: np.ndarray, objectives: np.ndarray,
                      constraints: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Validated ``(vectors, objectives (k, m), constraints (k, c))`` arrays."""
        vectors = self.space.check_vectors(vectors)
        objectives = np.asarray(objectives, dtype=float).reshape(len(vectors), self.n_objectives)
        if constraints is None:
            constraints = np.zeros((len(vectors), self.n_constraints))
        constraints = np.asarray(constraints, dtype=float).reshape(len(vectors), self.n_constraints)
        return vectors, objectives, constraints

    @property
    def seen_count(self) -> int:
        """How many distinct networks were handed out or told."""
        return len(self._seen)

    def seen_state(self) -> list[bytes]:
        return sorted(self._seen)

    def load_seen_state(self, seen: list[bytes]) -> None:
        self._seen = set(seen)
