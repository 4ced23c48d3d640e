"""Quantised convolution for mixed-precision search: LSQ weights, HWGQ activations, BitOps, QDQ export.

One :class:`QuantConv2d` holds one weight tensor shared by all its bit choices and one learned LSQ
step per bit-width; its mode is set from outside before a forward (as ``activate`` sets an elastic
layer): ``float``, ``noise`` (QuantNAS quantisation noise mixed over the bit choices) or ``direct``
(real fake-quantisation, at one bit-width or mixed over them). The reference is QuantNAS
(``On-Point-RND/QuantNAS/sr_models/quant_conv_lsq.py``, ALGORITHMS.md §6.2): the layer is a
pre-activation convolution, ``conv(q_a(relu(x)), q_w(W))``, and weights and activations share one
bit-width ``b`` (so ``b_w = b_a = b``).

Exported to ONNX (TorchScript exporter, opset >= 13), a layer in ``direct`` mode at ``b <= 8`` bits
becomes QuantizeLinear/DequantizeLinear pairs: per-channel int8 weights, per-tensor uint8 activations.
Below 8 bits the values are clamped to the ``b``-bit range first and carried in the 8-bit types (the
exporter stops at opset 20, and INT4/UINT4 need opset 21); 16-bit layers stay fake-quantised in float.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from search_spaces.ops.counting import count_macs
from search_spaces.ops.helpers import same_padding
from search_spaces.ops.quant_noise import NOISE_KINDS, mix_quant_noise

# HWGQ steps (Cai et al., "Deep Learning with Low Precision by Half-wave Gaussian Quantization", CVPR
# 2017): uniform quantisers fitted to a unit-variance ReLU-ed Gaussian, copied from the QuantNAS
# reference (``hwgq_steps``). We could not reproduce them as MSE optima of our own, so bit-widths
# outside this table are refused rather than given invented steps.
HWGQ_STEPS = {
    1: 1.0576462792297525,
    2: 0.6356366866203315,
    3: 0.3720645813370479,
    4: 0.21305606790772952,
    8: 0.020300567823662602,
    16: 9.714825915156693e-05,
}
# Signed LSQ weights need at least 2 bits (1 bit leaves the grid {-1, 0}, Q_p = 0).
SUPPORTED_BITS = tuple(b for b in HWGQ_STEPS if b >= 2)
QUANT_MODES = ("float", "noise", "direct")
_MODE_ARGS = {"float": "neither bits nor pi", "noise": "pi and no bits", "direct": "exactly one of bits and pi"}
_QDQ_MAX_BITS = 8


def hwgq_step(bits: int) -> float:
    """The fixed HWGQ step of a ``bits``-bit activation quantiser.

    Raises:
        ValueError: for a bit-width without a reference step.
    """
    try:
        return HWGQ_STEPS[bits]
    except KeyError:
        raise ValueError(f"no HWGQ step for {bits}-bit activations; supported: {sorted(HWGQ_STEPS)}") from None


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round to nearest (half to even) forward; identity backward (straight-through estimator)."""
    return (x.round() - x).detach() + x


def scale_grad(x: torch.Tensor, scale: float) -> torch.Tensor:
    """``x`` forward; its gradient multiplied by ``scale`` backward."""
    return (x - x * scale).detach() + x * scale


class LSQWeightQuantizer(nn.Module):
    """Signed ``b``-bit weights with a learned per-output-channel step (LSQ: Esser et al., ICLR 2020).

    A weight with fewer output channels than the quantiser was built for (an elastic layer's active
    slice) uses the steps of its first channels.

    ``q(w) = round(clamp(w/s, −Q_n, Q_p))·s`` with ``Q_n = 2^(b−1)``, ``Q_p = 2^(b−1) − 1`` (the
    reference's non-symmetric signed grid, which is int8's at 8 bits). Gradients: straight-through to
    ``w`` inside the range and zero outside; to ``s`` LSQ's ``round(w/s) − w/s`` inside, ``−Q_n`` or
    ``Q_p`` outside, multiplied by ``g = 1/sqrt(N·Q_p)``. ``N`` is the number of elements of the whole
    weight tensor, as in the reference, not the number per channel.

    Args:
        bits: the bit-width ``b`` (>= 2).
        weight: the weight tensor (output channels first) whose statistics give the initial step.
    """

    def __init__(self, bits: int, weight: torch.Tensor):
        super().__init__()
        if bits < 2:
            raise ValueError(f"signed LSQ weights need at least 2 bits, got {bits}")
        self.bits = bits
        self.q_neg, self.q_pos = 2 ** (bits - 1), 2 ** (bits - 1) - 1
        self.step = nn.Parameter(torch.empty(weight.shape[0], dtype=weight.dtype, device=weight.device))
        self.init_step(weight)

    @torch.no_grad()
    def init_step(self, weight: torch.Tensor) -> None:
        """LSQ's initialisation, per output channel: ``s = 2·mean|w|/sqrt(Q_p)``.

        Call it again after the weights were trained without this quantiser (a supernet searched in
        ``noise`` mode, then evaluated in ``direct`` mode). An all-zero channel gets the smallest normal
        step instead of 0, which would divide by zero.
        """
        mean_abs = weight.detach().abs().flatten(1).mean(1)
        self.step.copy_((2 * mean_abs / math.sqrt(self.q_pos)).clamp_min(torch.finfo(weight.dtype).tiny))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export() and self.bits <= _QDQ_MAX_BITS:
            return self._qdq(weight)
        g = 1.0 / math.sqrt(weight.numel() * self.q_pos)
        step = scale_grad(self.step[:weight.shape[0]], g).view(-1, *[1] * (weight.dim() - 1))
        return round_ste(torch.clamp(weight / step, -self.q_neg, self.q_pos)) * step

    def _qdq(self, weight: torch.Tensor) -> torch.Tensor:
        """Per-channel int8 QuantizeLinear/DequantizeLinear; the same values as ``forward``."""
        step = self.step.detach()[:weight.shape[0]]
        if self.bits < _QDQ_MAX_BITS:
            bound = step.view(-1, *[1] * (weight.dim() - 1))
            weight = torch.minimum(torch.maximum(weight, -self.q_neg * bound), self.q_pos * bound)
        zero_point = torch.zeros(step.shape, dtype=torch.int32, device=step.device)
        return torch.fake_quantize_per_channel_affine(weight, step, zero_point, 0, -128, 127)


