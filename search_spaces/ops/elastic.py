"""Elastic layers: one set of maximal weights, any prefix of channels, any kernel size.

Parameter names follow the reference Once-for-All dynamic modules (``conv.conv.weight``,
``bn.bn.running_mean``, ``7to5_matrix``), which is what lets published checkpoints load strictly.
Each elastic layer can build the equivalent plain layer's weights (``active_*`` methods) for
extraction; channel counts are set from outside before a forward (``active_out_channels``).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from search_spaces.ops.activations import create_activation
from search_spaces.ops.helpers import make_divisible, same_padding
from search_spaces.ops.static import MBConv, se_mid_channels, SqueezeExcite


class InferenceCache:
    """One remembered derived weight (a slice, a transformed kernel) while gradients are off.

    Slicing, kernel transforms and the contiguous copies they need are most of the elastic forward's
    overhead on small inputs. With gradients off, the result for the same arguments is reused until a
    source tensor changes: the key holds each source's storage address and in-place version counter,
    so ``load_state_dict``, optimiser steps, re-ordering and device moves all invalidate it.
    """

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.value = None

    def get(self, args: tuple, sources: tuple[torch.Tensor, ...], compute):
        if torch.is_grad_enabled():
            return compute()
        key = (args, tuple((t.data_ptr(), t._version) for t in sources))
        if key != self.key:
            self.value, self.key = compute(), key
        return self.value


class DynamicConv2d(nn.Module):
    """A dense convolution computing with the first ``in`` input and ``active_out_channels`` outputs."""

    def __init__(self, max_in_channels: int, max_out_channels: int, kernel_size: int = 1, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(max_in_channels, max_out_channels, kernel_size, stride=stride, bias=False)
        self.active_out_channels = max_out_channels
        self._cache = InferenceCache()

    def active_weight(self, out_channels: int, in_channels: int) -> torch.Tensor:
        return self.conv.weight[:out_channels, :in_channels]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, inp = self.active_out_channels, x.shape[1]
        weight = self._cache.get((out, inp), (self.conv.weight,), lambda: self.active_weight(out, inp).contiguous())
        return F.conv2d(x, weight, None, self.conv.stride, same_padding(self.conv.kernel_size[0]))


class DynamicSeparableConv2d(nn.Module):
    """A depthwise convolution with an elastic kernel size.

    One ``K x K`` kernel is stored. A smaller kernel ``k`` is the centre crop of the next larger
    (already transformed) kernel, mapped through a learned ``k^2 x k^2`` matrix shared by all channels
    and initialised to the identity; going 7 -> 3 applies 7 -> 5, then 5 -> 3. With
    ``kernel_transform=False`` the crop is used as it is.
    """

    def __init__(self, max_channels: int, kernel_sizes: list[int], stride: int = 1, kernel_transform: bool = True):
        super().__init__()
        self.kernel_sizes = sorted(set(kernel_sizes))
        self.max_kernel_size = self.kernel_sizes[-1]
        self.conv = nn.Conv2d(max_channels, max_channels, self.max_kernel_size, stride,
                              groups=max_channels, bias=False)
        self.kernel_transform = kernel_transform
        if kernel_transform:
            for small, large in zip(self.kernel_sizes[:-1], self.kernel_sizes[1:]):
                self.register_parameter(f"{large}to{small}_matrix", nn.Parameter(torch.eye(small * small)))
        self.active_kernel_size = self.max_kernel_size
        self._cache = InferenceCache()

    def active_weight(self, channels: int, kernel_size: int) -> torch.Tensor:
        weight = self.conv.weight[:channels]
        if kernel_size == self.max_kernel_size:
            return weight
        if not self.kernel_transform:
            return _centre_crop(weight, kernel_size)
        larger = [k for k in self.kernel_sizes if k > kernel_size]
        for large, small in zip(reversed(larger), reversed([kernel_size] + larger[:-1])):
            matrix = getattr(self, f"{large}to{small}_matrix")
            crop = _centre_crop(weight, small)
            weight = F.linear(crop.reshape(-1, small * small), matrix).view(crop.shape)
        return weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.active_kernel_size
        channels = x.shape[1]
        weight = self._cache.get((channels, k), tuple(self.parameters()),
                                 lambda: self.active_weight(channels, k).contiguous())
        return F.conv2d(x, weight, None, self.conv.stride, same_padding(k), 1, channels)


def _centre_crop(weight: torch.Tensor, size: int) -> torch.Tensor:
    start = (weight.shape[-1] - size) // 2
    return weight[:, :, start:start + size, start:start + size]


class DynamicBatchNorm2d(nn.Module):
    """BatchNorm over the first ``C`` channels of a maximal BatchNorm (``C`` from the input)."""

    slices_bn = True  # see search_spaces.ops.batchnorm.norm_layers

    def __init__(self, max_features: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(max_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn, channels = self.bn, x.shape[1]
        if channels == bn.num_features:
            return bn(x)
        momentum = 0.0
        if bn.training and bn.track_running_stats:
            bn.num_batches_tracked += 1
            momentum = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
        # Slices of the running buffers are views: the update in training mode writes through.
        return F.batch_norm(x, bn.running_mean[:channels], bn.running_var[:channels], bn.weight[:channels],
                            bn.bias[:channels], bn.training or not bn.track_running_stats, momentum, bn.eps)


class DynamicSE(SqueezeExcite):
    """Squeeze-excitation whose hidden width follows the number of input channels."""

    def __init__(self, channels: int):
        super().__init__(channels)
        self._cache = InferenceCache()

    def active_weights(self, channels: int) -> tuple[torch.Tensor, ...]:
        mid = se_mid_channels(channels)
        reduce, expand = self.fc.reduce, self.fc.expand
        return (reduce.weight[:mid, :channels], reduce.bias[:mid],
                expand.weight[:channels, :mid], expand.bias[:channels])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        w_r, b_r, w_e, b_e = self._cache.get((channels,), tuple(self.parameters()), lambda: tuple(
            w.contiguous() for w in self.active_weights(channels)))
        y = F.conv2d(x.mean((2, 3), keepdim=True), w_r, b_r)
        y = F.conv2d(self.fc.relu(y), w_e, b_e)
        return x * self.fc.h_sigmoid(y)


class DynamicMBConv(nn.Module):
    """An MBConv block with elastic kernel size and expand ratio (fixed in/out channels)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_sizes: list[int], expand_ratios: list[float],
                 stride: int, act: str, use_se: bool, kernel_transform: bool = True):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.stride, self.act, self.use_se = stride, act, use_se
        self.kernel_sizes = sorted(kernel_sizes)
        self.expand_ratios = sorted(expand_ratios)
        max_mid = self.mid_channels(self.expand_ratios[-1])
        self.inverted_bottleneck = nn.Sequential(OrderedDict([
            ("conv", DynamicConv2d(in_channels, max_mid)),
            ("bn", DynamicBatchNorm2d(max_mid)),
            ("act", create_activation(act)),
        ]))
        depth = [
            ("conv", DynamicSeparableConv2d(max_mid, self.kernel_sizes, stride, kernel_transform)),
            ("bn", DynamicBatchNorm2d(max_mid)),
            ("act", create_activation(act)),
        ]
        if use_se:
            depth.append(("se", DynamicSE(max_mid)))
        self.depth_conv = nn.Sequential(OrderedDict(depth))
        self.point_linear = nn.Sequential(OrderedDict([
            ("conv", DynamicConv2d(max_mid, out_channels)),
            ("bn", DynamicBatchNorm2d(out_channels)),
        ]))
        self.set_active(self.kernel_sizes[-1], self.expand_ratios[-1])

    def mid_channels(self, expand_ratio: float) -> int:
        """Expanded width for ``expand_ratio`` (the reference rounding)."""
        return make_divisible(round(self.in_channels * expand_ratio), 8)

    def set_active(self, kernel_size: int, expand_ratio: float) -> None:
        self.active_kernel_size, self.active_expand_ratio = kernel_size, expand_ratio
        self.inverted_bottleneck.conv.active_out_channels = self.mid_channels(expand_ratio)
        self.depth_conv.conv.active_kernel_size = kernel_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.point_linear(self.depth_conv(self.inverted_bottleneck(x)))

    @torch.no_grad()
    def extract(self) -> MBConv:
        """The active block as a plain ``MBConv`` with copied weights and statistics."""
        mid = self.mid_channels(self.active_expand_ratio)
        k = self.active_kernel_size
        block = MBConv(self.in_channels, self.out_channels, k, self.stride, mid, self.act, self.use_se)
        block.inverted_bottleneck.conv.weight.copy_(self.inverted_bottleneck.conv.active_weight(mid, self.in_channels))
        copy_bn(block.inverted_bottleneck.bn, self.inverted_bottleneck.bn.bn)
        block.depth_conv.conv.weight.copy_(self.depth_conv.conv.active_weight(mid, k))
        copy_bn(block.depth_conv.bn, self.depth_conv.bn.bn)
        if self.use_se:
            fc = block.depth_conv.se.fc
            for target, source in zip((fc.reduce.weight, fc.reduce.bias, fc.expand.weight, fc.expand.bias),
                                      self.depth_conv.se.active_weights(mid)):
                target.copy_(source)
        block.point_linear.conv.weight.copy_(self.point_linear.conv.active_weight(self.out_channels, mid))
        copy_bn(block.point_linear.bn, self.point_linear.bn.bn)
        return block

    @torch.no_grad()
    def reorder_channels(self, protected_widths: list[int] | None = None) -> torch.Tensor:
        """Sort the expanded channels by importance; the block's function is unchanged.

        Importance of an expanded channel is the L1 norm of the projection weights that consume it.
        ``protected_widths`` (descending, e.g. the widths of ratios already trained) keeps each
        smaller prefix in front as a set: channels beyond a protected width get a large penalty that
        grows with the ring, so only the order *inside* each ring changes. Returns the permutation.
        """
        importance = self.point_linear.conv.conv.weight.abs().sum(dim=(0, 2, 3))
        if protected_widths:
            bounds = [importance.numel(), *protected_widths]
            for ring, (right, left) in enumerate(zip(bounds[:-1], bounds[1:])):
                importance[left:right] -= 1e5 * (len(protected_widths) - ring)
        order = torch.argsort(importance, descending=True, stable=True)
        _permute(self.inverted_bottleneck.conv.conv.weight, order, dim=0)
        _permute_bn(self.inverted_bottleneck.bn.bn, order)
        _permute(self.depth_conv.conv.conv.weight, order, dim=0)
        _permute_bn(self.depth_conv.bn.bn, order)
        if self.use_se:
            fc = self.depth_conv.se.fc
            _permute(fc.reduce.weight, order, dim=1)
            _permute(fc.expand.weight, order, dim=0)
            _permute(fc.expand.bias, order, dim=0)
            se_order = torch.argsort(fc.expand.weight.abs().sum(dim=(0, 2, 3)), descending=True, stable=True)
            _permute(fc.expand.weight, se_order, dim=1)
            _permute(fc.reduce.weight, se_order, dim=0)
            _permute(fc.reduce.bias, se_order, dim=0)
        _permute(self.point_linear.conv.conv.weight, order, dim=1)
        return order


def _permute(tensor: torch.Tensor, order: torch.Tensor, dim: int) -> None:
    tensor.copy_(tensor.index_select(dim, order))


def _permute_bn(bn: nn.BatchNorm2d, order: torch.Tensor) -> None:
    for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
        _permute(t, order, dim=0)


def copy_bn(target: nn.BatchNorm2d, source: nn.BatchNorm2d) -> None:
    """Copy the first ``target.num_features`` channels of ``source`` (affine and statistics)."""
    n = target.num_features
    for t, s in ((target.weight, source.weight), (target.bias, source.bias),
                 (target.running_mean, source.running_mean), (target.running_var, source.running_var)):
        t.copy_(s[:n])
    target.eps, target.momentum = source.eps, source.momentum
