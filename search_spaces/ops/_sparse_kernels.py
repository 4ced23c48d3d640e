"""Compiled CPU kernels of the sparse execution path (``search_spaces.ops.sparse``), one thread each.

Both kernels read the weight as CSR rows (one row per output channel or feature). Indices are
unsigned and every inner loop indexes a slice with its ``range`` counter: numba then drops the
negative-index wrap-around check, and LLVM vectorises the loops (4-5x faster than plain indexing).

The convolution is a *direct* sparse convolution (no im2col): each non-zero weight adds a shifted
copy of one input plane to its output plane. The input is first zero-padded and split into
``stride_h * stride_w`` phase planes (space-to-depth), which turns any stride into stride 1 on the
phases; a whole output plane is then one contiguous multiply-add over ``ho * wq`` elements
("wide" rows whose last ``wq - wo`` columns are discarded), four non-zeros at a time.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def phase_planes(x: np.ndarray, pad_h: int, pad_w: int, stride_h: int, stride_w: int, hq: int, wq: int,
                 tail: int) -> np.ndarray:
    """Flat zero-padded phases ``(n, c, stride_h, stride_w, hq, wq)`` of ``x`` ``(n, c, h, w)``, then ``tail`` zeros.

    Phase ``(a, b)`` holds the padded pixels ``(r * stride_h + a, q * stride_w + b)`` at ``(r, q)``.
    """
    n, c, h, w = x.shape
    plane = hq * wq
    buf = np.zeros(n * c * stride_h * stride_w * plane + tail, dtype=x.dtype)
    for s in range(n * c):
        src = x[s // c, s % c]
        for i in range(h):
            y = i + pad_h
            row = ((s * stride_h + y % stride_h) * stride_w) * plane + (y // stride_h) * wq
            if stride_w == 1:
                dst = buf[row + pad_w:row + pad_w + w]
                line = src[i]
                for j in range(w):
                    dst[j] = line[j]
            else:
                for j in range(w):
                    z = j + pad_w
                    buf[row + (z % stride_w) * plane + z // stride_w] = src[i, j]
    return buf


@numba.njit(cache=True, nogil=True)
def _accumulate(acc: np.ndarray, x: np.ndarray, base: int, offsets: np.ndarray, values: np.ndarray, p0: int,
                p1: int) -> None:
    """``acc += sum_p values[p] * x[base + offsets[p]:][:len(acc)]`` for ``p`` in ``p0..p1-1``."""
    span = acc.shape[0]
    p = p0
    while p + 4 <= p1:
        v0, v1, v2, v3 = values[p], values[p + 1], values[p + 2], values[p + 3]
        x0 = x[base + offsets[p]:base + offsets[p] + span]
        x1 = x[base + offsets[p + 1]:base + offsets[p + 1] + span]
        x2 = x[base + offsets[p + 2]:base + offsets[p + 2] + span]
        x3 = x[base + offsets[p + 3]:base + offsets[p + 3] + span]
        for t in range(span):
            acc[t] += v0 * x0[t] + v1 * x1[t] + v2 * x2[t] + v3 * x3[t]
        p += 4
    while p < p1:
        v0 = values[p]
        x0 = x[base + offsets[p]:base + offsets[p] + span]
        for t in range(span):
            acc[t] += v0 * x0[t]
        p += 1


@numba.njit(cache=True, nogil=True)
def sparse_conv(phases: np.ndarray, n_batch: int, sample: int, indptr: np.ndarray, offsets: np.ndarray,
                values: np.ndarray, bias: np.ndarray, ho: int, wo: int, wq: int) -> np.ndarray:
    """``out[n, o] = bias[o] + sum of values[p] * (phase plane shifted by offsets[p])`` over row ``o``'s non-zeros.

    ``offsets`` index one sample's phases (``sample`` elements each); returns ``out`` of shape
    ``(n_batch, cout, ho, wo)``. When ``wq == wo`` (no discarded columns) the sums go straight into it.
    """
    cout = indptr.shape[0] - 1
    out = np.empty((n_batch, cout, ho, wo), dtype=phases.dtype)
    flat = out.reshape(n_batch, cout, ho * wo)
    wide = np.empty(ho * wq, dtype=phases.dtype)
    for n in range(n_batch):
        for o in range(cout):
            acc = flat[n, o] if wq == wo else wide
            b = bias[o]
            for t in range(ho * wq):
                acc[t] = b
            _accumulate(acc, phases, n * sample, offsets, values, indptr[o], indptr[o + 1])
            if wq != wo:
                for h in range(ho):
                    dst = out[n, o, h]
                    src = wide[h * wq:h * wq + wo]
                    for w in range(wo):
                        dst[w] = src[w]
    return out


@numba.njit(cache=True, nogil=True, fastmath=True)
def sparse_linear(x: np.ndarray, indptr: np.ndarray, indices: np.ndarray, values: np.ndarray,
                  bias: np.ndarray) -> np.ndarray:
    """``out[n, o] = bias[o] + sum_p values[p] * x[n, indices[p]]`` over row ``o``'s non-zeros (CSR)."""
    out = np.empty((x.shape[0], indptr.shape[0] - 1), dtype=x.dtype)
    for n in range(x.shape[0]):
        xn = x[n]
        for o in range(indptr.shape[0] - 1):
            p0, p1 = indptr[o], indptr[o + 1]
            cols, vals = indices[p0:p1], values[p0:p1]
            acc = bias[o]
            for t in range(p1 - p0):
                acc += vals[t] * xn[cols[t]]
            out[n, o] = acc
    return out
