"""What every searcher needs to keep the contract of ``nas.searchers.base``: never hand out an
encoding twice (:func:`draw_unseen`, :func:`mutate`), never stall while unseen networks remain
(:func:`exhausted`), remember told results by network (:func:`row_keys`, :class:`ResultCache`), and
recognise failed evaluations (:func:`failed_rows`).
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np

from nas.searchers.base import Searcher
from search_spaces import SearchSpace

#: How many candidate draws one call to :func:`draw_unseen` may spend per requested encoding (and at
#: least ``MIN_DRAWS``) before it concludes the space is (nearly) exhausted and returns what it has.
DRAWS_PER_REQUEST = 20
MIN_DRAWS = 256


def row_keys(space: SearchSpace, vectors: np.ndarray) -> list[bytes]:
    """Hashable keys of the canonical form of every row (equal networks get equal keys)."""
    canonical = space.canonical(np.atleast_2d(np.asarray(vectors, dtype=np.int64)))
    return [row.tobytes() for row in canonical]


def failed_rows(objectives: np.ndarray) -> np.ndarray:
    """Boolean ``(k,)``: rows whose objectives are not all finite (failed evaluations)."""
    return ~np.isfinite(np.asarray(objectives, dtype=float)).all(axis=1)


_SIZES: "weakref.WeakKeyDictionary[SearchSpace, int]" = weakref.WeakKeyDictionary()


def exhausted(searcher: Searcher) -> bool:
    """True when every distinct network of the space has been handed out (``size()`` asked once per space)."""
    space = searcher.space
    if space not in _SIZES:
        _SIZES[space] = space.size()
    return searcher.seen_count >= _SIZES[space]


def mutate(space: SearchSpace, parents: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` mutants of ``parents`` (cycled): every free gene is resampled with probability
    ``1/free_genes`` and at least one free gene per mutant is resampled to a different value."""
    parents = np.atleast_2d(parents)
    card = space.cardinalities
    free = np.flatnonzero(card > 1)
    out = parents[np.arange(n) % len(parents)].copy()
    if len(free) == 0:
        return out
    fresh = space.random_vectors(n, rng)
    mask = np.zeros(out.shape, dtype=bool)
    mask[:, free] = rng.random((n, len(free))) < 1.0 / len(free)
    out = np.where(mask, fresh, out)
    # Force one change per row: shift one chosen free gene by a non-zero offset modulo its cardinality.
    col = free[rng.integers(0, len(free), size=n)]
    shift = 1 + (rng.random(n) * (card[col] - 1)).astype(np.int64)
    rows = np.arange(n)
    out[rows, col] = (out[rows, col] + shift) % card[col]
    return out


def draw_unseen(searcher: Searcher, n: int, rng: np.random.Generator, around: np.ndarray | None = None,
                max_draws: int | None = None) -> np.ndarray:
    """Up to ``n`` canonical encodings the searcher has not seen, now marked seen.

    With ``around`` (rows of encodings), mutants of those rows are tried first (half the draw
    budget), then uniform draws. The number of draws is bounded, so a nearly exhausted space yields
    fewer than ``n`` rows instead of looping.
    """
    empty = np.zeros((0, searcher.space.n_genes), dtype=np.int64)
    if n <= 0 or exhausted(searcher):
        return empty
    budget = max_draws if max_draws is not None else max(MIN_DRAWS, DRAWS_PER_REQUEST * n)
    found, drawn = [empty], 0
    while drawn < budget and sum(map(len, found)) < n:
        need = n - sum(map(len, found))
        k = min(budget - drawn, max(2 * need, 16))
        near = around is not None and len(around) > 0 and drawn < budget // 2
        candidates = mutate(searcher.space, around, k, rng) if near else searcher.space.random_vectors(k, rng)
        drawn += k
        found.append(searcher.take_new(candidates, need))
    return np.concatenate(found)


class ResultCache:
    """Told results by canonical key: ``objectives (m,)`` and ``constraints (c,)`` rows, as told (a failed
    evaluation keeps its ``nan`` row; each searcher decides how to present it to its library)."""

    def __init__(self, n_objectives: int, n_constraints: int):
        self.n_objectives, self.n_constraints = n_objectives, n_constraints
        self._rows: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}

    def __contains__(self, key: bytes) -> bool:
        return key in self._rows

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, keys: list[bytes], objectives: np.ndarray, constraints: np.ndarray) -> None:
        """Record results (a key told again keeps its latest result)."""
        for key, f, g in zip(keys, objectives, constraints):
            self._rows[key] = (f.copy(), g.copy())

    def get(self, keys: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """``(objectives (k, m), constraints (k, c))`` for keys that are all present."""
        rows = [self._rows[k] for k in keys]
        objectives = np.array([r[0] for r in rows], dtype=float).reshape(len(keys), self.n_objectives)
        constraints = np.array([r[1] for r in rows], dtype=float).reshape(len(keys), self.n_constraints)
        return objectives, constraints

    def state(self) -> dict[str, Any]:
        keys = list(self._rows)
        objectives, constraints = self.get(keys)
        return {"keys": keys, "objectives": objectives, "constraints": constraints}

    def load(self, state: dict[str, Any]) -> None:
        self._rows = {}
        self.add(list(state["keys"]), np.asarray(state["objectives"], dtype=float),
                 np.asarray(state["constraints"], dtype=float))
