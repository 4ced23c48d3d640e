"""``ray``: evaluate on a Ray cluster with long-lived workers, results streamed back as each finishes.

Each worker is a Ray actor that builds the run's measures once (``nas.search.build_measures``: space,
supernet, data, predictors) and then evaluates one candidate per call. ``cpus_per_eval`` and
``gpus_per_eval`` are each actor's Ray resources (Ray sets ``OMP_NUM_THREADS`` to its CPU count). The
driver keeps every worker busy and logs every result itself, so the run store stays the only record.

Failures:

* an evaluation that raises is a failed result carrying its message (``evaluate_candidates``);
* a worker that dies (process killed, node lost) is replaced, and its candidate goes to the next free
  worker, up to ``retries`` times; after that the candidate is recorded as failed;
* start-up problems are one ``NasError`` before any evaluation: an address nothing listens at, a
  cluster without the CPUs or GPUs asked for, workers that cannot import ``nas`` or build the measures,
  workers not ready within ``start_timeout_s``.

Addresses: ``"local"`` starts a private Ray instance for the search (no dashboard, usage stats off)
and shuts it down at the end; ``"auto"`` or ``"HOST:PORT"`` joins a running cluster and leaves it
running; ``None`` uses the Ray connection this process already has (``ray.init`` by the caller, for
instance with a ``runtime_env`` whose ``worker_process_setup_hook`` registers the caller's own
objectives or backends on every worker).
"""

from __future__ import annotations

import logging
import math
import os
import re
import socket
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nas.errors import ConfigError, NasError
from nas.executors.base import Executor, Outcome, evaluate_candidates, register
from nas.objectives import Objective

logger = logging.getLogger(__name__)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class EvaluationWorker:
    """The Ray actor: builds the run's measures once, then evaluates one candidate per call."""

    def __init__(self, config: dict[str, Any], run: str | None):
        from nas.search import build_measures

        self.measures = build_measures(config, None if run is None else Path(run))

    def ready(self) -> bool:
        return True

    def evaluate(self, vector: np.ndarray) -> Outcome:
        return evaluate_candidates(self.measures, np.asarray(vector)[None, :])[0]


@dataclass
class _Task:
    actor: Any
    vector: np.ndarray
    attempts: int           # how many of its workers died so far


