"""Per-layer latency lookup tables (ProxylessNAS / Once-for-All style).

A subnet's latency is predicted as the sum of its layers' latencies plus a constant overhead fitted on
a few measured whole networks. Layers are named by the space's ``graph`` node attributes through a
key format: ``nas`` (our own, any space that can ``build_layer``) or ``ofa`` (the reference
implementation's keys, so its published tables import unchanged). Prediction goes through the
space's ``additive_cost``: for OFA-MBv3 that is a per-(block, kernel, expand, resolution) table
indexed with numpy, so a batch of encodings costs a few array operations.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml

from predictors.base import Predictor, PredictorError, register

_IGNORED = {"macs", "params", "expand_ratio", "resolution", "name", "block"}


def nas_layer_key(layer: dict[str, Any]) -> str:
    """Every shape-defining attribute of the layer, sorted: equal keys mean identical layers."""
    return "|".join(f"{k}={layer[k]}" for k in sorted(layer) if k not in _IGNORED)


def ofa_layer_key(layer: dict[str, Any]) -> str:
    """The reference OFA ``LatencyTable`` key, prefixed by the network's resolution (one table per
    resolution): ``224:expanded_conv-input:56x56x32-output:28x28x48-expand:128-kernel:3-...``."""
    op, cin, cout = layer["op"], layer["in_channels"], layer["out_channels"]
    s, o = layer["in_size"], layer["out_size"]
    if op == "mbconv":
        name = (f"expanded_conv-input:{s}x{s}x{cin}-output:{o}x{o}x{cout}-expand:{layer['mid_channels']}"
                f"-kernel:{layer['kernel']}-stride:{layer['stride']}-idskip:{int(layer['idskip'])}"
                f"-se:{int(layer['se'])}-hs:{int(layer['act'] == 'h_swish')}")
    elif op == "conv":
        kind = "Conv" if cin == 3 else ("Conv_2" if s == 1 else "Conv_1")
        name = f"{kind}-input:{s}x{s}x{cin}-output:{o}x{o}x{cout}"
    elif op == "global_avg_pool":
        name = f"AvgPool2D-input:{s}x{s}x{cin}-output:1x1x{cout}"
    elif op == "linear":
        name = f"Logits-input:1x1x{cin}-output:{cout}"
    else:
        raise PredictorError(f"the ofa lookup-table format has no key for layer op {op!r}")
    return f"{layer['resolution']}:{name}"


KEY_FORMATS: dict[str, Callable[[dict[str, Any]], str]] = {"nas": nas_layer_key, "ofa": ofa_layer_key}


@register("lut")
class LookupTablePredictor(Predictor):
    """Sum of per-layer latencies from a table, plus a fitted constant overhead (``fit``)."""

    min_samples = 1
    checks_range = True            # predictions go through the space's additive-cost scorer, which checks

    def __init__(self, space, target, device=None, key_format: str = "nas"):
        if key_format not in KEY_FORMATS:
            raise PredictorError(f"unknown lookup-table key format {key_format!r}; known: {', '.join(KEY_FORMATS)}")
        super().__init__(space, target, device, key_format=key_format)
        self.key = KEY_FORMATS[key_format]
        self.entries: dict[str, tuple[float, float, int]] = {}
        self.overhead = 0.0
        self._scorer = None

    # ------------------------------------------------------------------ the table
    def set_entries(self, entries: dict[str, tuple[float, float, int]]) -> "LookupTablePredictor":
        """Use ``entries`` (key -> (mean ms, std ms, count)); checks that every layer of the space has one."""
        self.entries = dict(entries)
        self._scorer = self.space.additive_cost(self.layer_latency)
        return self

    def layer_latency(self, layer: dict[str, Any]) -> float:
        key = self.key(layer)
        try:
            return self.entries[key][0]
        except KeyError:
            raise PredictorError(f"the lookup table has no entry for layer {key!r} (first missing key); it was "
                                 f"built for another space, width or resolution list") from None

    def measure_entries(self, device, warmup: int = 5, runs: int = 10, rounds: int = 3,
                        on_layer: Callable[[str], None] | None = None) -> "LookupTablePredictor":
        """Measure every distinct layer of the space on ``device`` (``evaluators.devices.Device``), in
        interleaved rounds (``evaluators.measure``): each entry is the smallest per-round median."""
        from evaluators.measure import measure_models, robust_latency

        layers: dict[str, dict[str, Any]] = {}

        def collect(layer: dict[str, Any]) -> float:
            layers.setdefault(self.key(layer), layer)
            return 0.0

        self.space.additive_cost(collect)                 # visits every layer the space can contain
        keys = list(layers)
        models = [(self.space.build_layer(layers[k]), self.space.layer_input(layers[k])) for k in keys]
        medians = measure_models(models, device, warmup=warmup, runs=runs, rounds=rounds)
        latency = robust_latency(medians)
        entries = {k: (float(latency[i]), float(medians[i].std()), rounds * runs) for i, k in enumerate(keys)}
        if on_layer is not None:
            for k in keys:
                on_layer(k)
        self.fitted = True
        return self.set_entries(entries)

    @classmethod
    def from_ofa_tables(cls, space, directory: str | os.PathLike, device: str | None = None,
                        target: str = "latency_ms") -> "LookupTablePredictor":
        """Import OFA's published tables: one ``{R}_lookup_table.yaml`` per resolution in ``directory``."""
        directory = Path(directory)
        files = sorted(directory.glob("*_lookup_table.yaml"))
        if not files:
            raise PredictorError(f"{directory} holds no *_lookup_table.yaml files")
        entries = {}
        for path in files:
            resolution = path.name.split("_", 1)[0]
            try:
                table = yaml.safe_load(path.read_text())
                entries.update({f"{resolution}:{key}": (float(v["mean"]), float(v.get("std", 0.0)),
                                                        int(v.get("count", 0))) for key, v in table.items()})
            except (yaml.YAMLError, AttributeError, KeyError, TypeError, ValueError) as exc:
                raise PredictorError(f"{path} is not an OFA lookup table: {exc}") from None
        predictor = cls(space, target, device, key_format="ofa").set_entries(entries)
        predictor.fitted = True
        return predictor

    # ------------------------------------------------------------------ Predictor
    def layer_sum(self, vectors: np.ndarray) -> np.ndarray:
        if self._scorer is None:
            raise PredictorError("the lookup table is empty: measure or import it first")
        return self._scorer(vectors)

    def _fit(self, vectors: np.ndarray, values: np.ndarray) -> None:
        """Fit the constant overhead (framework cost between layers) on measured whole networks."""
        self.overhead = float(np.median(values - self.layer_sum(vectors)))

    def _predict(self, vectors: np.ndarray) -> tuple[np.ndarray, None]:
        return self.layer_sum(vectors) + self.overhead, None

    def arrays(self) -> dict[str, np.ndarray]:
        keys = sorted(self.entries)
        stats = np.array([self.entries[k] for k in keys], dtype=float).reshape(len(keys), 3)
        return {"keys": np.array(keys, dtype=str), "stats": stats, "overhead": np.array(self.overhead)}

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.overhead = float(arrays["overhead"])
        self.set_entries({str(k): (float(m), float(s), int(n)) for k, (m, s, n) in zip(arrays["keys"], arrays["stats"])})
