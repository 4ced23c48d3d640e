"""Measuring many models (subnets, single layers) on a device, robustly on a shared machine.

On a shared or virtualised CPU, contention comes in bursts lasting up to seconds, and a burst can
inflate one model's median by 30-50 %. So models are measured in ``rounds`` interleaved passes (each
a warm-up then ``runs`` timed runs), and each model's latency is the smallest of its per-round
medians: a burst spoils a round, rarely all of them. The per-round medians are kept for the spread.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from evaluators.devices import Device
from search_spaces import SearchSpace


def measure_models(models: Sequence[tuple[torch.nn.Module, torch.Tensor]], device: Device, *, warmup: int = 5,
                   runs: int = 10, rounds: int = 3, on_round: Callable[[int], None] | None = None) -> np.ndarray:
    """``(len(models), rounds)`` per-round median latencies (ms), models interleaved within each round."""
    medians = np.empty((len(models), rounds))
    for r in range(rounds):
        for i, (model, x) in enumerate(models):
            medians[i, r] = device.measure(model, x, warmup=warmup, runs=runs).median_ms
        if on_round is not None:
            on_round(r)
    return medians


def robust_latency(medians: np.ndarray) -> np.ndarray:
    """The latency estimate from per-round medians: their minimum."""
    return medians.min(axis=1)


def measure_subnets(space: SearchSpace, device: Device, vectors: np.ndarray, *, warmup: int = 5, runs: int = 10,
                    rounds: int = 3, on_done: Callable[[int], None] | None = None) -> np.ndarray:
    """Latency (ms) of each extracted subnet on ``device`` (see the module docstring)."""
    out = np.empty(len(vectors))
    configs = space.decode(space.check_vectors(vectors))
    # Rounds interleave the models of a chunk: the larger the chunk, the further apart in time a model's
    # rounds are, and the less one burst of contention spoils them all; the smaller, the fewer extracted
    # models are alive at once. 64 OFA-MBv3 w0.5 subnets at 10-30 ms each put 20-60 s between rounds.
    chunk = 64
    for start in range(0, len(configs), chunk):
        batch = configs[start:start + chunk]
        models = [(space.extract(c), space.example_input(c)) for c in batch]
        out[start:start + len(batch)] = robust_latency(measure_models(models, device, warmup=warmup, runs=runs,
                                                                      rounds=rounds))
        if on_done is not None:
            for i in range(start, start + len(batch)):
                on_done(i)
    return out


def unique_random_vectors(space: SearchSpace, n: int, seed: int) -> np.ndarray:
    """``n`` random encodings with distinct canonical forms (fewer if the space is smaller)."""
    rng = np.random.default_rng(seed)
    seen: dict[bytes, np.ndarray] = {}
    for _ in range(100):
        for v in space.canonical(space.random_vectors(max(n, 16), rng)):
            seen.setdefault(v.tobytes(), v)
            if len(seen) == n:
                return np.stack(list(seen.values()))
    return np.stack(list(seen.values()))
