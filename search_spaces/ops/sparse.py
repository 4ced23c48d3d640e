"""Sparse operations (DASS, after HYDRA): weights pruned by learned importance scores.

``SparseConv2d`` and ``SparseLinear`` are ``nn.Conv2d`` / ``nn.Linear`` with one more parameter,
``scores``, the shape of ``weight``. The forward uses ``weight * mask``, where ``mask`` keeps the
``ceil(k * n)`` entries of the layer with the largest ``|scores|`` (per-layer top-k; ``k`` is the
keep ratio, settable at any time; sparsity is ``1 - k``). The mask's gradient is passed straight
through (HYDRA's ``GetSubnet``), so ``dL/dscores = sign(scores) * dL/dW_eff * weight``. At ``k = 1``
the layer is dense: no mask is computed and the scores get no gradient.

The DASS schedule trains weights (dense), then scores (weights frozen), then weights again (scores
frozen): ``set_sparse_trainable`` switches which of the two ``requires_grad``, and
``init_scores_from_weights`` applies HYDRA's scaled score init before pruning starts.

``extract`` bakes the mask into a plain layer (``extract_sparse_ops`` for a whole model), which
``torch.jit.trace`` and ONNX export as usual. MACs counted on a built module (``counting``) are the
non-zero ones. The sparse execution path for inference is in ``sparse_exec``.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Callable, Iterator
from decimal import Decimal

import torch
import torch.nn.functional as F
from torch import nn

from nas.errors import ConfigError
from search_spaces.ops.counting import register_mac_counter
from search_spaces.ops.elastic import InferenceCache


def check_keep_ratio(keep_ratio: float) -> float:
    """``keep_ratio`` as a float if it lies in (0, 1], else :class:`ConfigError`."""
    if isinstance(keep_ratio, bool) or not isinstance(keep_ratio, numbers.Real) or not 0 < keep_ratio <= 1:
        raise ConfigError(f"keep ratio must be a number in (0, 1] (the fraction of weights kept), got {keep_ratio!r}")
    return float(keep_ratio)


def kept_count(n: int, keep_ratio: float) -> int:
    """``ceil(keep_ratio * n)``, computed on the ratio as written (0.07 of 100 keeps 7, not 8)."""
    return math.ceil(Decimal(repr(float(keep_ratio))) * n)


def topk_mask(values: torch.Tensor, count: int) -> torch.Tensor:
    """Boolean mask of the ``count`` largest entries of ``values``; ties go to the lowest flat index."""
    flat = values.reshape(-1)
    if count >= flat.numel():
        return torch.ones_like(values, dtype=torch.bool)
    threshold = flat.kthvalue(flat.numel() - count + 1).values
    above = flat > threshold
    ties = flat == threshold
    keep = above | (ties & (ties.cumsum(0) <= count - above.sum()))
    return keep.view_as(values)


class _StraightThroughMask(torch.autograd.Function):
    """Top-k mask of ``magnitudes`` in the forward; the identity in the backward (HYDRA's ``GetSubnet``)."""

    @staticmethod
    def forward(ctx, magnitudes: torch.Tensor, count: int) -> torch.Tensor:
        return topk_mask(magnitudes, count).to(magnitudes.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


def masked_weight(weight: torch.Tensor, scores: torch.Tensor, keep_ratio: float) -> torch.Tensor:
    """``weight`` times the top-``ceil(keep_ratio * n)`` mask of ``|scores|`` (same shape), straight-through
    for the scores: the masked forward of a sparse op, for layers that hold weight and scores themselves
    (an elastic layer masks its active slice)."""
    count = kept_count(weight.numel(), keep_ratio)
    return weight * _StraightThroughMask.apply(scores.abs(), count)


class _SparseWeights:
    """What ``SparseConv2d`` and ``SparseLinear`` share; mixed in before the ``nn`` layer class."""

    weight: nn.Parameter
    bias: nn.Parameter | None

    def _init_sparse(self, keep_ratio: float) -> None:
        self.scores = nn.Parameter(torch.empty_like(self.weight))
        self.keep_ratio = keep_ratio
        self._cache = InferenceCache()
        self.init_scores_from_weights()

    @property
    def keep_ratio(self) -> float:
        """Fraction ``k`` of the weights kept, in (0, 1]; 1 is dense."""
        return self._keep_ratio

    @keep_ratio.setter
    def keep_ratio(self, value: float) -> None:
        self._keep_ratio = check_keep_ratio(value)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if "scores" in self._parameters:
            self.init_scores_from_weights()

    @torch.no_grad()
    def init_scores_from_weights(self) -> None:
        """HYDRA's scaled score init: ``scores = sqrt(6 / fan_in) * weight / max|weight|``.

        The initial mask is then magnitude pruning of the current weights. Called at construction too
        (no random draw, so a sparse layer built under a seed has the weights of its dense twin).
        """
        peak = self.weight.abs().max()
        scale = math.sqrt(6 / self.weight[0].numel()) / peak if peak > 0 else 0.0
        self.scores.copy_(self.weight * scale)

    def mask(self) -> torch.Tensor:
        """The current boolean keep mask (all true at ``k = 1``)."""
        with torch.no_grad():
            return topk_mask(self.scores.abs(), kept_count(self.weight.numel(), self.keep_ratio))

    def effective_weight(self) -> torch.Tensor:
        """``weight * mask``, differentiable in both (straight-through for the scores); cached without grad."""
        if self.keep_ratio == 1:
            return self.weight
        return self._cache.get((self.keep_ratio,), (self.weight, self.scores), self._masked_weight)

    def _masked_weight(self) -> torch.Tensor:
        return masked_weight(self.weight, self.scores, self.keep_ratio)

    def set_trainable(self, *, weights: bool, scores: bool) -> None:
        """Set ``requires_grad`` of the weight and bias (``weights``) and of the scores."""
        self.weight.requires_grad_(weights)
        if self.bias is not None:
            self.bias.requires_grad_(weights)
        self.scores.requires_grad_(scores)

    def nonzero_weights(self) -> int:
        """Non-zero entries of ``weight * mask``: ``ceil(k * n)`` unless a kept weight is exactly 0."""
        with torch.no_grad():
            return int(torch.count_nonzero(self.effective_weight()))

    def nonzero_params(self) -> int:
        """Deployed parameters: the non-zero weights plus the (dense) bias; the scores are not counted."""
        return self.nonzero_weights() + (self.bias.numel() if self.bias is not None else 0)

    def extract(self) -> nn.Module:
        """The plain layer with the mask baked into its weights (a copy: later training does not touch it)."""
        plain = self._empty_plain()
        with torch.no_grad():
            plain.weight.copy_(self.effective_weight())
            if self.bias is not None:
                plain.bias.copy_(self.bias)
        return plain

    def _empty_plain(self) -> nn.Module:
        """A fresh plain layer of the same configuration (each sparse op class defines it)."""
        raise NotImplementedError


class SparseConv2d(_SparseWeights, nn.Conv2d):
    """``nn.Conv2d`` (same arguments) whose weight is pruned to the top ``keep_ratio`` by learned scores."""

    def __init__(self, *args, keep_ratio: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_sparse(keep_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.effective_weight(), self.bias)

    def _empty_plain(self) -> nn.Conv2d:
        return nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                         self.dilation, self.groups, self.bias is not None, self.padding_mode,
                         device=self.weight.device, dtype=self.weight.dtype)


class SparseLinear(_SparseWeights, nn.Linear):
    """``nn.Linear`` (same arguments) whose weight is pruned to the top ``keep_ratio`` by learned scores."""

    def __init__(self, *args, keep_ratio: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_sparse(keep_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.effective_weight(), self.bias)

    def _empty_plain(self) -> nn.Linear:
        return nn.Linear(self.in_features, self.out_features, self.bias is not None, device=self.weight.device,
                         dtype=self.weight.dtype)


# ---- whole models ---------------------------------------------------------------------------------

def sparse_layers(model: nn.Module) -> Iterator[SparseConv2d | SparseLinear]:
    """Every sparse op of ``model`` (itself included)."""
    return (m for m in model.modules() if isinstance(m, _SparseWeights))


def set_keep_ratio(model: nn.Module, keep_ratio: float) -> None:
    """Set the keep ratio of every sparse op of ``model``; :class:`ConfigError` outside (0, 1]."""
    keep_ratio = check_keep_ratio(keep_ratio)
    for layer in sparse_layers(model):
        layer.keep_ratio = keep_ratio


def init_scores_from_weights(model: nn.Module) -> None:
    """Scaled score init of every sparse op (before the pruning phase)."""
    for layer in sparse_layers(model):
        layer.init_scores_from_weights()


def set_sparse_trainable(model: nn.Module, *, weights: bool, scores: bool) -> None:
    """Which parameters of the sparse ops train: weights and biases, scores, or both.

    Only the sparse ops' own parameters change; BatchNorm, architecture weights and other layers are
    the caller's choice (HYDRA also freezes BatchNorm while pruning unless asked not to).
    """
    for layer in sparse_layers(model):
        layer.set_trainable(weights=weights, scores=scores)


def count_nonzero_params(model: nn.Module) -> int:
    """Deployed parameters: layers with ``nonzero_params()`` count their non-zeros, others all parameters."""
    total = 0
    for m in model.modules():
        total += m.nonzero_params() if hasattr(m, "nonzero_params") else sum(p.numel() for p in m.parameters(False))
    return total


def extract_sparse_ops(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every sparse op replaced by its plain extracted layer."""
    return replace_modules(copy.deepcopy(model), lambda name, m: m.extract() if isinstance(m, _SparseWeights) else None)


def replace_modules(model: nn.Module, replace: Callable[[str, nn.Module], nn.Module | None]) -> nn.Module:
    """Replace, in place, each submodule for which ``replace(name, module)`` returns a module.

    A module registered under several names is offered under each. Returns the root, which is the
    replacement itself when ``replace("", model)`` gives one.
    """
    for name, module in list(model.named_modules(remove_duplicate=False)):
        new = replace(name, module)
        if new is None:
            continue
        if not name:
            return new
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, new)
    return model


def nonzero_macs(nonzero_weights: int, out: torch.Tensor, units: int) -> int:
    """MACs of one sample of a layer with ``units`` output channels or features and ``out`` its output.

    Every output position uses each non-zero weight of its output unit once; bias additions are
    not MACs (as for the dense layers' counters).
    """
    return nonzero_weights * (out[0].numel() // units)


@register_mac_counter(SparseConv2d)
def _sparse_conv_macs(module: SparseConv2d, inp: torch.Tensor, out: torch.Tensor) -> int:
    return nonzero_macs(module.nonzero_weights(), out, module.out_channels)


@register_mac_counter(SparseLinear)
def _sparse_linear_macs(module: SparseLinear, inp: torch.Tensor, out: torch.Tensor) -> int:
    return nonzero_macs(module.nonzero_weights(), out, module.out_features)
