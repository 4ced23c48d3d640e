"""What every SortedNet search space shares: grids, depth-linked genes, layer tables, the nested order.

The registered spaces are ``sortednet_cnn`` (:mod:`search_spaces.sortednet_cnn`, a CIFAR ResNet) and
``sortednet_transformer`` (:mod:`search_spaces.sortednet_transformer`); their networks are in
:mod:`search_spaces.ops.nested_nets`.

SortedNet (ALGORITHMS.md §4) trains many nested sub-models of one network at once. A sub-model keeps
the *first* units of every dimension: the first blocks of each stage (or layers of the encoder), the
first channels of every layer, the first heads, the first FFN units, the first embedding features.
Sub-models are therefore prefixes of each other and the family is one set of weights
(:mod:`search_spaces.ops.nested`).

Genes are truncation indices on configurable grids: depths are numbers of leading blocks or layers
(integers), widths are fractions of a layer's full size, rounded to the nearest unit. Every grid
is strictly increasing (so each step keeps a superset) and ends at the full network. Genes of blocks
or layers beyond the kept depth cannot affect the network; :meth:`SortedSpace.canonical` sets them
to index 0. Choices are ordered from the smallest sub-model to the largest, so ``min_config`` is
every gene's first choice and ``max_config`` its last, and :meth:`SortedSpace.nested_order` walks
from one to the other through sub-models each nested in the next.

Costs are exact counts at batch size 1, checked against :func:`search_spaces.ops.counting.count_macs`:
MACs of convolutions and linear layers and, in attention, of ``q k^T`` and ``softmax(.) v``
(``2 * L^2 * heads * head_dim`` at sequence length ``L = max_len``); embeddings, normalisation,
pooling, activations and residual additions count no MACs. Every layer is a :class:`LayerSpec`
whose shape depends on a few genes, so a batch is scored by table look-ups.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from itertools import pairwise
from typing import Any

import networkx as nx
import numpy as np

from nas.errors import ConfigError
from search_spaces.base import Config, SearchSpace

DepthLink = tuple[int, int]  # (column of a depth gene, position): present iff that depth > position


@dataclass(frozen=True)
class LayerSpec:
    """One layer of a sorted network: the genes that set its shape, and the depth that keeps it.

    ``attrs(*values)`` turns those genes' values into the layer's graph node attributes (``op``,
    shapes, ``macs``, ``params``, ...).
    """

    name: str
    genes: tuple[int, ...]
    attrs: Callable[..., dict[str, Any]]
    depth: DepthLink | None = None


# ---------------------------------------------------------------------- grids
def _grid(option: str, grid: Any) -> list:
    if not isinstance(grid, (list, tuple)) or not grid:
        raise ConfigError(f"{option} must be a non-empty list; got {grid!r}")
    values = list(grid)
    if any(b <= a for a, b in pairwise(values)):
        raise ConfigError(f"{option} must be strictly increasing, so that every sub-model is a prefix of "
                          f"the next (nested); got {values}")
    return values


def parse_fraction_grid(option: str, grid: Any) -> list[float]:
    """A grid of width fractions: numbers in (0, 1], strictly increasing, ending at 1.0."""
    if isinstance(grid, (list, tuple)) and not all(_is_number(f) and 0 < f <= 1 for f in grid):
        raise ConfigError(f"{option} must hold fractions in (0, 1] of a layer's full width; got {list(grid)}")
    values = _grid(option, grid)
    if values[-1] != 1:
        raise ConfigError(f"{option} must end at 1.0, the full layer; got {values}")
    return [float(f) for f in values]


def parse_depth_grid(option: str, grid: Any, full: int | None = None) -> list[int]:
    """A grid of depths: integers >= 1, strictly increasing, ending at ``full`` when given."""
    if isinstance(grid, (list, tuple)) and not all(_is_int(d) and d >= 1 for d in grid):
        raise ConfigError(f"{option} must hold numbers of leading blocks (integers >= 1); got {list(grid)}")
    values = _grid(option, grid)
    if full is not None and values[-1] != full:
        where = "goes beyond" if values[-1] > full else "must end at"
        raise ConfigError(f"{option} {values} {where} the network's {full} layers")
    return values


def units(fraction: float, full: int) -> int:
    """The units a width ``fraction`` keeps of ``full`` (nearest integer, halves up)."""
    return math.floor(fraction * full + 0.5)


def unit_choices(option: str, fractions: list[float], full: int, what: str) -> list[int]:
    """Units kept by each fraction of ``full``; every step must keep at least one unit more."""
    counts = [units(f, full) for f in fractions]
    if counts[0] < 1 or any(b <= a for a, b in pairwise(counts)):
        raise ConfigError(f"{option} {fractions} keeps {counts} of the {full} {what}: each width must keep "
                          "at least one unit, and more than the width before it")
    return counts


def positive_ints(**options: Any) -> None:
    """Raise ``ConfigError`` unless every option is an integer >= 1 (or a non-empty list of them)."""
    for name, value in options.items():
        is_list = isinstance(value, (list, tuple))
        values = list(value) if is_list else [value]
        if not values or not all(_is_int(v) and v >= 1 for v in values):
            raise ConfigError(f"{name} must be {'a non-empty list of integers' if is_list else 'an integer'} >= 1; "
                              f"got {value!r}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# ---------------------------------------------------------------------- the generic space
class SortedSpace(SearchSpace):
    """A sorted network's genes, depth links, layers, costs, graph and nested order.

    Subclasses declare ``genes``, ``config_layout``, ``gene_depth`` (the depth link of every gene
    that belongs to a block or layer, else ``None``) and ``layer_specs``; they build the networks.
    """

    training_method = "sorted"

    @property
    @abc.abstractmethod
    def gene_depth(self) -> list[DepthLink | None]:
        """Per gene: the depth link that decides whether it can affect the network, or ``None``."""

    @property
    @abc.abstractmethod
    def layer_specs(self) -> list[LayerSpec]:
        """Every layer of the full network, in forward order."""

    @cached_property
    def _choice_values(self) -> list[np.ndarray]:
        return [np.asarray(g.choices, dtype=np.float64) for g in self.genes]

    def _present(self, batch: np.ndarray, link: DepthLink | None) -> np.ndarray:
        if link is None:
            return np.ones(len(batch), dtype=bool)
        column, position = link
        return self._choice_values[column][batch[:, column]] > position

    def active_genes(self, vectors: np.ndarray) -> np.ndarray:
        batch = self.check_vectors(vectors)
        return np.stack([self._present(batch, link) for link in self.gene_depth], axis=1)

    def _canonical(self, batch: np.ndarray) -> np.ndarray:
        batch[~self.active_genes(batch)] = 0
        return batch

    def size(self) -> int:
        """Per depth gene, the sum over its choices of the product of the choices of the genes it
        keeps; times the choices of every gene outside blocks."""
        tied: dict[int, list[int]] = {}
        for gene, link in enumerate(self.gene_depth):
            if link is not None:
                tied.setdefault(link[0], []).append(gene)
        total = 1
        for gene, card in enumerate(self.cardinalities):
            if gene in tied:
                links = [(self.gene_depth[g][1], int(self.cardinalities[g])) for g in tied[gene]]
                total *= sum(math.prod(c for pos, c in links if pos < d) for d in self.genes[gene].choices)
            elif self.gene_depth[gene] is None:
                total *= int(card)
        return total

    def extra_features(self, vectors: np.ndarray) -> np.ndarray:
        """The value of every gene outside blocks (depths, widths), and per depth gene the mean value of
        each config key's genes it keeps (e.g. the mean block width of a stage)."""
        batch = self.check_vectors(vectors)
        values = np.stack([v[batch[:, g]] for g, v in enumerate(self._choice_values)], axis=1)
        active = self.active_genes(batch)
        columns = [values[:, g] for g, link in enumerate(self.gene_depth) if link is None]
        groups: dict[tuple[str, int], list[int]] = {}
        for g, link in enumerate(self.gene_depth):
            if link is not None:
                groups.setdefault((self.genes[g].name.split(".")[0], link[0]), []).append(g)
        for genes in groups.values():
            kept = active[:, genes]
            columns.append((values[:, genes] * kept).sum(axis=1) / kept.sum(axis=1))
        return np.stack(columns, axis=1).astype(np.float32)

    # ------------------------------------------------------------------ sub-model order
    def min_config(self) -> Config:
        """The smallest sub-model: every gene's first choice."""
        return self.decode(np.zeros(self.n_genes, dtype=np.int64))

    def max_config(self) -> Config:
        """The full network: every gene's last choice."""
        return self.decode(self.cardinalities - 1)

    def nested_order(self) -> list[Config]:
        """Sub-models from ``min_config`` to ``max_config``, each a sub-model of the next.

        Each step moves one gene of the kept network one grid step up, so costs rise along the chain
        and no sub-model with that property can be inserted. The gene moved is the one that is least
        far along its grid (ties: the first in encoding order), so all dimensions grow together; a
        block or layer that depth adds enters at its smallest width. This is SortedNet's search-free
        selection: for a budget, take the last sub-model of the chain that fits it.
        """
        vector, top = np.zeros(self.n_genes, dtype=np.int64), self.cardinalities - 1
        chain = [vector.copy()]
        while True:
            movable = self.active_genes(vector)[0] & (vector < top)
            if not movable.any():
                return self.decode(np.stack(chain))
            progress = np.where(movable, vector / np.maximum(top, 1), np.inf)
            vector[int(np.argmin(progress))] += 1
            chain.append(vector.copy())

    # ------------------------------------------------------------------ layers, costs, graph
    def _layers(self, config: Config) -> list[dict[str, Any]]:
        vector = self.encode(config)[None, :]
        values = [g.choices[i] for g, i in zip(self.genes, vector[0])]
        return [{"name": spec.name, **spec.attrs(*(values[g] for g in spec.genes))}
                for spec in self.layer_specs if self._present(vector, spec.depth)[0]]

    def graph(self, config: Config) -> nx.DiGraph:
        """Layers as nodes in forward order, chained; attributes ``op``, ``in_channels``,
        ``out_channels``, ``in_size``/``out_size`` (spatial side, or sequence length), ``macs``,
        ``params`` and the op's own (kernel, stride, mid_channels, heads, ...)."""
        g = nx.DiGraph(space=self.name)
        previous = None
        for layer in self._layers(config):
            g.add_node(layer["name"], **{k: v for k, v in layer.items() if k != "name"})
            if previous is not None:
                g.add_edge(previous, layer["name"])
            previous = layer["name"]
        return g

    def additive_cost(self, layer_value: Callable[[dict], float]) -> Callable[[np.ndarray], np.ndarray]:
        """One table per layer over the choices of the genes that shape it: a batch costs the sum over
        layers of ``table[genes] * present``, numpy indexing only."""
        tables = [self._layer_table(spec, layer_value) for spec in self.layer_specs]
        exact = all(np.all(t == np.round(t)) for t in tables)
        dtype = np.int64 if exact else np.float64          # exact integer counts stay exact
        tables = [t.astype(dtype) for t in tables]

        def score(vectors: np.ndarray) -> np.ndarray:
            batch = self.check_vectors(vectors)
            total = np.zeros(len(batch), dtype=dtype)
            for spec, table in zip(self.layer_specs, tables):
                cost = table[tuple(batch[:, g] for g in spec.genes)]
                total += cost * self._present(batch, spec.depth) if spec.depth is not None else cost
            return total

        return score

    def _layer_table(self, spec: LayerSpec, layer_value: Callable[[dict], float]) -> np.ndarray:
        choices = [self.genes[g].choices for g in spec.genes]
        table = np.empty([len(c) for c in choices], dtype=np.float64)
        for index in np.ndindex(*table.shape):
            layer = {"name": spec.name, **spec.attrs(*(c[i] for c, i in zip(choices, index)))}
            table[index] = layer_value(layer)
        return table
