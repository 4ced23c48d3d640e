"""Quantisation noise: the stand-in for real quantisation during a QuantNAS search.

QuantNAS (Shvetsov, Osin et al., arXiv 2208.14839, §III; reference ``quant_noise`` and
``QuaNoiseConv2d`` in ``On-Point-RND/QuantNAS/sr_models/quant_conv_lsq.py``) replaces the
rounding of a ``b``-bit quantiser by additive noise of the size of one quantisation step, and mixes the
noisy versions of a tensor over the layer's bit choices (ALGORITHMS.md §6.2)::

    QN_b(T) = T + Δ_b·ξ,   Δ_b = (max T − min T) / (2^b − 1)
    T̃ = T/(B+1) + Σ_b π̂_b · sg(QN_b(T)),   π̂_b = π_b / (Σπ + 1/(B+1))

:func:`mix_quant_noise` computes ``T̃`` in one pass (one range, one Gaussian draw), which is what makes
the noise search cheaper than direct quantisation, where every bit-width's quantised tensor is built.
``sg`` (stop-gradient) is deliberate and follows the reference: the weights learn only through the
full-precision term ``T/(B+1)``; the probabilities ``π`` learn through the mixing coefficients ``π̂``.
The coefficients do not sum to one (for ``Σπ = 1``, ``B = 2`` the tensor is scaled by 13/12 in
expectation); this too is the reference behaviour, kept as written.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

NOISE_KINDS = ("gaussian", "uniform")


def noise_steps(tensor: torch.Tensor, bits: Sequence[int]) -> torch.Tensor:
    """``Δ_b`` for each of ``bits``: one quantisation step of a ``b``-bit uniform grid spanning the whole
    tensor's range (batch included, as the reference takes it), from one pass over the tensor; detached."""
    low, high = torch.aminmax(tensor.detach())
    return (high - low) / torch.tensor([2 ** b - 1 for b in bits], dtype=tensor.dtype, device=tensor.device)


def mix_quant_noise(tensor: torch.Tensor, pi: torch.Tensor, bits: Sequence[int], kind: str = "gaussian",
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """``T̃ = T/(B+1) + Σ_b π̂_b · sg(QN_b(T))`` with ``π̂_b = π_b / (Σπ + 1/(B+1))``, in one pass.

    Written out, ``Σ_b π̂_b · sg(QN_b(T)) = (Σ_b π̂_b) · sg(T) + Σ_b π̂_b Δ_b ξ_b``: the range of ``T``
    (hence every ``Δ_b``) is taken once, and for Gaussian noise the sum of the ``B`` independent draws is
    one draw, ``Σ_b π̂_b Δ_b ξ_b ~ ‖π̂ ⊙ Δ‖ · N(0, 1)/2``, so the whole mixture costs one random tensor
    and a few element-wise operations, whatever ``B``; drawing ``QN_b(T)`` per bit-width costs
    ``B`` random tensors and ``B`` range reductions, and made noise-mode search no faster than direct
    quantisation. The value has exactly the reference's distribution. The gradient to ``T`` is the
    reference's (``1/(B+1)``); the gradient to ``π`` is the reparameterisation gradient of the one draw
    (``sg(T) + π̂_b Δ_b² ξ / ‖π̂ ⊙ Δ‖`` per element instead of ``sg(T) + Δ_b ξ_b``): a different sample,
    the same expectation. Uniform noise has no such closed sum and draws once per bit-width.

    Args:
        tensor: the full-precision tensor ``T`` (gradients flow to it with factor ``1/(B+1)``).
        pi: the ``B`` probabilities of the layer's bit choices (a slice of a softmax over a joint
            (op, bits) vector, so ``Σπ`` may be below one); gradients flow to it.
        bits: the ``B`` bit-widths, in ``pi``'s order.
        kind: ``"gaussian"`` for ξ ~ N(0, 1)/2 (the reference code's default) or ``"uniform"`` for
            ξ ~ U(−½, ½) (DiffQ's pseudo-quantisation noise, which the paper cites).
        generator: the random stream; torch's global one when ``None``.

    Raises:
        ValueError: when ``pi`` and ``bits`` differ in length, or for an unknown ``kind``.
    """
    if pi.dim() != 1 or len(pi) != len(bits):
        raise ValueError(f"pi has shape {tuple(pi.shape)} for {len(bits)} bit choices")
    if kind not in NOISE_KINDS:
        raise ValueError(f"unknown quantisation noise {kind!r}; known: {', '.join(NOISE_KINDS)}")
    beta = 1.0 / (len(bits) + 1)
    pi_hat = pi / (pi.sum() + beta)
    fixed, steps = tensor.detach(), noise_steps(tensor, bits)
    if kind == "gaussian":
        xi = torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype, device=tensor.device)
        noise = xi * (torch.linalg.vector_norm(pi_hat * steps) / 2)
    else:
        draws = torch.rand((len(bits), *tensor.shape), generator=generator, dtype=tensor.dtype,
                           device=tensor.device) - 0.5
        noise = torch.tensordot(pi_hat * steps, draws, dims=1)
    return beta * tensor + pi_hat.sum() * fixed + noise
