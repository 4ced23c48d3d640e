"""Latency of a model on this machine: warm-up, repeated timed runs, median and spread.

Threads and batch size are stated and controlled: on a shared CPU, oversubscribed intra-op
threads make timings 10-40x slower and meaningless, so measurements default to one thread.
On a GPU, each run is timed with CUDA events after a synchronisation.

On the CPU a run is timed by one of :data:`CLOCKS`. ``wall`` is elapsed time. ``thread`` is the CPU
time of the measuring thread: a single-threaded run (torch with one intra-op thread, ONNX Runtime with
``intra_op_num_threads=1``) computes entirely in that thread, so on a dedicated core the two agree,
while on a shared machine ``thread`` leaves out the time the OS gives other processes. On this project's
shared 2-core VM under load that cut the run-to-run spread of the same subnets from 41-75 % (wall) to
15-16 % (thread). It cannot remove what slows the thread itself (a busy host, clock-speed drift): with
the VM idle both clocks still spread 12 %. ``auto`` takes ``thread`` for one thread on the CPU and ``wall`` otherwise; a multi-threaded
run must use ``wall``, since the other threads' time would not be counted.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from nas.errors import ConfigError


@dataclass(frozen=True)
class LatencyStats:
    """Summary of repeated timings of one model, in milliseconds."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    mean_ms: float
    std_ms: float
    runs: int
    warmup: int
    batch: int
    threads: int
    device: str
    clock: str = "wall"

    @property
    def spread(self) -> float:
        """Relative spread (p90 - p10) / median: the run-to-run instability."""
        return (self.p90_ms - self.p10_ms) / self.median_ms if self.median_ms else 0.0

    @classmethod
    def from_samples(cls, samples_ms: np.ndarray, **info) -> "LatencyStats":
        p10, med, p90 = np.percentile(samples_ms, [10, 50, 90])
        return cls(float(med), float(p10), float(p90), float(samples_ms.mean()), float(samples_ms.std()),
                   runs=len(samples_ms), **info)


@contextlib.contextmanager
def torch_threads(n: int):
    """Run the body with ``n`` intra-op threads, restoring the previous count after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "thread": time.thread_time}
CLOCK_CHOICES = ("auto", *CLOCKS)


def resolve_clock(clock: str, threads: int, on_cpu: bool = True) -> str:
    """The clock ``clock`` stands for (``auto``: ``thread`` for one CPU thread, else ``wall``).

    Raises:
        ConfigError: an unknown clock, or ``thread`` for a multi-threaded or GPU run.
    """
    if clock not in CLOCK_CHOICES:
        raise ConfigError(f"unknown latency clock {clock!r}; choose one of {', '.join(CLOCK_CHOICES)}")
    single = on_cpu and threads == 1
    if clock == "auto":
        return "thread" if single else "wall"
    if clock == "thread" and not single:
        raise ConfigError("the 'thread' clock times single-threaded CPU runs only (it would miss the other "
                          f"threads' time); got {threads} threads on {'the CPU' if on_cpu else 'a GPU'}: use 'wall'")
    return clock


def time_runs(fn: Callable[[], object], runs: int, clock: str = "wall") -> np.ndarray:
    """Milliseconds of each of ``runs`` calls of ``fn``, timed by ``CLOCKS[clock]``."""
    now = CLOCKS[clock]
    samples = np.empty(runs)
    for i in range(runs):
        start = now()
        fn()
        samples[i] = (now() - start) * 1e3
    return samples


def _time_cuda(model: torch.nn.Module, x: torch.Tensor, runs: int) -> np.ndarray:
    samples = np.empty(runs)
    for i in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(x.device)
        start.record()
        model(x)
        end.record()
        torch.cuda.synchronize(x.device)
        samples[i] = start.elapsed_time(end)
    return samples


def measure_latency(model: torch.nn.Module, example_input: torch.Tensor, *, warmup: int = 10, runs: int = 50,
                    threads: int = 1, clock: str = "auto") -> LatencyStats:
    """Time ``model(example_input)`` in eval mode under ``torch.inference_mode``.

    The model and input stay on their device; on CUDA the result is timed with events, on the CPU by
    ``clock`` (see the module docstring).
    """
    on_cpu = not example_input.is_cuda
    clock = resolve_clock(clock, threads, on_cpu)
    was_training = model.training
    model.eval()
    try:
        with torch_threads(threads), torch.inference_mode():
            for _ in range(warmup):
                model(example_input)
            if on_cpu:
                samples = time_runs(lambda: model(example_input), runs, clock)
            else:
                samples = _time_cuda(model, example_input, runs)
    finally:
        model.train(was_training)
    return LatencyStats.from_samples(samples, warmup=warmup, batch=int(example_input.shape[0]),
                                     threads=threads, device=str(example_input.device),
                                     clock=clock if on_cpu else "cuda-events")
