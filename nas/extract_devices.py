"""Serving a device list: one search for every device, then one subnet per (device, budget).

The device list is a device file (``evaluators/devices.py``) whose entries carry ``budgets_ms``.
``add_device_list`` makes a search serve it: one ``latency@DEVICE`` objective per listed device, the
budgets stored in the run. ``extract_for_devices`` then reads the run's evaluations (the archive) and,
for each (device, budget), takes the most accurate subnet (the space's task metric, as recorded by the
search) that meets the run's constraints and whose latency on the device meets the budget:

* the latency is the one the search recorded (measured, looked up or predicted); for a device the run
  did not search for, it is looked up or predicted now (a measured device must have been searched);
* where the device is measured here, the exported model is measured; when the measurement misses the
  budget the next candidate is tried (up to ``tries`` candidates), and the row says so;
* the subnet is written, all or nothing, to ``RUN/subnets/<device>/<budget>ms/`` (``nas.extract``:
  ONNX checked in ONNX Runtime, TorchScript, state_dict, ``config.json``, ``card.json``); spaces without
  weights (``nb201``) get the card and the architecture only.

A budget no candidate meets gives a row without a subnet, stating the smallest latency found; the
other rows are still written. Every input is checked before anything is written: a malformed device
file, an unknown device, a non-positive budget, a run without evaluations or an existing output
folder raise ``ConfigError`` and leave the run folder as it was.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from evaluators.devices import Device, DeviceTarget, get_device, read_device_list
from nas.errors import ConfigError
from nas.extract import ExportOptions, ExtractedSubnet, extract_evaluation, open_run
from nas.search import Search, SearchConfig, build_measures

#: Candidates whose exported model is measured, per (device, budget), before the row gives up.
TRIES = 5


def add_device_list(config: SearchConfig, path: str | os.PathLike) -> list[DeviceTarget]:
    """Make ``config`` serve the device list in ``path``: its devices join the registry, each device
    with budgets adds a ``latency@DEVICE`` objective (unless already one) and its budgets are stored. A
    file without budgets only defines devices."""
    targets = read_device_list(path)
    config.devices_file = str(Path(path).resolve())
    config.objectives += [f"latency@{t.name}" for t in targets if f"latency@{t.name}" not in config.objectives]
    config.device_budgets = {t.name: list(t.budgets_ms) for t in targets}
    return targets


@dataclass
class Row:
    """The outcome of one (device, budget): the subnet written, or why there is none."""

    device: str
    budget_ms: float
    evaluation: int | None = None
    metric: float | None = None
    test_metric: float | None = None
    predicted_ms: float | None = None
    measured_ms: float | None = None
    folder: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def met(self) -> bool:
        return self.folder is not None


def budget_folder(run: Path, device: str, budget_ms: float) -> Path:
    return run / "subnets" / device / f"{budget_ms:g}ms"


def extract_for_devices(run: str | Path, devices_file: str | os.PathLike | None = None,
                        options: ExportOptions | None = None, tries: int = TRIES) -> list[Row]:
    """One exported subnet per (device, budget) of the device list (see the module docstring).

    Args:
        run: a search run folder.
        devices_file: the device list; by default the one the run was searched with (``--devices``).
        options: export formats and measurement settings (``options.device`` is not used).
        tries: candidates measured per (device, budget) before the row is given up.

    Returns:
        One ``Row`` per (device, budget), in the order of the device list.

    Raises:
        ConfigError: bad input (nothing is written then).
    """
    options = options or ExportOptions()
    options.validate()
    if tries < 1:
        raise ConfigError(f"--tries must be a positive number; got {tries}")
    search = open_run(run)
    targets = _targets(search, devices_file)
    results = _usable_results(search)
    latencies = _latencies(search, results, targets, devices_file)
    for target in targets:
        for budget in target.budgets_ms:
            folder = budget_folder(search.store.path, target.name, budget)
            if folder.exists():
                raise ConfigError(f"{folder} exists; remove it (or the run's subnets/ folder) to extract again")
    extractor = _Extractor(search, options, tries)
    return [extractor.row(target, budget, results, latencies[target.name])
            for target in targets for budget in target.budgets_ms]


def _targets(search: Search, devices_file: str | os.PathLike | None) -> list[DeviceTarget]:
    if devices_file is not None:
        targets = read_device_list(devices_file)
        if not targets:
            raise ConfigError(f"device file {devices_file} lists no budgets: give each device to extract for "
                              "'budgets_ms: [...]'")
        return targets
    config = search.config
    if not config.device_budgets:
        raise ConfigError(f"{search.store.path} was not searched for a device list; pass --devices FILE "
                          "(a device file with budgets_ms)")
    return [DeviceTarget(get_device(name, config.devices_file), tuple(budgets))
            for name, budgets in config.device_budgets.items()]


def _usable_results(search: Search) -> list[dict[str, Any]]:
    """The run's successful evaluations that meet its constraints and record its task metric."""
    metric = search.space.metric.name
    results = search.store.results()
    if not results:
        raise ConfigError(f"{search.store.path} holds no evaluations: there is no archive to extract from "
                          "(run or resume the search first)")
    if not any(metric in e["values"] for e in results):
        raise ConfigError(f"the search in {search.store.path} did not record {metric!r}; a subnet per budget is "
                          f"the most accurate one: search with {metric} among the objectives")
    ok = [e for e in results if e["status"] == "ok" and e["values"].get(metric) is not None]
    return [e for e in ok if all(c.violation(_value(e, c.name)) <= 0 for c in search.constraints)]


