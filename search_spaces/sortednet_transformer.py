"""``sortednet_transformer``: a pre-LN transformer encoder for sequence classification, sorted along
depth, embedding width, heads per layer and FFN width per layer.

Config: ``{"layers": n, "embed": fraction, "heads": [fraction per layer], "ffn": [fraction per
layer]}``. Genes, in encoding order: ``layers``, ``embed``, ``heads.0..``, ``ffn.0..``. A sub-model
runs the first ``layers`` encoder layers on the first ``embed * d_model`` features of the residual
stream (embeddings, every LayerNorm, projection outputs and the classifier's inputs), with the first
``heads[l] * n_heads`` heads (each ``d_model / n_heads`` wide at every width, so the attention scale
never changes) and the first ``ffn[l] * d_ff`` hidden units of layer ``l``. Costs are those of one
sequence of ``max_len`` tokens, the length ``example_input`` has.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, ClassVar

import torch

from nas.errors import ConfigError
from search_spaces._registry import register
from search_spaces.base import Config, Gene, LayoutEntry
from search_spaces.ops.nested import copy_prefix
from search_spaces.ops.nested_nets import (
    EncoderShape,
    SortedTransformer,
    TransformerClassifier,
)
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

LAYERS, EMBED = 0, 1  # columns of the two genes outside layers


@register("sortednet_transformer")
class SortedTransformerSpace(SortedSpace):
    """Sorted encoder: ``n_layers`` layers of ``n_heads`` heads and ``d_ff`` FFN units on ``d_model``."""

    small_options: ClassVar[dict[str, Any]] = {
        "vocab_size": 50, "max_len": 8, "n_classes": 3, "d_model": 16, "n_heads": 2, "d_ff": 32, "n_layers": 2,
        "depth_grid": [1, 2], "embed_grid": [0.5, 1.0], "heads_grid": [0.5, 1.0], "ffn_grid": [0.5, 1.0]}

    def __init__(self, vocab_size: int = 1000, max_len: int = 64, n_classes: int = 2, d_model: int = 128,
                 n_heads: int = 4, d_ff: int = 512, n_layers: int = 4, depth_grid=(1, 2, 3, 4),
                 embed_grid=(0.25, 0.5, 0.75, 1.0), heads_grid=(0.25, 0.5, 0.75, 1.0),
                 ffn_grid=(0.25, 0.5, 0.75, 1.0)):
        positive_ints(vocab_size=vocab_size, max_len=max_len, n_classes=n_classes, d_model=d_model,
                      n_heads=n_heads, d_ff=d_ff, n_layers=n_layers)
        if d_model % n_heads:
            raise ConfigError(f"sortednet_transformer: d_model {d_model} must be a multiple of n_heads {n_heads}")
        self.depths = parse_depth_grid("depth_grid", depth_grid, n_layers)
        grids = {"embed_grid": (embed_grid, d_model, "embedding features"), "heads_grid": (heads_grid, n_heads, "heads"),
                 "ffn_grid": (ffn_grid, d_ff, "FFN units")}
        self.fractions = {k: parse_fraction_grid(k, grid) for k, (grid, _, _) in grids.items()}
        self.unit_choices = {k: unit_choices(k, self.fractions[k], full, what) for k, (_, full, what) in grids.items()}
        self._options = {"vocab_size": vocab_size, "max_len": max_len, "n_classes": n_classes, "d_model": d_model,
                         "n_heads": n_heads, "d_ff": d_ff, "n_layers": n_layers, "depth_grid": self.depths,
                         **self.fractions}
        self.n_layers, self.head_dim = n_layers, d_model // n_heads
        self._supernet: SortedTransformer | None = None

    # ------------------------------------------------------------------ genes
    @cached_property
    def genes(self) -> list[Gene]:
        f = self.fractions
        return ([Gene("layers", tuple(self.depths)), Gene("embed", tuple(f["embed_grid"]))]
                + [Gene(f"heads.{i}", tuple(f["heads_grid"])) for i in range(self.n_layers)]
                + [Gene(f"ffn.{i}", tuple(f["ffn_grid"])) for i in range(self.n_layers)])

    @cached_property
    def config_layout(self) -> list[LayoutEntry]:
        return [LayoutEntry("layers"), LayoutEntry("embed"), LayoutEntry("heads", self.n_layers),
                LayoutEntry("ffn", self.n_layers)]

    @cached_property
    def gene_depth(self) -> list[DepthLink | None]:
        per_layer = [(LAYERS, i) for i in range(self.n_layers)]
        return [None, None] + per_layer + per_layer

    # ------------------------------------------------------------------ layers
    @cached_property
    def layer_specs(self) -> list[LayerSpec]:
        specs = [LayerSpec("embedding", (EMBED,), self._embedding)]
        for i in range(self.n_layers):
            specs.append(LayerSpec(f"blocks.{i}.attn", (EMBED, 2 + i), self._attention, (LAYERS, i)))
            specs.append(LayerSpec(f"blocks.{i}.ffn", (EMBED, 2 + self.n_layers + i), self._ffn, (LAYERS, i)))
        return specs + [LayerSpec("norm", (EMBED,), self._norm), LayerSpec("pool", (EMBED,), self._pool),
                        LayerSpec("classifier", (EMBED,), self._classifier)]

    def _dim(self, fraction: float) -> int:
        return units(fraction, self._options["d_model"])

    def _row(self, op: str, dim: int, macs: int, params: int, **extra: Any) -> dict[str, Any]:
        """A sequence-to-sequence layer of width ``dim`` on ``max_len`` positions."""
        n = self._options["max_len"]
        return {"op": op, "in_channels": dim, "out_channels": dim, "in_size": n, "out_size": n, "macs": macs,
                "params": params, **extra}

    def _embedding(self, embed: float) -> dict[str, Any]:
        o, e = self._options, self._dim(embed)
        return {**self._row("embedding", e, 0, (o["vocab_size"] + o["max_len"]) * e), "in_channels": o["vocab_size"]}

    def _attention(self, embed: float, heads: float) -> dict[str, Any]:
        """LayerNorm, q/k/v projections, ``q k^T``, ``softmax(.) v``, output projection."""
        e, h, n = self._dim(embed), units(heads, self._options["n_heads"]), self._options["max_len"]
        inner = h * self.head_dim
        macs = 4 * n * e * inner + 2 * n * n * inner
        return self._row("attention", e, macs, 2 * e + 4 * e * inner + 3 * inner + e, heads=h, head_dim=self.head_dim)

    def _ffn(self, embed: float, ffn: float) -> dict[str, Any]:
        """LayerNorm, ``e -> f`` linear, GELU, ``f -> e`` linear."""
        e, f, n = self._dim(embed), units(ffn, self._options["d_ff"]), self._options["max_len"]
        return self._row("ffn", e, 2 * n * e * f, 2 * e + 2 * e * f + f + e, mid_channels=f)

    def _norm(self, embed: float) -> dict[str, Any]:
        e = self._dim(embed)
        return self._row("layernorm", e, 0, 2 * e)

    def _pool(self, embed: float) -> dict[str, Any]:
        return {**self._row("mean_pool", self._dim(embed), 0, 0), "out_size": 1}

    def _classifier(self, embed: float) -> dict[str, Any]:
        e, n = self._dim(embed), self._options["n_classes"]
        return {"op": "linear", "in_channels": e, "out_channels": n, "in_size": 1, "out_size": 1,
                "macs": e * n, "params": e * n + n}

    # ------------------------------------------------------------------ networks
    def _shapes(self, config: Config) -> tuple[int, list[EncoderShape]]:
        """Embedding width and the shape of every layer of ``config`` (kept or not)."""
        self.validate(config)
        o = self._options
        return self._dim(config["embed"]), [EncoderShape(units(h, o["n_heads"]), units(f, o["d_ff"]))
                                            for h, f in zip(config["heads"], config["ffn"])]

    def _network(self, cls: type[TransformerClassifier], dim: int, layers: list[EncoderShape]) -> TransformerClassifier:
        o = self._options
        return cls(o["vocab_size"], o["max_len"], dim, self.head_dim, layers, o["n_classes"])

    @property
    def supernet(self) -> SortedTransformer:
        if self._supernet is None:
            self._supernet = self._network(SortedTransformer, *self._shapes(self.max_config()))
        return self._supernet

    def activate(self, config: Config) -> None:
        dim, layers = self._shapes(config)
        self.supernet.set_active(config["layers"], dim, layers)

    def extract(self, config: Config) -> TransformerClassifier:
        """The plain encoder of ``config``, each tensor the leading slice of the supernet's."""
        dim, layers = self._shapes(config)
        net = self._network(TransformerClassifier, dim, layers[:config["layers"]])
        copy_prefix(net, self.supernet)
        return net.to(self.supernet.classifier.weight.device).train(self.supernet.training)

    def example_input(self, config: Config, batch: int = 1) -> torch.Tensor:
        """Token ids, ``(batch, max_len)`` int64."""
        self.validate(config)
        generator = torch.Generator().manual_seed(0)
        return torch.randint(0, self._options["vocab_size"], (batch, self._options["max_len"]), generator=generator)

    def recalibrate_bn(self, config: Config, batches) -> None:
        """Only activate ``config``: the encoder normalises with LayerNorm, which keeps no running
        statistics, so there is nothing to re-estimate (and no forward pass to spend on it)."""
        self.activate(config)

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["channels"] = {"head_dim": self.head_dim, **self.unit_choices}   # units per grid, as `nas spaces show` prints
        return info
