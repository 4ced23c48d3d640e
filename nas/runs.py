"""The run store: one folder per search run, the single source of truth for reports and resume.

Layout::

    RUN/config.json          the resolved search configuration, library versions, seed (written once)
    RUN/evaluations.jsonl    the append-only event log (below)
    RUN/searcher/state.pkl   the latest searcher checkpoint, with the number of log events it covers
    RUN/archive.json         the Pareto archive (rewritten after each batch)
    RUN/pareto.png           the Pareto plot (``nas report --plot`` / end of a search)
    RUN/.lock                held (``flock``) by the one process writing to the run

The log is JSON lines, one event per line, each line written with a single ``write`` and ``fsync``
before the engine acts on it, so a ``kill -9`` at any instant leaves at most one torn last line. A torn
last line is detected when the run is opened and dropped (and truncated away when opened for writing);
an unreadable line before the last one means the log is corrupt and the run is refused, untouched.

Events: ``{"type": "start", "config": {...}}`` first; ``{"type": "ask", "vectors": [[...]]}`` when the
searcher proposes a batch; ``{"type": "result", "n", "vector", "config", "values", "status", "error",
"seconds"}`` for each finished evaluation (``n`` counts results from 1); ``{"type": "budget",
"evaluations": N}`` when a resume raises the budget; ``{"type": "diverged", "at": i}`` when, on resume, the
searcher did not repeat the ask logged at event ``i`` (the asks from ``i`` up to this event are void).
"""

from __future__ import annotations

import fcntl
import json
import os
import pickle
from pathlib import Path
from typing import Any

from nas.atomic import atomic_write_bytes
from nas.errors import NasError

CONFIG, LOG, LOCK, CHECKPOINT, ARCHIVE = "config.json", "evaluations.jsonl", ".lock", "searcher/state.pkl", "archive.json"


class RunError(NasError):
    """A run folder that cannot be created, opened, or continued."""


def is_run(path: Path) -> bool:
    return (path / CONFIG).is_file() and (path / LOG).is_file()


class RunStore:
    """An open run folder. ``create`` a new one or ``open`` an existing one; ``close`` when done."""

    def __init__(self, path: Path, config: dict[str, Any], events: list[dict[str, Any]], lock_fd: int | None):
        self.path, self.config, self.events, self._lock_fd = path, config, events, lock_fd
        self._log = open(path / LOG, "ab") if lock_fd is not None else None

    # ------------------------------------------------------------------ opening
    @classmethod
    def create(cls, path: str | os.PathLike, config: dict[str, Any]) -> "RunStore":
        path = Path(path)
        if path.exists() and (is_run(path) or (path / CONFIG).exists() or (path / LOG).exists()):
            raise RunError(f"{path} already holds a run; continue it with `nas resume {path}` or choose a new --run")
        if path.exists() and any(path.iterdir()):
            raise RunError(f"{path} exists and is not empty; choose a new --run folder")
        path.mkdir(parents=True, exist_ok=True)
        lock_fd = _lock(path)
        atomic_write_bytes(path / CONFIG, json.dumps(config, indent=2).encode())
        (path / LOG).touch()
        store = cls(path, config, [], lock_fd)
        store.append({"type": "start", "config": config})
        return store

    @classmethod
    def open(cls, path: str | os.PathLike, write: bool = True) -> "RunStore":
        path = Path(path)
        if not path.is_dir():
            raise RunError(f"{path} does not exist")
        if not is_run(path):
            raise RunError(f"{path} is not a run folder (no {CONFIG} and {LOG})")
        lock_fd = _lock(path) if write else None
        try:
            config = json.loads((path / CONFIG).read_text())
            events, good_bytes, torn = _read_log(path / LOG)
            if not events or events[0].get("type") != "start":
                raise RunError(f"{path / LOG} does not begin with the run's start record; the log is corrupt")
            if events[0]["config"] != config:
                changed = sorted(k for k in set(config) | set(events[0]["config"])
                                 if config.get(k) != events[0]["config"].get(k))
                raise RunError(f"{path / CONFIG} no longer matches the configuration the run started with "
                               f"(changed: {', '.join(changed)}); restore it or start a new run")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            _unlock(lock_fd)
            raise RunError(f"{path / CONFIG} is not valid JSON ({exc}); the run folder is damaged") from None
        except RunError:
            _unlock(lock_fd)
            raise
        if torn and write:
            with open(path / LOG, "r+b") as fh:       # drop the torn last record, keep every complete one
                fh.truncate(good_bytes)
        return cls(path, config, events, lock_fd)

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
        _unlock(self._lock_fd)
        self._lock_fd = None

    def __enter__(self) -> "RunStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ the log
    def append(self, event: dict[str, Any]) -> None:
        """Write one event durably (one write, flush, fsync) before anything acts on it."""
        if self._log is None:
            raise RunError(f"{self.path} is open read-only")
        self._log.write((json.dumps(event, separators=(",", ":")) + "\n").encode())
        self._log.flush()
        os.fsync(self._log.fileno())
        self.events.append(event)

    def results(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == "result"]

    def budget(self) -> int:
        budgets = [e["evaluations"] for e in self.events if e["type"] == "budget"]
        return budgets[-1] if budgets else int(self.config["evaluations"])

    # ------------------------------------------------------------------ checkpoints and archive
    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """The searcher's state after ``len(self.events)`` events."""
        atomic_write_bytes(self.path / CHECKPOINT, pickle.dumps({"events": len(self.events), "state": state}))

    def load_checkpoint(self) -> tuple[int, dict[str, Any]] | None:
        """``(events covered, state)``, or ``None`` when missing or unusable (the log is replayed instead)."""
        try:
            data = pickle.loads((self.path / CHECKPOINT).read_bytes())
            return int(data["events"]), data["state"]
        except (OSError, pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, AttributeError):
            return None

    def save_archive(self, archive: dict[str, Any]) -> None:
        atomic_write_bytes(self.path / ARCHIVE, json.dumps(archive, indent=1).encode())


def _read_log(path: Path) -> tuple[list[dict[str, Any]], int, bool]:
    """Events, the byte length of the complete ones, and whether a torn last record was dropped."""
    data = path.read_bytes()
    events, offset = [], 0
    lines = data.split(b"\n")
    for i, line in enumerate(lines):
        last = i == len(lines) - 1
        if last and not line:
            break                                     # the file ends with a complete line
        try:
            event = json.loads(line)
            if not isinstance(event, dict) or "type" not in event:
                raise ValueError("not an event")
        except ValueError:
            if last or (i == len(lines) - 2 and not lines[-1]):
                return events, offset, True           # a torn (or garbled) last record
            raise RunError(f"{path} is corrupt at line {i + 1}, before its last record; the run cannot be "
                           "continued safely (restore the file from a backup or start a new run)") from None
        if last:
            return events, offset, True               # complete JSON but no newline: written, not synced
        events.append(event)
        offset += len(line) + 1
    return events, offset, False


def _lock(path: Path) -> int:
    fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise RunError(f"{path} is open for writing by {holder}; wait for it to finish or stop it first") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
    return fd


def _unlock(fd: int | None) -> None:
    if fd is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