def _latencies(search: Search, results: list[dict[str, Any]], targets: list[DeviceTarget],
               devices_file: str | os.PathLike | None) -> dict[str, np.ndarray]:
    """Latency (ms) of every result on every target: as recorded, else looked up or predicted now."""
    out = {t.name: np.array([_value(e, f"latency@{t.name}") for e in results]) for t in targets}
    missing = [t for t in targets if len(results) and np.isnan(out[t.name]).all()]
    measured = [t.name for t in missing if t.device.measurable]
    if measured:
        raise ConfigError(f"the search in {search.store.path} did not record latency@{measured[0]}, and "
                          f"{measured[0]} is measured: search again with this device list (--devices)")
    if missing:
        config = {**search.store.config, "objectives": [f"latency@{t.name}" for t in missing], "constraints": [],
                  "devices_file": str(Path(devices_file).resolve()) if devices_file else search.config.devices_file}
        measures = build_measures(config, search.store.path, search.space)
        vectors = np.array([e["vector"] for e in results], dtype=np.int64)
        for t in missing:
            out[t.name] = np.asarray(measures[f"latency@{t.name}"].evaluate(vectors), dtype=float)
    return out


class _Extractor:
    """Chooses, verifies and writes the subnet of each (device, budget); each evaluation is extracted
    (calibrated, tested) at most once and measured at most once per device."""

    def __init__(self, search: Search, options: ExportOptions, tries: int):
        self.search, self.options, self.tries = search, options, tries
        self.metric = search.space.metric
        self.subnets: dict[int, ExtractedSubnet] = {}
        self.measured: dict[tuple[int, str], dict[str, Any]] = {}

    def row(self, target: DeviceTarget, budget: float, results: list[dict[str, Any]],
            latencies: np.ndarray) -> Row:
        row = Row(target.name, budget)
        order = self._ranked(results, latencies)
        candidates = [i for i in order if latencies[i] <= budget]
        if not candidates:
            finite = latencies[np.isfinite(latencies)]
            smallest = f"{finite.min():.4g} ms" if len(finite) else "none"
            row.notes.append(f"no archived subnet meets {budget:g} ms on {target.name} (smallest latency found: "
                             f"{smallest})")
            return row
        for rank, i in enumerate(candidates):
            if rank == self.tries:
                row.notes.append(f"gave up after {self.tries} candidates whose measured latency missed the budget")
                return row
            event = results[i]
            subnet = self._subnet(event)
            latency = self._measure(subnet, event["n"], target.device)
            measured = latency.get("measured_ms")
            if measured is not None and measured > budget:
                row.notes.append(f"#{event['n']} measured {measured:.3f} ms > {budget:g} ms (predicted "
                                 f"{latencies[i]:.3f} ms): took the next candidate")
                continue
            self._write(row, target, subnet, event, latencies[i], latency, rank)
            return row
        row.notes.append(f"no candidate's measured latency meets {budget:g} ms on {target.name}")
        return row

    def _ranked(self, results: list[dict[str, Any]], latencies: np.ndarray) -> list[int]:
        """Indices by task metric (best first), then by latency, then by evaluation number."""
        sign = -1.0 if self.metric.direction == "max" else 1.0
        keys = [(sign * e["values"][self.metric.name], latencies[i] if np.isfinite(latencies[i]) else np.inf, e["n"])
                for i, e in enumerate(results)]
        return sorted(range(len(results)), key=keys.__getitem__)

    def _subnet(self, event: dict[str, Any]) -> ExtractedSubnet:
        if event["n"] not in self.subnets:
            self.subnets[event["n"]] = extract_evaluation(self.search, event, self.options)
        return self.subnets[event["n"]]

    def _measure(self, subnet: ExtractedSubnet, n: int, device: Device) -> dict[str, Any]:
        if subnet.model is None and device.measurable:
            return {"device": device.name, "measured_ms": None,
                    "note": "not measured: the subnet has no weights here (the architecture only)"}
        if (n, device.name) not in self.measured:
            self.measured[n, device.name] = subnet.measure(device, self.options)
        return self.measured[n, device.name]

    def _write(self, row: Row, target: DeviceTarget, subnet: ExtractedSubnet, event: dict[str, Any],
               predicted: float, latency: dict[str, Any], rank: int) -> None:
        config = self.search.config
        card = copy.deepcopy(subnet.card)
        card["target"] = {"device": target.name, "kind": target.device.kind, "budget_ms": row.budget_ms}
        card["latency"] = {**latency, "predicted_ms": float(predicted)}
        card["search"] = {"run": str(self.search.store.path), "space": config.space, "searcher": config.searcher,
                          "objectives": config.objectives, "constraints": config.constraints,
                          "evaluations": len(self.search.store.results())}
        card["selection"] = {"rank": rank + 1, "notes": list(row.notes)}
        if subnet.model is None:
            row.notes.append(subnet.card["note"])
        folder = budget_folder(self.search.store.path, target.name, row.budget_ms)
        subnet.write(folder, self.options.formats, card)
        row.evaluation, row.metric = event["n"], float(event["values"][self.metric.name])
        row.test_metric = card.get("test_accuracy")
        row.predicted_ms, row.measured_ms, row.folder = float(predicted), latency.get("measured_ms"), str(folder)


def _value(event: dict[str, Any], name: str) -> float:
    value = event["values"].get(name)
    return np.nan if value is None else float(value)