@register("ray")
class RayExecutor(Executor):
    """Ray actors as workers (see the module docstring).

    Args:
        address: ``"local"``, ``"auto"``, ``"HOST:PORT"``, or ``None`` for this process's Ray connection.
        workers: number of actors; by default as many as the cluster's resources hold.
        cpus_per_eval, gpus_per_eval: Ray resources of each actor.
        retries: how many times a candidate is re-issued after its worker died.
        runtime_env: Ray runtime environment of the actors (``working_dir``, ``pip``, ``env_vars``...).
        start_timeout_s: how long the actors may take to start (import, build the measures).
    """

    def __init__(self, address: str | None = "local", workers: int | None = None, cpus_per_eval: float = 1.0,
                 gpus_per_eval: float = 0.0, retries: int = 2, runtime_env: dict[str, Any] | None = None,
                 start_timeout_s: float = 300.0):
        if workers is not None and workers < 1:
            raise ConfigError(f"--workers must be at least 1; got {workers}")
        if cpus_per_eval <= 0 or gpus_per_eval < 0:
            raise ConfigError(f"--cpus-per-eval must be positive and --gpus-per-eval not negative; got "
                              f"{cpus_per_eval:g} and {gpus_per_eval:g}")
        if retries < 0:
            raise ConfigError(f"--retries must not be negative; got {retries}")
        self.address, self.workers, self.retries = address, workers, retries
        self.cpus_per_eval, self.gpus_per_eval = cpus_per_eval, gpus_per_eval
        self.runtime_env, self.start_timeout_s = runtime_env, start_timeout_s
        self._ray: Any = None
        self._actor_class: Any = None
        self._owns_connection = False
        self._worker_args: tuple[dict[str, Any], str | None] = ({}, None)
        self._names: list[str] = []
        self._actors: list[Any] = []
        self.idle: deque[Any] = deque()
        self.queue: deque[tuple[np.ndarray, int]] = deque()
        self.running: dict[Any, _Task] = {}
        self.starting: dict[Any, Any] = {}

    # ------------------------------------------------------------------ start
    def start(self, config: dict[str, Any], run: Path | None, measures: dict[str, Objective]) -> None:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        import ray

        self._connect(ray)
        self.slots = self._worker_count()
        self._names = list(measures)
        self._worker_args = (config, None if run is None else str(run))
        self._actor_class = ray.remote(EvaluationWorker)
        actors = [self._new_actor() for _ in range(self.slots)]
        self._await_ready(actors)
        self.idle.extend(actors)

    def _connect(self, ray: Any) -> None:
        if self.address not in (None, "local", "auto"):
            _probe(self.address)
        if self.address is None:
            if not ray.is_initialized():
                raise ConfigError("address=None runs on this process's Ray connection, and there is none: "
                                  "call ray.init() first or pass an address ('local', 'auto', HOST:PORT)")
            self._ray = ray
            return
        if ray.is_initialized():
            raise ConfigError(f"this process is already connected to Ray; pass address=None to search on that "
                              f"connection rather than {self.address!r}")
        if self.address == "local":
            ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        else:
            try:
                ray.init(address=self.address, log_to_driver=False, logging_level=logging.WARNING)
            except Exception as exc:  # noqa: BLE001  (refused, version mismatch...: Ray's words, one line)
                raise NasError(f"cannot join the Ray cluster at --ray {self.address}: {_last_line(exc)}") from None
        self._ray, self._owns_connection = ray, True

    def _worker_count(self) -> int:
        """``workers``, or as many as fit; refuses what the cluster cannot hold."""
        total = self._ray.cluster_resources()
        cpus, gpus = float(total.get("CPU", 0)), float(total.get("GPU", 0))
        if self.gpus_per_eval > gpus:
            raise NasError(f"the Ray cluster has {gpus:g} GPUs; --gpus-per-eval {self.gpus_per_eval:g} needs at "
                           "least that many")
        fits = math.floor(cpus / self.cpus_per_eval + 1e-9)
        if self.gpus_per_eval:
            fits = min(fits, math.floor(gpus / self.gpus_per_eval + 1e-9))
        workers = self.workers or fits
        if not 1 <= workers <= fits:
            raise NasError(f"{workers} workers of {self.cpus_per_eval:g} CPUs and {self.gpus_per_eval:g} GPUs do "
                           f"not fit the Ray cluster ({cpus:g} CPUs, {gpus:g} GPUs); lower --workers, "
                           "--cpus-per-eval or --gpus-per-eval")
        return workers

    def _new_actor(self) -> Any:
        options: dict[str, Any] = {"num_cpus": self.cpus_per_eval, "num_gpus": self.gpus_per_eval, "max_restarts": 0}
        if self.runtime_env:
            options["runtime_env"] = self.runtime_env
        actor = self._actor_class.options(**options).remote(*self._worker_args)
        self._actors.append(actor)
        return actor

    def _await_ready(self, actors: list[Any]) -> None:
        refs = [actor.ready.remote() for actor in actors]
        done, pending = self._ray.wait(refs, num_returns=len(refs), timeout=self.start_timeout_s)
        for ref in done:
            self._check_started(ref)
        if pending:
            raise NasError(f"{len(pending)} of {len(refs)} Ray workers did not start within "
                           f"{self.start_timeout_s:g} s; the cluster may lack free CPUs or GPUs for them")

    def _check_started(self, ref: Any) -> None:
        try:
            self._ray.get(ref)
        except self._ray.exceptions.RayError as exc:
            line = _last_line(exc)
            hint = (" (install the nas project wherever the Ray workers run, or give the executor a runtime_env "
                    "that provides it)" if "ModuleNotFoundError" in line or "ImportError" in line else "")
            raise NasError(f"Ray workers could not start: {line}{hint}") from None

    # ------------------------------------------------------------------ evaluate
    def submit(self, vectors: np.ndarray) -> None:
        self.queue.extend((np.asarray(v), 0) for v in np.atleast_2d(vectors))
        self._dispatch()

    def _dispatch(self) -> None:
        while self.idle and self.queue:
            actor = self.idle.popleft()
            vector, attempts = self.queue.popleft()
            self.running[actor.evaluate.remote(vector)] = _Task(actor, vector, attempts)

    def wait(self) -> list[Outcome]:
        finished: list[Outcome] = []
        while not finished:
            refs = [*self.running, *self.starting]
            if not refs:
                raise RuntimeError("wait() with nothing submitted")
            self._ray.wait(refs, num_returns=1)
            ready, _ = self._ray.wait(refs, num_returns=len(refs), timeout=0)
            for ref in ready:
                if ref in self.starting:
                    self._check_started(ref)
                    self.idle.append(self.starting.pop(ref))
                else:
                    finished.extend(self._collect(ref))
            self._dispatch()
        return finished

    def _collect(self, ref: Any) -> list[Outcome]:
        """The outcome behind a finished call; none when its worker died and the candidate is re-issued."""
        task = self.running.pop(ref)
        errors = self._ray.exceptions
        try:
            outcome = self._ray.get(ref)
        except errors.RayActorError as exc:
            self._replace(task.actor)
            if task.attempts < self.retries:
                logger.warning("a Ray worker died while evaluating %s (%s); re-issuing it", task.vector.tolist(),
                               _last_line(exc))
                self.queue.appendleft((task.vector, task.attempts + 1))
                return []
            return [self._failed(task.vector, f"its Ray worker died {task.attempts + 1} times while evaluating it "
                                              f"(last: {_last_line(exc)})")]
        except errors.RayTaskError as exc:
            if isinstance(exc.cause, NasError):
                raise exc.cause from None
            outcome = self._failed(task.vector, _last_line(exc))
        self.idle.append(task.actor)
        return [outcome]

    def _replace(self, actor: Any) -> None:
        """Start a new worker in place of a dead (or unreachable) one; it joins when ready."""
        self._ray.kill(actor, no_restart=True)
        self._actors.remove(actor)
        new = self._new_actor()
        self.starting[new.ready.remote()] = new

    def _failed(self, vector: np.ndarray, error: str) -> Outcome:
        return Outcome(vector, {name: math.nan for name in self._names}, error, 0.0)

    # ------------------------------------------------------------------ close
    def close(self) -> None:
        if self._ray is None:
            return
        for actor in self._actors:
            self._ray.kill(actor, no_restart=True)
        self._actors, self.idle, self.queue, self.running, self.starting = [], deque(), deque(), {}, {}
        if self._owns_connection:
            self._ray.shutdown()
        self._ray = None


def _probe(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast on an address nothing listens at (``ray.init`` would retry for minutes)."""
    host, sep, port = address.split("://", 1)[-1].rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"--ray {address!r} is not 'local', 'auto' or HOST:PORT")
    try:
        socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise NasError(f"cannot reach a Ray cluster at --ray {address}: {exc.strerror or exc}") from None


def _last_line(exc: BaseException) -> str:
    """The last line of a (Ray) error: the original exception, without colours or module path."""
    lines = [line.strip() for line in _ANSI.sub("", str(exc)).splitlines() if line.strip()]
    line = lines[-1] if lines else type(exc).__name__
    return re.sub(r"^(?:[A-Za-z_]\w*\.)+(?=\w+(?:Error|Exception)\b)", "", line)
