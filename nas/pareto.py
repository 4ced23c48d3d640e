"""Pareto fronts and hypervolume for minimisation problems."""

from __future__ import annotations

import numpy as np


def non_dominated(objectives: np.ndarray) -> np.ndarray:
    """Boolean mask of the rows no other row dominates (all objectives minimised; ties are kept)."""
    f = np.asarray(objectives, dtype=float)
    n = len(f)
    mask = np.ones(n, dtype=bool)
    finite = np.all(np.isfinite(f), axis=1)
    mask &= finite
    order = np.lexsort(f.T[::-1])                        # by first objective, then the next ...
    front: list[int] = []
    for i in order:
        if not finite[i]:
            continue
        if front:
            others = f[front]
            if np.any(np.all(others <= f[i], axis=1) & np.any(others < f[i], axis=1)):
                mask[i] = False
                continue
        front.append(i)
    return mask


def hypervolume(objectives: np.ndarray, reference: np.ndarray) -> float:
    """Volume dominated by ``objectives`` and bounded by ``reference`` (points beyond it count nothing).

    Exact sweep for two objectives; pymoo's exact indicator for more.
    """
    f = np.asarray(objectives, dtype=float)
    ref = np.asarray(reference, dtype=float)
    f = f[np.all(f < ref, axis=1) & np.all(np.isfinite(f), axis=1)]
    if len(f) == 0:
        return 0.0
    if f.shape[1] == 2:
        f = f[np.lexsort((f[:, 1], f[:, 0]))]
        volume, best_y = 0.0, ref[1]
        for x, y in f:
            if y < best_y:
                volume += (ref[0] - x) * (best_y - y)
                best_y = y
        return float(volume)
    from pymoo.indicators.hv import HV

    return float(HV(ref_point=ref)(f))
