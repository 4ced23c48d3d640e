"""Latency of a model on this machine: warm-up, repeated timed runs, median and spread.

Threads and batch size are stated and controlled: on a shared CPU, oversubscribed intra-op
threads make timings 10-40x slower and meaningless, so measurements default to one thread.
On a GPU, each run is timed with CUDA events after a synchronisation.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import numpy as np
import torch


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


def _time_cpu(model: torch.nn.Module, x: torch.Tensor, runs: int) -> np.ndarray:
    samples = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter()
        model(x)
        samples[i] = (time.perf_counter() - start) * 1e3
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
                    threads: int = 1) -> LatencyStats:
    """Time ``model(example_input)`` in eval mode under ``torch.inference_mode``.

    The model and input stay on their device; on CUDA the result is timed with events.
    """
    was_training = model.training
    model.eval()
    timer = _time_cuda if example_input.is_cuda else _time_cpu
    try:
        with torch_threads(threads), torch.inference_mode():
            for _ in range(warmup):
                model(example_input)
            samples = timer(model, example_input, runs)
    finally:
        model.train(was_training)
    return LatencyStats.from_samples(samples, warmup=warmup, batch=int(example_input.shape[0]),
                                     threads=threads, device=str(example_input.device))
