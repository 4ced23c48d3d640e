"""Counting MACs and parameters on a built module, by forward hooks.

The analytic cost functions of every space are tested against these counts. A counter is registered
per module type, so new op families (sparse, quantised) add their own rule without editing this one.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

MacCounter = Callable[[nn.Module, torch.Tensor, torch.Tensor], int]
_MAC_COUNTERS: dict[type[nn.Module], MacCounter] = {}


def register_mac_counter(module_type: type[nn.Module]) -> Callable[[MacCounter], MacCounter]:
    """Decorator: ``fn(module, input, output) -> MACs per sample`` for modules of ``module_type``."""

    def decorator(fn: MacCounter) -> MacCounter:
        _MAC_COUNTERS[module_type] = fn
        return fn

    return decorator


@register_mac_counter(nn.Conv2d)
def _conv_macs(module: nn.Conv2d, inp: torch.Tensor, out: torch.Tensor) -> int:
    kh, kw = module.kernel_size
    per_output = (module.in_channels // module.groups) * kh * kw
    return out[0].numel() * per_output


@register_mac_counter(nn.Linear)
def _linear_macs(module: nn.Linear, inp: torch.Tensor, out: torch.Tensor) -> int:
    return out[0].numel() * module.in_features


def _counter_for(module: nn.Module) -> MacCounter | None:
    for cls in type(module).__mro__:
        if cls in _MAC_COUNTERS:
            return _MAC_COUNTERS[cls]
    return None


@torch.no_grad()
def count_macs(model: nn.Module, example_input: torch.Tensor) -> int:
    """MACs of one sample's forward pass (weight layers only: convolutions and linear layers)."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        total += _counter_for(module)(module, inputs[0], output)

    handles = [m.register_forward_hook(hook) for m in model.modules() if _counter_for(m) is not None]
    was_training = model.training
    model.eval()
    try:
        model(example_input[:1])
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total


def count_params(model: nn.Module) -> int:
    """Number of parameters (BatchNorm affine included, buffers excluded)."""
    return sum(p.numel() for p in model.parameters())
