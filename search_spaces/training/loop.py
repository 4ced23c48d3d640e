"""The resumable phase loop shared by the weight-sharing trainer and the differentiable (bilevel) search.

A run goes through its phases epoch by epoch from ``position`` (phase, epoch within it, global step).
The state is written atomically after every epoch and, with the supernet, at the end of every phase,
so an interrupted run resumes from its last completed epoch. A subclass says how a phase is entered
(``fresh``, or again after a resume, when only its optimiser must be rebuilt), what an epoch does,
what ends a phase and what its state holds.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nas.atomic import atomic_write_bytes
from search_spaces.base import SearchSpace
from search_spaces.checkpoint import atomic_torch_save, save_supernet


class PhasedRun:
    """Runs ``phases`` from ``position`` to the end, saving as it goes (see the module docstring)."""

    space: SearchSpace
    out: Path
    progress: Any
    phases: list
    position: dict[str, int]
    history: list[dict[str, Any]]
    optimizer: torch.optim.Optimizer | None

    @property
    def finished(self) -> bool:
        return self.position["phase"] >= len(self.phases)

    def run(self) -> list[dict[str, Any]]:
        """Run to the end of the last phase; returns the history."""
        while not self.finished:
            phase = self.phases[self.position["phase"]]
            if self.position["epoch"] == 0 or self.optimizer is None:
                self._enter_phase(phase, fresh=self.position["epoch"] == 0)
            started = time.perf_counter()
            while self.position["epoch"] < phase.epochs:
                self._epoch(phase)
                self.position["epoch"] += 1
                if self.position["epoch"] < phase.epochs:
                    self._save_state()
            self._end_phase(phase, time.perf_counter() - started)
        return self.history

    def _enter_phase(self, phase, fresh: bool) -> None:
        raise NotImplementedError

    def _epoch(self, phase) -> None:
        raise NotImplementedError

    def _end_phase(self, phase, seconds: float) -> None:
        raise NotImplementedError

    def _state(self) -> dict[str, Any]:
        """Everything a resume needs, for ``state.pt``."""
        raise NotImplementedError

    def meta(self) -> dict[str, Any]:
        """What the supernet checkpoint records about its training."""
        raise NotImplementedError

    def _next_phase(self, record: dict[str, Any]) -> None:
        """Move on to the next phase: save the state and the supernet, then report ``record``."""
        self.position = {"phase": self.position["phase"] + 1, "epoch": 0, "step": self.position["step"]}
        self.optimizer = None
        self._save_state()
        save_supernet(self.space, self.out / "supernet.pt", meta=self.meta())
        if self.progress is not None:
            self.progress.phase_done(record)

    def _save_state(self) -> None:
        atomic_torch_save(self._state(), self.out / "state.pt")
        atomic_write_bytes(self.out / "history.json", json.dumps(
            {"position": self.position, "phases": [p.name for p in self.phases], "history": self.history},
            indent=2, default=plain).encode())


def plain(value: Any) -> Any:
    """``value`` (a numpy scalar or array, a tensor) as plain JSON data: ``json.dumps``' ``default``."""
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return value.tolist()
    raise TypeError(f"cannot store {type(value).__name__} in JSON")
