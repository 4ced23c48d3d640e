"""``nb201``: the NAS-Bench-201 cell space, backed by the real benchmark table.

Config: ``{"ops": [6 op names]}``, one op per edge of the cell DAG, edges in NB201's ``arch_str``
order ``0→1, 0→2, 1→2, 0→3, 1→3, 2→3`` (node 0 is the cell input, node 3 its output; node ``j`` is
the sum of its incoming edges). Every op is one of ``none, skip_connect, nor_conv_1x1,
nor_conv_3x3, avg_pool_3x3`` (gene index = position in :data:`OPS`, NB201's own op order). One
genotype is shared by every cell of the network.

The network is NB201's macro skeleton: 3x3 conv stem + BN, three stages of ``N`` cells with ``C``,
``2C``, ``4C`` channels separated by ResNet basic blocks (stride 2, avg-pool + 1x1 conv shortcut),
BN + ReLU, global average pool, linear classifier. ``nor_conv_kxk`` is ReLU-Conv-BN; ``avg_pool_3x3``
is a stride-1 3x3 average pool without padded zeros in the mean; ``none`` contributes nothing (a node
without inputs is zeros). Parameter-free ops are functional, so an extracted network holds only
``Conv2d``/``BatchNorm2d``/``ReLU``/``Linear`` modules.

**Canonicalisation is the identity**, because the benchmark itself never treats two encodings as one
network: NB201 trained all 15,625 cells separately, HW-NAS-Bench and HELP measured each, and NB201's
FLOPs/params count every edge's op, even one whose output cannot reach the cell output. Evidence from
the vendored table, over NB201's own isomorphism classes (``to_unique_str(consider_zero=True)``,
reproduced by :meth:`NB201Space.isomorphism_class`: 6,466 classes, 1,350 with more than one member):
in no class do the members share a table row, all nine accuracy columns, or the pixel3, raspi4 or
gold_6226 latency; in 578 classes they differ even in FLOPs. The 200-epoch CIFAR-10 accuracy alone
ties within 64 classes: the 5 classes of disconnected cells (10 %) and 59 whose members build the same
modules (hence the same seeded training) and differ only in where a parameter-free op sits; their
12-epoch accuracies and latencies still differ. The narrowest equivalence (edges that cannot reach
node 3 set to ``none``: 205 classes over 3,625 cells) has no class whose members all agree on FLOPs,
params, pixel3 latency or CIFAR-100 accuracy. So ``size()`` is ``5**6``;
callers who want to merge functionally equivalent cells can group by ``isomorphism_class``.

Costs: ``macs`` counts multiply-accumulates of convolutions and the classifier (the project's
convention, :mod:`search_spaces.ops.counting`), including convolutions whose result ends in a dead
node, as NB201 does. The benchmark's ``flops_M_<dataset>`` additionally counts the classifier's bias
adds, so ``flops_M * 1e6 == macs + n_classes`` (see :meth:`NB201Space.flops`); params are equal.

Benchmark lookups (:meth:`NB201Space.table_value`, :meth:`NB201Space.accuracy`) read
``search_spaces/data/nb201/nb201.npz`` (provenance in the README there). The table describes NB201's
``C=16, N=5`` networks; a space built with other widths still looks values up by cell.
"""

from __future__ import annotations

import copy
import functools
import itertools
import json
import operator
from functools import cached_property
from importlib import resources
from typing import Any, Callable, Sequence

import networkx as nx
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nas.errors import ConfigError
from search_spaces._registry import register
from search_spaces.base import Config, Gene, LayoutEntry, SearchSpace
from search_spaces.ops.helpers import conv_output_size

OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
#: Cell edges ``(from node, to node)`` in ``arch_str`` order (= gene order).
EDGES = ((0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3))
#: Every path from the cell input (node 0) to its output (node 3), as edge indices.
PATHS = ((3,), (0, 4), (1, 5), (0, 2, 5))
CONV_KERNELS = {"nor_conv_1x1": 1, "nor_conv_3x3": 3}
#: dataset -> (classes, input resolution)
DATASETS = {"cifar10": (10, 32), "cifar100": (100, 32), "imagenet16": (120, 16)}
N_STAGES = 3
N_ARCHS = len(OPS) ** len(EDGES)
#: Base-5 place values: ``vector @ PLACE`` is an encoding's code in 0..15624 (op0 most significant).
PLACE = len(OPS) ** np.arange(len(EDGES) - 1, -1, -1)
#: HW-NAS-Bench devices (CIFAR-10) and their latency columns; HELP devices follow the ``help_lat_ms_`` prefix.
HW_NAS_BENCH_DEVICES = ("edgegpu", "raspi4", "edgetpu", "pixel3", "eyeriss", "fpga")
DATA = resources.files("search_spaces") / "data" / "nb201"


def edge_key(edge: int) -> str:
    """Module key of an edge, NB201's ``"j<-i"``."""
    i, j = EDGES[edge]
    return f"{j}<-{i}"


def arch_str(ops: Sequence[str]) -> str:
    """NB201's ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|`` for six op names in edge order."""
    nodes = [[f"{op}~{EDGES[e][0]}" for e, op in enumerate(ops) if EDGES[e][1] == j] for j in (1, 2, 3)]
    return "+".join("|" + "|".join(node) + "|" for node in nodes)


# ---------------------------------------------------------------------------------------- the table
class BenchmarkTable:
    """The vendored benchmark: op indices per architecture index, and float64 columns loaded on demand."""

    def __init__(self, path) -> None:
        self.path = path
        with resources.as_file(path) as file, np.load(file) as data:
            self.ops = data["ops"].astype(np.int64)
            self.columns: tuple[str, ...] = tuple(str(c) for c in data["columns"])
        self.row_of_code = np.full(N_ARCHS, -1, dtype=np.int64)
        self.row_of_code[self.ops @ PLACE] = np.arange(len(self.ops))
        if len(self.ops) != N_ARCHS or (self.row_of_code < 0).any():
            raise ConfigError(f"{path}: the table does not hold each of the {N_ARCHS} cells exactly once")
        self._cache: dict[str, np.ndarray] = {}

    def column(self, name: str) -> np.ndarray:
        """The whole column ``name`` (read-only float64, NaN = not measured)."""
        if name not in self._cache:
            if name not in self.columns:
                raise ConfigError(f"nb201 table has no column {name!r}; columns: {', '.join(self.columns)}")
            with resources.as_file(self.path) as file, np.load(file) as data:
                values = data[name]
            values.setflags(write=False)
            self._cache[name] = values
        return self._cache[name]


@functools.cache
def benchmark_table() -> BenchmarkTable:
    return BenchmarkTable(DATA / "nb201.npz")


@functools.cache
def pareto_fronts() -> dict[str, Any]:
    """The benchmark's ``pareto.json``: exact fronts and hypervolumes, cifar10 accuracy vs 34 costs."""
    return json.loads((DATA / "pareto.json").read_text())


@functools.cache
def _isomorphism_class_of_code() -> np.ndarray:
    """NB201 ``to_unique_str(consider_zero=True)`` class id (0..6465, by first occurrence) per code."""
    keys = [_unique_str(ops) for ops in itertools.product(range(len(OPS)), repeat=len(EDGES))]   # code order
    ids: dict[str, int] = {}
    return np.array([ids.setdefault(k, len(ids)) for k in keys], dtype=np.int64)


def _unique_str(ops: Sequence[int]) -> str:
    """NB201's isomorphism key: ``none`` (or an input that is zero) gives zero, ``skip`` passes the input
    through, other ops wrap it; a node is the sorted sum of its inputs."""
    nodes = {0: "0"}
    for j in (1, 2, 3):
        terms = []
        for e, (i, to) in enumerate(EDGES):
            if to != j:
                continue
            op, x = OPS[ops[e]], nodes[i]
            terms.append("#" if op == "none" or x == "#" else x if op == "skip_connect" else f"({x})@{op}")
        nodes[j] = "+".join(sorted(terms))
    return nodes[3]


