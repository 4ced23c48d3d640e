"""The Once-for-All MobileNetV3 supernet module (weights and elastic forward).

Structure and parameter names are those of the reference implementation
(``mit-han-lab/once-for-all``, ``OFAMobileNetV3``), so its published checkpoints load with
``strict=True``: a 3x3 stem, one fixed MBConv (expand 1), five stages of up to ``max(depth_list)``
elastic MBConv blocks, a final 1x1 expand, global pooling, a 1x1 feature mix and the classifier.
The search-space logic (genes, costs, graphs) lives in :mod:`search_spaces.ofa_mbv3`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn

from nas.errors import CheckpointError
from search_spaces.ops.elastic import DynamicMBConv
from search_spaces.ops.helpers import make_divisible
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
                 bn_param=(0.1, 1e-5), kernel_transform: bool = True):
        super().__init__()
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

    def set_active(self, ks: list[int], e: list[float], d: list[int]) -> None:
        """Activate kernel sizes and expand ratios per elastic block, and depths per stage."""
        for block, k, ratio in zip(self.blocks[1:], ks, e):
            block.conv.set_active(k, ratio)
        self.runtime_depth = list(d)

    def active_blocks(self) -> list[nn.Module]:
        active = [self.blocks[0]]
        for idx, depth in zip(self.stage_blocks, self.runtime_depth):
            active.extend(self.blocks[i] for i in idx[:depth])
        return active

    def forward(self, x: torch.Tensor) -> torch.Tensor:
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
        blocks += [ResidualBlock(b.conv.extract(), b.identity_shortcut) for b in self.active_blocks()[1:]]
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
            conv.reorder_channels(widths[1:expand_stage + 1])

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor], strict: bool = True, assign: bool = False):
        """Load current or reference-implementation key names (see :func:`translate_state_dict`)."""
        translated = translate_state_dict(state_dict, self.state_dict())
        return super().load_state_dict(translated, strict=strict, assign=assign)


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
    missing = [k for k in target if k not in translated]
    if missing and not any(k.endswith("_matrix") for k in translated):
        for k in [k for k in missing if k.endswith("_matrix")]:
            translated[k] = target[k]
        missing = [k for k in missing if not k.endswith("_matrix")]
    unexpected = [k for k in translated if k not in target]
    mismatched = [f"{k} {tuple(v.shape)} != {tuple(target[k].shape)}"
                  for k, v in translated.items() if k in target and v.shape != target[k].shape]
    if missing or unexpected or mismatched:
        raise CheckpointError(_mismatch_message(missing, unexpected, mismatched))
    return translated


def _mismatch_message(missing: list[str], unexpected: list[str], mismatched: list[str]) -> str:
    def first(items: list[str]) -> str:
        more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
        return ", ".join(items[:3]) + more

    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys: {first(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys: {first(unexpected)}")
    if mismatched:
        parts.append(f"{len(mismatched)} shape mismatches: {first(mismatched)}")
    return ("checkpoint does not fit this OFA-MBv3 supernet: " + "; ".join(parts)
            + " (check width_mult, n_classes, ks_list, expand_ratio_list and depth_list)")
