"""Extracting an archived subnet as a standalone model: exported, measured, tested, with a card.

``export_subnet(run, n)`` takes evaluation ``n`` of a search run (the best feasible one by default),
re-calibrates its BatchNorm statistics on training data (weight-sharing supernets), extracts it with
copied weights, and writes into ``RUN/subnets/n<N>/`` (or ``out``), all or nothing:

* ``model.onnx`` (checked against the torch outputs in ONNX Runtime), ``model.ts`` (TorchScript),
  ``state_dict.pt`` — the formats asked for — and ``config.json`` (the architecture);
* ``card.json``: the config, the search values (predicted or looked-up latency), the latency measured
  here on ``device`` with its spread, the test accuracy, MACs, params, and where it came from.

Spaces without weights (``nb201``) get the card and the architecture only. ``nas extract``
(``nas.extract_devices``) builds on the same pieces: ``open_run``, ``extract_evaluation``, and the
``ExtractedSubnet``'s ``measure`` and ``write``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nas.atomic import atomic_write_bytes
from nas.errors import ConfigError, NasError
from nas.runs import RunStore
from nas.search import Search, SearchConfig

FORMATS = ("onnx", "torchscript", "state_dict")
ONNX_TOLERANCE = 1e-4


@dataclass
class ExportOptions:
    formats: tuple[str, ...] = FORMATS
    device: str = "cpu"
    devices_file: str | None = None
    #: Timed runs per round and rounds of the latency measurement (smallest round median reported).
    runs: int = 30
    rounds: int = 3
    calib_images: int = 500

    def validate(self) -> None:
        unknown = sorted(set(self.formats) - set(FORMATS))
        if unknown:
            raise ConfigError(f"unknown export formats {unknown}; use some of {', '.join(FORMATS)}")


def pick_evaluation(search: Search, n: int | None) -> dict[str, Any]:
    """Evaluation ``n`` of the run, or its best feasible one; a clear error if there is none."""
    store = search.store
    results = store.results()
    if not results:
        raise ConfigError(f"{store.path} holds no evaluations yet; run or resume the search first")
    if n is None:
        n = search.archive().get("best")
        if n is None:
            raise ConfigError(f"{store.path} has no subnet meeting its constraints; pass --n to export another")
    by_n = {e["n"]: e for e in results}
    if n not in by_n:
        raise ConfigError(f"{store.path} has no evaluation #{n} (it has 1..{len(results)})")
    if by_n[n]["status"] != "ok":
        raise ConfigError(f"evaluation #{n} of {store.path} failed ({by_n[n]['error']}); choose another")
    return by_n[n]


def export_subnet(run: str | Path, n: int | None = None, out: str | Path | None = None,
                  options: ExportOptions | None = None) -> dict[str, Any]:
    """Export evaluation ``n`` (default: the best feasible) of ``run``; returns its card."""
    from evaluators.devices import get_device

    options = options or ExportOptions()
    options.validate()
    search = open_run(run)
    event = pick_evaluation(search, n)
    out = Path(out) if out is not None else search.store.path / "subnets" / f"n{event['n']}"
    refuse_non_empty(out)
    device = get_device(options.device, options.devices_file)
    subnet = extract_evaluation(search, event, options)
    if subnet.model is not None:
        subnet.card["latency"] = subnet.measure(device, options)
    subnet.write(out, options.formats, subnet.card)
    return subnet.card


def open_run(run: str | Path) -> Search:
    """The search of the run folder ``run``, opened read-only (nothing in it is written)."""
    store = RunStore.open(run, write=False)
    return Search(store.config, store)


def refuse_non_empty(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} exists and is not empty; choose another --out or remove it")


@dataclass
class ExtractedSubnet:
    """An evaluation of a run made standalone: its card and, for spaces with trained weights, the
    extracted model (BatchNorm re-calibrated) and an example input; ``model`` is ``None`` otherwise."""

    card: dict[str, Any]
    model: torch.nn.Module | None
    example: torch.Tensor | None

    def measure(self, device, options: ExportOptions) -> dict[str, Any]:
        """Latency of the model on ``device`` (a ``Device``): smallest round median and the spread."""
        from evaluators.measure import measure_models

        if not device.measurable:
            return {"device": device.name, "measured_ms": None, "note": f"{device.kind} device: not measurable here"}
        medians = measure_models([(self.model, self.example)], device, runs=options.runs, rounds=options.rounds)[0]
        return {"device": device.name, "measured_ms": float(medians.min()),
                "round_medians_ms": medians.round(4).tolist(),
                "spread": float((medians.max() - medians.min()) / medians.min()), "threads": device.threads,
                "batch": device.batch}

    def write(self, out: Path, formats: tuple[str, ...], card: dict[str, Any]) -> None:
        """Write the formats (the architecture only without a model) and ``card`` into ``out``, all or
        nothing: everything goes to a temporary sibling folder first, renamed to ``out`` when complete."""
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            files = {"config": str(out / "config.json")}
            _write_json(staging / "config.json", card["config"])
            if self.model is not None:
                files.update(_write_formats(self.model, self.example, card["config"], staging, formats))
            card["files"] = {name: str(out / Path(path).name) for name, path in files.items()}
            _write_json(staging / "card.json", card)
            os.replace(staging, out)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def extract_evaluation(search: Search, event: dict[str, Any], options: ExportOptions) -> ExtractedSubnet:
    """Evaluation ``event`` of ``search`` as a standalone subnet with its card (test accuracy included)."""
    config, space = search.config, search.space
    subnet = event["config"]
    vector = space.encode(subnet)[None, :]
    card: dict[str, Any] = {
        "run": str(search.store.path), "evaluation": event["n"], "space": space.name,
        "space_options": space.options, "config": subnet, "search_values": event["values"],
        "macs": int(space.macs(vector)[0]), "params": int(space.params(vector)[0]), "supernet": config.supernet,
        "supernet_sha256": config.supernet_sha256, "files": {},
    }
    if config.supernet is None:
        card["note"] = f"{space.name} subnets have no trained weights here: the card and architecture only"
        return ExtractedSubnet(card, None, None)
    model, test = _calibrated_model(space, config, subnet, options)
    card["test_accuracy"] = test.model_accuracy(model, space.input_size(subnet))
    return ExtractedSubnet(card, model, space.example_input(subnet))


def _calibrated_model(space, config: SearchConfig, subnet: dict, options: ExportOptions):
    """The subnet extracted after re-estimating its BatchNorm statistics on training images."""
    from evaluators.accuracy import SubnetAccuracy, data_for

    if config.data is None:
        raise ConfigError(f"the search does not say which data {config.supernet} was trained on")
    data = data_for(space, config.data, config.supernet)
    evaluator = SubnetAccuracy(space, data, "test", calib_images=options.calib_images)
    space.recalibrate_bn(subnet, evaluator.calibration_batches(space.input_size(subnet)))
    return space.extract(subnet).eval(), evaluator


def _write_formats(model: torch.nn.Module, x: torch.Tensor, subnet: dict, out: Path,
                   formats: tuple[str, ...]) -> dict[str, str]:
    files = {}
    for name in formats:
        files[name] = str(_WRITERS[name](model, x, subnet, out))
    return files


def _write_onnx(model, x, subnet, out: Path) -> Path:
    from evaluators.backends import export_onnx, ort_session

    path = out / "model.onnx"
    export_onnx(model, x, str(path))
    with torch.no_grad():
        expected = model(x).numpy()
    got = ort_session(str(path)).run(None, {"x": x.numpy()})[0]
    error = float(np.abs(got - expected).max())
    if error > ONNX_TOLERANCE * max(1.0, float(np.abs(expected).max())):
        path.unlink()
        raise NasError(f"the ONNX export differs from torch by {error:.3g}; not written")
    return path


def _write_torchscript(model, x, subnet, out: Path) -> Path:
    path = out / "model.ts"
    with torch.no_grad():
        traced = torch.jit.trace(model, x)
    traced.save(str(path))
    return path


def _write_state_dict(model, x, subnet, out: Path) -> Path:
    from search_spaces.checkpoint import atomic_torch_save

    path = out / "state_dict.pt"
    atomic_torch_save(model.state_dict(), path)      # with config.json, written for every format
    return path


_WRITERS = {"onnx": _write_onnx, "torchscript": _write_torchscript, "state_dict": _write_state_dict}


def _write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, json.dumps(data, indent=2).encode())
