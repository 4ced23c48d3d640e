"""Measuring many subnets of a space on a device."""

from __future__ import annotations

from typing import Callable

import numpy as np

from evaluators.devices import Device
from search_spaces import SearchSpace


def measure_subnets(space: SearchSpace, device: Device, vectors: np.ndarray, *, warmup: int = 10, runs: int = 30,
                    on_done: Callable[[int], None] | None = None) -> np.ndarray:
    """Median latency (ms) of each extracted subnet on ``device``, measured one after another."""
    out = np.empty(len(vectors))
    for i, config in enumerate(space.decode(space.check_vectors(vectors))):
        model = space.extract(config)
        out[i] = device.measure(model, space.example_input(config), warmup=warmup, runs=runs).median_ms
        if on_done is not None:
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
