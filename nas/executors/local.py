"""``in-process``: evaluate in the search's own process, a batch at a time (the default executor)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from nas.executors.base import Executor, Outcome, evaluate_candidates, register
from nas.objectives import Objective


@register("in-process")
class InProcessExecutor(Executor):
    """Evaluates everything submitted in one vectorised call per measure when ``wait`` is called.

    It wants a new batch (the run's ``batch`` candidates) only when nothing is in flight, so the
    search is the synchronous loop ask → evaluate → tell, and a resumed run repeats an uninterrupted
    one exactly.
    """

    def __init__(self) -> None:
        self.measures: dict[str, Objective] = {}
        self.queue: list[np.ndarray] = []

    def start(self, config: dict[str, Any], run: Path | None, measures: dict[str, Objective]) -> None:
        self.measures = measures
        self.slots = int(config.get("batch", 1))

    def submit(self, vectors: np.ndarray) -> None:
        self.queue.extend(np.atleast_2d(vectors))

    def wait(self) -> list[Outcome]:
        vectors, self.queue = np.array(self.queue), []
        return evaluate_candidates(self.measures, vectors)

    def free(self, in_flight: int) -> int:
        return self.slots if in_flight == 0 else 0
