"""``dass_darts``: the DARTS cell space with sparse operations and a keep-ratio gene per cell (DASS).

Network and supernet: :mod:`search_spaces.dass_supernet` (ops in :mod:`search_spaces.ops.darts_ops`).

Config (one key per group of genes, in encoding order)::

    {"normal_inputs": ["0,1", "1,2", "0,3", "2,4"],      # per node: its two input states, i < j
     "normal_ops": ["sep_conv_3x3", "skip_connect", ...], # per node: op on input i, then op on input j
     "reduce_inputs": [...], "reduce_ops": [...],
     "keep": [1.0, 0.1, ...],                             # keep ratio of every sparse op of each cell
     "keep_stem": 1.0, "keep_classifier": 0.1}

Keep genes list the ``keep_ratios`` option sorted from the sparsest to the densest, as every space
orders its choices from the smallest network to the largest (so the sandwich rule's largest subnet
is the dense one and its smallest the sparsest).

States are DARTS' genotype indices (0 = ``c_{k-2}``, 1 = ``c_{k-1}``, ``2 + m`` = node ``m``), so
node ``n`` chooses one of the ``C(n + 2, 2)`` input pairs. Ops are the space's op list without
``none`` (DARTS' derivation never keeps it). Writing each node's inputs as an ordered pair is the
canonical form of "which two edges, which op on each"; the only genes that cannot change the
network are the normal-cell genes of a network without normal cells (``layers <= 2``), which
:meth:`canonical` sets to 0. (Two keep ratios can keep the same number of weights in every layer
of a tiny cell; such encodings are not merged.)

Costs: ``macs`` and ``params`` are those of the extracted network as stored (dense layers with
zeros, equal to ``count_macs``/``count_params`` on it, as for every space); ``nonzero_macs`` and
``nonzero_params`` count only the ``ceil(k * n)`` weights each sparse layer keeps (biases and
BatchNorm dense), equal to ``count_macs``/``count_nonzero_params`` on the network with its sparse ops
(``extract(config, keep_sparse=True)``). BatchNorm follows DARTS' search network: ``affine=False``
in the cells (option ``affine``), affine in the stem; the classifier's input is standardised by a
BatchNorm without parameters before the global pooling (``dass_supernet.PooledClassifier``: without
it a supernet over sampled genotypes diverges); it adds no parameters or MACs.

Inference: :meth:`DassDartsSpace.deploy` is the export step for running the extracted network in
PyTorch: every layer runs dense or as CSR (``search_spaces.ops.sparse_exec``), whichever measured
faster here on its real input (``choose_execution``).

Genotype files (JSON, ``save_genotype``/``load_genotype``): ``{"format": "nas.dass_darts.genotype/1",
"normal": [[op, state], ... 8], "reduce": [...], "keep": [per cell], "keep_stem", "keep_classifier"}``.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Mapping

import networkx as nx
import numpy as np
import torch
from torch import nn

from nas.atomic import atomic_write_bytes
from nas.errors import ConfigError
from search_spaces._registry import register
from search_spaces.base import Config, Gene, LayoutEntry, SearchSpace
from search_spaces.dass_supernet import KINDS, STEM_MULTIPLIER, STEPS, CellShape, DartsNetwork, DartsSupernet, cell_shapes, edge_index
from search_spaces.ops.darts_ops import DARTS_OPS, NONE, OPS, FactorizedReduce, OpCost, bn_cost, reduced_size
from search_spaces.ops.sparse import check_keep_ratio

GENOTYPE_FORMAT = "nas.dass_darts.genotype/1"
#: Per node, its input pairs ``(i, j)``, ``i < j``, in gene-choice order.
PAIRS = [list(itertools.combinations(range(node + 2), 2)) for node in range(STEPS)]
#: ``EDGE_OF[node][pair, slot]``: the edge number of input ``slot`` of ``pair``.
EDGE_OF = [np.array([[edge_index(node, s) for s in pair] for pair in pairs]) for node, pairs in enumerate(PAIRS)]
NOTE = ("macs/params: the extracted network as stored (dense, zeros included); nonzero_macs/nonzero_params: "
        "only the weights each sparse layer keeps (ceil(keep ratio x weights)), biases and BatchNorm dense")


@register("dass_darts")
class DassDartsSpace(SearchSpace):
    """DARTS normal and reduction cells (4 nodes, 2 inputs each) with sparse convolutions and per-cell sparsity."""

    costs = ("macs", "params", "nonzero_macs", "nonzero_params")
    training_method = "dass"
    small_options = {"C": 4, "layers": 3, "resolution": 8}

    def __init__(self, C: int = 16, layers: int = 8, n_classes: int = 10, ops=DARTS_OPS,
                 keep_ratios=(1.0, 0.1, 0.05, 0.01), in_channels: int = 3, resolution: int = 32, affine: bool = False):
        for key, value in {"C": C, "layers": layers, "n_classes": n_classes, "in_channels": in_channels,
                           "resolution": resolution}.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"dass_darts: {key} must be a positive integer; got {value!r}")
        self.ops, self.keep_ratios = _check_ops(ops), _check_keep_ratios(keep_ratios)
        self.discrete_ops = tuple(op for op in self.ops if op != NONE)
        self._options = {"C": C, "layers": layers, "n_classes": n_classes, "ops": list(self.ops),
                         "keep_ratios": list(self.keep_ratios), "in_channels": in_channels,
                         "resolution": resolution, "affine": bool(affine)}
        self.C, self.layers, self.n_classes, self.in_channels, self.resolution = C, layers, n_classes, in_channels, resolution
        self.affine = bool(affine)
        self.shapes: list[CellShape] = cell_shapes(C, layers, resolution)
        self._supernet: DartsSupernet | None = None

    # ------------------------------------------------------------------ genes
    @cached_property
    def config_layout(self) -> list[LayoutEntry]:
        cells = [LayoutEntry(f"{kind}_{part}", n) for kind in KINDS for part, n in (("inputs", STEPS), ("ops", 2 * STEPS))]
        return cells + [LayoutEntry("keep", self.layers), LayoutEntry("keep_stem"), LayoutEntry("keep_classifier")]

    @cached_property
    def genes(self) -> list[Gene]:
        genes = []
        for kind in KINDS:
            genes += [Gene(f"{kind}_inputs.{n}", tuple(f"{i},{j}" for i, j in PAIRS[n])) for n in range(STEPS)]
            genes += [Gene(f"{kind}_ops.{g}", self.discrete_ops) for g in range(2 * STEPS)]
        keeps = tuple(self.keep_ratios)
        return genes + [Gene(f"keep.{c}", keeps) for c in range(self.layers)] + [Gene("keep_stem", keeps),
                                                                                 Gene("keep_classifier", keeps)]

    def _column(self, key: str) -> int:
        """First encoding column of config key ``key``."""
        start = 0
        for entry in self.config_layout:
            if entry.key == key:
                return start
            start += entry.n_genes
        raise KeyError(key)

    @cached_property
    def kinds_present(self) -> tuple[str, ...]:
        return tuple(kind for kind in KINDS if any(shape.kind == kind for shape in self.shapes))

    def active_genes(self, vectors: np.ndarray) -> np.ndarray:
        """The cell genes of a kind the network has no cell of are inactive."""
        active = np.ones(self.check_vectors(vectors).shape, dtype=bool)
        for kind in set(KINDS) - set(self.kinds_present):
            start = self._column(f"{kind}_inputs")
            active[:, start:start + 3 * STEPS] = False
        return active

    def _canonical(self, batch: np.ndarray) -> np.ndarray:
        batch[~self.active_genes(batch)] = 0
        return batch

    def size(self) -> int:
        per_kind = math.prod(len(p) for p in PAIRS) * len(self.discrete_ops) ** (2 * STEPS)
        return per_kind ** len(self.kinds_present) * len(self.keep_ratios) ** (self.layers + 2)

    # ------------------------------------------------------------------ genotypes
    def genotypes(self, config: Config) -> dict[str, list[tuple[str, int]]]:
        """``{"normal": [(op, state)] * 8, "reduce": ...}`` of ``config`` (DARTS' ``Genotype`` lists)."""
        self.validate(config)
        out = {}
        for kind in KINDS:
            pairs = [tuple(int(s) for s in name.split(",")) for name in config[f"{kind}_inputs"]]
            out[kind] = [(op, state) for op, state in zip(config[f"{kind}_ops"], itertools.chain(*pairs), strict=True)]
        return out

    def config_of(self, genotypes: Mapping[str, Any], keep: list[float], keep_stem: float,
                  keep_classifier: float) -> Config:
        """The config of DARTS genotype lists (each node's two ``(op, state)`` in any order), validated."""
        config: Config = {}
        for kind in KINDS:
            nodes = _nodes(genotypes[kind], kind)
            config[f"{kind}_inputs"] = [f"{a[1]},{b[1]}" for a, b in nodes]
            config[f"{kind}_ops"] = [op for a, b in nodes for op in (a[0], b[0])]
        config.update(keep=list(keep), keep_stem=keep_stem, keep_classifier=keep_classifier)
        return self.validate(config)

    def derive(self, alphas: Mapping[str, Any], keep_ratio: float | None = None) -> Config:
        """DARTS discretisation of ``alphas`` (``{"normal": (14, ops), "reduce": ...}``, raw, before
        softmax): per node the two incoming edges whose strongest non-``none`` op weight is largest
        (ties: the lower state), that op on each. Every keep gene is ``keep_ratio`` (default the
        largest of ``keep_ratios``)."""
        keep = max(self.keep_ratios) if keep_ratio is None else check_keep_ratio(keep_ratio)
        cells = {kind: derive_cell(_alpha_array(alphas, kind, len(self.ops)), self.ops) for kind in KINDS}
        return self.config_of(cells, [keep] * self.layers, keep, keep)

    def save_genotype(self, config: Config, path: str | os.PathLike) -> None:
        """Write ``config`` as a genotype file (atomically)."""
        record = {"format": GENOTYPE_FORMAT, **{k: [list(g) for g in v] for k, v in self.genotypes(config).items()},
                  "keep": config["keep"], "keep_stem": config["keep_stem"], "keep_classifier": config["keep_classifier"]}
        atomic_write_bytes(path, (json.dumps(record, indent=1) + "\n").encode())

    def load_genotype(self, path: str | os.PathLike, keep_ratio: float | None = None) -> Config:
        """The config in genotype file ``path``; ``keep_ratio`` (if given) replaces every keep gene.

        Raises:
            ConfigError: the file cannot be read or parsed, names an op this space does not have, has a
                node without two distinct valid inputs, or lists keep ratios for another number of cells.
        """
        record = _read_genotype(Path(path))
        for kind in KINDS:
            unknown = sorted({str(op) for op, _ in record[kind]} - set(self.discrete_ops))
            if unknown:
                raise ConfigError(f"{path}: {kind} cell names unknown op(s) {unknown}; this space's ops are "
                                  f"{list(self.discrete_ops)}")
        if keep_ratio is not None:
            keep_ratio = check_keep_ratio(keep_ratio)
            return self.config_of(record, [keep_ratio] * self.layers, keep_ratio, keep_ratio)
        if not all(k in record for k in ("keep", "keep_stem", "keep_classifier")):
            raise ConfigError(f"{path}: no keep ratios (keep, keep_stem, keep_classifier); give a keep ratio")
        if not isinstance(record["keep"], list) or len(record["keep"]) != self.layers:
            n = len(record["keep"]) if isinstance(record["keep"], list) else record["keep"]
            raise ConfigError(f"{path}: keep ratios for {n} cells, but this space has {self.layers} cells")
        return self.config_of(record, record["keep"], record["keep_stem"], record["keep_classifier"])

    # ------------------------------------------------------------------ layers and costs
    def _op_layer(self, name: str, op: str, cost: OpCost, keep: float, c_in: int, c_out: int, in_size: int,
                  out_size: int, inputs: list[str], **extra) -> dict[str, Any]:
        return {"name": name, "op": op, "in_channels": c_in, "out_channels": c_out, "in_size": in_size,
                "out_size": out_size, "keep_ratio": keep, **cost.counts(keep), **extra, "inputs": inputs}

    def _stem_layer(self, keep: float) -> dict[str, Any]:
        c, r = STEM_MULTIPLIER * self.C, self.resolution
        cost = OpCost(((self.in_channels * c * 9, r * r),)) + bn_cost(c, True)
        return self._op_layer("stem", "conv_bn", cost, keep, self.in_channels, c, r, r, [], kernel=3, stride=1)

    def _classifier_layer(self, keep: float) -> dict[str, Any]:
        width = STEPS * self.shapes[-1].c
        cost = OpCost(((width * self.n_classes, 1),), dense_params=self.n_classes)
        return self._op_layer("classifier", "linear", cost, keep, width, self.n_classes, 1, 1, ["global_pool"])

    def _preprocess_layers(self, cell: int, keep: float, sources: tuple[str, str]) -> list[dict[str, Any]]:
        s = self.shapes[cell]
        if s.reduction_prev:
            pre0 = ("factorized_reduce", FactorizedReduce.cost(s.c_pp, s.c, s.size_pp, self.affine), 2)
        else:
            pre0 = ("relu_conv_bn", OpCost(((s.c_pp * s.c, s.size_p ** 2),)) + bn_cost(s.c, self.affine), 1)
        pre1 = ("relu_conv_bn", OpCost(((s.c_p * s.c, s.size_p ** 2),)) + bn_cost(s.c, self.affine), 1)
        return [self._op_layer(f"cells.{cell}.preprocess{i}", op, cost, keep, c_in, s.c, size, s.size_p, [src],
                               kernel=1, stride=stride)
                for i, ((op, cost, stride), c_in, size, src) in enumerate(zip((pre0, pre1), (s.c_pp, s.c_p),
                                                                               (s.size_pp, s.size_p), sources, strict=True))]

    def _edge_layer(self, cell: int, node: int, state: int, op: str, keep: float, source: str) -> dict[str, Any]:
        s = self.shapes[cell]
        stride, size = s.stride(state), s.state_size(state)
        cost = OPS[op].cost(s.c, stride, size, self.affine)
        return self._op_layer(f"cells.{cell}.node{node}.from{state}", op, cost, keep, s.c, s.c, size,
                              reduced_size(size, stride), [source], stride=stride, node=node, state=state)

    def _structure_layers(self, cell: int, inputs: list[list[str]] | None = None) -> list[dict[str, Any]]:
        """The node sums and the concatenation of ``cell`` (no weights; their inputs depend on the genotype)."""
        s, zero = self.shapes[cell], OpCost()
        sums = [self._op_layer(f"cells.{cell}.node{n}", "sum", zero, 1.0, s.c, s.c, s.size, s.size,
                               inputs[n] if inputs else []) for n in range(STEPS)]
        concat = self._op_layer(f"cells.{cell}", "concat", zero, 1.0, STEPS * s.c, STEPS * s.c, s.size, s.size,
                                [layer["name"] for layer in sums])
        return sums + [concat]

    def _pool_layer(self, source: str) -> dict[str, Any]:
        width, size = STEPS * self.shapes[-1].c, self.shapes[-1].size
        return self._op_layer("global_pool", "global_avg_pool", OpCost(), 1.0, width, width, size, 1, [source])

    def _layers(self, config: Config) -> list[dict[str, Any]]:
        """Every layer of ``config``'s network in forward order, each with the names of its ``inputs``."""
        genotypes, keep = self.genotypes(config), config["keep"]
        layers, prev_prev, prev = [self._stem_layer(config["keep_stem"])], "stem", "stem"
        for cell, shape in enumerate(self.shapes):
            pre = self._preprocess_layers(cell, keep[cell], (prev_prev, prev))
            states, inputs, edges = [p["name"] for p in pre], [], []
            for node in range(STEPS):
                pair = [self._edge_layer(cell, node, st, op, keep[cell], states[st])
                        for op, st in genotypes[shape.kind][2 * node: 2 * node + 2]]
                edges += pair
                inputs.append([e["name"] for e in pair])
                states.append(f"cells.{cell}.node{node}")
            layers += pre + edges + self._structure_layers(cell, inputs)
            prev_prev, prev = prev, f"cells.{cell}"
        return layers + [self._pool_layer(prev), self._classifier_layer(config["keep_classifier"])]

    def graph(self, config: Config) -> nx.DiGraph:
        """Layers as nodes: ``stem``; per cell ``cells.c.preprocess0/1``, one node per kept edge
        ``cells.c.node{n}.from{state}`` (``op`` = the DARTS op), the node sums ``cells.c.node{n}`` and the
        concatenation ``cells.c``; ``global_pool``; ``classifier``. Each has shapes, ``stride``, ``keep_ratio``,
        ``macs``, ``params``, ``nonzero_macs`` and ``nonzero_params``, which sum to the costs."""
        g = nx.DiGraph(space=self.name, resolution=self.resolution, genotype=self.genotypes(config))
        for layer in self._layers(config):
            g.add_node(layer["name"], **_attrs(layer))
            g.add_edges_from((source, layer["name"]) for source in layer["inputs"])
        return g

    def additive_cost(self, layer_value: Callable[[dict], float]) -> Callable[[np.ndarray], np.ndarray]:
        """Tables per keep ratio (stem, classifier, each cell's preprocessing) and per (cell, edge, op, keep
        ratio); a batch is scored by indexing them with its genes."""
        keeps, ops = self.keep_ratios, self.discrete_ops
        tables = {"stem": [layer_value(_attrs(self._stem_layer(k))) for k in keeps],
                  "classifier": [layer_value(_attrs(self._classifier_layer(k))) for k in keeps],
                  "pre": [[sum(layer_value(_attrs(x)) for x in self._preprocess_layers(c, k, ("", ""))) for k in keeps]
                          for c in range(self.layers)],
                  "edge": [[[[layer_value(_attrs(self._edge_layer(c, node, st, op, k, ""))) for k in keeps] for op in ops]
                            for node in range(STEPS) for st in range(node + 2)] for c in range(self.layers)]}
        fixed = sum(layer_value(_attrs(x)) for c in range(self.layers) for x in self._structure_layers(c))
        fixed += layer_value(_attrs(self._pool_layer("")))
        tables = {k: np.asarray(v) for k, v in tables.items()}
        if all(np.array_equal(t, np.round(t)) for t in tables.values()) and float(fixed).is_integer():
            tables, fixed = {k: t.astype(np.int64) for k, t in tables.items()}, int(fixed)
        return lambda vectors: self._score(tables, fixed, self.check_vectors(vectors))

    def _score(self, tables: dict[str, np.ndarray], fixed: float, v: np.ndarray) -> np.ndarray:
        total = fixed + tables["stem"][v[:, self._column("keep_stem")]] + tables["classifier"][v[:, self._column("keep_classifier")]]
        keep_col = self._column("keep")
        for c, shape in enumerate(self.shapes):
            keep = v[:, keep_col + c]
            inputs, ops = self._column(f"{shape.kind}_inputs"), self._column(f"{shape.kind}_ops")
            total = total + tables["pre"][c, keep]
            for node in range(STEPS):
                for slot in (0, 1):
                    edge = EDGE_OF[node][v[:, inputs + node], slot]
                    total = total + tables["edge"][c, edge, v[:, ops + 2 * node + slot], keep]
        return total

    @cached_property
    def _layer_sums(self) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
        return {name: self.additive_cost(lambda layer, name=name: layer[name]) for name in self.costs}

    def nonzero_macs(self, vectors: np.ndarray) -> np.ndarray:
        """MACs of the weights the sparse layers keep (one sample)."""
        return self._layer_sums["nonzero_macs"](vectors)

    def nonzero_params(self, vectors: np.ndarray) -> np.ndarray:
        """Kept weights plus biases and BatchNorm parameters (``count_nonzero_params``)."""
        return self._layer_sums["nonzero_params"](vectors)

    # ------------------------------------------------------------------ networks
    @property
    def supernet(self) -> DartsSupernet:
        if self._supernet is None:
            self._supernet = DartsSupernet(self.C, self.layers, self.n_classes, self.ops, self.in_channels,
                                           self.resolution, self.affine)
        return self._supernet

    def activate(self, config: Config) -> None:
        """Discrete mode with ``config``'s genotype and keep ratios (``supernet.set_mode("mixed")`` mixes again)."""
        genotypes = self.genotypes(config)
        self.supernet.set_keep_ratios(config["keep_stem"], config["keep"], config["keep_classifier"])
        self.supernet.set_genotype(genotypes)

    def extract(self, config: Config, keep_sparse: bool = False) -> DartsNetwork:
        """The network of ``config`` with copied weights: plain layers with the masks baked in, or, with
        ``keep_sparse``, still sparse ops (weights, scores, keep ratios) for further training."""
        self.activate(config)
        return self.supernet.extract(keep_sparse)

    def deploy(self, config: Config, example_input: torch.Tensor | None = None, **timing) -> tuple[nn.Module, list]:
        """The extracted network of ``config`` for inference in PyTorch, each layer run by the faster of
        dense and sparse (CSR) execution as measured here on ``example_input`` (default: one sample, one
        thread): ``sparse_exec.choose_execution``. Returns the model and the per-layer choices. ONNX and
        TorchScript exports use :meth:`extract` (dense layers with zeros) instead."""
        from search_spaces.ops.sparse_exec import choose_execution

        x = self.example_input(config) if example_input is None else example_input
        return choose_execution(self.extract(config), x, **timing)

    def example_input(self, config: Config, batch: int = 1) -> torch.Tensor:
        self.validate(config)
        generator = torch.Generator().manual_seed(0)
        return torch.randn(batch, self.in_channels, self.resolution, self.resolution, generator=generator)

    def input_size(self, config: Config) -> int:
        return self.resolution

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["channels"] = {"stem": STEM_MULTIPLIER * self.C, "cells": [s.c for s in self.shapes],
                            "kinds": [s.kind for s in self.shapes]}
        for entry in info["config_keys"]:
            if entry["key"].endswith("_inputs"):   # the input pairs differ per node
                entry["choices"] = [list(gene.choices) for gene in self.genes if gene.name.startswith(entry["key"] + ".")]
        info["note"] = NOTE
        return info


def derive_cell(alpha: np.ndarray, ops: tuple[str, ...]) -> list[tuple[str, int]]:
    """DARTS' ``_parse`` on one cell's raw ``alpha`` ``(14, len(ops))``: 8 ``(op, state)``, states ascending."""
    weights = np.exp(alpha - alpha.max(axis=1, keepdims=True))
    weights = weights / weights.sum(axis=1, keepdims=True)
    live = [o for o, op in enumerate(ops) if op != NONE]
    best = np.asarray(live)[weights[:, live].argmax(axis=1)]
    strength = weights[:, live].max(axis=1)
    genotype = []
    for node in range(STEPS):
        states = sorted(sorted(range(node + 2), key=lambda s: -strength[edge_index(node, s)])[:2])
        genotype += [(ops[best[edge_index(node, s)]], s) for s in states]
    return genotype


def _alpha_array(alphas: Mapping[str, Any], kind: str, n_ops: int) -> np.ndarray:
    value = alphas[kind] if kind in alphas else None
    value = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value, dtype=float)
    if value.shape != (edge_index(STEPS, 0), n_ops):
        raise ConfigError(f"alphas[{kind!r}] must have shape (14, {n_ops}); got {value.shape}")
    return value.astype(float)


