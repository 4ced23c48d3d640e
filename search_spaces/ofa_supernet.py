"""The Once-for-All MobileNetV3 supernet module (weights and elastic forward).

Structure and parameter names are those of the reference implementation
(``mit-han-lab/once-for-all``, ``OFAMobileNetV3``), so its published checkpoints load with
``strict=True``: a 3x3 stem, one fixed MBConv (expand 1), five stages of up to ``max(depth_list)``
elastic MBConv blocks, a final 1x1 expand, global pooling, a 1x1 feature mix and the classifier.
The search-space logic (genes, costs, graphs) lives in :mod:`search_spaces.ofa_mbv3`.

Two options add per-block genes without changing anything when they are left out (same modules,
weights under a seed and ``state_dict`` keys):

* ``sparsity_list``: the two 1x1 convolutions of every elastic block become sparse (DASS/HYDRA
  weights + scores, :mod:`search_spaces.ops.sparse`); the keep ratio masks the *active* slice (top
  ``ceil(k * out * in)`` of its scores), so non-zero counts are exact for every width. Scores start
  from the scaled score init of the weights *as they are when sparsity is first trained*: the first
  training-mode forward with gradients and a keep ratio below 1 re-initialises every score from the
  current weights (flag ``scores_initialised``, stored with the weights, so resume and checkpoints
  keep it). From then on weights and scores train together under sampled keep ratios.
* ``bits_list``: the three convolutions of every elastic block are quantised at the block's bit-width
  (weights and activations, one weight shared by every bit-width as in ``QuantConv2d``): LSQ weights per
  output channel, HWGQ activations, pre-activation form ``conv(q_a(relu(x)), q_w(W))``. The ReLU in front
  matters only for the block's input (a linear bottleneck, signed): HWGQ quantises unsigned values. The
  squeeze-excitation and the fixed layers (stem, first block, head) stay in float. ``extract`` returns
  ``QuantConv2d`` layers at the block's bit-width.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from nas.errors import CheckpointError
from search_spaces.checkpoint import state_dict_mismatch
from search_spaces.ops.elastic import DynamicConv2d, DynamicMBConv, DynamicSeparableConv2d
from search_spaces.ops.helpers import make_divisible, same_padding
from search_spaces.ops.quant import HWGQ, LSQWeightQuantizer, QuantConv2d
from search_spaces.ops.sparse import SparseConv2d, init_scores_from_weights, masked_weight
from search_spaces.ops.static import ConvLayer, LinearLayer, MBConv, MobileNetV3, ResidualBlock

BASE_STAGE_WIDTH = (16, 16, 24, 40, 80, 112, 160, 960, 1280)
STAGE_STRIDES = (2, 2, 2, 1, 2)
STAGE_ACTS = ("relu", "relu", "h_swish", "h_swish", "h_swish")
STAGE_SE = (False, True, False, True, True)
FIRST_BLOCK_ACT = "relu"


@dataclass(frozen=True)
class Widths:
    """Channel counts of an OFA-MBv3 supernet for one ``width_mult``."""

    stem: int
    first_block: int
    stages: tuple[int, ...]
    final_expand: int
    feature_mix: int

    @classmethod
    def for_width(cls, width_mult: float) -> "Widths":
        w = [make_divisible(b * width_mult, 8) for b in BASE_STAGE_WIDTH]
        return cls(stem=w[0], first_block=w[1], stages=tuple(w[2:7]), final_expand=w[7], feature_mix=w[8])


class OFAMobileNetV3(nn.Module):
    """Weight-sharing MobileNetV3 with elastic kernel size, expand ratio and depth."""

    def __init__(self, n_classes: int = 1000, width_mult: float = 1.0, ks_list=(3, 5, 7),
                 expand_ratio_list=(3, 4, 6), depth_list=(2, 3, 4), dropout_rate: float = 0.1,
                 bn_param=(0.1, 1e-5), kernel_transform: bool = True, sparse: bool = False,
                 bits_list: tuple[int, ...] | None = None):
        super().__init__()
        self.sparse, self.bits_list = sparse, tuple(bits_list) if bits_list else None
        self.widths = widths = Widths.for_width(width_mult)
        self.ks_list, self.expand_ratio_list = sorted(ks_list), sorted(expand_ratio_list)
        self.depth_list = sorted(depth_list)
        max_depth = self.depth_list[-1]

        self.first_conv = ConvLayer(3, widths.stem, 3, stride=2, act="h_swish")
        first = MBConv(widths.stem, widths.first_block, 3, 1, widths.stem, FIRST_BLOCK_ACT, use_se=False, expand=False)
        blocks: list[nn.Module] = [ResidualBlock(first, widths.stem == widths.first_block)]
        self.stage_blocks: list[list[int]] = []
        channels = widths.first_block
        for width, stride, act, se in zip(widths.stages, STAGE_STRIDES, STAGE_ACTS, STAGE_SE):
            self.stage_blocks.append(list(range(len(blocks), len(blocks) + max_depth)))
            for i in range(max_depth):
                s = stride if i == 0 else 1
                conv = DynamicMBConv(channels, width, self.ks_list, self.expand_ratio_list, s, act, se,
                                     kernel_transform)
                if sparse or self.bits_list:
                    _specialise(conv, sparse, self.bits_list)
                blocks.append(ResidualBlock(conv, s == 1 and channels == width))
                channels = width
        self.blocks = nn.ModuleList(blocks)
        self.final_expand_layer = ConvLayer(channels, widths.final_expand, 1, act="h_swish")
        self.feature_mix_layer = ConvLayer(widths.final_expand, widths.feature_mix, 1, use_bn=False, act="h_swish")
        self.classifier = LinearLayer(widths.feature_mix, n_classes, dropout_rate)
        self.bn_param = tuple(bn_param)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum, m.eps = bn_param
        self.runtime_depth = [max_depth] * len(self.stage_blocks)
        if sparse:
            self.register_buffer("scores_initialised", torch.tensor(False))

    def set_active(self, ks: list[int], e: list[float], d: list[int], keep: list[float] | None = None,
                   bits: list[int] | None = None) -> None:
        """Activate kernel sizes and expand ratios per elastic block, and depths per stage; with the
        options, the keep ratio and the bit-width of each elastic block."""
        for i, (block, k, ratio) in enumerate(zip(self.blocks[1:], ks, e)):
            block.conv.set_active(k, ratio)
            for layer in _pointwise(block.conv) if keep is not None else ():
                layer.conv.keep_ratio = keep[i]
            for layer in _quantised(block.conv) if bits is not None else ():
                layer.quant.active_bits = bits[i]
        self.runtime_depth = list(d)

    def active_blocks(self) -> list[nn.Module]:
        active = [self.blocks[0]]
        for idx, depth in zip(self.stage_blocks, self.runtime_depth):
            active.extend(self.blocks[i] for i in idx[:depth])
        return active

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.sparse and self.training and torch.is_grad_enabled() and not self.scores_initialised:
            self._init_scores_when_pruning_starts()
        x = self.first_conv(x)
        for block in self.active_blocks():
            x = block(x)
        x = self.final_expand_layer(x)
        x = self.feature_mix_layer(x.mean((2, 3), keepdim=True))
        return self.classifier(torch.flatten(x, 1))

    @torch.no_grad()
    def extract(self) -> MobileNetV3:
        """The active subnet as a plain ``MobileNetV3`` with copied weights and statistics."""
        import copy

        blocks = [copy.deepcopy(self.blocks[0])]
        blocks += [ResidualBlock(_extract_block(b.conv), b.identity_shortcut) for b in self.active_blocks()[1:]]
        net = MobileNetV3(copy.deepcopy(self.first_conv), blocks, copy.deepcopy(self.final_expand_layer),
                          copy.deepcopy(self.feature_mix_layer), copy.deepcopy(self.classifier))
        return net.to(self.classifier.linear.weight.device).train(self.training)

    def reorder_channels(self, expand_stage: int = 0) -> None:
        """Sort every elastic block's expanded channels by importance (the function is unchanged).

        ``expand_stage`` > 0 keeps the channels of the ``expand_stage`` largest ratios already
        trained as nested prefixes, as the reference does when each elastic-expand phase starts.
        """
        for block in self.blocks[1:]:
            conv = block.conv
            widths = [conv.mid_channels(r) for r in sorted(conv.expand_ratios, reverse=True)]
            order = conv.reorder_channels(widths[1:expand_stage + 1])
            _permute_extras(conv, order)

    @torch.no_grad()
    def _init_scores_when_pruning_starts(self) -> None:
        """Scaled score init from the current weights the first time a training step prunes."""
        if any(layer.conv.keep_ratio < 1 for block in self.active_blocks()[1:] for layer in _pointwise(block.conv)):
            init_scores_from_weights(self)
            self.scores_initialised.fill_(True)

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor], strict: bool = True, assign: bool = False):
        """Load current or reference-implementation key names (see :func:`translate_state_dict`)."""
        translated = translate_state_dict(state_dict, self.state_dict())
        return super().load_state_dict(translated, strict=strict, assign=assign)


class ElasticBits(nn.Module):
    """The quantisers of one elastic convolution: per bit-width an LSQ weight quantiser (a step per output
    channel, sliced to the active channels) and an HWGQ activation quantiser, one weight for all (as
    ``QuantConv2d``). ``forward(weight, x)`` returns ``(q_w(weight), q_a(relu(x)))`` at ``active_bits``."""

    def __init__(self, bits: tuple[int, ...], weight: torch.Tensor):
        super().__init__()
        self.bits = tuple(bits)
        self.weight_quant = nn.ModuleList(LSQWeightQuantizer(b, weight) for b in self.bits)
        self.act_quant = nn.ModuleList(HWGQ(b) for b in self.bits)
        self.active_bits = self.bits[-1]

    def forward(self, weight: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        i = self.bits.index(self.active_bits)
        return self.weight_quant[i](weight), self.act_quant[i](F.relu(x))

    @torch.no_grad()
    def fixed(self, conv: nn.Conv2d) -> QuantConv2d:
        """The extracted plain ``conv`` as a ``QuantConv2d`` at the active bit-width (its channels' steps)."""
        layer = QuantConv2d(conv.in_channels, conv.out_channels, conv.kernel_size[0], (self.active_bits,),
                            conv.stride[0], conv.groups).to(conv.weight.device)
        layer.weight.copy_(conv.weight)
        step = self.weight_quant[self.bits.index(self.active_bits)].step
        layer.weight_quant[0].step.copy_(step[:conv.out_channels])
        return layer


class ElasticPointwise(DynamicConv2d):
    """A 1x1 ``DynamicConv2d`` whose active slice is pruned (``sparse``: a ``SparseConv2d`` holds weight and
    scores) and/or quantised (``bits``): the pointwise convolutions of a block with the options."""

    def __init__(self, dense: DynamicConv2d, sparse: bool, bits: tuple[int, ...] | None):
        out_channels, in_channels = dense.conv.weight.shape[:2]
        super().__init__(in_channels, out_channels)
        if sparse:
            self.conv = SparseConv2d(in_channels, out_channels, 1, bias=False)
        self.conv.weight.data.copy_(dense.conv.weight)
        if sparse:
            self.conv.init_scores_from_weights()
        self.sparse = sparse
        self.quant = ElasticBits(bits, self.conv.weight) if bits else None

    def active_weight(self, out_channels: int, in_channels: int) -> torch.Tensor:
        weight = self.conv.weight[:out_channels, :in_channels]
        if not self.sparse or self.conv.keep_ratio == 1:
            return weight
        return masked_weight(weight, self.conv.scores[:out_channels, :in_channels], self.conv.keep_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, inp = self.active_out_channels, x.shape[1]
        key = (out, inp, self.conv.keep_ratio if self.sparse else 1.0)
        weight = self._cache.get(key, tuple(self.conv.parameters()), lambda: self.active_weight(out, inp).contiguous())
        if self.quant is not None:
            weight, x = self.quant(weight, x)
        return F.conv2d(x, weight)


class ElasticQuantDepthwise(DynamicSeparableConv2d):
    """A ``DynamicSeparableConv2d`` quantised at the block's bit-width (after the kernel transform)."""

    def __init__(self, dense: DynamicSeparableConv2d, bits: tuple[int, ...]):
        super().__init__(dense.conv.weight.shape[0], dense.kernel_sizes, dense.conv.stride[0], dense.kernel_transform)
        self.load_state_dict(dense.state_dict())
        self.quant = ElasticBits(bits, self.conv.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, channels = self.active_kernel_size, x.shape[1]
        sources = tuple(p for name, p in self.named_parameters() if not name.startswith("quant."))
        weight = self._cache.get((channels, k), sources, lambda: self.active_weight(channels, k).contiguous())
        weight, x = self.quant(weight, x)
        return F.conv2d(x, weight, None, self.conv.stride, same_padding(k), 1, channels)


def _specialise(block: DynamicMBConv, sparse: bool, bits: tuple[int, ...] | None) -> None:
    """Swap ``block``'s convolutions for their sparse/quantised versions, with the same weights. The new
    modules draw their own initial weights, then take the dense ones: forked RNG, so the stream (and
    every later layer's initial weights) is that of the supernet without the options."""
    with torch.random.fork_rng(devices=[]):
        block.inverted_bottleneck.conv = ElasticPointwise(block.inverted_bottleneck.conv, sparse, bits)
        block.point_linear.conv = ElasticPointwise(block.point_linear.conv, sparse, bits)
        if bits:
            block.depth_conv.conv = ElasticQuantDepthwise(block.depth_conv.conv, bits)


def _pointwise(block: DynamicMBConv) -> list[ElasticPointwise]:
    """The block's sparse pointwise layers (none without ``sparsity_list``)."""
    layers = (block.inverted_bottleneck.conv, block.point_linear.conv)
    return [m for m in layers if isinstance(m, ElasticPointwise) and m.sparse]


def _quantised(block: DynamicMBConv) -> list[nn.Module]:
    """The block's quantised layers (none without ``bits_list``)."""
    layers = (block.inverted_bottleneck.conv, block.depth_conv.conv, block.point_linear.conv)
    return [m for m in layers if getattr(m, "quant", None) is not None]


def _extract_block(block: DynamicMBConv) -> MBConv:
    """The active block as a plain ``MBConv``: masks baked in, quantised convolutions as ``QuantConv2d``."""
    plain = block.extract()
    if getattr(block.depth_conv.conv, "quant", None) is not None:
        for target, source in ((plain.inverted_bottleneck, block.inverted_bottleneck),
                               (plain.depth_conv, block.depth_conv), (plain.point_linear, block.point_linear)):
            target.conv = source.conv.quant.fixed(target.conv)
    return plain


@torch.no_grad()
def _permute_extras(block: DynamicMBConv, order: torch.Tensor) -> None:
    """Follow ``reorder_channels``' permutation of the expanded channels in the scores and LSQ steps."""
    expand, project = block.inverted_bottleneck.conv, block.point_linear.conv
    if _pointwise(block):
        expand.conv.scores.copy_(expand.conv.scores.index_select(0, order))
        project.conv.scores.copy_(project.conv.scores.index_select(1, order))
    for layer in _quantised(block):
        if layer is not project:                 # the projection's output channels do not move
            for quantizer in layer.quant.weight_quant:
                quantizer.step.copy_(quantizer.step.index_select(0, order))


_RENAMES = (
    (".bn.bn.", ".bn."), (".conv.conv.weight", ".conv.weight"), (".linear.linear.", ".linear."),
    (".bn.", ".bn.bn."), (".conv.weight", ".conv.conv.weight"), (".linear.", ".linear.linear."),
)


def translate_state_dict(source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> dict:
    """Map a reference OFA-MBv3 state_dict onto the keys of ``target``, or raise ``CheckpointError``.

    Accepted namings: ours (= the reference's current one), the legacy ``.mobile_inverted_conv.``
    block naming of the published checkpoints, a ``module.`` (DataParallel) prefix, and the static
    naming of a non-elastic network (``.bn.``/``.conv.weight``/``.linear.`` without the doubled
    wrapper names). A non-elastic network has no kernel-transformation matrices; those keep the
    target's values (identity at initialisation), as in the reference loader. Anything else missing,
    unexpected or of the wrong shape is reported, naming the first offenders.
    """
    translated: dict[str, torch.Tensor] = {}
    for key, value in source.items():
        new = key.removeprefix("module.").replace(".mobile_inverted_conv.", ".conv.")
        if new not in target:
            new = next((new.replace(a, b, 1) for a, b in _RENAMES if a in new and new.replace(a, b, 1) in target), new)
        translated[new] = value
    if not any(k.endswith("_matrix") for k in translated):
        translated.update({k: v for k, v in target.items() if k.endswith("_matrix") and k not in translated})
    problem = state_dict_mismatch(translated, target)
    if problem:
        raise CheckpointError(f"checkpoint does not fit this OFA-MBv3 supernet: {problem} "
                              "(check width_mult, n_classes, ks_list, expand_ratio_list and depth_list)")
    return translated
