"""``quantnas_sr``: QuantNAS's super-resolution space, searching each layer's op and bit-width jointly.

Network (ALGORITHMS.md §6.1, :class:`~search_spaces.ops.sr_blocks.SRNet`): ``cells`` residual body cells
of ``layers`` searchable body layers and ``layers - 1`` searchable skip branches each (RFDN-style
distillation, a fixed 8-bit fuse, ESA, ADQ), fixed 8-bit fuse convolutions, a searchable ``upsample``
layer before the pixel shuffle and a searchable residual ``tail`` at HR; unlike the reference, the
network's HR output is a residual on the bicubic up-scaling of its input (a fresh network is bicubic
up-scaling; see :class:`~search_spaces.ops.sr_blocks.SRNet`).

Genes: one per searchable layer, a **joint categorical over (op, bits)**, written ``"op@bits"``
(``"conv3x3@4"``); choices are op-major (every bit-width of the first op, then of the next), the order of
the layer's α vector. Config: ``{"body": [cells·layers], "skip": [cells·(layers-1)], "upsample": "...",
"tail": "..."}``, cell-major. The tail works on the 3 image channels, so it offers only the ops that fit
them (grouped convolutions do not). Every gene changes the network: ``canonical`` is the identity.

Costs, for one LR image of ``lr_size`` x ``lr_size`` at batch size 1, equal to the counts on the
extracted network: ``macs`` (:func:`~search_spaces.ops.counting.count_macs`), ``params``
(:func:`~search_spaces.ops.counting.count_params`: weights, biases, LSQ steps, ADQ's BatchNorm and φ,
the BatchNorms before ``upsample`` and ``tail`` and the two residual gains)
and ``bitops`` (:func:`~search_spaces.ops.quant.count_bitops`: ``MACs · b_w · b_a`` per convolution, bias
ignored, with ``b_w = b_a = b``). Every convolution of the extracted network is quantised, searched
layers at their gene's bits and the fixed ones (fuse convolutions, ESA) at 8 bits, so no layer counts
at ``count_bitops``'s float convention (32 x 32). Pixel shuffle, pooling, interpolation (ESA's and the
bicubic base), BatchNorm, ADQ, the residual gains and the additions count no MACs.

Supernet (:class:`SRSupernet`): every searchable layer is a :class:`MixedLayer` holding all ops, each
with one weight tensor shared by its bit-widths, and α. ``space.activate(config)`` makes it compute one
subnet (the extracted network's function exactly); ``supernet.set_search_mode("noise" | "direct")``
makes every layer a mixture over ``π = softmax(α)`` for the differentiable search; :meth:`QuantNASSRSpace.derive`
discretises α by a true argmax.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import cached_property
from typing import Any, Callable, ClassVar

import networkx as nx
import numpy as np
import torch
from torch import nn

from nas.errors import ConfigError
from search_spaces._registry import register
from search_spaces.base import Config, Gene, LayoutEntry, Metric, SearchSpace
from search_spaces.ops.quant import SUPPORTED_BITS, QuantConv2d
from search_spaces.ops.quant_noise import NOISE_KINDS
from search_spaces.ops.sr_blocks import (
    ADQ, ESA, FIXED_BITS, RESIDUAL_GAINS, SR_OPS, ConvShape, SRNet, SROp, esa_out_sides, esa_shapes,
)

SCALES = (2, 4)
SEARCH_MODES = ("noise", "direct")
DEFAULT_OPS = tuple(f"{kind}{k}x{k}" for kind in ("conv", "growth", "gconv") for k in (1, 3, 5))


def choice_name(op: str, bits: int) -> str:
    return f"{op}@{bits}"


class MixedLayer(nn.Module):
    """One searchable position: every candidate op, α over the joint (op, bits) choices (op-major).

    Modes: ``discrete`` (:meth:`choose`; one op at one bit-width, the extracted layer's function) and the
    search mixtures ``noise`` / ``direct``: ``Σ_o (Σ_b π_ob) · o(x)`` with ``π = softmax(α)``, the op's
    convolutions quantised with its slice ``π_o`` (quantisation noise, or LSQ/HWGQ averaged over the
    bit-widths; :class:`~search_spaces.ops.quant.QuantConv2d`). Ops whose slice is all zero are skipped,
    as in the reference, so a one-hot π computes exactly the discrete layer.
    """

    def __init__(self, ops: Sequence[SROp], in_channels: int, out_channels: int, bits: Sequence[int], noise: str):
        super().__init__()
        self.bits = tuple(bits)
        self.ops = nn.ModuleList(op.build(in_channels, out_channels, bits, noise) for op in ops)
        self.alpha = nn.Parameter(torch.zeros(len(ops) * len(bits)))
        self.choose(0)

    def choose(self, index: int) -> None:
        """Compute choice ``index`` (op ``index // |bits|`` at bit-width ``bits[index % |bits|]``)."""
        self.mode, self.index = "discrete", index
        op, bits = divmod(index, len(self.bits))
        for conv in self.ops[op]:
            conv.set_mode("direct", bits=self.bits[bits])

    def set_search_mode(self, mode: str) -> None:
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "discrete":
            return self.ops[self.index // len(self.bits)](x)
        pi = torch.softmax(self.alpha, 0).view(len(self.ops), len(self.bits))
        out = None
        for p, op in zip(pi, self.ops, strict=True):
            if not bool((p != 0).any()):
                continue
            for conv in op:
                conv.set_mode(self.mode, pi=p)
            y = p.sum() * op(x)
            out = y if out is None else out + y
        return out

    def fixed(self, index: int) -> nn.Sequential:
        """The op of choice ``index`` as a standalone layer at its bit-width (weights and step copied)."""
        op, bits = divmod(index, len(self.bits))
        return nn.Sequential(*(conv.to_fixed(self.bits[bits]) for conv in self.ops[op]))


class SRSupernet(SRNet):
    """The weight-sharing network: :class:`SRNet` with a :class:`MixedLayer` at every searchable position.

    For the differentiable search: :meth:`set_search_mode`, :meth:`arch_parameters` (α, one vector per
    gene in encoding order), :meth:`weight_parameters` and :meth:`probabilities`.
    """

    def set_search_mode(self, mode: str) -> None:
        """Make every searchable layer a mixture over ``softmax(α)``: ``"noise"`` or ``"direct"``."""
        if mode not in SEARCH_MODES:
            raise ConfigError(f"unknown search mode {mode!r}; use one of {', '.join(SEARCH_MODES)}")
        for layer in self.searchable().values():
            layer.set_search_mode(mode)

    def arch_parameters(self) -> list[nn.Parameter]:
        return [layer.alpha for layer in self.searchable().values()]

    def weight_parameters(self) -> list[nn.Parameter]:
        alphas = {id(a) for a in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in alphas]

    def probabilities(self) -> list[torch.Tensor]:
        """``softmax(α)`` per gene (differentiable), in encoding order."""
        return [torch.softmax(a, 0) for a in self.arch_parameters()]

    def init_quant_steps(self) -> None:
        """Initialise every LSQ step from the current weights (:meth:`QuantConv2d.init_steps`): after a
        search in ``noise`` mode, which trains the weights but never uses the steps."""
        for module in self.modules():
            if isinstance(module, QuantConv2d):
                module.init_steps()


@register("quantnas_sr")
class QuantNASSRSpace(SearchSpace):
    """Joint op and bit-width search for ×2/×4 super-resolution (QuantNAS, ALGORITHMS.md §6)."""

    metric: ClassVar[Metric] = Metric("psnr", "max", "dB")
    costs: ClassVar[tuple[str, ...]] = ("macs", "params", "bitops")
    training_method: ClassVar[str | None] = "quantnas"
    small_options: ClassVar[dict[str, Any]] = {"scale": 2, "channels": 12, "cells": 1, "layers": 2,
                                               "ops": ["conv1x1", "conv3x3", "growth3x3", "gconv3x3"],
                                               "bits": [4, 8], "lr_size": 16}

    def __init__(self, scale: int = 4, channels: int = 48, cells: int = 4, layers: int = 4,
                 ops: Sequence[str] = DEFAULT_OPS, bits: Sequence[int] = (4, 8), adq: bool = True,
                 lr_size: int = 64, noise: str = "gaussian"):
        """``lr_size``: the LR side at which costs are counted and ``example_input`` is made (the network
        itself takes any size of at least ESA's 15 pixels)."""
        self._options = {"scale": scale, "channels": channels, "cells": cells, "layers": layers, "ops": list(ops),
                         "bits": list(bits), "adq": adq, "lr_size": lr_size, "noise": noise}
        _check_options(self._options)
        self.scale, self.channels, self.n_cells, self.n_layers = scale, channels, cells, layers
        self.bits, self.adq, self.lr_size, self.noise = tuple(bits), adq, lr_size, noise
        self.layer_ops = {name: [SR_OPS[o] for o in ops if SR_OPS[o].fits(cin, cout)]
                          for name, (cin, cout, _) in self._positions.items()}
        _check_fit(self.layer_ops, list(ops))
        self._supernet: SRSupernet | None = None
        self._cost_tables: dict[str, list[list[float]]] = {}

    # ------------------------------------------------------------------ genes
    @cached_property
    def _positions(self) -> dict[str, tuple[int, int, int]]:
        """Searchable positions by gene name, in encoding order: (in channels, out channels, side)."""
        c, half, side = self.channels, self.channels // 2, self.lr_size
        cells, layers = range(self.n_cells), range(self.n_layers)
        body = {f"body.{k}.{i}": (c, c if i < self.n_layers - 1 else half, side) for k in cells for i in layers}
        skip = {f"skip.{k}.{i}": (c, half, side) for k in cells for i in range(self.n_layers - 1)}
        return {**body, **skip, "upsample": (c, 3 * self.scale ** 2, side), "tail": (3, 3, side * self.scale)}

    @cached_property
    def genes(self) -> list[Gene]:
        return [Gene(name, tuple(choice_name(op.name, b) for op in self.layer_ops[name] for b in self.bits))
                for name in self._positions]

    @cached_property
    def config_layout(self) -> list[LayoutEntry]:
        cells, layers = self.n_cells, self.n_layers
        return [LayoutEntry("body", cells * layers), LayoutEntry("skip", cells * (layers - 1)), LayoutEntry("upsample"),
                LayoutEntry("tail")]

    def _canonical(self, batch: np.ndarray) -> np.ndarray:
        return batch

    def size(self) -> int:
        return math.prod(int(c) for c in self.cardinalities)

    # ------------------------------------------------------------------ layers and costs
    def _layer(self, gene: int, index: int) -> dict[str, Any]:
        """Graph attributes of searchable layer ``gene`` at choice ``index`` (as extracted)."""
        name = self.genes[gene].name
        cin, cout, side = self._positions[name]
        op, bits = self.layer_ops[name][index // len(self.bits)], self.bits[index % len(self.bits)]
        convs = op.convs(cin, cout)
        macs = sum(c.macs(side) for c in convs)
        return {"op": op.name, "bits": bits, "kernel": op.kernel, "groups": op.groups, "convs": len(convs),
                "in_channels": cin, "out_channels": cout, "in_size": side, "out_size": side, "macs": macs,
                "params": sum(c.params() for c in convs), "bitops": macs * bits * bits}

    def _fixed_layers(self) -> dict[str, dict[str, Any]]:
        """Graph attributes of the layers no gene changes, by node name."""
        c, side, layers = self.channels, self.lr_size, {}
        for k in range(self.n_cells):
            layers[f"cells.{k}.fuse"] = _fixed_conv(ConvShape(self.n_layers * (c // 2), c, 1), side)
            layers[f"cells.{k}.esa"] = _esa(c, side)
            layers[f"cells.{k}.adq"] = _no_macs("adq" if self.adq else "residual", c, c, side, side,
                                                ADQ.n_params(c, self.adq))
        layers["fuse"] = _fixed_conv(ConvShape(self.n_cells * c, c, 1), side)
        layers["conv"] = _fixed_conv(ConvShape(c, c, 3), side)
        layers["pixel_shuffle"] = _no_macs("pixel_shuffle", 3 * self.scale ** 2, 3, side, side * self.scale, 0)
        hr = side * self.scale
        layers["upsample_bn"] = _no_macs("batchnorm", c, c, side, side, 2 * c)
        layers["bicubic"] = _no_macs("bicubic", 3, 3, side, hr, 0)
        layers["gains"] = _no_macs("gains", 3, 3, hr, hr, RESIDUAL_GAINS)
        layers["tail_bn"] = _no_macs("batchnorm", 3, 3, hr, hr, 6)
        return layers

    def additive_cost(self, layer_value: Callable[[dict], float]) -> Callable[[np.ndarray], np.ndarray]:
        """A table per gene over its choices plus the fixed layers' sum: numpy indexing per batch."""
        tables = [np.array([layer_value(self._layer(g, i)) for i in range(len(gene.choices))], dtype=np.float64)
                  for g, gene in enumerate(self.genes)]
        fixed = float(sum(layer_value(a) for a in self._fixed_layers().values()))
        exact = fixed == round(fixed) and all(np.all(t == np.round(t)) for t in tables)
        dtype = np.int64 if exact else np.float64   # exact integer counts stay exact
        tables, fixed = [t.astype(dtype) for t in tables], dtype(fixed)

        def score(vectors: np.ndarray) -> np.ndarray:
            batch = self.check_vectors(vectors)
            total = np.full(len(batch), fixed, dtype=dtype)
            for g, table in enumerate(tables):
                total += table[batch[:, g]]
            return total

        return score

    def bitops(self, vectors: np.ndarray) -> np.ndarray:
        """BitOps of the extracted network per row (see the module docstring)."""
        return self._bitops(vectors)

    @cached_property
    def _bitops(self) -> Callable[[np.ndarray], np.ndarray]:
        return self.additive_cost(lambda layer: layer["bitops"])

    def expected_cost(self, name: str, probabilities: Sequence[torch.Tensor], fixed: bool = True) -> torch.Tensor:
        """``Σ_genes π_g · cost_g`` (+ the fixed layers' cost): the differentiable cost of a search mixture.

        Args:
            name: one of ``costs``.
            probabilities: one probability vector per gene, in encoding order (``supernet.probabilities()``).
            fixed: include the layers no gene changes (QuantNAS's penalty leaves them out).
        """
        if name not in self.costs:
            raise ConfigError(f"space {self.name!r} has no cost {name!r}; it has {', '.join(self.costs)}")
        if len(probabilities) != self.n_genes:
            raise ConfigError(f"expected {self.n_genes} probability vectors, got {len(probabilities)}")
        if name not in self._cost_tables:
            self._cost_tables[name] = [[float(self._layer(g, i)[name]) for i in range(len(gene.choices))]
                                       for g, gene in enumerate(self.genes)]
        tables = self._cost_tables[name]
        total = sum((p * p.new_tensor(table)).sum() for p, table in zip(probabilities, tables, strict=True))
        return total + (sum(a[name] for a in self._fixed_layers().values()) if fixed else 0)

    # ------------------------------------------------------------------ graph
    def graph(self, config: Config) -> nx.DiGraph:
        """Layers as nodes (``op``, channels, ``in_size``/``out_size`` sides, ``macs``, ``params``,
        ``bitops``; ``bits`` on quantised convolutions) and data flow as edges."""
        vector = self.encode(config)
        g = nx.DiGraph(space=self.name)
        g.add_node("tile", **_no_macs("tile", 3, self.channels, self.lr_size, self.lr_size, 0))
        for i, gene in enumerate(self.genes):
            g.add_node(gene.name, **self._layer(i, int(vector[i])))
        g.add_nodes_from(self._fixed_layers().items())
        cell_input = "tile"
        for k in range(self.n_cells):
            h = cell_input
            for i in range(self.n_layers):
                if i < self.n_layers - 1:
                    g.add_edges_from([(h, f"skip.{k}.{i}"), (f"skip.{k}.{i}", f"cells.{k}.fuse")])
                g.add_edge(h, f"body.{k}.{i}")
                h = f"body.{k}.{i}"
            g.add_edges_from([(h, f"cells.{k}.fuse"), (f"cells.{k}.fuse", f"cells.{k}.esa"),
                              (f"cells.{k}.esa", f"cells.{k}.adq"), (cell_input, f"cells.{k}.adq"),
                              (f"cells.{k}.adq", "fuse")])
            cell_input = f"cells.{k}.adq"
        g.add_edges_from([("fuse", "conv"), ("conv", "upsample_bn"), ("tile", "upsample_bn"),
                          ("upsample_bn", "upsample"), ("upsample", "pixel_shuffle"), ("pixel_shuffle", "gains"),
                          ("bicubic", "gains"), ("gains", "tail_bn"), ("tail_bn", "tail"), ("gains", "tail")])
        return g

    # ------------------------------------------------------------------ networks
    def _build(self, cls: type[SRNet], make_layer: Callable[[str, int, int], nn.Module]) -> SRNet:
        return cls(self.channels, self.n_cells, self.n_layers, self.scale, self.adq, make_layer, self.noise)

    @property
    def supernet(self) -> SRSupernet:
        if self._supernet is None:
            self._supernet = self._build(SRSupernet, lambda name, cin, cout: MixedLayer(
                self.layer_ops[name], cin, cout, self.bits, self.noise))
        return self._supernet

    def activate(self, config: Config) -> None:
        for layer, index in zip(self.supernet.searchable().values(), self.encode(config), strict=True):
            layer.choose(int(index))

    def extract(self, config: Config) -> SRNet:
        """The discretised network: each searchable layer its op at its bit-width (fake-quantised
        :class:`~search_spaces.ops.quant.QuantConv2d` in ``direct`` mode), the rest copied."""
        choices = dict(zip(self.supernet.searchable(), (int(i) for i in self.encode(config)), strict=True))
        mixed = self.supernet.searchable()
        net = self._build(SRNet, lambda name, cin, cout: mixed[name].fixed(choices[name]))
        layers = set(net.searchable().values())
        searched = tuple(f"{path}." for path, m in net.named_modules() if m in layers)
        state, source = net.state_dict(), self.supernet.state_dict()
        net.load_state_dict({k: v if k.startswith(searched) else source[k] for k, v in state.items()})
        return net.to(self.supernet.fuse.weight.device).train(self.supernet.training)

    def derive(self, alphas: Sequence[Any] | None = None) -> Config:
        """The config of the largest α of every gene: a true argmax (ties: the first choice).

        Args:
            alphas: one vector per gene in encoding order (tensors or arrays); the supernet's α if ``None``.

        Raises:
            ConfigError: for the wrong number or length of vectors, or NaN values (±inf are fine).
        """
        if alphas is None:
            alphas = self.supernet.arch_parameters()
        if len(alphas) != self.n_genes:
            raise ConfigError(f"{self.name} needs {self.n_genes} α vectors (one per gene), got {len(alphas)}")
        index = []
        for gene, alpha in zip(self.genes, alphas, strict=True):
            values = torch.as_tensor(alpha).detach().cpu().numpy().astype(np.float64)
            if values.shape != (len(gene.choices),) or np.isnan(values).any():
                raise ConfigError(f"α of gene {gene.name!r} must be {len(gene.choices)} values, none NaN; got "
                                  f"{values.tolist()}")
            index.append(int(np.argmax(values)))
        return self.decode(np.asarray(index, dtype=np.int64))

    def example_input(self, config: Config, batch: int = 1) -> torch.Tensor:
        """A batch of LR images in [0, 1] of ``lr_size`` x ``lr_size`` (the size costs are counted at)."""
        self.validate(config)
        return torch.rand(batch, 3, self.lr_size, self.lr_size, generator=torch.Generator().manual_seed(0))

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["layers"] = {name: [op.name for op in ops] for name, ops in self.layer_ops.items()}
        info["bits"] = list(self.bits)
        return info


# ---------------------------------------------------------------------- helpers
def _fixed_conv(shape: ConvShape, side: int) -> dict[str, Any]:
    macs = shape.macs(side)
    return {"op": f"conv{shape.kernel}x{shape.kernel}", "bits": FIXED_BITS, "kernel": shape.kernel,
            "in_channels": shape.in_channels, "out_channels": shape.out_channels, "in_size": side, "out_size": side,
            "macs": macs, "params": shape.params(), "bitops": macs * FIXED_BITS ** 2}


def _esa(channels: int, side: int) -> dict[str, Any]:
    shapes, sides = esa_shapes(channels), esa_out_sides(side)
    macs = sum(shape.macs(sides[name]) for name, shape in shapes.items())
    return {"op": "esa", "bits": FIXED_BITS, "in_channels": channels, "out_channels": channels, "in_size": side,
            "out_size": side, "macs": macs, "params": sum(s.params() for s in shapes.values()),
            "bitops": macs * FIXED_BITS ** 2}


def _no_macs(op: str, cin: int, cout: int, in_size: int, out_size: int, params: int) -> dict[str, Any]:
    return {"op": op, "in_channels": cin, "out_channels": cout, "in_size": in_size, "out_size": out_size,
            "macs": 0, "params": params, "bitops": 0}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_options(o: dict[str, Any]) -> None:
    if o["scale"] not in SCALES:
        raise ConfigError(f"quantnas_sr: scale must be one of {list(SCALES)}; got {o['scale']!r}")
    for key, low in (("channels", 6), ("cells", 1), ("layers", 2), ("lr_size", ESA.MIN_SIDE)):
        if not _is_int(o[key]) or o[key] < low:
            raise ConfigError(f"quantnas_sr: {key} must be an integer >= {low}; got {o[key]!r}")
    if o["channels"] % 6:
        raise ConfigError(f"quantnas_sr: channels must be a multiple of 6 (the input is tiled from 3 channels "
                          f"and halved in the cells); got {o['channels']}")
    bits, ops = o["bits"], o["ops"]
    if not bits or len(set(bits)) != len(bits) or any(b not in SUPPORTED_BITS for b in bits):
        raise ConfigError(f"quantnas_sr: bits must be distinct bit-widths from {list(SUPPORTED_BITS)}; got {bits}")
    unknown = [op for op in ops if op not in SR_OPS]
    if not ops or unknown or len(set(ops)) != len(ops):
        raise ConfigError(f"quantnas_sr: ops must be distinct names from {sorted(SR_OPS)}; got {ops}")
    if not isinstance(o["adq"], bool):
        raise ConfigError(f"quantnas_sr: adq must be true or false; got {o['adq']!r}")
    if o["noise"] not in NOISE_KINDS:
        raise ConfigError(f"quantnas_sr: noise must be one of {list(NOISE_KINDS)}; got {o['noise']!r}")


def _check_fit(layer_ops: dict[str, list[SROp]], ops: list[str]) -> None:
    """Every op must fit every position but the 3-channel tail, which must keep at least one."""
    for name, fitting in layer_ops.items():
        if name == "tail" and fitting:
            continue
        missing = [op for op in ops if op not in {f.name for f in fitting}]
        if missing:
            raise ConfigError(f"quantnas_sr: ops {missing} do not fit layer {name!r} (grouped convolutions need "
                              "channel counts divisible by their groups; choose channels divisible by 12)")