# ---------------------------------------------------------------------------------------- modules
class ReLUConvBN(nn.Module):
    """NB201's ``ReLUConvBN``: ReLU, k x k convolution (no bias, same padding), BatchNorm (affine)."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int = 1):
        super().__init__()
        self.op = nn.Sequential(nn.ReLU(inplace=False),   # not in place: a cell node feeds several edges
                                nn.Conv2d(c_in, c_out, kernel_size, stride, kernel_size // 2, bias=False),
                                nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


def edge_output(op: str, x: torch.Tensor, conv: nn.Module | None) -> torch.Tensor | None:
    """What an edge adds to its target node; ``None`` for ``none`` (it adds nothing)."""
    if op == "none":
        return None
    if op == "skip_connect":
        return x
    if op == "avg_pool_3x3":
        return F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
    return conv(x)


def cell_forward(x: torch.Tensor, edge: Callable[[int, torch.Tensor], torch.Tensor | None]) -> torch.Tensor:
    """Nodes 1..3 in order, each the sum (in edge order) of its incoming edges' outputs, zeros if none."""
    nodes = [x]
    for j in (1, 2, 3):
        terms = [edge(e, nodes[i]) for e, (i, to) in enumerate(EDGES) if to == j]
        terms = [t for t in terms if t is not None]
        nodes.append(functools.reduce(operator.add, terms) if terms else torch.zeros_like(x))
    return nodes[3]


class Cell(nn.Module):
    """A plain cell: its six ops, and a ``ReLUConvBN`` under ``edges["j<-i"]`` for each conv edge."""

    def __init__(self, ops: Sequence[str], edges: dict[str, nn.Module]):
        super().__init__()
        self.ops = tuple(ops)
        self.edges = nn.ModuleDict(edges)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cell_forward(x, lambda e, inp: edge_output(self.ops[e], inp, self._conv(e)))

    def _conv(self, edge: int) -> nn.Module | None:
        key = edge_key(edge)
        return self.edges[key] if key in self.edges else None


