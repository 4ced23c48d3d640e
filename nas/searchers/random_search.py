"""``random``: uniform sampling of unseen canonical encodings."""

from __future__ import annotations

from typing import Any

import numpy as np

from nas.searchers.base import Searcher, register
from nas.searchers.sampling import draw_unseen
from search_spaces import SearchSpace


@register("random")
class RandomSearcher(Searcher):
    """Uniform over encodings (per gene), canonicalised, never repeating.

    ``ask`` is independent of ``tell``: it always returns ``n`` new encodings unless the space is
    (nearly) exhausted, so any number of asks may be outstanding.
    """

    many_objective = True          # it never ranks, so the objective count cannot hurt it

    def __init__(self, space: SearchSpace, n_objectives: int, n_constraints: int = 0, seed: int = 0):
        super().__init__(space, n_objectives, n_constraints, seed)
        self.rng = np.random.default_rng(seed)

    def ask(self, n: int) -> np.ndarray:
        return draw_unseen(self, n, self.rng)

    def tell(self, vectors: np.ndarray, objectives: np.ndarray, constraints: np.ndarray | None = None) -> None:
        vectors, _, _ = self.check_results(vectors, objectives, constraints)
        self.mark_seen(vectors)   # results for encodings this searcher never asked must not come back

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state, "seen": self.seen_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.load_seen_state(state["seen"])
