"""``sortednet_cnn``: a CIFAR ResNet sorted along depth per stage, width per stage and width per block.

Config: ``{"depth": [blocks per stage], "width": [fraction per stage], "block_width": [fraction per
block]}``; every stage has ``max(depth_grid)`` blocks, of which the first ``depth[s]`` run. Genes,
in encoding order: ``depth.0..``, ``width.0..``, ``block_width.0..`` (stage-major). ``width[s]`` is
the residual stream of stage ``s`` (both convolutions' output side, the projection shortcut, and for
stage 0 the stem), which identity shortcuts force to be shared by the stage; ``block_width[b]`` is
the inner width of block ``b`` (first conv out, second conv in), free per block. The first block of
every stage after the first has a projection shortcut (1x1 conv + BN), since its two sides are set
by different width genes.

Why basic blocks rather than MobileNetV2: the CIFAR ResNet is one of the two CNNs SortedNet reports
on; its two 3x3 convolutions per block make the per-block width a plain channel prefix with no
expand-ratio rounding; and it needs nothing beyond Conv2d/BatchNorm2d/Linear.

Heads at every depth: every stage keeps at least its first block, so every sub-model ends with the
last stage and one classifier after global pooling serves all depths. Its input is the last stage's
width, which is elastic: the classifier is sorted like every other layer (a sub-model uses its first
input columns), so no per-exit heads are needed.
"""

from __future__ import annotations

from functools import cached_property, partial
from typing import Any, ClassVar

import torch

from nas.errors import ConfigError
from search_spaces._registry import register
from search_spaces.base import Config, Gene, LayoutEntry
from search_spaces.ops.helpers import conv_output_size
from search_spaces.ops.nested import copy_prefix
from search_spaces.ops.nested_nets import BlockShape, ResNet, SortedResNet
from search_spaces.sortednet import (
    DepthLink,
    LayerSpec,
    SortedSpace,
    parse_depth_grid,
    parse_fraction_grid,
    positive_ints,
    unit_choices,
    units,
)


