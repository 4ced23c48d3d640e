"""The DARTS network and its weight-sharing supernet, every convolution and the classifier sparse (DASS).

Layout (DARTS' CIFAR network): a 3x3 stem (``3 * C`` channels) + BatchNorm, ``layers`` cells (the
ones at 1/3 and 2/3 of the depth are reduction cells, doubling the channels and halving the size),
then :class:`PooledClassifier`: BatchNorm without affine parameters, global average pooling, a linear
classifier. DARTS has no BatchNorm there; without it a supernet trained over sampled genotypes
diverges (see :class:`PooledClassifier`). A cell takes the outputs of the two previous cells
(``c_{k-2}``, ``c_{k-1}``; the stem feeds both at first), preprocesses them to ``C`` channels
(1x1 ReLU-conv-BN, or ``FactorizedReduce`` after a reduction), computes 4 intermediate nodes, each
the sum of ops on two earlier states, and concatenates the 4 nodes. States are indexed as in DARTS
genotypes: 0 = ``c_{k-2}``, 1 = ``c_{k-1}``, ``2 + m`` = node ``m``. The 14 candidate edges of a cell
are numbered node by node, inputs in order (``edge_index``). In a reduction cell the edges from
states 0 and 1 have stride 2.

A *cell genotype* is 8 ``(op, input)`` pairs, two per node, as in DARTS' ``Genotype.normal``.

:class:`DartsSupernet` holds every op on every edge. Two modes:

- ``"mixed"`` (after construction): each edge computes ``sum_o softmax(alphas[kind][edge])_o o(x)``
  over the non-``none`` ops (``none`` contributes zero), every cell of a kind sharing its ``alphas``;
- ``"discrete"`` (``set_genotype``): each node sums the two ops its genotype names; ``alphas`` are
  unused. :meth:`DartsSupernet.extract` builds the plain :class:`DartsNetwork` of that genotype.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import nn

from nas.errors import ConfigError
from search_spaces.ops.darts_ops import NONE, OPS, FactorizedReduce, ReLUConvBN, reduced_size, run_op, sparse_conv
from search_spaces.ops.sparse import SparseLinear, extract_sparse_ops, set_keep_ratio

STEPS = 4                      # intermediate nodes per cell
STEM_MULTIPLIER = 3
N_EDGES = sum(2 + node for node in range(STEPS))   # 14
KINDS = ("normal", "reduce")
MODES = ("mixed", "discrete")
CellGenotype = Sequence[tuple[str, int]]


def edge_index(node: int, state: int) -> int:
    """Number (0..13) of the candidate edge from ``state`` into intermediate ``node``."""
    return sum(2 + m for m in range(node)) + state


def is_reduction(cell: int, layers: int) -> bool:
    """DARTS places reduction cells at ``layers // 3`` and ``2 * layers // 3``."""
    return cell in (layers // 3, 2 * layers // 3)


@dataclass(frozen=True)
class CellShape:
    """Channels and spatial sides of one cell: its inputs ``c_{k-2}`` (``pp``) and ``c_{k-1}`` (``p``),
    its node width ``c``, and its output side ``size`` (``concat`` = 4 nodes of ``c`` channels)."""

    c_pp: int
    c_p: int
    c: int
    size_pp: int
    size_p: int
    size: int
    reduction: bool
    reduction_prev: bool

    @property
    def kind(self) -> str:
        return KINDS[self.reduction]

    def stride(self, state: int) -> int:
        return 2 if self.reduction and state < 2 else 1

    def state_size(self, state: int) -> int:
        """Side of state ``state`` after preprocessing (inputs at ``size_p``, nodes at ``size``)."""
        return self.size_p if state < 2 else self.size


def cell_shapes(C: int, layers: int, resolution: int) -> list[CellShape]:
    """The shape of every cell of a network with ``C`` initial channels at input side ``resolution``."""
    shapes, c_pp = [], STEM_MULTIPLIER * C
    c_p, c, size_pp, size_p, reduction_prev = c_pp, C, resolution, resolution, False
    for cell in range(layers):
        reduction = is_reduction(cell, layers)
        c = c * 2 if reduction else c
        size = reduced_size(size_p, 2) if reduction else size_p
        shapes.append(CellShape(c_pp, c_p, c, size_pp, size_p, size, reduction, reduction_prev))
        c_pp, c_p, size_pp, size_p, reduction_prev = c_p, STEPS * c, size_p, size, reduction
    return shapes


def preprocessing(shape: CellShape, affine: bool) -> tuple[nn.Module, nn.Module]:
    """The modules bringing ``c_{k-2}`` and ``c_{k-1}`` to ``shape.c`` channels at side ``size_p``."""
    pre0 = (FactorizedReduce(shape.c_pp, shape.c, affine) if shape.reduction_prev
            else ReLUConvBN(shape.c_pp, shape.c, 1, 1, 0, affine))
    return pre0, ReLUConvBN(shape.c_p, shape.c, 1, 1, 0, affine)


class Cell(nn.Module):
    """A discrete cell: its preprocessing, the ops of its genotype, the 4 nodes concatenated.

    ``edges[str(g)]`` is the module of genotype entry ``g`` (absent for parameter-free ops).
    """

    def __init__(self, preprocess0: nn.Module, preprocess1: nn.Module, genotype: CellGenotype,
                 strides: Sequence[int], edges: Mapping[str, nn.Module]):
        super().__init__()
        self.preprocess0, self.preprocess1 = preprocess0, preprocess1
        self.genotype, self.strides = tuple(genotype), tuple(strides)
        self.edges = nn.ModuleDict(edges)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for node in range(STEPS):
            states.append(self._edge(2 * node, states) + self._edge(2 * node + 1, states))
        return torch.cat(states[2:], dim=1)

    def _edge(self, g: int, states: list[torch.Tensor]) -> torch.Tensor:
        op, state = self.genotype[g]
        return run_op(op, self.strides[g], self.edges[str(g)] if str(g) in self.edges else None, states[state])


class MixedEdge(nn.Module):
    """Every op of the list on one edge; ``ops[name]`` holds the modules of the ops that have weights."""

    def __init__(self, channels: int, stride: int, ops: Sequence[str], affine: bool):
        super().__init__()
        self.names, self.stride = tuple(ops), stride
        modules = {op: OPS[op].build(channels, stride, affine) for op in ops if op != NONE}
        self.ops = nn.ModuleDict({op: m for op, m in modules.items() if m is not None})

    def module(self, op: str) -> nn.Module | None:
        return self.ops[op] if op in self.ops else None

    def run(self, op: str, x: torch.Tensor) -> torch.Tensor:
        return run_op(op, self.stride, self.module(op), x)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``sum_o weights[o] * o(x)``; ``none`` is skipped (its term is zero)."""
        terms = [w * self.run(op, x) for op, w in zip(self.names, weights, strict=True) if op != NONE]
        return torch.stack(terms).sum(0)


class SuperCell(nn.Module):
    """A weight-sharing cell: preprocessing and a :class:`MixedEdge` on each of the 14 edges."""

    def __init__(self, shape: CellShape, ops: Sequence[str], affine: bool):
        super().__init__()
        self.kind = shape.kind
        self.preprocess0, self.preprocess1 = preprocessing(shape, affine)
        self.edges = nn.ModuleList(MixedEdge(shape.c, shape.stride(state), ops, affine)
                                   for node in range(STEPS) for state in range(2 + node))
        self.genotype: tuple[tuple[str, int], ...] | None = None

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        """Mixed with ``weights`` (``(14, ops)``, rows summing to 1), else the discrete ``genotype``."""
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for node in range(STEPS):
            states.append(self._mixed_node(node, states, weights) if weights is not None
                          else self._discrete_node(node, states))
        return torch.cat(states[2:], dim=1)

    def _mixed_node(self, node: int, states: list[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
        terms = [self.edges[edge_index(node, s)](h, weights[edge_index(node, s)]) for s, h in enumerate(states)]
        return torch.stack(terms).sum(0)

    def _discrete_node(self, node: int, states: list[torch.Tensor]) -> torch.Tensor:
        (op_a, a), (op_b, b) = self.genotype[2 * node: 2 * node + 2]
        return self.edges[edge_index(node, a)].run(op_a, states[a]) + self.edges[edge_index(node, b)].run(op_b, states[b])

    def discrete(self) -> Cell:
        """The discrete :class:`Cell` of ``genotype``, sharing this cell's modules (not copies)."""
        edges = [self.edges[edge_index(g // 2, state)] for g, (_, state) in enumerate(self.genotype)]
        modules = {str(g): edge.module(op) for g, ((op, _), edge) in enumerate(zip(self.genotype, edges, strict=True))}
        return Cell(self.preprocess0, self.preprocess1, self.genotype, [e.stride for e in edges],
                    {g: m for g, m in modules.items() if m is not None})


class PooledClassifier(nn.Module):
    """BatchNorm (``affine=False``) of the last cell's output, global average pooling, sparse linear layer.

    The BatchNorm is there for weight sharing over genotypes. The last cell concatenates its 4 nodes,
    and what a node's channels hold depends on the genotype: ops ending in BatchNorm give zero-mean
    features, a skip or an average pool passes (sums of) states on, a max pool adds a positive offset
    (the last cell of an all-max-pool genotype outputs channel means of about 2). A classifier shared
    by every genotype then sees per-channel means and scales that jump from one step to the next; once
    its weights grow, a genotype with other offsets shifts every logit at once. On digits (16 px,
    C = 8, 4 cells, lr 0.05, one random genotype per step) the training loss of a supernet over
    sampled genotypes climbed to 8-12 and the genotypes stayed near chance (18 % after 32 epochs);
    with this BatchNorm the loss stays below 2.7 and they reach 51 % after 32 epochs. Each genotype's
    features reach the classifier standardised per channel (batch statistics while training,
    statistics re-calibrated per subnet for evaluation). It has no parameters and costs no MACs; in a
    single network (a retrained genotype) it is redundant with the linear layer, which can absorb any
    per-channel scale and shift.
    """

    def __init__(self, channels: int, n_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=False)
        self.linear = SparseLinear(channels, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.bn(x).mean((2, 3)))


class DartsNetwork(nn.Module):
    """Stem, cells, :class:`PooledClassifier` (the extracted network of a genotype)."""

    def __init__(self, stem: nn.Module, cells: Sequence[nn.Module], classifier: nn.Module):
        super().__init__()
        self.stem, self.cells, self.classifier = stem, nn.ModuleList(cells), classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return self.classifier(s1)


class DartsSupernet(nn.Module):
    """The DASS search network: shared sparse weights, one ``alphas`` tensor ``(14, len(ops))`` per cell kind."""

    def __init__(self, C: int, layers: int, n_classes: int, ops: Sequence[str], in_channels: int = 3,
                 resolution: int = 32, affine: bool = False):
        super().__init__()
        shapes = cell_shapes(C, layers, resolution)
        c_stem = STEM_MULTIPLIER * C
        self.ops = tuple(ops)
        self.stem = nn.Sequential(sparse_conv(in_channels, c_stem, 3, padding=1), nn.BatchNorm2d(c_stem))
        self.cells = nn.ModuleList(SuperCell(shape, ops, affine) for shape in shapes)
        self.classifier = PooledClassifier(STEPS * shapes[-1].c, n_classes)
        self.alphas = nn.ParameterDict({kind: nn.Parameter(1e-3 * torch.randn(N_EDGES, len(ops))) for kind in KINDS})
        self.mode = "mixed"

    def set_mode(self, mode: str) -> None:
        """``"mixed"``: edges weighted by ``softmax(alphas)``; ``"discrete"``: the genotype set last."""
        if mode not in MODES:
            raise ConfigError(f"supernet mode must be one of {MODES}; got {mode!r}")
        if mode == "discrete" and any(cell.genotype is None for cell in self.cells):
            raise ConfigError("set a genotype (space.activate(config)) before the discrete mode")
        self.mode = mode

    def set_genotype(self, genotypes: Mapping[str, CellGenotype]) -> None:
        """Give every cell its kind's genotype (``{"normal": [...], "reduce": [...]}``) and go discrete."""
        for cell in self.cells:
            cell.genotype = tuple((op, int(state)) for op, state in genotypes[cell.kind])
        self.set_mode("discrete")

    def set_keep_ratios(self, stem: float, cells: Sequence[float], classifier: float) -> None:
        """Keep ratio of the stem, of every sparse op of each cell, and of the classifier."""
        set_keep_ratio(self.stem, stem)
        for cell, keep in zip(self.cells, cells, strict=True):
            set_keep_ratio(cell, keep)
        set_keep_ratio(self.classifier, classifier)

    def arch_parameters(self) -> list[nn.Parameter]:
        """The architecture weights (for the architecture optimiser)."""
        return list(self.alphas.values())

    def weight_parameters(self) -> list[nn.Parameter]:
        """Everything but the architecture weights: weights, scores, BatchNorm (select with ``set_sparse_trainable``)."""
        arch = {id(p) for p in self.alphas.values()}
        return [p for p in self.parameters() if id(p) not in arch]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = ({kind: torch.softmax(alpha, dim=-1) for kind, alpha in self.alphas.items()}
                   if self.mode == "mixed" else {})
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, weights.get(cell.kind))
        return self.classifier(s1)

    def extract(self, keep_sparse: bool = False) -> DartsNetwork:
        """A copy of the discrete network (masks baked into plain layers unless ``keep_sparse``)."""
        self.set_mode("discrete")
        net = DartsNetwork(self.stem, [cell.discrete() for cell in self.cells], self.classifier)
        net = copy.deepcopy(net) if keep_sparse else extract_sparse_ops(net)
        return net.train(self.training)

