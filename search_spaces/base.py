"""The ``SearchSpace`` interface every supernet family implements.

A space speaks two languages. *Configs* are the readable dicts users write
(``{"ks": [...], "e": [...], "d": [...], "r": 224}`` for OFA-MBv3). *Encodings* are integer
vectors, one gene per position, each gene an index into that gene's choice list; searchers,
predictors and the run store only ever see encodings, as numpy arrays of shape ``(n, genes)``.

The mapping between the two is generic: a space declares its genes and how a config's keys lay
them out (``config_layout``), and this base class encodes, decodes and validates. What is specific to
a family (which genes cannot affect the network, how costs are counted, how the supernet computes)
is left to the subclass.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable, ClassVar, Iterable, Sequence

import numpy as np

from nas.errors import ConfigError
from search_spaces._kernels import first_out_of_range

Config = dict[str, Any]


@dataclass(frozen=True)
class Gene:
    """One position of an encoding: its name (``"ks.3"``) and the values it may take."""

    name: str
    choices: tuple

    def index_of(self, value: Any) -> int:
        try:
            return self.choices.index(value)
        except ValueError:
            raise ConfigError(
                f"gene {self.name!r}: {value!r} is not one of the choices {list(self.choices)}"
            ) from None


@dataclass(frozen=True)
class Metric:
    """The task metric a space is judged by, and whether larger is better."""

    name: str = "accuracy"
    direction: str = "max"
    unit: str = "%"


@dataclass(frozen=True)
class LayoutEntry:
    """A config key and how many genes it holds: ``length=None`` is a scalar, else a list."""

    key: str
    length: int | None = None

    @property
    def n_genes(self) -> int:
        return 1 if self.length is None else self.length


class SearchSpace(abc.ABC):
    """A supernet and the encoding of its subnetworks.

    Subclasses register with :func:`search_spaces.register` and implement the abstract members.
    Cost functions named in ``costs`` (``macs``, ``params``, later ``bitops``, ``nonzero_macs``) are
    methods taking an ``(n, genes)`` encoding batch and returning one value per row; they are
    computed analytically, never by building modules, so a search can score millions of candidates.
    """

    name: ClassVar[str] = "?"
    metric: ClassVar[Metric] = Metric()
    costs: ClassVar[tuple[str, ...]] = ("macs", "params")
    #: Whether ``metric_table`` looks the task metric up in a table of trained networks (tabular spaces).
    has_metric_table: ClassVar[bool] = False
    #: The ``nas train`` method used when none is given (``None``: the space has no supernet to train).
    training_method: ClassVar[str | None] = None
    #: Options for a small instance that builds in well under a second: tests, demos, docs.
    small_options: ClassVar[dict[str, Any]] = {}

    # ------------------------------------------------------------------ genes and encodings
    @property
    @abc.abstractmethod
    def genes(self) -> list[Gene]:
        """Every gene, in encoding order."""

    @property
    @abc.abstractmethod
    def config_layout(self) -> list[LayoutEntry]:
        """The config keys in encoding order; their genes concatenate to ``genes``."""

    @property
    def options(self) -> dict[str, Any]:
        """The constructor options that rebuild this space (stored with checkpoints and runs)."""
        return dict(self._options)

    @property
    def n_genes(self) -> int:
        return len(self.genes)

    @cached_property
    def cardinalities(self) -> np.ndarray:
        """Number of choices per gene, shape ``(genes,)``."""
        return np.array([len(g.choices) for g in self.genes], dtype=np.int64)

    def encode(self, configs: Config | Sequence[Config]) -> np.ndarray:
        """Config -> ``(genes,)`` int vector; a list of configs -> ``(n, genes)``."""
        if isinstance(configs, dict):
            return self._encode_one(configs)
        rows = [self._encode_one(c) for c in configs]
        return np.stack(rows) if rows else np.zeros((0, self.n_genes), dtype=np.int64)

    def decode(self, vectors: np.ndarray | Sequence[int]) -> Config | list[Config]:
        """``(genes,)`` vector -> config; ``(n, genes)`` batch -> list of configs."""
        batch, single = self._as_batch(vectors)
        configs = [self._decode_one(row) for row in batch]
        return configs[0] if single else configs

    def validate(self, config: Config) -> Config:
        """Raise :class:`ConfigError` unless ``config`` names a subnet of this space."""
        self._encode_one(config)
        return config

    def check_vectors(self, vectors: np.ndarray | Sequence, check_range: bool = True) -> np.ndarray:
        """Return ``vectors`` as a contiguous ``(n, genes)`` int64 array, or raise a clear ``ConfigError``.

        ``check_range=False`` checks only shape and type, for scorers that validate while they read.
        """
        return self._as_batch(vectors, check_range)[0]

    def random_vectors(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` encodings with every gene drawn uniformly from its choices."""
        return rng.integers(0, self.cardinalities, size=(n, self.n_genes), dtype=np.int64)

    def sample(self, n: int, seed: int | None = None) -> list[Config]:
        """``n`` random configs (uniform per gene), reproducible for a given ``seed``."""
        return self.decode(self.random_vectors(n, np.random.default_rng(seed)))

    def canonical(self, vectors: np.ndarray) -> np.ndarray:
        """Normalise genes that cannot affect the network, so equal networks encode equally.

        Takes one ``(genes,)`` vector or an ``(n, genes)`` batch and returns the same shape.
        """
        batch, single = self._as_batch(vectors)
        out = self._canonical(batch.copy())
        return out[0] if single else out

    @abc.abstractmethod
    def _canonical(self, batch: np.ndarray) -> np.ndarray:
        """Canonicalise a validated ``(n, genes)`` batch (a copy the method may modify)."""

    @abc.abstractmethod
    def size(self) -> int:
        """Number of distinct subnetworks (distinct canonical encodings)."""

    def active_genes(self, vectors: np.ndarray) -> np.ndarray:
        """Boolean ``(n, genes)``: which genes can affect each network (all, unless overridden)."""
        return np.ones(self.check_vectors(vectors).shape, dtype=bool)

    def features(self, vectors: np.ndarray) -> np.ndarray:
        """Float ``(n, F)`` predictor features: one-hot of every *active* gene (inactive genes are all
        zero, so equivalent encodings get equal features), then the space's ``extra_features``."""
        batch = self.check_vectors(vectors)
        offsets = np.concatenate([[0], np.cumsum(self.cardinalities)[:-1]])
        onehot = np.zeros((len(batch), int(self.cardinalities.sum())), dtype=np.float32)
        rows, cols = np.nonzero(self.active_genes(batch))
        onehot[rows, offsets[cols] + batch[rows, cols]] = 1.0
        return np.hstack([onehot, self.extra_features(batch)])

    def extra_features(self, vectors: np.ndarray) -> np.ndarray:
        """Space-specific aggregate features (e.g. depth per stage), ``(n, k)``; none by default."""
        return np.zeros((len(vectors), 0), dtype=np.float32)

    def metric_table(self, vectors: np.ndarray) -> np.ndarray:
        """The task metric of each encoding from the space's table of trained networks (nan if absent)."""
        raise ConfigError(f"space {self.name!r} has no table of trained networks; its {self.metric.name} "
                          "must be measured on a trained supernet")

    # ------------------------------------------------------------------ costs
    def additive_cost(self, layer_value: Callable[[dict], float]) -> Callable[[np.ndarray], np.ndarray]:
        """A batch scorer for a cost that is a sum over the subnet's layers.

        ``layer_value(layer_attrs) -> float`` is called on graph node attribute dicts. The default
        sums over ``graph(config)`` per row; spaces whose layers depend on few genes override this
        with precomputed tables so a batch is scored with numpy indexing (lookup-table latency,
        analytic MACs). Each distinct layer is passed to ``layer_value`` when the scorer is built or
        first used, so a ``layer_value`` that raises for a missing layer fails early. Every scorer must
        range-check the genes it reads (``check_vectors``, or as it reads them): the lookup-table
        predictor relies on it.
        """

        def score(vectors: np.ndarray) -> np.ndarray:
            configs = self.decode(self.check_vectors(vectors))
            return np.array([sum(layer_value(a) for _, a in self.graph(c).nodes(data=True)) for c in configs])

        return score

    def cost(self, name: str, vectors: np.ndarray) -> np.ndarray:
        """The cost ``name`` (one of ``costs``) of every row of ``vectors``."""
        if name not in self.costs:
            raise ConfigError(f"space {self.name!r} has no cost {name!r}; it has {', '.join(self.costs)}")
        return getattr(self, name)(self.check_vectors(vectors))

    def macs(self, vectors: np.ndarray) -> np.ndarray:
        """Multiply-accumulates of one forward pass at batch size 1, per row: the sum of the ``macs``
        attributes of the graph's layers, through ``additive_cost`` (tables, where the space has them)."""
        return self._layer_sums["macs"](vectors)

    def params(self, vectors: np.ndarray) -> np.ndarray:
        """Parameters of the extracted network, per row: the sum of the layers' ``params`` attributes."""
        return self._layer_sums["params"](vectors)

    @cached_property
    def _layer_sums(self) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
        return {name: self.additive_cost(lambda layer, name=name: layer[name]) for name in ("macs", "params")}

    # ------------------------------------------------------------------ networks
    @abc.abstractmethod
    def graph(self, config: Config):
        """``networkx.DiGraph`` of the subnet's layers, each node with its op type and shapes."""

    @property
    @abc.abstractmethod
    def supernet(self):
        """The weight-sharing ``torch.nn.Module``."""

    @abc.abstractmethod
    def activate(self, config: Config) -> None:
        """Make the supernet's forward compute the subnet ``config``."""

    @abc.abstractmethod
    def extract(self, config: Config):
        """A standalone ``torch.nn.Module`` computing the subnet, with copied weights."""

    def build_layer(self, layer: dict[str, Any]):
        """A module computing one layer described by ``graph`` node attributes (for per-layer
        latency tables). Spaces whose layers cannot be built in isolation leave this out."""
        raise ConfigError(f"space {self.name!r} cannot build single layers; use a learned latency predictor")

    def layer_input(self, layer: dict[str, Any], batch: int = 1):
        """A valid input tensor for ``build_layer(layer)``."""
        raise ConfigError(f"space {self.name!r} cannot build single layers; use a learned latency predictor")

    @abc.abstractmethod
    def example_input(self, config: Config, batch: int = 1):
        """A valid input tensor for the subnet ``config``."""

    def input_size(self, config: Config) -> int | None:
        """The image side the subnet ``config`` takes (an elastic-resolution gene), or ``None`` when the
        network takes its data as stored. Trainers and evaluators resize each batch to it."""
        return None

    def recalibrate_bn(self, config: Config, batches: Iterable) -> None:
        """Re-estimate the subnet's BatchNorm statistics from ``batches`` of inputs.

        Reference semantics: per batch, the mean and biased variance over all but the channel
        dimension; averaged over batches weighted by batch size; no momentum. The statistics are
        written into the supernet's stored buffers for the channels the subnet uses, so call it
        before evaluating each subnet.
        """
        from search_spaces.ops.batchnorm import recalibrate_batchnorm

        self.activate(config)
        recalibrate_batchnorm(self.supernet, batches)

    # ------------------------------------------------------------------ helpers
    def describe(self) -> dict[str, Any]:
        """Summary for ``nas spaces show``: genes grouped by config key, size, metric, costs."""
        keys, start = [], 0
        for entry in self.config_layout:
            gene = self.genes[start]
            keys.append({"key": entry.key, "genes": entry.n_genes, "choices": list(gene.choices)})
            start += entry.n_genes
        return {
            "name": self.name,
            "options": self.options,
            "genes": self.n_genes,
            "config_keys": keys,
            "size": self.size(),
            "metric": f"{self.metric.name} ({self.metric.direction})",
            "costs": list(self.costs),
        }

    def _as_batch(self, vectors, check_range: bool = True) -> tuple[np.ndarray, bool]:
        arr = np.asarray(vectors)
        single = arr.ndim == 1
        if single:
            arr = arr[None, :]
        if arr.ndim != 2 or arr.shape[1] != self.n_genes:
            raise ConfigError(
                f"space {self.name!r} encodings have {self.n_genes} genes; got an array of shape {np.shape(vectors)}"
            )
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise ConfigError(f"encodings must be integer arrays; got dtype {arr.dtype}")
        arr = np.ascontiguousarray(arr, dtype=np.int64)
        if check_range:
            self.raise_if_out_of_range(arr, first_out_of_range(arr, self.cardinalities))
        return arr, single

    def raise_if_out_of_range(self, batch: np.ndarray, flat_index: int) -> None:
        """Raise the ``ConfigError`` for the gene at ``flat_index`` (from a kernel); -1 means all valid."""
        if flat_index < 0:
            return
        row, col = divmod(int(flat_index), self.n_genes)
        gene = self.genes[col]
        raise ConfigError(
            f"encoding row {row}: gene {gene.name!r} index {batch[row, col]} is outside 0..{len(gene.choices) - 1}"
        )

    def _encode_one(self, config: Config) -> np.ndarray:
        if not isinstance(config, dict):
            raise ConfigError(f"a {self.name} config must be a dict; got {type(config).__name__}")
        expected = [e.key for e in self.config_layout]
        unknown = sorted(set(config) - set(expected))
        missing = [k for k in expected if k not in config]
        if unknown or missing:
            parts = ([f"unknown keys {unknown}"] if unknown else []) + ([f"missing keys {missing}"] if missing else [])
            raise ConfigError(f"{self.name} config: {'; '.join(parts)} (expected keys {expected})")
        out, gene_iter = [], iter(self.genes)
        for entry in self.config_layout:
            values = self._values_of(config[entry.key], entry)
            out.extend(next(gene_iter).index_of(v) for v in values)
        return np.asarray(out, dtype=np.int64)

    def _values_of(self, value: Any, entry: LayoutEntry) -> list:
        if entry.length is None:
            if isinstance(value, (list, tuple)):
                raise ConfigError(f"{self.name} config key {entry.key!r} takes one value, got a list")
            return [value]
        if not isinstance(value, (list, tuple)) or len(value) != entry.length:
            got = f"{len(value)} values" if isinstance(value, (list, tuple)) else repr(value)
            raise ConfigError(f"{self.name} config key {entry.key!r} takes a list of {entry.length} values; got {got}")
        return list(value)

    def _decode_one(self, row: np.ndarray) -> Config:
        config, pos = {}, 0
        for entry in self.config_layout:
            values = [_plain(self.genes[pos + i].choices[int(row[pos + i])]) for i in range(entry.n_genes)]
            config[entry.key] = values[0] if entry.length is None else values
            pos += entry.n_genes
        return config


def _plain(value: Any) -> Any:
    """numpy scalars -> Python scalars, so configs serialise to JSON unchanged."""
    return value.item() if isinstance(value, np.generic) else value
