"""Plain (non-elastic) MobileNetV3 layers: what ``extract`` builds and what a from-scratch network is.

Submodule names follow the reference Once-for-All static ``MobileNetV3`` (``first_conv.conv``,
``blocks.N.conv.depth_conv.se.fc.reduce``, ``classifier.linear``, ...), so an extracted subnet's
``state_dict`` reads like the reference's and a static teacher checkpoint maps onto it directly.
Only ordinary ``Conv2d``/``BatchNorm2d``/``Linear`` and activation modules are used.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from search_spaces.ops.activations import create_activation
from search_spaces.ops.helpers import make_divisible, same_padding

SE_REDUCTION = 4


def se_mid_channels(channels: int) -> int:
    """Hidden width of the squeeze-excitation bottleneck for ``channels`` inputs."""
    return make_divisible(channels // SE_REDUCTION, 8)


class ConvLayer(nn.Module):
    """Convolution, optional BatchNorm, optional activation (reference ``ConvLayer``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 use_bn: bool = True, act: str | None = "relu", bias: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, same_padding(kernel_size), bias=bias)
        self.bn = nn.BatchNorm2d(out_channels) if use_bn else None
        self.act = create_activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        if self.act is not None:
            x = self.act(x)
        return x


class LinearLayer(nn.Module):
    """Dropout then a linear classifier (reference ``LinearLayer``)."""

    def __init__(self, in_features: int, out_features: int, dropout_rate: float = 0.0):
        super().__init__()
        self.dropout = nn.Dropout(dropout_rate) if dropout_rate > 0 else None
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dropout is not None:
            x = self.dropout(x)
        return self.linear(x)


class SqueezeExcite(nn.Module):
    """Channel attention: global pool, 1x1 reduce, ReLU, 1x1 expand, hard sigmoid, rescale."""

    def __init__(self, channels: int):
        super().__init__()
        mid = se_mid_channels(channels)
        self.fc = nn.Sequential(OrderedDict([
            ("reduce", nn.Conv2d(channels, mid, 1)),
            ("relu", nn.ReLU(inplace=True)),
            ("expand", nn.Conv2d(mid, channels, 1)),
            ("h_sigmoid", nn.Hardsigmoid(inplace=True)),
        ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x.mean((2, 3), keepdim=True))


class MBConv(nn.Module):
    """Inverted residual body: 1x1 expand (absent when ``mid == in``), depthwise conv (+SE), 1x1 project."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, mid_channels: int,
                 act: str, use_se: bool, expand: bool = True):
        super().__init__()
        if expand:
            self.inverted_bottleneck = nn.Sequential(OrderedDict([
                ("conv", nn.Conv2d(in_channels, mid_channels, 1, bias=False)),
                ("bn", nn.BatchNorm2d(mid_channels)),
                ("act", create_activation(act)),
            ]))
        else:
            self.inverted_bottleneck = None
        depth = [
            ("conv", nn.Conv2d(mid_channels, mid_channels, kernel_size, stride, same_padding(kernel_size),
                               groups=mid_channels, bias=False)),
            ("bn", nn.BatchNorm2d(mid_channels)),
            ("act", create_activation(act)),
        ]
        if use_se:
            depth.append(("se", SqueezeExcite(mid_channels)))
        self.depth_conv = nn.Sequential(OrderedDict(depth))
        self.point_linear = nn.Sequential(OrderedDict([
            ("conv", nn.Conv2d(mid_channels, out_channels, 1, bias=False)),
            ("bn", nn.BatchNorm2d(out_channels)),
        ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inverted_bottleneck is not None:
            x = self.inverted_bottleneck(x)
        return self.point_linear(self.depth_conv(x))


class ResidualBlock(nn.Module):
    """``conv(x) + x`` when the block keeps its shape, else ``conv(x)``."""

    def __init__(self, conv: nn.Module, identity_shortcut: bool):
        super().__init__()
        self.conv = conv
        self.identity_shortcut = identity_shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return out + x if self.identity_shortcut else out


class GlobalAvgPool(nn.Module):
    """Mean over the spatial dimensions, keeping them as size 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3), keepdim=True)


class MobileNetV3(nn.Module):
    """Stem, blocks, final 1x1 expand, global pool, feature mix, classifier."""

    def __init__(self, first_conv: nn.Module, blocks: list[nn.Module], final_expand_layer: nn.Module,
                 feature_mix_layer: nn.Module, classifier: nn.Module):
        super().__init__()
        self.first_conv = first_conv
        self.blocks = nn.ModuleList(blocks)
        self.final_expand_layer = final_expand_layer
        self.feature_mix_layer = feature_mix_layer
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.first_conv(x)
        for block in self.blocks:
            x = block(x)
        x = self.final_expand_layer(x)
        x = self.feature_mix_layer(x.mean((2, 3), keepdim=True))
        return self.classifier(torch.flatten(x, 1))
