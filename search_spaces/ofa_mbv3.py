"""``ofa_mbv3``: the Once-for-All MobileNetV3 search space.

Config: ``{"ks": [k per elastic block], "e": [expand ratio per block], "d": [depth per stage], "r": res}``
with ``5 * max(depth_list)`` elastic blocks (20 by default). Genes, in encoding order: ``ks.0..ks.19``,
``e.0..e.19``, ``d.0..d.4``, ``r``. The kernel and expand genes of blocks beyond a stage's depth
cannot affect the network; :meth:`canonical` sets them to index 0.

Options that add per-block genes after ``r`` (absent, the space is exactly the plain one):

* ``sparsity_list`` (e.g. ``[0.1, 0.5, 1.0]``): config key ``"keep"``, genes ``keep.0..keep.19``, the
  keep ratio of the two 1x1 convolutions of each block (sparse ops: weights pruned by learned scores,
  see :mod:`search_spaces.ofa_supernet`). Costs ``nonzero_macs``/``nonzero_params`` count the
  ``ceil(k * weights)`` each of them keeps (everything else dense); ``macs``/``params`` stay those of
  the extracted network as stored (dense, zeros included).
* ``bits_list`` (e.g. ``[4, 8]``): config key ``"bits"``, genes ``bits.0..``, the weight and activation
  bit-width of each block's three convolutions. Cost ``bitops``: ``MACs x b_w x b_a`` summed over the
  layers, quantised convolutions at their block's ``b`` (dense MACs: an integer kernel computes the
  zeros too), every other layer at 32 x 32 bits (``count_bitops`` on the extracted network).

Choices are sorted ascending, so the last (largest network) is the densest and the widest bit-width.

Costs are computed from per-block tables indexed by gene value, so a batch of encodings is scored
with numpy indexing and sums; the tables are built once per space from the same channel arithmetic
the supernet uses.
"""

from __future__ import annotations

import itertools
from functools import cached_property
from typing import Any, Callable

import networkx as nx
import numpy as np
import torch

from nas.errors import ConfigError
from search_spaces._kernels import block_table_sum
from search_spaces._registry import register
from search_spaces.base import Config, Gene, LayoutEntry, SearchSpace
from search_spaces.ofa_supernet import (
    FIRST_BLOCK_ACT, STAGE_ACTS, STAGE_SE, STAGE_STRIDES, OFAMobileNetV3, Widths,
)
from search_spaces.ops.helpers import conv_output_size, make_divisible
from search_spaces.ops.quant import SUPPORTED_BITS, QuantConv2d
from search_spaces.ops.sparse import check_keep_ratio, kept_count
from search_spaces.ops.static import ConvLayer, GlobalAvgPool, LinearLayer, MBConv, MobileNetV3, ResidualBlock, se_mid_channels

N_STAGES = 5
FLOAT_BITS = 32