@register("sortednet_cnn")
class SortedCNNSpace(SortedSpace):
    """Sorted CIFAR ResNet: ``widths`` channels per stage, ``max(depth_grid)`` basic blocks per stage."""

    small_options: ClassVar[dict[str, Any]] = {"resolution": 8, "widths": [8, 16], "depth_grid": [1, 2],
                                               "width_grid": [0.25, 0.5, 1.0]}

    def __init__(self, n_classes: int = 10, in_channels: int = 3, resolution: int = 32, widths=(16, 32, 64),
                 strides=None, depth_grid=(1, 2, 3), width_grid=(0.25, 0.5, 0.75, 1.0)):
        """``strides`` (one per stage) defaults to 1 for the first stage and 2 for the others."""
        if strides is None and isinstance(widths, (list, tuple)):
            strides = [1] + [2] * (len(widths) - 1)
        positive_ints(n_classes=n_classes, in_channels=in_channels, resolution=resolution, widths=widths,
                      strides=strides)
        if len(strides) != len(widths):
            raise ConfigError(f"sortednet_cnn: strides {list(strides)} must give one stride per stage of "
                              f"widths {list(widths)}")
        self.depths = parse_depth_grid("depth_grid", depth_grid)
        self.fractions = parse_fraction_grid("width_grid", width_grid)
        self.channel_choices = [unit_choices("width_grid", self.fractions, w, f"channels of stage {s}")
                                for s, w in enumerate(widths)]
        self._options = {"n_classes": n_classes, "in_channels": in_channels, "resolution": resolution,
                         "widths": list(widths), "strides": list(strides), "depth_grid": self.depths,
                         "width_grid": self.fractions}
        self.widths, self.strides = list(widths), list(strides)
        self.n_stages, self.max_depth = len(widths), self.depths[-1]
        self._supernet: SortedResNet | None = None

    # ------------------------------------------------------------------ genes
    @cached_property
    def genes(self) -> list[Gene]:
        return ([Gene(f"depth.{s}", tuple(self.depths)) for s in range(self.n_stages)]
                + [Gene(f"width.{s}", tuple(self.fractions)) for s in range(self.n_stages)]
                + [Gene(f"block_width.{b}", tuple(self.fractions)) for b in range(self.n_stages * self.max_depth)])

    @cached_property
    def config_layout(self) -> list[LayoutEntry]:
        return [LayoutEntry("depth", self.n_stages), LayoutEntry("width", self.n_stages),
                LayoutEntry("block_width", self.n_stages * self.max_depth)]

    @cached_property
    def gene_depth(self) -> list[DepthLink | None]:
        blocks = [(s, i) for s in range(self.n_stages) for i in range(self.max_depth)]
        return [None] * (2 * self.n_stages) + blocks   # the depth gene of stage s is column s

    # ------------------------------------------------------------------ layers
    def _width_col(self, stage: int) -> int:
        return self.n_stages + stage

    @cached_property
    def layer_specs(self) -> list[LayerSpec]:
        last = self._width_col(self.n_stages - 1)
        specs = [LayerSpec("stem", (self._width_col(0),), self._stem)]
        for s in range(self.n_stages):
            for i in range(self.max_depth):
                specs.append(self._block_spec(s, i))
        return specs + [LayerSpec("pool", (last,), self._pool), LayerSpec("classifier", (last,), self._classifier)]

    def _block_spec(self, s: int, i: int) -> LayerSpec:
        mid, out = 2 * self.n_stages + s * self.max_depth + i, self._width_col(s)
        name = f"stages.{s}.{i}"
        if i == 0 and s > 0:  # the only block whose input is another stage's width
            return LayerSpec(name, (self._width_col(s - 1), mid, out), partial(self._block, s, i), (s, i))
        return LayerSpec(name, (mid, out), lambda m, o: self._block(s, i, o, m, o), (s, i))

    @cached_property
    def _sizes(self) -> list[tuple[int, int]]:
        """(input side, output side) of each stage."""
        sizes, side = [], self._options["resolution"]
        for stride in self.strides:
            sizes.append((side, conv_output_size(side, 3, stride)))
            side = sizes[-1][1]
        return sizes

    def _block_shape(self, s: int, i: int, cin: int, mid: int, out: int) -> BlockShape:
        """The first block of a stage has a projection shortcut when it strides, and always after stage 0:
        its input is the previous stage's width gene, so the two sides may differ even when the full
        widths are equal."""
        stride = self.strides[s] if i == 0 else 1
        return BlockShape(cin, mid, out, stride, projection=i == 0 and (stride != 1 or s > 0))

    def _stem(self, fraction: float) -> dict[str, Any]:
        cin, cout, r = self._options["in_channels"], units(fraction, self.widths[0]), self._options["resolution"]
        return {"op": "conv", "in_channels": cin, "out_channels": cout, "in_size": r, "out_size": r, "kernel": 3,
                "stride": 1, "bn": True, "act": "relu", "macs": r * r * cin * cout * 9,
                "params": cin * cout * 9 + 2 * cout}

    def _block(self, s: int, i: int, in_fraction: float, mid_fraction: float, out_fraction: float) -> dict[str, Any]:
        full_in = self.widths[s - 1] if i == 0 and s > 0 else self.widths[s]
        shape = self._block_shape(s, i, units(in_fraction, full_in), units(mid_fraction, self.widths[s]),
                                  units(out_fraction, self.widths[s]))
        cin, mid, out = shape.in_channels, shape.mid_channels, shape.out_channels
        in_size, out_size = self._sizes[s] if i == 0 else (self._sizes[s][1],) * 2
        macs = out_size * out_size * (9 * cin * mid + 9 * mid * out + (cin * out if shape.projection else 0))
        params = 9 * cin * mid + 2 * mid + 9 * mid * out + 2 * out + (cin * out + 2 * out if shape.projection else 0)
        return {"op": "basic_block", "in_channels": cin, "mid_channels": mid, "out_channels": out,
                "in_size": in_size, "out_size": out_size, "kernel": 3, "stride": shape.stride,
                "projection": shape.projection, "macs": macs, "params": params}

    def _pool(self, fraction: float) -> dict[str, Any]:
        c = units(fraction, self.widths[-1])
        return {"op": "global_avg_pool", "in_channels": c, "out_channels": c, "in_size": self._sizes[-1][1],
                "out_size": 1, "macs": 0, "params": 0}

    def _classifier(self, fraction: float) -> dict[str, Any]:
        c, n = units(fraction, self.widths[-1]), self._options["n_classes"]
        return {"op": "linear", "in_channels": c, "out_channels": n, "in_size": 1, "out_size": 1,
                "macs": c * n, "params": c * n + n}

    # ------------------------------------------------------------------ networks
    def _counts(self, config: Config) -> tuple[list[int], list[int], list[list[int]]]:
        """Depth, width (channels) per stage and inner channels of every block of ``config``."""
        self.validate(config)
        widths = [units(f, w) for f, w in zip(config["width"], self.widths)]
        per_stage = [config["block_width"][s * self.max_depth:(s + 1) * self.max_depth] for s in range(self.n_stages)]
        mids = [[units(f, w) for f in fractions] for fractions, w in zip(per_stage, self.widths)]
        return list(config["depth"]), widths, mids

    def _shapes(self, config: Config) -> list[list[BlockShape]]:
        depths, widths, mids = self._counts(config)
        return [[self._block_shape(s, i, widths[s - 1] if i == 0 and s > 0 else widths[s], mids[s][i], widths[s])
                 for i in range(depths[s])] for s in range(self.n_stages)]

    @property
    def supernet(self) -> SortedResNet:
        if self._supernet is None:
            o = self._options
            self._supernet = SortedResNet(o["in_channels"], self._shapes(self.max_config()), o["n_classes"])
        return self._supernet

    def activate(self, config: Config) -> None:
        self.supernet.set_active(*self._counts(config))

    def extract(self, config: Config) -> ResNet:
        """The plain ResNet of ``config``, each tensor the leading slice of the supernet's."""
        net = ResNet(self._options["in_channels"], self._shapes(config), self._options["n_classes"])
        copy_prefix(net, self.supernet)
        return net.to(self.supernet.classifier.weight.device).train(self.supernet.training)

    def example_input(self, config: Config, batch: int = 1) -> torch.Tensor:
        self.validate(config)
        r, generator = self._options["resolution"], torch.Generator().manual_seed(0)
        return torch.randn(batch, self._options["in_channels"], r, r, generator=generator)

    def input_size(self, config: Config) -> int:
        return self._options["resolution"]

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["channels"] = {"stages": self.widths, "choices per stage": self.channel_choices,
                            "blocks per stage": self.max_depth}
        return info
