"""Quantisation noise: the stand-in for real quantisation during a QuantNAS search.

QuantNAS (Shvetsov, Osin et al., arXiv 2208.14839, §III; reference ``quant_noise`` and
``QuaNoiseConv2d`` in ``On-Point-RND/QuantNAS/sr_models/quant_conv_lsq.py``) replaces the
rounding of a ``b``-bit quantiser by additive noise of the size of one quantisation step, and mixes the
noisy versions of a tensor over the layer's bit choices (ALGORITHMS.md §6.2)::

    QN_b(T) = T + Δ_b·ξ,   Δ_b = (max T − min T) / (2^b − 1)
    T̃ = T/(B+1) + Σ_b π̂_b · sg(QN_b(T)),   π̂_b = π_b / (Σπ + 1/(B+1))

``sg`` (stop-gradient) is deliberate and follows the reference: the weights learn only through the
full-precision term ``T/(B+1)``; the probabilities ``π`` learn through the mixing coefficients ``π̂``.
The coefficients do not sum to one (for ``Σπ = 1``, ``B = 2`` the tensor is scaled by 13/12 in
expectation); this too is the reference behaviour, kept as written.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

NOISE_KINDS = ("gaussian", "uniform")


def noise_step(tensor: torch.Tensor, bits: int) -> torch.Tensor:
    """``Δ_b``: one quantisation step of a ``bits``-bit uniform grid spanning the whole tensor's range."""
    return (tensor.max() - tensor.min()) / (2 ** bits - 1)


def quant_noise(tensor: torch.Tensor, bits: int, kind: str = "gaussian",
                generator: torch.Generator | None = None) -> torch.Tensor:
    """``sg(QN_b(T))``: the tensor plus one step of noise, detached from the graph.

    Args:
        tensor: the tensor ``T`` (weights, or activations after a ReLU); the range is taken over all of it,
            batch included, as the reference does.
        bits: the bit-width ``b`` whose rounding the noise imitates.
        kind: ``"gaussian"`` for ξ ~ N(0, 1)/2 (the reference code's default) or ``"uniform"`` for
            ξ ~ U(−½, ½) (DiffQ's pseudo-quantisation noise, which the paper cites).
        generator: the random stream; torch's global one when ``None``.

    Returns:
        A new tensor of ``T``'s shape that requires no gradient.

    Raises:
        ValueError: for an unknown ``kind``.
    """
    if kind not in NOISE_KINDS:
        raise ValueError(f"unknown quantisation noise {kind!r}; known: {', '.join(NOISE_KINDS)}")
    with torch.no_grad():
        if kind == "gaussian":
            xi = torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype, device=tensor.device) / 2
        else:
            xi = torch.rand(tensor.shape, generator=generator, dtype=tensor.dtype, device=tensor.device) - 0.5
        return tensor + noise_step(tensor, bits) * xi


def mix_quant_noise(tensor: torch.Tensor, pi: torch.Tensor, noisy: Sequence[torch.Tensor]) -> torch.Tensor:
    """``T̃ = T/(B+1) + Σ_b π̂_b · noisy_b`` with ``π̂_b = π_b / (Σπ + 1/(B+1))``.

    Args:
        tensor: the full-precision tensor ``T`` (gradients flow to it with factor ``1/(B+1)``).
        pi: the ``B`` probabilities of the layer's bit choices (a slice of a softmax over a joint
            (op, bits) vector, so ``Σπ`` may be below one); gradients flow to it.
        noisy: ``sg(QN_b(T))`` for each bit choice, in ``pi``'s order, as :func:`quant_noise` returns.

    Raises:
        ValueError: when ``pi`` and ``noisy`` differ in length.
    """
    if pi.dim() != 1 or len(pi) != len(noisy):
        raise ValueError(f"pi has shape {tuple(pi.shape)} for {len(noisy)} bit choices")
    beta = 1.0 / (len(noisy) + 1)
    pi_hat = pi / (pi.sum() + beta)
    return beta * tensor + sum(p * n for p, n in zip(pi_hat, noisy))
