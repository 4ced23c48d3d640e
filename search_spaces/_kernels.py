"""Compiled inner loops for scoring millions of encodings per second.

Scoring a batch is memory-bound: numpy needs several full-size temporaries per gather, numba reads
each encoding row once. Both kernels validate every gene against its cardinality while they read,
so callers need no separate pass over the batch; they return the flat index of the first bad gene
(or -1) and leave raising the error to Python.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def first_out_of_range(v: np.ndarray, cardinalities: np.ndarray) -> int:
    """Flat index ``row * genes + gene`` of the first gene outside ``0..cardinality-1``, else -1."""
    n, g = v.shape
    for i in range(n):
        for j in range(g):
            x = v[i, j]
            if x < 0 or x >= cardinalities[j]:
                return i * g + j
    return -1


@numba.njit(cache=True, nogil=True)
def block_table_sum(v: np.ndarray, n_blocks: int, blocks_per_stage: int, fixed: np.ndarray, table: np.ndarray,
                    extra_cards: np.ndarray, out: np.ndarray) -> int:
    """Score OFA-style encodings ``[k_0..k_B, e_0..e_B, d_0..d_S, r, x1_0..x1_B, x2_0..]`` from a folded table.

    ``out[i] = fixed[r] + sum_b table[r, b, k_b, e_b, x_b, d_stage(b)]`` with ``table`` of shape
    ``(R, B, K, E, X, D)``. ``x_b`` combines block ``b``'s optional per-block genes (keep ratio, bit-width),
    one group of ``B`` columns each after ``r``, with cardinalities ``extra_cards``, in mixed radix (the
    last group varies fastest); with no such genes ``X = 1``. Genes are range-checked as they are read;
    returns the flat index of the first out-of-range gene, else -1.
    """
    n, g = v.shape
    n_r, n_b, n_k, n_e, n_x, n_d = table.shape
    flat = table.ravel()
    sx = n_d
    se = n_x * sx
    sk = n_e * se
    sb = n_k * sk
    sr = n_b * sb
    d_col = 2 * n_blocks
    n_stages = n_blocks // blocks_per_stage
    r_col = d_col + n_stages
    for i in range(n):
        r = v[i, r_col]
        if r < 0 or r >= n_r:
            return i * g + r_col
        acc = fixed[r]
        base = r * sr
        for s in range(n_stages):                 # nested loops: no division per block
            d = v[i, d_col + s]
            if d < 0 or d >= n_d:
                return i * g + d_col + s
            for j in range(blocks_per_stage):
                b = s * blocks_per_stage + j
                k, e = v[i, b], v[i, n_blocks + b]
                if k < 0 or k >= n_k:
                    return i * g + b
                if e < 0 or e >= n_e:
                    return i * g + n_blocks + b
                x = 0
                for m in range(extra_cards.shape[0]):
                    col = r_col + 1 + m * n_blocks + b
                    value = v[i, col]
                    if value < 0 or value >= extra_cards[m]:
                        return i * g + col
                    x = x * extra_cards[m] + value
                acc += flat[base + b * sb + k * sk + e * se + x * sx + d]
        out[i] = acc
    return -1
