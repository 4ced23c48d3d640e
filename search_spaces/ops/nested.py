"""Nested (sorted) layers: full-size weights of which a sub-model uses a leading prefix in every dimension.

SortedNet (Valipour et al., arXiv 2309.00255, see ALGORITHMS.md §4) makes a network "sorted": each
sub-model keeps the *first* units of every dimension (channels, features, heads, embedding columns),
so sub-models are prefixes of each other and share one set of weights. Each layer here subclasses
the plain torch layer it generalises, so a supernet built from them has the parameter names of the
plain network of any of its sub-models, and every tensor of a sub-model is the leading slice of the
supernet's tensor of the same name (:func:`copy_prefix`): that is the whole of extraction.

A nested layer reads its input width from the input; its output width, where it has one of its own,
is set from outside (``active_out``) before a forward. Networks are written once against a
:class:`Layers` kit: built from ``NESTED`` they are the supernet, from ``PLAIN`` a sub-model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nas.errors import CheckpointError
from search_spaces.checkpoint import state_dict_mismatch
from search_spaces.ops.counting import register_mac_counter
from search_spaces.ops.helpers import same_padding


def conv2d(in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1) -> nn.Conv2d:
    """A bias-free convolution with "same" padding (the plain counterpart of :class:`NestedConv2d`)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride, same_padding(kernel_size), bias=False)


class NestedConv2d(nn.Conv2d):
    """:func:`conv2d` computing with the first input channels and the first ``active_out`` filters."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1):
        super().__init__(in_channels, out_channels, kernel_size, stride, same_padding(kernel_size), bias=False)
        self.active_out = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight[:self.active_out, :x.shape[1]], None, self.stride, self.padding)


class NestedBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm over the first ``C`` channels (``C`` from the input); running statistics are updated in
    place for those channels only, through views of the stored buffers."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        if c == self.num_features:
            return super().forward(x)
        momentum = 0.0
        if self.training and self.track_running_stats:
            self.num_batches_tracked += 1
            momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        return F.batch_norm(x, self.running_mean[:c], self.running_var[:c], self.weight[:c], self.bias[:c],
                            self.training or not self.track_running_stats, momentum, self.eps)


class NestedLinear(nn.Linear):
    """A linear layer using the first input features and the first ``active_out`` outputs."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__(in_features, out_features, bias)
        self.active_out = out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias[:self.active_out]
        return F.linear(x, self.weight[:self.active_out, :x.shape[-1]], bias)


class NestedLayerNorm(nn.LayerNorm):
    """LayerNorm over the first ``d`` features (``d`` from the input): a sub-model of width ``d``
    normalises its own features, with the first ``d`` affine parameters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x.shape[-1]
        return F.layer_norm(x, (d,), self.weight[:d], self.bias[:d], self.eps)


class NestedEmbedding(nn.Embedding):
    """An embedding table whose vectors are cut to their first ``active_out`` entries."""

    def __init__(self, num_embeddings: int, embedding_dim: int):
        super().__init__(num_embeddings, embedding_dim)
        self.active_out = embedding_dim

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight[:, :self.active_out])


@dataclass(frozen=True)
class Layers:
    """Constructors of a network's layers (plain torch layers, or their nested versions), with the
    signatures of the plain ones: a network written against a kit is both its supernet and its
    sub-models."""

    conv: Callable[..., nn.Module]
    batchnorm: Callable[[int], nn.Module]
    linear: Callable[..., nn.Module]
    layernorm: Callable[[int], nn.Module]
    embedding: Callable[[int, int], nn.Module]


PLAIN = Layers(conv2d, nn.BatchNorm2d, nn.Linear, nn.LayerNorm, nn.Embedding)
NESTED = Layers(NestedConv2d, NestedBatchNorm2d, NestedLinear, NestedLayerNorm, NestedEmbedding)


def prefix(shape: torch.Size | tuple[int, ...]) -> tuple[slice, ...]:
    """The index of the leading block of size ``shape`` of a larger tensor."""
    return tuple(slice(0, n) for n in shape)


@torch.no_grad()
def copy_prefix(target: nn.Module, source: nn.Module) -> None:
    """Fill every parameter and buffer of ``target`` with the leading slice of ``source``'s of the same
    name (``source`` a supernet, ``target`` the plain network of one of its sub-models)."""
    state = source.state_dict()
    for name, tensor in target.state_dict().items():  # state_dict tensors share the modules' storage
        tensor.copy_(state[name][prefix(tensor.shape)])


def check_fits(state_dict: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> None:
    """Raise one ``CheckpointError`` naming the first missing, unexpected and mis-shaped tensors unless
    ``state_dict`` has exactly the keys and shapes of ``expected``."""
    problem = state_dict_mismatch(state_dict, expected)
    if problem:
        raise CheckpointError(f"checkpoint does not fit this sorted supernet: {problem} "
                              "(it was saved with other space options)")


class SortedSupernet(nn.Module):
    """Base of sorted supernets: a strict ``load_state_dict`` fails with one clear ``CheckpointError``."""

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor], strict: bool = True, assign: bool = False):
        if strict:
            check_fits(state_dict, self.state_dict())
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


@register_mac_counter(NestedConv2d)
def _nested_conv_macs(module: NestedConv2d, inp: torch.Tensor, out: torch.Tensor) -> int:
    kh, kw = module.kernel_size
    return out[0].numel() * inp.shape[1] * kh * kw


@register_mac_counter(NestedLinear)
def _nested_linear_macs(module: NestedLinear, inp: torch.Tensor, out: torch.Tensor) -> int:
    return out[0].numel() * inp.shape[-1]