def _nodes(genotype: Any, kind: str) -> list[tuple[tuple[str, int], tuple[str, int]]]:
    """The 4 nodes of a genotype list, each's two ``(op, state)`` sorted by state; ConfigError if malformed."""
    pairs = genotype if isinstance(genotype, (list, tuple)) else []
    if len(pairs) != 2 * STEPS or not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in pairs):
        raise ConfigError(f"the {kind} genotype must list {2 * STEPS} [op, input] pairs (2 per node)")
    nodes = []
    for node in range(STEPS):
        (op_a, a), (op_b, b) = pairs[2 * node: 2 * node + 2]
        if not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < node + 2 for s in (a, b)) or a == b:
            raise ConfigError(f"{kind} node {node}: inputs must be two different states in 0..{node + 1}; got {[a, b]}")
        nodes.append(((str(op_a), a), (str(op_b), b)) if a < b else ((str(op_b), b), (str(op_a), a)))
    return nodes


def _read_genotype(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read genotype file {path}: {exc}") from None
    if not isinstance(record, dict) or record.get("format") != GENOTYPE_FORMAT:
        raise ConfigError(f"{path} is not a genotype file (expected a JSON object with format {GENOTYPE_FORMAT!r})")
    for kind in KINDS:
        _nodes(record.get(kind), kind)
    return record


def _check_ops(ops) -> tuple[str, ...]:
    ops = tuple(ops) if isinstance(ops, (list, tuple)) else ()
    known = (NONE, *OPS)
    unknown = [op for op in ops if op not in known]
    if unknown or len(set(ops)) != len(ops) or not any(op != NONE for op in ops):
        raise ConfigError(f"dass_darts: ops must be distinct names from {list(known)}, at least one not 'none'; "
                          f"got {ops or 'nothing'}")
    return ops


def _check_keep_ratios(keep_ratios) -> tuple[float, ...]:
    if not isinstance(keep_ratios, (list, tuple)) or not keep_ratios:
        raise ConfigError(f"dass_darts: keep_ratios must be a non-empty list of numbers in (0, 1]; got {keep_ratios!r}")
    ratios = tuple(check_keep_ratio(k) for k in keep_ratios)
    if len(set(ratios)) != len(ratios):
        raise ConfigError(f"dass_darts: keep_ratios must be distinct; got {list(keep_ratios)}")
    return tuple(sorted(ratios))


def _attrs(layer: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in layer.items() if k not in ("name", "inputs")}