@register("ofa_mbv3")
class OFAMobileNetV3Space(SearchSpace):
    """Elastic kernel {3,5,7}, expand ratio {3,4,6}, depth {2,3,4} and resolution (128..224 step 4)."""

    small_options = {"n_classes": 10, "width_mult": 0.25, "resolutions": [32, 36, 40]}
    training_method = "ps"

    def __init__(self, n_classes: int = 1000, width_mult: float = 1.0, ks_list=(3, 5, 7),
                 expand_ratio_list=(3, 4, 6), depth_list=(2, 3, 4), resolutions=tuple(range(128, 225, 4)),
                 dropout_rate: float = 0.1, bn_param=(0.1, 1e-5), kernel_transform: bool = True,
                 sparsity_list=None, bits_list=None):
        self._options = {
            "n_classes": int(n_classes), "width_mult": float(width_mult), "ks_list": sorted(ks_list),
            "expand_ratio_list": sorted(expand_ratio_list), "depth_list": sorted(depth_list),
            "resolutions": sorted(resolutions), "dropout_rate": float(dropout_rate),
            "bn_param": list(bn_param), "kernel_transform": bool(kernel_transform),
        }
        _check_options(self._options)
        self.sparsity_list = _keep_ratios(sparsity_list)
        self.bits_list = _bit_widths(bits_list)
        #: The optional per-block genes present, in encoding order: (config key, choices).
        self.extra_genes = [(key, tuple(values)) for key, values in (("keep", self.sparsity_list),
                                                                      ("bits", self.bits_list)) if values]
        for key, values in self.extra_genes:
            self._options[{"keep": "sparsity_list", "bits": "bits_list"}[key]] = list(values)
        self.costs = ("macs", "params") + (("nonzero_macs", "nonzero_params") if self.sparsity_list else ()) \
            + (("bitops",) if self.bits_list else ())
        self.ks_list = self._options["ks_list"]
        self.expand_ratio_list = self._options["expand_ratio_list"]
        self.depth_list = self._options["depth_list"]
        self.resolutions = self._options["resolutions"]
        self.max_depth = self.depth_list[-1]
        self.n_blocks = N_STAGES * self.max_depth
        self.widths = Widths.for_width(width_mult)
        self._supernet: OFAMobileNetV3 | None = None

    # ------------------------------------------------------------------ genes
    @cached_property
    def genes(self) -> list[Gene]:
        return ([Gene(f"ks.{i}", tuple(self.ks_list)) for i in range(self.n_blocks)]
                + [Gene(f"e.{i}", tuple(self.expand_ratio_list)) for i in range(self.n_blocks)]
                + [Gene(f"d.{s}", tuple(self.depth_list)) for s in range(N_STAGES)]
                + [Gene("r", tuple(self.resolutions))]
                + [Gene(f"{key}.{i}", values) for key, values in self.extra_genes for i in range(self.n_blocks)])

    @cached_property
    def config_layout(self) -> list[LayoutEntry]:
        return [LayoutEntry("ks", self.n_blocks), LayoutEntry("e", self.n_blocks),
                LayoutEntry("d", N_STAGES), LayoutEntry("r")] + [LayoutEntry(key, self.n_blocks)
                                                                 for key, _ in self.extra_genes]

    @property
    def ks_cols(self) -> slice:
        return slice(0, self.n_blocks)

    @property
    def e_cols(self) -> slice:
        return slice(self.n_blocks, 2 * self.n_blocks)

    @property
    def d_cols(self) -> slice:
        return slice(2 * self.n_blocks, 2 * self.n_blocks + N_STAGES)

    @property
    def r_col(self) -> int:
        return 2 * self.n_blocks + N_STAGES

    def extra_cols(self, key: str) -> slice:
        """Columns of the optional per-block genes ``key`` (``"keep"`` or ``"bits"``)."""
        m = [k for k, _ in self.extra_genes].index(key)
        start = self.r_col + 1 + m * self.n_blocks
        return slice(start, start + self.n_blocks)

    def _per_block_cols(self) -> list[slice]:
        return [self.ks_cols, self.e_cols] + [self.extra_cols(key) for key, _ in self.extra_genes]

    def active_blocks(self, vectors: np.ndarray) -> np.ndarray:
        """Boolean ``(n, n_blocks)``: which elastic blocks each encoding keeps."""
        depth = np.asarray(self.depth_list)[vectors[:, self.d_cols]]          # (n, stages)
        position = np.tile(np.arange(self.max_depth), N_STAGES)               # block index within its stage
        stage = np.repeat(np.arange(N_STAGES), self.max_depth)
        return position[None, :] < depth[:, stage]

    def _canonical(self, out: np.ndarray) -> np.ndarray:
        inactive = ~self.active_blocks(out)
        for cols in self._per_block_cols():
            out[:, cols][inactive] = 0       # basic slices are views: the masked writes land in ``out``
        return out

    def size(self) -> int:
        per_block = len(self.ks_list) * len(self.expand_ratio_list) * self._n_extra
        per_stage = sum(per_block ** d for d in self.depth_list)
        return per_stage ** N_STAGES * len(self.resolutions)

    def active_genes(self, vectors: np.ndarray) -> np.ndarray:
        v = self.check_vectors(vectors)
        active = np.ones(v.shape, dtype=bool)
        blocks = self.active_blocks(v)
        for cols in self._per_block_cols():
            active[:, cols] = blocks
        return active

    def extra_features(self, vectors: np.ndarray) -> np.ndarray:
        """Per stage: depth, mean kernel and mean expand ratio of its active blocks, and its MACs
        (millions); resolution; the MACs of the fixed layers; the MACs of each block (0 when dropped).

        The one-hot genes cannot express that a block's cost is a product of its kernel, expand ratio
        and the resolution; the MACs carry it (per block for linear models, per stage for trees). On
        noise-free Note10 table latencies of OFA-MBv3 w1.2, ridge on 200 subnets went from 2.97 % to
        2.95 % MAPE (log target) and 2.24 % to 1.75 % (linear target) with them, gbdt 5.89 % to 3.98 %."""
        blocks = self.active_blocks(vectors).reshape(len(vectors), N_STAGES, self.max_depth)
        ks = np.asarray(self.ks_list, dtype=np.float32)[vectors[:, self.ks_cols]].reshape(blocks.shape)
        e = np.asarray(self.expand_ratio_list, dtype=np.float32)[vectors[:, self.e_cols]].reshape(blocks.shape)
        depth = blocks.sum(axis=2)
        mean_k = (ks * blocks).sum(axis=2) / depth
        mean_e = (e * blocks).sum(axis=2) / depth
        r = np.asarray(self.resolutions, dtype=np.float32)[vectors[:, self.r_col]][:, None] / 224.0
        fixed_macs, block_macs = self._macs_by_block(vectors)
        block_macs = block_macs * blocks.reshape(len(vectors), self.n_blocks)
        stage_macs = block_macs.reshape(blocks.shape).sum(axis=2)
        return np.hstack([depth, mean_k, mean_e, r, stage_macs, fixed_macs[:, None], block_macs]).astype(np.float32)

    def _macs_by_block(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """MACs (millions) of the fixed layers ``(n,)`` and of every block as configured ``(n, blocks)``,
        whether active or not, gathered from the per-block cost table."""
        fixed, per_block = self._macs_tables                               # (R,), (B, K, E, X, R)
        extra = np.zeros((len(vectors), self.n_blocks), dtype=np.int64)
        for key, values in self.extra_genes:                               # mixed radix, last key fastest
            extra = extra * len(values) + vectors[:, self.extra_cols(key)]
        r = vectors[:, self.r_col]
        blocks = np.arange(self.n_blocks)[None, :]
        return fixed[r], per_block[blocks, vectors[:, self.ks_cols], vectors[:, self.e_cols], extra, r[:, None]]

    @cached_property
    def _macs_tables(self) -> tuple[np.ndarray, np.ndarray]:
        fixed, per_block = self._cost_tables([lambda layer: layer["macs"]])[0]
        return fixed / 1e6, per_block / 1e6

    # ------------------------------------------------------------------ costs
    @property
    def _n_extra(self) -> int:
        return int(np.prod([len(values) for _, values in self.extra_genes]))

    def _extra_choices(self) -> list[dict[str, Any]]:
        """Every combination of the optional per-block genes (mixed radix, the last key fastest)."""
        return [dict(zip([k for k, _ in self.extra_genes], combo))
                for combo in itertools.product(*[values for _, values in self.extra_genes])]

    def additive_cost(self, layer_value: Callable[[dict], float]) -> Callable[[np.ndarray], np.ndarray]:
        """Tables ``fixed[r]`` (stem, first block, head) and ``per_block[b, k, e, x, r]`` (``x`` the
        block's keep ratio and bit-width, when the options give them): a batch costs
        ``fixed[r] + sum_b active[b] * per_block[b, k_b, e_b, x_b, r]``, numpy indexing only."""
        return self._table_scorer(*self._cost_tables([layer_value])[0])

    def _cost_tables(self, layer_values: list[Callable[[dict], float]]) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(fixed, per_block)`` of each of ``layer_values``, from one pass over the layers."""
        n_k, n_e, n_r = len(self.ks_list), len(self.expand_ratio_list), len(self.resolutions)
        extras = self._extra_choices()
        fixed = np.zeros((len(layer_values), n_r))
        per_block = np.zeros((len(layer_values), self.n_blocks, n_k, n_e, len(extras), n_r))
        for ri, r in enumerate(self.resolutions):
            for layer in self._layers(self._max_config(r)):
                if layer["op"] != "mbconv" or layer["block"] == 0:
                    fixed[:, ri] += [f(layer) for f in layer_values]
            for b in range(self.n_blocks):
                for ki, k in enumerate(self.ks_list):
                    for ei, e in enumerate(self.expand_ratio_list):
                        base = self._block_layer(b, k, e, r)
                        for xi, extra in enumerate(extras):
                            layer = {**base, **self._option_costs(base, extra.get("keep"), extra.get("bits"))}
                            per_block[:, b, ki, ei, xi, ri] = [f(layer) for f in layer_values]
        return list(zip(fixed, per_block))

    def _table_scorer(self, fixed: np.ndarray, per_block: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        """Fold the depth gene into the table so that a row costs one gather per block.

        ``table[r, b, k, e, x, d]`` is block ``b``'s cost, or 0 when depth choice ``d`` of its stage drops
        the block; the compiled ``block_table_sum`` adds ``fixed[r]`` and one value per block.
        """
        exact = np.all(fixed == np.round(fixed)) and np.all(per_block == np.round(per_block))
        dtype = np.int64 if exact else np.float64                          # exact integer counts stay exact
        position = np.arange(self.n_blocks) % self.max_depth
        kept = position[:, None] < np.asarray(self.depth_list)[None, :]                   # (blocks, D)
        folded = per_block[..., None] * kept[:, None, None, None, None, :]             # (B, K, E, X, R, D)
        table = np.ascontiguousarray(folded.transpose(4, 0, 1, 2, 3, 5), dtype=dtype)   # (R, B, K, E, X, D)
        fixed = np.ascontiguousarray(fixed, dtype=dtype)
        extra_cards = np.array([len(values) for _, values in self.extra_genes], dtype=np.int64)

        def score(vectors: np.ndarray) -> np.ndarray:
            v = self.check_vectors(vectors, check_range=False)
            out = np.empty(len(v), dtype=dtype)
            bad = block_table_sum(v, self.n_blocks, self.max_depth, fixed, table, extra_cards, out)
            self.raise_if_out_of_range(v, bad)
            return out

        return score

    def _max_config(self, r: int) -> Config:
        config = {"ks": [self.ks_list[-1]] * self.n_blocks, "e": [self.expand_ratio_list[-1]] * self.n_blocks,
                  "d": [self.max_depth] * N_STAGES, "r": r}
        return {**config, **{key: [values[-1]] * self.n_blocks for key, values in self.extra_genes}}

    @cached_property
    def _layer_sums(self) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
        tables = self._cost_tables([lambda layer, name=name: layer[name] for name in self.costs])
        return {name: self._table_scorer(*table) for name, table in zip(self.costs, tables)}

    def _optional_cost(self, name: str, vectors: np.ndarray) -> np.ndarray:
        if name not in self.costs:
            option = "bits_list" if name == "bitops" else "sparsity_list"
            raise ConfigError(f"ofa_mbv3 has the cost {name!r} only with the option {option}")
        return self._layer_sums[name](vectors)

    def nonzero_macs(self, vectors: np.ndarray) -> np.ndarray:
        """MACs of the weights the sparse 1x1 convolutions keep, every other layer dense (one sample)."""
        return self._optional_cost("nonzero_macs", vectors)

    def nonzero_params(self, vectors: np.ndarray) -> np.ndarray:
        """Parameters with only the kept weights of the sparse 1x1 convolutions."""
        return self._optional_cost("nonzero_params", vectors)

    def bitops(self, vectors: np.ndarray) -> np.ndarray:
        """``sum MACs x b_w x b_a``: the blocks' convolutions at their bit-width, the rest at 32 bits."""
        return self._optional_cost("bitops", vectors)

    # ------------------------------------------------------------------ layer arithmetic
    def _block_io(self, block: int, r: int) -> tuple[int, int, int, int, str, bool]:
        """(in channels, out channels, input size, stride, act, se) of elastic block ``block`` (0-based)."""
        stage, pos = divmod(block, self.max_depth)
        size = conv_output_size(r, 3, 2)                    # after the stem; the first block has stride 1
        for s in range(stage):
            size = conv_output_size(size, 3, STAGE_STRIDES[s])
        stride = STAGE_STRIDES[stage] if pos == 0 else 1
        if pos > 0:
            size = conv_output_size(size, 3, STAGE_STRIDES[stage])
        in_ch = self.widths.stages[stage - 1] if stage > 0 else self.widths.first_block
        in_ch = in_ch if pos == 0 else self.widths.stages[stage]
        return in_ch, self.widths.stages[stage], size, stride, STAGE_ACTS[stage], STAGE_SE[stage]

    def _block_layer(self, block: int, k: int, e: float, r: int, keep: float | None = None,
                     bits: int | None = None) -> dict[str, Any]:
        in_ch, out_ch, size, stride, act, se = self._block_io(block, r)
        mid = make_divisible(round(in_ch * e), 8)
        layer = _mbconv(f"blocks.{block + 1}", in_ch, out_ch, size, k, stride, mid, act, se,
                        idskip=stride == 1 and in_ch == out_ch, expand=True, block=block + 1, expand_ratio=e)
        return {**layer, "resolution": r, **self._option_costs(layer, keep, bits)}

    def _option_costs(self, layer: dict[str, Any], keep: float | None, bits: int | None) -> dict[str, Any]:
        """The attributes the options add to a layer: ``keep_ratio`` and ``nonzero_*`` (``sparsity_list``),
        ``bits`` and ``bitops`` (``bits_list``). ``keep``/``bits`` are given for elastic blocks only; every
        other layer is dense and in float. A quantised block's ``params`` include its LSQ steps (one per
        output channel of each of its three convolutions), as ``count_params`` on the extracted network."""
        out: dict[str, Any] = {}
        if bits is not None:
            out["params"] = layer["params"] + 2 * layer["mid_channels"] + layer["out_channels"]
            layer = {**layer, **out}
        if self.sparsity_list:
            out.update(keep_ratio=1.0 if keep is None else keep, **_nonzero(layer, keep))
        if self.bits_list:
            out.update(bits=FLOAT_BITS if bits is None else bits, bitops=_bitops(layer, bits))
        return out

    def _layers(self, config: Config) -> list[dict[str, Any]]:
        """Every layer of the subnet with its shapes, MACs and params, in forward order."""
        w, r = self.widths, config["r"]
        size = conv_output_size(r, 3, 2)
        layers = [_conv("first_conv", 3, w.stem, r, 3, 2, bn=True, act="h_swish")]
        layers.append(_mbconv("blocks.0", w.stem, w.first_block, size, 3, 1, w.stem, FIRST_BLOCK_ACT, False,
                              idskip=w.stem == w.first_block, expand=False, block=0, expand_ratio=1))
        active = self.active_blocks(self.encode(config)[None, :])[0]
        for b in np.flatnonzero(active):
            extra = {key: config[key][b] for key, _ in self.extra_genes}
            layers.append(self._block_layer(int(b), config["ks"][b], config["e"][b], r, **extra))
        last = layers[-1]
        layers.append(_conv("final_expand_layer", last["out_channels"], w.final_expand, last["out_size"], 1, 1,
                            bn=True, act="h_swish"))
        layers.append({"name": "global_pool", "op": "global_avg_pool", "in_channels": w.final_expand,
                       "out_channels": w.final_expand, "in_size": last["out_size"], "out_size": 1,
                       "macs": 0, "params": 0})
        layers.append(_conv("feature_mix_layer", w.final_expand, w.feature_mix, 1, 1, 1, bn=False, act="h_swish"))
        n_classes = self._options["n_classes"]
        layers.append({"name": "classifier", "op": "linear", "in_channels": w.feature_mix,
                       "out_channels": n_classes, "in_size": 1, "out_size": 1,
                       "macs": w.feature_mix * n_classes, "params": w.feature_mix * n_classes + n_classes})
        return [{**layer, **(self._option_costs(layer, None, None) if "resolution" not in layer else {}),
                 "resolution": r} for layer in layers]

    def graph(self, config: Config) -> nx.DiGraph:
        """Layers as nodes in forward order; node attributes: ``op``, ``in_channels``, ``out_channels``,
        ``in_size``/``out_size`` (spatial), ``resolution`` (the network's input), ``macs``, ``params``;
        convolutions also ``kernel``, ``stride``, ``act``, ``bn``; MBConv blocks also ``mid_channels``,
        ``expand_ratio``, ``expand_conv`` (has a 1x1 expansion), ``se``, ``idskip``. With the options every
        layer also has ``keep_ratio``, ``nonzero_macs``, ``nonzero_params`` (``sparsity_list``) and
        ``bits``, ``bitops`` (``bits_list``); layers outside the elastic blocks are dense and 32-bit."""
        self.validate(config)
        g = nx.DiGraph(space=self.name, resolution=config["r"])
        previous = None
        for layer in self._layers(config):
            attrs = {k: v for k, v in layer.items() if k not in ("name", "block")}
            g.add_node(layer["name"], **attrs)
            if previous is not None:
                g.add_edge(previous, layer["name"])
            previous = layer["name"]
        return g

    # ------------------------------------------------------------------ networks
    @property
    def supernet(self) -> OFAMobileNetV3:
        if self._supernet is None:
            o = self._options
            self._supernet = OFAMobileNetV3(o["n_classes"], o["width_mult"], o["ks_list"], o["expand_ratio_list"],
                                            o["depth_list"], o["dropout_rate"], o["bn_param"], o["kernel_transform"],
                                            sparse=bool(self.sparsity_list), bits_list=self.bits_list)
        return self._supernet

    def activate(self, config: Config) -> None:
        self.validate(config)
        self.supernet.set_active(config["ks"], config["e"], config["d"], config.get("keep"), config.get("bits"))

    def extract(self, config: Config) -> torch.nn.Module:
        self.activate(config)
        return self.supernet.extract()

    def from_scratch(self, config: Config) -> torch.nn.Module:
        """A freshly initialised plain network of the subnet's shape (no supernet weights involved).

        The baseline for "train the subnet alone" and for checking that extraction costs no speed.
        """
        layers = {layer["name"]: layer for layer in self._layers(self.validate(config))}
        blocks = [self.build_layer(b) for b in layers.values() if b["op"] == "mbconv"]
        w = self.widths
        net = MobileNetV3(ConvLayer(3, w.stem, 3, 2, act="h_swish"), blocks,
                          ConvLayer(w.stages[-1], w.final_expand, 1, act="h_swish"),
                          ConvLayer(w.final_expand, w.feature_mix, 1, use_bn=False, act="h_swish"),
                          LinearLayer(w.feature_mix, self._options["n_classes"], self._options["dropout_rate"]))
        momentum, eps = self._options["bn_param"]
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum, m.eps = momentum, eps
        return net

    def build_layer(self, layer: dict[str, Any]) -> torch.nn.Module:
        """A freshly initialised module computing one layer described by ``graph`` node attributes.

        A block below 32 bits gets ``QuantConv2d`` convolutions at its bit-width; a sparse block is built
        dense (its latency as a dense network with zeros; ``search_spaces.ops.sparse_exec`` measures
        what sparse execution buys)."""
        op = layer["op"]
        if op == "conv":
            return ConvLayer(layer["in_channels"], layer["out_channels"], layer["kernel"], layer["stride"],
                             use_bn=layer["bn"], act=layer["act"])
        if op == "mbconv":
            body = MBConv(layer["in_channels"], layer["out_channels"], layer["kernel"], layer["stride"],
                          layer["mid_channels"], layer["act"], layer["se"], expand=layer["expand_conv"])
            if layer.get("bits", FLOAT_BITS) != FLOAT_BITS:
                _quantise_convs(body, layer["bits"])
            return ResidualBlock(body, layer["idskip"])
        if op == "global_avg_pool":
            return GlobalAvgPool()
        if op == "linear":
            return LinearLayer(layer["in_channels"], layer["out_channels"])
        raise ConfigError(f"ofa_mbv3 has no layer op {op!r}")

    def layer_input(self, layer: dict[str, Any], batch: int = 1) -> torch.Tensor:
        """A valid input for ``build_layer(layer)``."""
        if layer["op"] == "linear":
            return torch.randn(batch, layer["in_channels"])
        return torch.randn(batch, layer["in_channels"], layer["in_size"], layer["in_size"])

    def input_size(self, config: Config) -> int:
        return config["r"]

    def example_input(self, config: Config, batch: int = 1) -> torch.Tensor:
        self.validate(config)
        r = config["r"]
        generator = torch.Generator().manual_seed(0)
        return torch.randn(batch, 3, r, r, generator=generator)

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["channels"] = {"stem": self.widths.stem, "first_block": self.widths.first_block,
                            "stages": list(self.widths.stages), "final_expand": self.widths.final_expand,
                            "feature_mix": self.widths.feature_mix}
        notes = {"keep": "keep.i: keep ratio of block i's 1x1 convolutions (sparse); macs/params dense, "
                         "nonzero_macs/nonzero_params count only the kept weights",
                 "bits": "bits.i: weight/activation bit-width of block i's convolutions; bitops = MACs x b x b, "
                         "32 bits outside the blocks"}
        if self.extra_genes:
            info["note"] = "; ".join(notes[key] for key, _ in self.extra_genes)
        return info


def _conv(name: str, in_ch: int, out_ch: int, size: int, k: int, stride: int, bn: bool, act: str) -> dict[str, Any]:
    out_size = conv_output_size(size, k, stride)
    return {"name": name, "op": "conv", "in_channels": in_ch, "out_channels": out_ch, "in_size": size,
            "out_size": out_size, "kernel": k, "stride": stride, "act": act, "bn": bn,
            "macs": out_size * out_size * in_ch * out_ch * k * k,
            "params": in_ch * out_ch * k * k + (2 * out_ch if bn else 0)}


def _mbconv(name: str, in_ch: int, out_ch: int, size: int, k: int, stride: int, mid: int, act: str, se: bool,
            idskip: bool, expand: bool, block: int, expand_ratio: float) -> dict[str, Any]:
    out_size = conv_output_size(size, k, stride)
    macs = out_size * out_size * mid * (k * k + out_ch)                  # depthwise + projection
    params = mid * k * k + 2 * mid + mid * out_ch + 2 * out_ch
    if expand:
        macs += size * size * in_ch * mid
        params += in_ch * mid + 2 * mid
    if se:
        se_mid = se_mid_channels(mid)
        macs += 2 * mid * se_mid
        params += 2 * mid * se_mid + se_mid + mid
    return {"name": name, "op": "mbconv", "in_channels": in_ch, "out_channels": out_ch, "in_size": size,
            "out_size": out_size, "kernel": k, "stride": stride, "act": act, "mid_channels": mid,
            "expand_ratio": expand_ratio, "expand_conv": expand, "se": se, "idskip": idskip, "macs": macs,
            "params": params, "block": block}


def _check_options(options: dict[str, Any]) -> None:
    if options["n_classes"] < 1 or options["width_mult"] <= 0:
        raise ConfigError("ofa_mbv3: n_classes must be >= 1 and width_mult > 0")
    if any(k % 2 == 0 or k < 1 for k in options["ks_list"]):
        raise ConfigError(f"ofa_mbv3: kernel sizes must be odd and positive; got {options['ks_list']}")
    if any(e <= 0 for e in options["expand_ratio_list"]) or any(d < 1 for d in options["depth_list"]):
        raise ConfigError("ofa_mbv3: expand ratios must be > 0 and depths >= 1")
    if any(r < 32 for r in options["resolutions"]):
        raise ConfigError(f"ofa_mbv3: resolutions must be >= 32 (five stride-2 layers); got {options['resolutions']}")


def _nonzero(layer: dict[str, Any], keep: float | None) -> dict[str, int]:
    """``nonzero_macs``/``nonzero_params`` of a layer whose 1x1 expansion and projection (elastic blocks
    only) keep ``ceil(keep * weights)`` each; ``keep=None``: dense."""
    if keep is None:
        return {"nonzero_macs": layer["macs"], "nonzero_params": layer["params"]}
    mid, size, out_size = layer["mid_channels"], layer["in_size"], layer["out_size"]
    expand, project = layer["in_channels"] * mid, mid * layer["out_channels"]
    kept_expand, kept_project = kept_count(expand, keep), kept_count(project, keep)
    return {"nonzero_macs": layer["macs"] - (expand - kept_expand) * size * size
            - (project - kept_project) * out_size * out_size,
            "nonzero_params": layer["params"] - (expand - kept_expand) - (project - kept_project)}


def _bitops(layer: dict[str, Any], bits: int | None) -> int:
    """``MACs x b x b`` of an elastic block's three convolutions plus 32 x 32 bits for the rest of its MACs
    (the squeeze-excitation); every MAC at 32 x 32 bits when ``bits`` is None."""
    if bits is None:
        return layer["macs"] * FLOAT_BITS ** 2
    mid, k = layer["mid_channels"], layer["kernel"]
    out_area = layer["out_size"] ** 2
    convs = layer["in_size"] ** 2 * layer["in_channels"] * mid + out_area * mid * (k * k + layer["out_channels"])
    return convs * bits * bits + (layer["macs"] - convs) * FLOAT_BITS ** 2


def _quantise_convs(block: MBConv, bits: int) -> None:
    """Replace the expansion, depthwise and projection convolutions of ``block`` by ``QuantConv2d`` at ``bits``."""
    for seq in (block.inverted_bottleneck, block.depth_conv, block.point_linear):
        conv = seq.conv
        seq.conv = QuantConv2d(conv.in_channels, conv.out_channels, conv.kernel_size[0], (bits,), conv.stride[0],
                               conv.groups)


def _keep_ratios(values) -> tuple[float, ...] | None:
    if values is None:
        return None
    if not isinstance(values, (list, tuple)) or not values:
        raise ConfigError(f"ofa_mbv3: sparsity_list must be a non-empty list of keep ratios in (0, 1]; got {values!r}")
    ratios = sorted(check_keep_ratio(v) for v in values)
    if len(set(ratios)) != len(ratios):
        raise ConfigError(f"ofa_mbv3: sparsity_list must hold distinct keep ratios; got {list(values)}")
    return tuple(ratios)


def _bit_widths(values) -> tuple[int, ...] | None:
    if values is None:
        return None
    ok = isinstance(values, (list, tuple)) and values and all(
        isinstance(b, int) and not isinstance(b, bool) and b in SUPPORTED_BITS for b in values)
    if not ok or len(set(values)) != len(values):
        raise ConfigError(f"ofa_mbv3: bits_list must be distinct bit-widths from {list(SUPPORTED_BITS)}; got {values!r}")
    return tuple(sorted(values))