class HWGQ(nn.Module):
    """Unsigned ``b``-bit activations on a fixed grid: ``round(clamp(x, 0, (2^b − 1)·Δ)/Δ)·Δ``.

    For post-ReLU activations. ``Δ`` is the reference's fixed per-bit step (:data:`HWGQ_STEPS`),
    fitted to unit-variance pre-activations; it is not learned. The gradient is straight-through inside
    ``[0, (2^b − 1)·Δ]`` and zero outside.
    """

    def __init__(self, bits: int):
        super().__init__()
        self.bits, self.step = bits, hwgq_step(bits)
        self.levels = 2 ** bits - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export() and self.bits <= _QDQ_MAX_BITS:
            return self._qdq(x)
        return round_ste(x.clamp(0.0, self.levels * self.step) / self.step) * self.step

    def _qdq(self, x: torch.Tensor) -> torch.Tensor:
        """Per-tensor uint8 QuantizeLinear/DequantizeLinear; the same values as ``forward``."""
        if self.bits < _QDQ_MAX_BITS:
            x = x.clamp(0.0, self.levels * self.step)
        return torch.fake_quantize_per_tensor_affine(x, self.step, 0, 0, 255)


class QuantConv2d(nn.Conv2d):
    """``conv(q_a(relu(x)), q_w(W))`` with the bit-width chosen at runtime; one ``W`` for every bit-width.

    Modes (:meth:`set_mode`):

    * ``float``: no quantisation, ``conv(relu(x), W)``. (The reference uses PReLU at 32 bits; we keep
      the ReLU so that every mode computes the same function up to quantisation.)
    * ``noise`` with ``pi`` (one probability per bit choice): weights and ``relu(x)`` each replaced by
      their quantisation-noise mixture (:func:`~search_spaces.ops.quant_noise.mix_quant_noise`).
    * ``direct`` with ``bits``: LSQ weights and HWGQ activations at that bit-width (the final network).
      With ``pi`` instead: the weights and activations quantised at every bit-width and averaged with
      weights ``π_b/Σπ`` (the reference's shared-weight direct-quantisation search, ``SharedQAConv2d``).

    A new layer is in ``direct`` mode at its largest bit-width. Stride-1 layers keep the spatial size
    (odd kernels). The bias, if any, is not quantised.

    Args:
        in_channels, out_channels, kernel_size, stride, groups, bias: as for ``nn.Conv2d``.
        bits: the bit choices, each in :data:`SUPPORTED_BITS`.
        noise: the quantisation noise of ``noise`` mode, ``"gaussian"`` or ``"uniform"``.

    Example:
        >>> layer = QuantConv2d(8, 8, 3, bits=(4, 8))
        >>> layer.set_mode("noise", pi=torch.tensor([0.3, 0.7]))
        >>> layer(torch.randn(1, 8, 16, 16)).shape
        torch.Size([1, 8, 16, 16])
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bits: Sequence[int], stride: int = 1,
                 groups: int = 1, bias: bool = False, noise: str = "gaussian"):
        super().__init__(in_channels, out_channels, kernel_size, stride, same_padding(kernel_size), groups=groups,
                         bias=bias)
        _check_bits(bits)
        if noise not in NOISE_KINDS:
            raise ValueError(f"unknown quantisation noise {noise!r}; known: {', '.join(NOISE_KINDS)}")
        self.bits, self.noise = tuple(bits), noise
        self.weight_quant = nn.ModuleList(LSQWeightQuantizer(b, self.weight) for b in self.bits)
        self.act_quant = nn.ModuleList(HWGQ(b) for b in self.bits)
        self.set_mode("direct", bits=max(self.bits))

    def set_mode(self, mode: str, *, bits: int | None = None, pi: torch.Tensor | None = None) -> None:
        """Choose how the next forward passes quantise (see the class docstring).

        Raises:
            ValueError: for an unknown mode, a bit-width not among the layer's choices, a ``pi`` of the
                wrong length, or arguments the mode does not take (``float``: none; ``noise``: ``pi``;
                ``direct``: ``bits`` or ``pi``).
        """
        if mode not in QUANT_MODES:
            raise ValueError(f"unknown quantisation mode {mode!r}; known: {', '.join(QUANT_MODES)}")
        wanted = {"float": bits is None and pi is None, "noise": bits is None and pi is not None,
                  "direct": (bits is None) != (pi is None)}
        if not wanted[mode]:
            raise ValueError(f"mode {mode!r} takes {_MODE_ARGS[mode]}")
        if bits is not None and bits not in self.bits:
            raise ValueError(f"{bits}-bit is not among this layer's bit choices {list(self.bits)}")
        if pi is not None and tuple(pi.shape) != (len(self.bits),):
            raise ValueError(f"pi has shape {tuple(pi.shape)}; this layer has {len(self.bits)} bit choices")
        self.mode, self.active_bits, self.pi = mode, bits, pi

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, x = self._quantised(self.weight, F.relu(x))
        return self._conv_forward(x, weight, self.bias)

    def _quantised(self, weight: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mode == "float":
            return weight, x
        if self.mode == "noise":
            return self._noise_mixture(weight), self._noise_mixture(x)
        if self.active_bits is not None:
            i = self.bits.index(self.active_bits)
            return self.weight_quant[i](weight), self.act_quant[i](x)
        share = self.pi / self.pi.sum()
        return (sum(p * q(weight) for p, q in zip(share, self.weight_quant)),
                sum(p * q(x) for p, q in zip(share, self.act_quant)))

    def _noise_mixture(self, tensor: torch.Tensor) -> torch.Tensor:
        return mix_quant_noise(tensor, self.pi, self.bits, self.noise)

    def init_steps(self) -> None:
        """Re-initialise every bit-width's LSQ step from the current weights (see ``init_step``)."""
        for quantizer in self.weight_quant:
            quantizer.init_step(self.weight)

    def to_fixed(self, bits: int) -> QuantConv2d:
        """A new single-bit-width layer in ``direct`` mode with copies of this layer's weights and of that
        bit-width's step: the layer a discretised (extracted) network holds.

        Raises:
            ValueError: for a bit-width not among the layer's choices.
        """
        if bits not in self.bits:
            raise ValueError(f"{bits}-bit is not among this layer's bit choices {list(self.bits)}")
        fixed = QuantConv2d(self.in_channels, self.out_channels, self.kernel_size[0], (bits,), self.stride[0],
                            self.groups, self.bias is not None, self.noise).to(self.weight.device)
        state = {"weight": self.weight, "weight_quant.0.step": self.weight_quant[self.bits.index(bits)].step}
        if self.bias is not None:
            state["bias"] = self.bias
        fixed.load_state_dict({k: v.detach().clone() for k, v in state.items()})
        return fixed



