"""Super-resolution building blocks of ``quantnas_sr``: candidate ops, ESA attention, ADQ, the network.

Every convolution here is a :class:`~search_spaces.ops.quant.QuantConv2d`, i.e. a pre-activation layer
``conv(q_a(relu(x)), q_w(W))``. The searchable positions hold candidate ops (:data:`SR_OPS`) at a
searched bit-width; everything else (the fuse convolutions, ESA) is quantised at a fixed
:data:`FIXED_BITS`. Each convolution is described once by a :class:`ConvShape`, from which both the
module is built and its costs are computed, so the analytic costs of the space and the counts on the
built module come from the same arithmetic.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from search_spaces.ops.quant import QuantConv2d

#: Bit-width of the layers that are not searched (fuse convolutions, ESA).
FIXED_BITS = 8


@dataclass(frozen=True)
class ConvShape:
    """One quantised convolution: what builds it and what its costs are computed from.

    ``padding=None`` is "same" padding (``kernel // 2``).
    """

    in_channels: int
    out_channels: int
    kernel: int
    groups: int = 1
    stride: int = 1
    padding: int | None = None
    bias: bool = False

    def out_side(self, side: int) -> int:
        pad = self.kernel // 2 if self.padding is None else self.padding
        return (side + 2 * pad - self.kernel) // self.stride + 1

    def macs(self, out_side: int) -> int:
        """MACs at an output of ``out_side`` x ``out_side`` (as ``count_macs`` counts a Conv2d)."""
        return out_side ** 2 * self.out_channels * (self.in_channels // self.groups) * self.kernel ** 2

    def params(self, n_bits: int = 1) -> int:
        """Weights, bias and one LSQ step per output channel and bit choice (activations hold none)."""
        weights = self.out_channels * (self.in_channels // self.groups) * self.kernel ** 2
        return weights + (self.out_channels if self.bias else 0) + self.out_channels * n_bits

    def fits(self) -> bool:
        return self.in_channels % self.groups == 0 and self.out_channels % self.groups == 0

    def build(self, bits: Sequence[int], noise: str) -> QuantConv2d:
        conv = QuantConv2d(self.in_channels, self.out_channels, self.kernel, bits, self.stride, self.groups,
                           self.bias, noise)
        if self.padding is not None:
            conv.padding = (self.padding, self.padding)
        return conv


# ---------------------------------------------------------------------------------- candidate ops
@dataclass(frozen=True)
class SROp:
    """A candidate op of a searchable position: a chain of ``depth`` k x k convolutions (stride 1).

    The first maps ``in -> out`` channels, the others ``out -> out``; all run at the position's bit-width
    and share their weights over its bit choices.
    """

    name: str
    kernel: int
    groups: int = 1
    depth: int = 1

    def convs(self, in_channels: int, out_channels: int) -> list[ConvShape]:
        return [ConvShape(in_channels if i == 0 else out_channels, out_channels, self.kernel, self.groups)
                for i in range(self.depth)]

    def fits(self, in_channels: int, out_channels: int) -> bool:
        return all(c.fits() for c in self.convs(in_channels, out_channels))

    def build(self, in_channels: int, out_channels: int, bits: Sequence[int], noise: str) -> nn.Sequential:
        return nn.Sequential(*(c.build(bits, noise) for c in self.convs(in_channels, out_channels)))


SR_OPS: dict[str, SROp] = {}


def register_op(op: SROp) -> SROp:
    """Add ``op`` to :data:`SR_OPS` under its name (a later op of the same name replaces it)."""
    SR_OPS[op.name] = op
    return op


# QuantNAS's "simple_kxk", "growth" and "simple_kxk_grouped_2" families (ALGORITHMS.md §6.1). The growth
# pair is two k x k convolutions with growth factor 1 (C -> C -> C): our reading, the reference's
# definition was not retrieved.
for _k in (1, 3, 5):
    register_op(SROp(f"conv{_k}x{_k}", _k))
    register_op(SROp(f"growth{_k}x{_k}", _k, depth=2))
    register_op(SROp(f"gconv{_k}x{_k}", _k, groups=2))


# ---------------------------------------------------------------------------------- ESA
def esa_shapes(channels: int) -> dict[str, ConvShape]:
    """RFDN's ESA convolutions (``f = channels // 4`` inner channels, with biases), by module name."""
    f = channels // 4
    return {"conv1": ConvShape(channels, f, 1, bias=True), "conv_f": ConvShape(f, f, 1, bias=True),
            "conv2": ConvShape(f, f, 3, stride=2, padding=0, bias=True),
            "conv_max": ConvShape(f, f, 3, bias=True), "conv3": ConvShape(f, f, 3, bias=True),
            "conv3_": ConvShape(f, f, 3, bias=True), "conv4": ConvShape(f, channels, 1, bias=True)}


def esa_out_sides(side: int) -> dict[str, int]:
    """Output side of each ESA convolution for an input of ``side`` x ``side``."""
    reduced = (side - 3) // 2 + 1                      # conv2: 3x3, stride 2, no padding
    pooled = (reduced - ESA.POOL) // ESA.POOL_STRIDE + 1
    return {"conv1": side, "conv_f": side, "conv2": reduced, "conv_max": pooled, "conv3": pooled,
            "conv3_": pooled, "conv4": side}


class ESA(nn.Module):
    """Enhanced spatial attention of RFDN (Liu et al., 2020), with 8-bit pre-activation convolutions.

    ``x · sigmoid(conv4(up(conv3_(conv3(conv_max(maxpool(conv2(c1))))) + conv_f(c1))))``, ``c1 = conv1(x)``.
    Every convolution applies a ReLU to its input (needed by the unsigned activation quantiser): the
    same function as RFDN's where RFDN has ReLUs, and a ReLU more before ``conv1``, ``conv2``,
    ``conv_f``, ``conv_max`` and ``conv4``. Inputs need at least :attr:`MIN_SIDE` pixels per side.
    """

    POOL, POOL_STRIDE = 7, 3
    MIN_SIDE = 15  # conv2 (3x3, stride 2, no padding) must leave at least POOL pixels

    def __init__(self, channels: int, noise: str = "gaussian"):
        super().__init__()
        for name, shape in esa_shapes(channels).items():
            self.add_module(name, shape.build((FIXED_BITS,), noise))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if min(x.shape[-2:]) < self.MIN_SIDE:
            raise ValueError(f"ESA needs inputs of at least {self.MIN_SIDE} x {self.MIN_SIDE} pixels; "
                             f"got {tuple(x.shape[-2:])}")
        c1 = self.conv1(x)
        pooled = F.max_pool2d(self.conv2(c1), kernel_size=self.POOL, stride=self.POOL_STRIDE)
        c3 = self.conv3_(self.conv3(self.conv_max(pooled)))
        c3 = F.interpolate(c3, x.shape[-2:], mode="bilinear", align_corners=False)
        return x * torch.sigmoid(self.conv4(c3 + self.conv_f(c1)))


# ---------------------------------------------------------------------------------- ADQ
class ADQ(nn.Module):
    """Adaptive Deviation for Quantization around a residual body ``f`` (QuantNAS, ALGORITHMS.md §6.4).

    ``y = f(BN(x)) · φ(σ(x)) + x`` with ``σ(x)`` the standard deviation of each sample over (C, H, W)
    (unbiased, as the reference's ``torch.std``) and ``φ(s) = w·s + b`` a scalar affine map initialised
    to ``w = 1.5``, ``b = 0``. BatchNorm takes the deviation out of the body's input, ``φ(σ)`` puts it back
    on the output, so the quantised body works on a normalised range. ``enabled=False`` is the plain
    residual ``y = f(x) + x`` (no parameters).
    """

    def __init__(self, channels: int, enabled: bool = True):
        super().__init__()
        self.enabled = enabled
        if enabled:
            self.bn = nn.BatchNorm2d(channels)
            self.phi_weight = nn.Parameter(torch.tensor(1.5))
            self.phi_bias = nn.Parameter(torch.tensor(0.0))

    def forward(self, x: torch.Tensor, body: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        if not self.enabled:
            return body(x) + x
        sigma = x.std(dim=(1, 2, 3), keepdim=True)
        return body(self.bn(x)) * (self.phi_weight * sigma + self.phi_bias) + x

    @staticmethod
    def n_params(channels: int, enabled: bool) -> int:
        return 2 * channels + 2 if enabled else 0


# ---------------------------------------------------------------------------------- the network
#: Parameters of :class:`SRNet` outside its layers and BatchNorms: the gains of its two HR residuals.
RESIDUAL_GAINS = 2


def bicubic_upscale(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Bicubic up-scaling by ``scale`` (PyTorch's and ONNX Resize's cubic, ``a = −0.75``), not clamped:
    the base the network's residuals are added to."""
    return F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)


LayerFactory = Callable[[str, int, int], nn.Module]


def fixed_conv(in_channels: int, out_channels: int, kernel: int, noise: str) -> QuantConv2d:
    return ConvShape(in_channels, out_channels, kernel).build((FIXED_BITS,), noise)


class SRCell(nn.Module):
    """A body cell: RFDN-style distillation chain + fuse + ESA, wrapped by ADQ (ALGORITHMS.md §6.1).

    Body layer ``i < L-1`` is residual (``h <- h + body_i(h)``, C -> C) and skip branch ``i`` reads ``h``
    before it (C -> C/2); the last body layer maps C -> C/2. The splits are concatenated in that order
    (skips, then the last body layer) and fused back to C by a fixed 1x1 convolution.
    """

    def __init__(self, index: int, channels: int, layers: int, adq: bool, make_layer: LayerFactory, noise: str):
        super().__init__()
        half = channels // 2
        self.body = nn.ModuleList(make_layer(f"body.{index}.{i}", channels, channels if i < layers - 1 else half)
                                  for i in range(layers))
        self.skip = nn.ModuleList(make_layer(f"skip.{index}.{i}", channels, half) for i in range(layers - 1))
        self.fuse = fixed_conv(layers * half, channels, 1, noise)
        self.esa = ESA(channels, noise)
        self.adq = ADQ(channels, adq)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adq(x, self._body)

    def _body(self, h: torch.Tensor) -> torch.Tensor:
        splits = []
        for skip, body in zip(self.skip, self.body[:-1], strict=True):
            splits.append(skip(h))
            h = h + body(h)
        splits.append(self.body[-1](h))
        return self.esa(self.fuse(torch.cat(splits, 1)))


class SRNet(nn.Module):
    """The QuantNAS super-resolution network (ALGORITHMS.md §6.1, ``SearchArch.forward``), on top of a
    bicubic up-scaling of its input.

    The LR image is tiled to ``channels`` (a global skip), runs through the cells, whose outputs are
    concatenated and fused by fixed 1x1 and 3x3 convolutions; the skip is added, a searchable
    ``upsample`` layer (C -> 3·s²) feeds a pixel shuffle, and a searchable ``tail`` layer adds a residual
    at HR. ``make_layer(gene_name, in, out)`` builds every searchable position: mixed layers for the
    supernet, fixed ops for an extracted network.

    Our departures from the reference, at HR::

        y = bicubic(x) + g_0 · shuffle(upsample(BN(h))),   out = y + g_1 · tail(BN(y))

    * The pixel-shuffled output is a residual added to the bicubic up-scaling of the LR image (as in
      VDSR-style networks), and both HR residuals are scaled by learned :attr:`gains` that start at
      zero: a fresh network computes bicubic up-scaling exactly and training adds detail to it. The
      reference learns the whole image through its quantised layers; with a budget of a few hundred
      steps that left every network 5-8 dB below bicubic, and a fresh network's random residuals
      alone cost 15 dB.
    * A BatchNorm before ``upsample`` and before ``tail``: their inputs are image-scale (the tiled
      image plus features, the HR image itself), a fraction of the unit scale the fixed HWGQ steps
      are fitted to, so at 4 bits they fell on two to five levels (relative error 13 % and 35 %); the
      optimiser then switched the residual off by driving the features below zero, where the
      quantised input is all zeros and no gradient returns, and 4-bit networks ended at bicubic (in
      two of our four trial runs). Normalised inputs use the whole grid and cannot all be pushed
      below zero; ADQ normalises the cells' bodies for the same reason, and the reference's earlier
      space wraps its tail in ADQ.

    The interpolation, BatchNorms and gains count no MACs.
    """

    def __init__(self, channels: int, cells: int, layers: int, scale: int, adq: bool, make_layer: LayerFactory,
                 noise: str = "gaussian"):
        super().__init__()
        self.channels, self.scale = channels, scale
        self.cells = nn.ModuleList(SRCell(c, channels, layers, adq, make_layer, noise) for c in range(cells))
        self.fuse = fixed_conv(cells * channels, channels, 1, noise)
        self.conv = fixed_conv(channels, channels, 3, noise)
        self.upsample = make_layer("upsample", channels, 3 * scale ** 2)
        self.tail = make_layer("tail", 3, 3)
        self.upsample_bn, self.tail_bn = nn.BatchNorm2d(channels), nn.BatchNorm2d(3)
        self.gains = nn.Parameter(torch.zeros(RESIDUAL_GAINS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tiled = x.repeat(1, self.channels // 3, 1, 1)
        h, outputs = tiled, []
        for cell in self.cells:
            h = cell(h)
            outputs.append(h)
        h = self.conv(self.fuse(torch.cat(outputs, 1))) + tiled
        residual = F.pixel_shuffle(self.upsample(self.upsample_bn(h)), self.scale)
        up = bicubic_upscale(x, self.scale) + self.gains[0] * residual
        return up + self.gains[1] * self.tail(self.tail_bn(up))

    def searchable(self) -> dict[str, nn.Module]:
        """The searchable positions by gene name, in encoding order (body, skip, upsample, tail)."""
        named = {f"body.{c}.{i}": m for c, cell in enumerate(self.cells) for i, m in enumerate(cell.body)}
        named.update({f"skip.{c}.{i}": m for c, cell in enumerate(self.cells) for i, m in enumerate(cell.skip)})
        return {**named, "upsample": self.upsample, "tail": self.tail}
