"""BatchNorm re-calibration: re-estimate running statistics for the subnet that is active.

A weight-sharing supernet's stored BatchNorm statistics belong to no particular subnet, so a subnet's
accuracy means nothing until they are re-estimated on training data. The semantics follow the
reference Once-for-All implementation: every BatchNorm normalises with the *current batch's*
statistics while calibrating; per batch we record the mean and the biased variance over all
dimensions but the channels; the result is the batch-size-weighted average over batches (no
momentum), written into the first ``C`` entries of the stored buffers, ``C`` being the channels the
subnet uses there. BatchNorms the subnet does not reach keep their statistics.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn


class _StatsMeter:
    """Batch-size-weighted running sums of per-channel means and variances."""

    def __init__(self) -> None:
        self.mean_sum: torch.Tensor | None = None
        self.var_sum: torch.Tensor | None = None
        self.count = 0

    def add(self, mean: torch.Tensor, var: torch.Tensor, n: int) -> None:
        if self.mean_sum is None:
            self.mean_sum, self.var_sum = mean * n, var * n
        else:
            self.mean_sum += mean * n
            self.var_sum += var * n
        self.count += n


def norm_layers(model: nn.Module) -> list[tuple[nn.Module, nn.BatchNorm2d]]:
    """``(module whose forward normalises, BatchNorm holding its parameters)`` for every norm layer.

    Elastic BatchNorms (any module with a ``bn`` child that slices it) are calibrated as a whole;
    their inner ``BatchNorm2d`` is not visited on its own.
    """
    inner = {id(m.bn) for m in model.modules() if isinstance(getattr(m, "bn", None), nn.BatchNorm2d)
             and getattr(m, "slices_bn", False)}
    layers = []
    for module in model.modules():
        if getattr(module, "slices_bn", False):
            layers.append((module, module.bn))
        elif isinstance(module, nn.BatchNorm2d) and id(module) not in inner:
            layers.append((module, module))
    return layers


def _calibrating_forward(bn: nn.BatchNorm2d, meter: _StatsMeter):
    def forward(x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        dims = [0, *range(2, x.dim())]
        mean = x.mean(dims)
        centred = x - mean.view(1, channels, *([1] * (x.dim() - 2)))
        var = (centred * centred).mean(dims)
        meter.add(mean, var, x.shape[0])
        weight, bias = (None, None) if bn.weight is None else (bn.weight[:channels], bn.bias[:channels])  # affine=False
        return F.batch_norm(x, mean, var, weight, bias, False, 0.0, bn.eps)

    return forward


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable) -> int:
    """Re-estimate the running statistics of every BatchNorm ``model`` uses on ``batches``.

    ``batches`` yields input tensors (or ``(inputs, labels)`` pairs). Returns the number of samples
    seen. Works on a supernet with a subnet active and on any plain network.
    """
    layers = norm_layers(model)
    meters = [_StatsMeter() for _ in layers]
    was_training = model.training
    model.eval()
    for (module, bn), meter in zip(layers, meters):
        module.forward = _calibrating_forward(bn, meter)
    seen = 0
    try:
        for batch in batches:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            model(x)
            seen += x.shape[0]
    finally:
        for module, _ in layers:
            del module.forward  # back to the class's forward
        model.train(was_training)
    for (_, bn), meter in zip(layers, meters):
        if meter.count:
            channels = meter.mean_sum.shape[0]
            bn.running_mean[:channels].copy_(meter.mean_sum / meter.count)
            bn.running_var[:channels].copy_(meter.var_sum / meter.count)
    return seen
