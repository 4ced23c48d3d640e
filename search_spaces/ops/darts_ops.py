"""The DARTS operations (Liu et al., ICLR 2019) with every convolution a sparse op (DASS).

``OPS`` maps each DARTS op name to an :class:`OpSpec`: how to build its module (``None`` for the
parameter-free ops, which are applied functionally so that extracted networks hold only
``Conv2d``/``BatchNorm2d``/``ReLU``/``Linear`` modules) and its analytic :class:`OpCost` (the weight
tensors and output positions of its convolutions), which the search space sums into MACs and
parameters, dense or non-zero. ``none`` is a known name but not in ``OPS``: it contributes nothing.

Differences from the DARTS reference, all deliberate:

- pools are not followed by a BatchNorm in the search network (DARTS adds one there, but not in the
  final network): one definition per op, so the supernet and the extracted network compute the same;
- ``FactorizedReduce`` pads its shifted path by one at the end, so odd input sizes work (DARTS
  crashes on them); for even sizes it computes exactly the reference's result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from search_spaces.ops.sparse import SparseConv2d, kept_count

NONE = "none"


def reduced_size(size: int, stride: int) -> int:
    """Output side of every DARTS op (and of ``FactorizedReduce``) for input side ``size``: ``ceil(size / stride)``."""
    return -(-size // stride)


@dataclass(frozen=True)
class OpCost:
    """The weight layers of a module: ``(weights, output positions)`` per convolution or linear layer,
    plus the parameters counted dense (BatchNorm affine, biases)."""

    convs: tuple[tuple[int, int], ...] = ()
    dense_params: int = 0

    def __add__(self, other: OpCost) -> OpCost:
        return OpCost(self.convs + other.convs, self.dense_params + other.dense_params)

    def macs(self) -> int:
        return sum(n * positions for n, positions in self.convs)

    def params(self) -> int:
        return sum(n for n, _ in self.convs) + self.dense_params

    def nonzero_macs(self, keep_ratio: float) -> int:
        """MACs with ``ceil(k * n)`` weights kept per layer (the sparse ops' counter)."""
        return sum(kept_count(n, keep_ratio) * positions for n, positions in self.convs)

    def nonzero_params(self, keep_ratio: float) -> int:
        """Kept weights plus dense parameters (``count_nonzero_params``)."""
        return sum(kept_count(n, keep_ratio) for n, _ in self.convs) + self.dense_params

    def counts(self, keep_ratio: float) -> dict[str, int]:
        """The four counts as graph-node attributes."""
        return {"macs": self.macs(), "params": self.params(), "nonzero_macs": self.nonzero_macs(keep_ratio),
                "nonzero_params": self.nonzero_params(keep_ratio)}


def bn_cost(channels: int, affine: bool) -> OpCost:
    return OpCost(dense_params=2 * channels if affine else 0)


def sparse_conv(c_in: int, c_out: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1,
                groups: int = 1) -> SparseConv2d:
    return SparseConv2d(c_in, c_out, kernel, stride, padding, dilation, groups, bias=False)


class ReLUConvBN(nn.Sequential):
    """ReLU, sparse k x k convolution, BatchNorm (the DARTS preprocessing uses it with k = 1)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, affine: bool):
        super().__init__(nn.ReLU(inplace=False), sparse_conv(c_in, c_out, kernel, stride, padding),
                         nn.BatchNorm2d(c_out, affine=affine))

    @staticmethod
    def cost(c_in: int, c_out: int, kernel: int, out_size: int, affine: bool) -> OpCost:
        return OpCost(((c_in * c_out * kernel * kernel, out_size * out_size),)) + bn_cost(c_out, affine)


class DilConv(nn.Sequential):
    """ReLU, depthwise (dilated) k x k convolution, pointwise convolution, BatchNorm."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, dilation: int, affine: bool):
        super().__init__(nn.ReLU(inplace=False), sparse_conv(c_in, c_in, kernel, stride, padding, dilation, c_in),
                         sparse_conv(c_in, c_out, 1), nn.BatchNorm2d(c_out, affine=affine))

    @staticmethod
    def cost(c_in: int, c_out: int, kernel: int, out_size: int, affine: bool) -> OpCost:
        positions = out_size * out_size
        return OpCost(((c_in * kernel * kernel, positions), (c_in * c_out, positions))) + bn_cost(c_out, affine)


class SepConv(nn.Sequential):
    """Two :class:`DilConv` without dilation, the first one strided (DARTS' separable convolution)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, affine: bool):
        super().__init__(DilConv(c_in, c_in, kernel, stride, padding, 1, affine),
                         DilConv(c_in, c_out, kernel, 1, padding, 1, affine))

    @staticmethod
    def cost(c_in: int, c_out: int, kernel: int, out_size: int, affine: bool) -> OpCost:
        return DilConv.cost(c_in, c_in, kernel, out_size, affine) + DilConv.cost(c_in, c_out, kernel, out_size, affine)


class FactorizedReduce(nn.Module):
    """Halve the spatial size with two strided 1x1 convolutions, the second shifted by one pixel."""

    def __init__(self, c_in: int, c_out: int, affine: bool):
        super().__init__()
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = sparse_conv(c_in, c_out // 2, 1, stride=2)
        self.conv_2 = sparse_conv(c_in, c_out - c_out // 2, 1, stride=2)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        shifted = F.pad(x[:, :, 1:, 1:], (0, 1, 0, 1))
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(shifted)], dim=1))

    @staticmethod
    def cost(c_in: int, c_out: int, in_size: int, affine: bool) -> OpCost:
        positions = reduced_size(in_size, 2) ** 2
        halves = (c_out // 2, c_out - c_out // 2)
        return OpCost(tuple((c_in * half, positions) for half in halves)) + bn_cost(c_out, affine)


# ---- the registry -----------------------------------------------------------------------------------

Build = Callable[[int, int, bool], "nn.Module | None"]      # (channels, stride, affine) -> module or None
Cost = Callable[[int, int, int, bool], OpCost]              # (channels, stride, input side, affine)
Apply = Callable[[torch.Tensor, int], torch.Tensor]          # (input, stride) -> output, for module-less ops


@dataclass(frozen=True)
class OpSpec:
    """A DARTS op: ``build`` its module, or ``None`` where it has no weights (then ``apply`` computes it)."""

    build: Build
    cost: Cost
    apply: Apply | None = field(default=None)


def _no_module(channels: int, stride: int, affine: bool) -> None:
    return None


def _free(channels: int, stride: int, in_size: int, affine: bool) -> OpCost:
    return OpCost()


def _sep_conv(kernel: int) -> OpSpec:
    return OpSpec(lambda c, s, affine: SepConv(c, c, kernel, s, kernel // 2, affine),
                  lambda c, s, size, affine: SepConv.cost(c, c, kernel, reduced_size(size, s), affine))


def _dil_conv(kernel: int) -> OpSpec:
    return OpSpec(lambda c, s, affine: DilConv(c, c, kernel, s, kernel - 1, 2, affine),
                  lambda c, s, size, affine: DilConv.cost(c, c, kernel, reduced_size(size, s), affine))


def _skip_module(channels: int, stride: int, affine: bool) -> nn.Module | None:
    return FactorizedReduce(channels, channels, affine) if stride > 1 else None


def _skip_cost(channels: int, stride: int, in_size: int, affine: bool) -> OpCost:
    return FactorizedReduce.cost(channels, channels, in_size, affine) if stride > 1 else OpCost()


OPS: dict[str, OpSpec] = {
    "max_pool_3x3": OpSpec(_no_module, _free, lambda x, s: F.max_pool2d(x, 3, s, 1)),
    "avg_pool_3x3": OpSpec(_no_module, _free, lambda x, s: F.avg_pool2d(x, 3, s, 1, count_include_pad=False)),
    "skip_connect": OpSpec(_skip_module, _skip_cost, lambda x, s: x),
    "sep_conv_3x3": _sep_conv(3),
    "sep_conv_5x5": _sep_conv(5),
    "dil_conv_3x3": _dil_conv(3),
    "dil_conv_5x5": _dil_conv(5),
}
#: The 8 DARTS ops in the reference's ``PRIMITIVES`` order.
DARTS_OPS = (NONE, "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
             "dil_conv_3x3", "dil_conv_5x5")


def run_op(op: str, stride: int, module: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
    """The output of ``op`` on ``x``: its ``module`` where it has one, else the functional form."""
    return module(x) if module is not None else OPS[op].apply(x, stride)