class MixedEdge(nn.Module):
    """One supernet edge holding all five candidates; ``active`` selects the one that computes.

    The weighted candidates are modules (``ops["nor_conv_1x1"]``, ``ops["nor_conv_3x3"]``, each with
    its own BatchNorm as in NB201's one-shot supernets); ``none``, ``skip_connect`` and
    ``avg_pool_3x3`` have no weights and are applied functionally.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.ops = nn.ModuleDict({op: ReLUConvBN(channels, channels, k) for op, k in CONV_KERNELS.items()})
        self.active = "nor_conv_3x3"

    def forward(self, x: torch.Tensor) -> torch.Tensor | None:
        return edge_output(self.active, x, self.ops[self.active] if self.active in CONV_KERNELS else None)


class SuperCell(nn.Module):
    """A weight-sharing cell: a :class:`MixedEdge` per edge."""

    def __init__(self, channels: int):
        super().__init__()
        self.edges = nn.ModuleDict({edge_key(e): MixedEdge(channels) for e in range(len(EDGES))})

    def set_active(self, ops: Sequence[str]) -> None:
        for e, op in enumerate(ops):
            self.edges[edge_key(e)].active = op

    @property
    def active(self) -> tuple[str, ...]:
        return tuple(self.edges[edge_key(e)].active for e in range(len(EDGES)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cell_forward(x, lambda e, inp: self.edges[edge_key(e)](inp))

    def extract(self) -> Cell:
        ops = self.active
        return Cell(ops, {edge_key(e): copy.deepcopy(self.edges[edge_key(e)].ops[op])
                          for e, op in enumerate(ops) if op in CONV_KERNELS})


class ResNetBasicBlock(nn.Module):
    """NB201's stage reduction: ``avgpool2x2 -> conv1x1`` shortcut plus two ReLU-Conv-BN (first stride 2)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv_a = ReLUConvBN(c_in, c_out, 3, stride=2)
        self.conv_b = ReLUConvBN(c_out, c_out, 3)
        self.downsample = nn.Conv2d(c_in, c_out, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.downsample(F.avg_pool2d(x, 2, 2))
        return residual + self.conv_b(self.conv_a(x))


class NB201Network(nn.Module):
    """Stem, cells (search cells and reductions), BN + ReLU, global average pool, classifier."""

    def __init__(self, stem: nn.Module, cells: Sequence[nn.Module], lastact: nn.Module, classifier: nn.Module):
        super().__init__()
        self.stem = stem
        self.cells = nn.ModuleList(cells)
        self.lastact = lastact
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for cell in self.cells:
            x = cell(x)
        x = self.lastact(x)
        return self.classifier(x.mean((2, 3)))


def build_network(C: int, N: int, n_classes: int, make_cell: Callable[[int], nn.Module]) -> NB201Network:
    """The macro skeleton around ``make_cell(channels)`` search cells."""
    cells: list[nn.Module] = []
    for stage in range(N_STAGES):
        width = C * 2 ** stage
        if stage > 0:
            cells.append(ResNetBasicBlock(width // 2, width))
        cells.extend(make_cell(width) for _ in range(N))
    return NB201Network(nn.Sequential(nn.Conv2d(3, C, 3, padding=1, bias=False), nn.BatchNorm2d(C)), cells,
                        nn.Sequential(nn.BatchNorm2d(C * 4), nn.ReLU(inplace=True)), nn.Linear(C * 4, n_classes))


class NB201Supernet(NB201Network):
    """The one-shot supernet: every search cell a :class:`SuperCell`; stem, reductions and head shared."""

    def __init__(self, C: int, N: int, n_classes: int):
        net = build_network(C, N, n_classes, SuperCell)
        super().__init__(net.stem, list(net.cells), net.lastact, net.classifier)

    def set_active(self, ops: Sequence[str]) -> None:
        for cell in self.cells:
            if isinstance(cell, SuperCell):
                cell.set_active(ops)

    def extract(self) -> NB201Network:
        cells = [cell.extract() if isinstance(cell, SuperCell) else copy.deepcopy(cell) for cell in self.cells]
        net = NB201Network(copy.deepcopy(self.stem), cells, copy.deepcopy(self.lastact), copy.deepcopy(self.classifier))
        return net.to(self.classifier.weight.device).train(self.training)


# ---------------------------------------------------------------------------------------- the space
@register("nb201")
class NB201Space(SearchSpace):
    """NAS-Bench-201 cells (5 ops on 6 edges) on CIFAR-10/100 or ImageNet16-120, with the benchmark table."""

    small_options = {"C": 4, "N": 1}
    has_metric_table = True

    def __init__(self, dataset: str = "cifar10", C: int = 16, N: int = 5):
        if dataset not in DATASETS:
            raise ConfigError(f"nb201: dataset must be one of {', '.join(DATASETS)}; got {dataset!r}")
        if int(C) < 1 or int(N) < 1:
            raise ConfigError(f"nb201: C and N must be >= 1; got C={C}, N={N}")
        self._options = {"dataset": dataset, "C": int(C), "N": int(N)}
        self.dataset, self.C, self.N = dataset, int(C), int(N)
        self.n_classes, self.resolution = DATASETS[dataset]
        self._supernet: NB201Supernet | None = None

    # ------------------------------------------------------------------ genes
    @cached_property
    def genes(self) -> list[Gene]:
        return [Gene(f"ops.{e}", OPS) for e in range(len(EDGES))]

    @cached_property
    def config_layout(self) -> list[LayoutEntry]:
        return [LayoutEntry("ops", len(EDGES))]

    def _canonical(self, batch: np.ndarray) -> np.ndarray:
        """Identity: the benchmark tabulates every encoding as its own network (module docstring)."""
        return batch

    def size(self) -> int:
        return N_ARCHS

    def extra_features(self, vectors: np.ndarray) -> np.ndarray:
        """Count of each op in the cell; whether the cell output is connected to its input; then what
        the image actually flows through (BANANAS-style path aggregates): the count of each op other
        than ``none`` on live input->output paths (a path is live when none of its edges is ``none``),
        the most conv3x3 and the most convolutions on one live path, and the number of live paths.

        Accuracy depends on the live part of the cell only, so these aggregates raise a GBDT's Kendall
        tau on held-out cells from 0.61 to 0.75 with 100 training cells (CIFAR-10, mean of 5 draws).
        """
        counts = (vectors[:, :, None] == np.arange(len(OPS))).sum(axis=1)
        return np.hstack([counts, self.connected(vectors)[:, None], self._path_aggregates(vectors)]).astype(np.float32)

    @staticmethod
    def _path_aggregates(vectors: np.ndarray) -> np.ndarray:
        """``(n, 7)``: live-path counts of skip, conv1x1, conv3x3, avg-pool; most conv3x3 and most
        convolutions on one live path; number of live paths (see :meth:`extra_features`)."""
        conv3, conv1 = OPS.index("nor_conv_3x3"), OPS.index("nor_conv_1x1")
        on_live_path = np.zeros(vectors.shape, dtype=bool)
        most_conv3, most_convs, live_paths = (np.zeros(len(vectors), dtype=np.int64) for _ in range(3))
        for path in PATHS:
            ops = vectors[:, path]
            live = np.all(ops != 0, axis=1)
            on_live_path[:, path] |= live[:, None]
            most_conv3 = np.maximum(most_conv3, live * (ops == conv3).sum(axis=1))
            most_convs = np.maximum(most_convs, live * np.isin(ops, (conv1, conv3)).sum(axis=1))
            live_paths += live
        live_counts = [((vectors == op) & on_live_path).sum(axis=1) for op in range(1, len(OPS))]
        return np.column_stack([*live_counts, most_conv3, most_convs, live_paths])

    def connected(self, vectors: np.ndarray) -> np.ndarray:
        """Boolean ``(n,)``: does a path of non-``none`` edges lead from the cell input to its output?

        A disconnected cell's output does not depend on the image: such networks sit at chance accuracy.
        """
        live = self.check_vectors(vectors) != 0
        n1 = live[:, 0]
        n2 = live[:, 1] | (n1 & live[:, 2])
        return live[:, 3] | (n1 & live[:, 4]) | (n2 & live[:, 5])

    def isomorphism_class(self, vectors: np.ndarray) -> np.ndarray:
        """NB201's isomorphism class id (0..6465) per row: equal ids compute the same function.

        The benchmark still lists (and trained) the members of a class separately, with different
        accuracies and latencies, so this is not used by :meth:`canonical`.
        """
        return _isomorphism_class_of_code()[self.check_vectors(vectors) @ PLACE]

    # ------------------------------------------------------------------ benchmark table
    @property
    def benchmark_network(self) -> bool:
        """True when this space's network is the one the table measured (``C=16, N=5``)."""
        return self.C == 16 and self.N == 5

    @property
    def table_columns(self) -> tuple[str, ...]:
        """Every column :meth:`table_value` can read (names as in the shared CSV)."""
        return benchmark_table().columns

    def table_index(self, vectors: np.ndarray) -> np.ndarray:
        """NB201 / NATS-Bench / HW-NAS-Bench architecture index (0..15624) of every row."""
        return benchmark_table().row_of_code[self.check_vectors(vectors) @ PLACE]

    def table_vectors(self, indices: np.ndarray | Sequence[int]) -> np.ndarray:
        """Encodings ``(n, 6)`` of benchmark architecture indices (inverse of :meth:`table_index`)."""
        idx = np.asarray(indices)
        if idx.size and (not np.issubdtype(idx.dtype, np.integer) or idx.min() < 0 or idx.max() >= N_ARCHS):
            raise ConfigError(f"nb201 architecture indices are integers in 0..{N_ARCHS - 1}")
        return benchmark_table().ops[idx.astype(np.int64)]

    def table_value(self, vectors: np.ndarray, column: str) -> np.ndarray:
        """The benchmark's ``column`` for every row, float64; **NaN where the benchmark has no value**
        (partial HW-NAS-Bench metrics: edgegpu, edgetpu, eyeriss energy, fpga energy). Callers must
        handle NaN (e.g. ``np.isnan``) rather than treat it as a cost."""
        return benchmark_table().column(column)[self.table_index(vectors)]

    def accuracy(self, vectors: np.ndarray) -> np.ndarray:
        """200-epoch test accuracy (%, mean over seeds) on this space's dataset."""
        return self.table_value(vectors, f"test_acc_{self.dataset}")

    def metric_table(self, vectors: np.ndarray) -> np.ndarray:
        return self.accuracy(vectors)

    def table_devices(self, cifar10_proxy: bool = False) -> dict[str, str]:
        """``{device: latency column}`` measured for this space's dataset.

        Every device in the benchmark (HW-NAS-Bench and HELP) was measured on the CIFAR-10 network
        only, so for ``cifar100``/``imagenet16`` this is empty unless ``cifar10_proxy=True`` asks for
        the CIFAR-10 measurements anyway. Device names are the shared README's (``pixel3``,
        ``gold_6226``, ``titan_rtx_1`` = batch 1, ...). Energy columns are in :attr:`table_columns`.
        """
        if self.dataset != "cifar10" and not cifar10_proxy:
            return {}
        devices = {d: f"hw_cifar10_{d}_latency_ms" for d in HW_NAS_BENCH_DEVICES}
        prefix = "help_lat_ms_"
        devices.update({c[len(prefix):]: c for c in self.table_columns if c.startswith(prefix)})
        return devices

    def flops(self, vectors: np.ndarray) -> np.ndarray:
        """FLOPs in NB201's convention (the table's ``flops_M_<dataset>`` x 1e6 at ``C=16, N=5``):
        convolution and classifier MACs plus the classifier's bias adds."""
        return self.macs(vectors) + self.n_classes

    # ------------------------------------------------------------------ costs
    def additive_cost(self, layer_value: Callable[[dict], float]) -> Callable[[np.ndarray], np.ndarray]:
        """Tables ``fixed`` (every layer but the cell edges) and ``per_edge[cell, edge, op]`` (0 for
        ``none``): a batch costs ``fixed + sum over cells and edges of per_edge[cell, edge, op_edge]``."""
        cells = self._search_cells()
        fixed = sum(layer_value(layer) for layer in self._layers(None))
        per_edge = np.zeros((len(cells), len(EDGES), len(OPS)))
        for c, (index, stage) in enumerate(cells):
            for e in range(len(EDGES)):
                for o, op in enumerate(OPS[1:], start=1):
                    per_edge[c, e, o] = layer_value(self._edge_layer(index, stage, e, op))
        if float(fixed).is_integer() and np.all(per_edge == np.round(per_edge)):
            fixed, per_edge = int(fixed), per_edge.astype(np.int64)   # exact integer counts
        rows = np.arange(len(cells))[:, None]
        edges = np.arange(len(EDGES))[None, :]

        def score(vectors: np.ndarray) -> np.ndarray:
            v = self.check_vectors(vectors)
            return fixed + per_edge[rows[None], edges[None], v[:, None, :]].sum(axis=(1, 2))

        return score

    # ------------------------------------------------------------------ layer arithmetic
    def _stage_shape(self, stage: int) -> tuple[int, int]:
        """(channels, spatial size) of the cells of ``stage``."""
        size = self.resolution
        for _ in range(stage):
            size = conv_output_size(size, 3, 2)
        return self.C * 2 ** stage, size

    def _search_cells(self) -> list[tuple[int, int]]:
        """``(index in network.cells, stage)`` of every search cell."""
        return [(stage * (self.N + 1) + i, stage) for stage in range(N_STAGES) for i in range(self.N)]

    def _edge_layer(self, cell: int, stage: int, edge: int, op: str, source: str | None = None) -> dict[str, Any]:
        """The layer of edge ``edge`` of search cell ``cell`` running ``op`` (not ``none``); ``source`` is
        the name of its input (node 0 of a cell is the previous layer)."""
        channels, size = self._stage_shape(stage)
        layer = {"name": f"cells.{cell}.edges.{edge_key(edge)}", "nb201_op": op, "in_channels": channels,
                 "out_channels": channels, "in_size": size, "out_size": size, "stride": 1, "macs": 0, "params": 0,
                 "inputs": [source or _node_name(cell, EDGES[edge][0])], "edge": edge}
        if op in CONV_KERNELS:
            k = CONV_KERNELS[op]
            layer.update(op="relu_conv_bn", kernel=k, macs=size * size * channels * channels * k * k,
                         params=channels * channels * k * k + 2 * channels)
        else:
            layer.update(op="avg_pool" if op == "avg_pool_3x3" else "skip", kernel=3 if op == "avg_pool_3x3" else 1)
        return layer

    def _cell_layers(self, cell: int, stage: int, ops: Sequence[str] | None, previous: str) -> list[dict[str, Any]]:
        """A search cell in forward order: per node j = 1..3 its incoming non-``none`` edges, then the node
        tensor ``cells.k.nodej`` (op ``sum``, fed by those edges). ``ops=None``: the node tensors only."""
        channels, size = self._stage_shape(stage)
        names = {0: previous, **{j: _node_name(cell, j) for j in (1, 2, 3)}}
        layers: list[dict[str, Any]] = []
        for j in (1, 2, 3):
            incoming = [e for e, (_, to) in enumerate(EDGES) if to == j and ops is not None and ops[e] != "none"]
            edges = [self._edge_layer(cell, stage, e, ops[e], names[EDGES[e][0]]) for e in incoming]
            layers += edges + [{"name": names[j], "op": "sum", "in_channels": channels, "out_channels": channels,
                                "in_size": size, "out_size": size, "macs": 0, "params": 0,
                                "inputs": [edge["name"] for edge in edges]}]
        return layers

    def _layers(self, ops: Sequence[str] | None) -> list[dict[str, Any]]:
        """Every layer of the network in forward order, each with the names of its ``inputs``.

        ``ops=None`` leaves out the cell edges: what remains (stem, node tensors, reductions, head) does
        not depend on the genotype, which is what :meth:`additive_cost` tabulates as ``fixed``.
        """
        C, r = self.C, self.resolution
        layers = [{"name": "stem", "op": "conv", "in_channels": 3, "out_channels": C, "in_size": r, "out_size": r,
                   "kernel": 3, "stride": 1, "bn": True, "act": None, "macs": r * r * 3 * C * 9,
                   "params": 3 * C * 9 + 2 * C, "inputs": []}]
        for index, stage in self._search_cells():
            previous = layers[-1]["name"]
            if stage > 0 and index == stage * (self.N + 1):     # first cell of a stage: the reduction first
                channels, size = self._stage_shape(stage)
                layers.append(_resblock(f"cells.{index - 1}", channels // 2, channels,
                                        self._stage_shape(stage - 1)[1], size, previous))
                previous = layers[-1]["name"]
            layers += self._cell_layers(index, stage, ops, previous)
        width, size = self._stage_shape(N_STAGES - 1)
        layers.append({"name": "lastact", "op": "bn_relu", "in_channels": width, "out_channels": width,
                       "in_size": size, "out_size": size, "macs": 0, "params": 2 * width,
                       "inputs": [layers[-1]["name"]]})
        layers.append({"name": "global_pool", "op": "global_avg_pool", "in_channels": width, "out_channels": width,
                       "in_size": size, "out_size": 1, "macs": 0, "params": 0, "inputs": ["lastact"]})
        layers.append({"name": "classifier", "op": "linear", "in_channels": width, "out_channels": self.n_classes,
                       "in_size": 1, "out_size": 1, "macs": width * self.n_classes,
                       "params": width * self.n_classes + self.n_classes, "inputs": ["global_pool"]})
        return layers

    def graph(self, config: Config) -> nx.DiGraph:
        """Layers as nodes in forward order: ``stem``; per search cell ``k`` one node per non-``none`` edge
        ``cells.k.edges.j<-i`` (op ``relu_conv_bn``/``skip``/``avg_pool``, ``nb201_op``, ``kernel``, ``edge``)
        wired from node i to node j, and its node tensors ``cells.k.node1..3`` (op ``sum``; node 0 is the
        previous layer, node 3 the cell output), so the cell DAG is visible; the reductions ``cells.k`` (op
        ``resblock``); ``lastact``; ``global_pool``; ``classifier``. Every node has ``op``,
        ``in/out_channels``, ``in/out_size``, ``macs`` and ``params``; these sum to the costs."""
        ops = self.validate(config)["ops"]
        g = nx.DiGraph(space=self.name, dataset=self.dataset, resolution=self.resolution, arch_str=arch_str(ops))
        for layer in self._layers(ops):
            g.add_node(layer["name"], **{k: v for k, v in layer.items() if k not in ("name", "inputs")})
            g.add_edges_from((source, layer["name"]) for source in layer["inputs"])
        return g

    # ------------------------------------------------------------------ networks
    @property
    def supernet(self) -> NB201Supernet:
        if self._supernet is None:
            self._supernet = NB201Supernet(self.C, self.N, self.n_classes)
        return self._supernet

    def activate(self, config: Config) -> None:
        self.validate(config)
        self.supernet.set_active(config["ops"])

    def extract(self, config: Config) -> NB201Network:
        self.activate(config)
        return self.supernet.extract()

    def from_scratch(self, config: Config) -> NB201Network:
        """A freshly initialised plain network of the cell (how NB201 trained every table entry)."""
        ops = self.validate(config)["ops"]
        return build_network(self.C, self.N, self.n_classes, lambda width: Cell(
            ops, {edge_key(e): ReLUConvBN(width, width, CONV_KERNELS[op]) for e, op in enumerate(ops) if op in CONV_KERNELS}))

    def example_input(self, config: Config, batch: int = 1) -> torch.Tensor:
        self.validate(config)
        generator = torch.Generator().manual_seed(0)
        return torch.randn(batch, 3, self.resolution, self.resolution, generator=generator)

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["channels"] = {"stem": self.C, "stages": [self._stage_shape(s)[0] for s in range(N_STAGES)],
                            "cells_per_stage": self.N}
        info["benchmark"] = {"rows": N_ARCHS, "columns": len(self.table_columns),
                             "describes_this_network": self.benchmark_network}
        return info


def _node_name(cell: int, node: int) -> str:
    return f"cells.{cell}.node{node}"


def _resblock(name: str, c_in: int, c_out: int, in_size: int, out_size: int, previous: str) -> dict[str, Any]:
    conv_a = out_size * out_size * c_in * c_out * 9
    conv_b = out_size * out_size * c_out * c_out * 9
    shortcut = out_size * out_size * c_in * c_out
    return {"name": name, "op": "resblock", "in_channels": c_in, "out_channels": c_out, "in_size": in_size,
            "out_size": out_size, "kernel": 3, "stride": 2, "macs": conv_a + conv_b + shortcut,
            "params": 9 * c_in * c_out + 2 * c_out + 9 * c_out * c_out + 2 * c_out + c_in * c_out,
            "inputs": [previous]}