def _check_bits(bits: Sequence[int]) -> None:
    if not bits or len(set(bits)) != len(bits):
        raise ValueError(f"bit choices must be distinct and non-empty, got {list(bits)}")
    unsupported = [b for b in bits if b not in SUPPORTED_BITS]
    if unsupported:
        raise ValueError(f"unsupported bit-width(s) {unsupported}; supported: {list(SUPPORTED_BITS)}")


def _layer_bits(layer: QuantConv2d, float_bits: int) -> int:
    if layer.mode == "float":
        return float_bits
    if layer.mode == "direct" and layer.active_bits is not None:
        return layer.active_bits
    raise ValueError(f"a QuantConv2d in {layer.mode!r} mode mixes bit-widths: its BitOps are an expectation "
                     "over them, not a count; set one bit-width (direct mode) before counting")


@torch.no_grad()
def count_bitops(model: nn.Module, example_input: torch.Tensor, float_bits: int = 32) -> int:
    """BitOps of one sample's forward pass: ``Σ MACs × b_w × b_a`` over the weight layers (bias ignored).

    MACs are those of :func:`~search_spaces.ops.counting.count_macs`. A :class:`QuantConv2d` in
    ``direct`` mode at ``b`` bits counts ``MACs·b·b``; every other layer whose MACs are counted (plain
    convolutions and linear layers, quantised layers in ``float`` mode) counts ``MACs·float_bits²``.

    Raises:
        ValueError: when a quantised layer is in ``noise`` mode or in ``direct`` mode over a ``pi``.
    """
    bits = {m: _layer_bits(m, float_bits) for m in model.modules() if isinstance(m, QuantConv2d)}
    calls: list[tuple[QuantConv2d, torch.Tensor]] = []
    handles = [m.register_forward_hook(lambda mod, inp, out: calls.append((mod, inp[0]))) for m in bits]
    try:
        total_macs = count_macs(model, example_input)
    finally:
        for handle in handles:
            handle.remove()
    quantised = [(count_macs(layer, inp), bits[layer]) for layer, inp in calls]
    float_macs = total_macs - sum(macs for macs, _ in quantised)
    return float_macs * float_bits ** 2 + sum(macs * b * b for macs, b in quantised)
