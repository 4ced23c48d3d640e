"""The device registry: where a ``latency@DEVICE`` number comes from.

A device says how its latency is obtained:

* ``measured``: run here by a backend (``torch`` eager on CPU/CUDA, ``onnxruntime``), with a stated
  thread count, batch size and clock (``evaluators.latency``: single-threaded CPU runs are timed by
  the thread's CPU time unless ``clock: wall``);
* ``lut``: predicted from an imported per-layer lookup table (e.g. OFA's Note10 tables) for one space;
* ``table``: looked up in a table of measured architectures (e.g. NAS-Bench-201 × HW-NAS-Bench) of a
  tabular space.

Built-ins: ``cpu`` (torch, 1 thread), ``cpu-ort`` (ONNX Runtime, 1 thread), ``cuda``/``cuda:N`` when
torch sees a GPU, ``note10`` (OFA's Note10 tables, OFA-MBv3 w1.2), and one ``table`` device per latency
column of every tabular space (``pixel3``, ``raspi4``, ... of ``nb201``).

One YAML format, the *device file*, both defines devices and lists the devices a product ships to.
Each entry of its ``devices:`` list has a ``name`` and

* a ``kind`` (with that kind's fields): it **defines** a device, adding to or overriding the built-ins;
* ``budgets_ms`` (positive latency budgets): it **targets** the device (a built-in, or one defined in the
  file), which makes it part of the *device list*: ``nas search --devices`` adds one ``latency@NAME``
  objective per target, ``nas extract --devices`` exports one subnet per (target, budget);

or both. An entry with neither is an error. ::

    devices:
      - name: cpu                  # a built-in, targeted
        budgets_ms: [5, 10]
      - name: cpu-2t               # defined here, and targeted
        kind: measured
        backend: torch
        threads: 2
        budgets_ms: [4]
      - name: mylut                # defined here only (usable as latency@mylut)
        kind: lut
        lut: path/to/tables        # a folder of {R}_lookup_table.yaml files (relative to this file)
        lut_format: ofa
        space: ofa_mbv3
        space_options: {width_mult: 1.2, resolutions: [160, 176, 192, 208, 224]}
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from evaluators.latency import resolve_clock
from nas.errors import ConfigError, UnknownNameError

KINDS = ("measured", "lut", "table")
NOTE10_TABLES = Path(__file__).resolve().parents[1] / "predictors" / "data" / "ofa_note10"


@dataclass(frozen=True)
class Device:
    """One target device and how its latency is obtained."""

    name: str
    kind: str
    description: str = ""
    backend: str | None = None
    torch_device: str = "cpu"
    threads: int = 1
    batch: int = 1
    lut: str | None = None
    lut_format: str | None = None
    space: str | None = None
    space_options: dict[str, Any] = field(default_factory=dict)
    column: str | None = None
    #: How a measured CPU run is timed: ``wall``, ``thread`` (the measuring thread's CPU time, immune to
    #: other processes on a shared machine; one thread only) or ``auto`` (``thread`` for one CPU thread).
    clock: str = "auto"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"device {self.name!r}: kind must be one of {', '.join(KINDS)}; got {self.kind!r}")
        required = {"measured": ("backend",), "lut": ("lut", "lut_format", "space"), "table": ("space", "column")}
        missing = [k for k in required[self.kind] if getattr(self, k) in (None, "")]
        if missing:
            raise ConfigError(f"device {self.name!r} of kind {self.kind} needs {', '.join(missing)}")
        if self.threads < 1 or self.batch < 1:
            raise ConfigError(f"device {self.name!r}: threads and batch must be >= 1")
        if self.kind == "measured":
            try:
                resolve_clock(self.clock, self.threads, on_cpu=not self.torch_device.startswith("cuda"))
            except ConfigError as exc:
                raise ConfigError(f"device {self.name!r}: {exc}") from None

    @property
    def measurable(self) -> bool:
        """Whether latency can be measured on this machine (rather than predicted or looked up)."""
        return self.kind == "measured"

    def measure(self, model, example_input, *, warmup: int = 10, runs: int = 50):
        """Measure ``model`` on this device (batch from the device, input replicated to it)."""
        from evaluators.backends import get_backend

        if not self.measurable:
            raise ConfigError(f"device {self.name!r} is a {self.kind} device; its latency cannot be measured here")
        x = example_input[:1].expand(self.batch, *example_input.shape[1:]).contiguous()
        return get_backend(self.backend)(model, x, threads=self.threads, warmup=warmup, runs=runs,
                                         device=self.torch_device, clock=self.clock)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, {}, "")}


def builtin_devices() -> dict[str, Device]:
    devices = [
        Device("cpu", "measured", "torch eager on this machine's CPU, 1 thread, batch 1", backend="torch"),
        Device("cpu-ort", "measured", "ONNX Runtime CPU on this machine, 1 thread, batch 1", backend="onnxruntime"),
        Device("note10", "lut", "Samsung Note10 (OFA's published per-layer tables; OFA-MBv3 width 1.2)",
               lut=str(NOTE10_TABLES), lut_format="ofa", space="ofa_mbv3",
               space_options={"width_mult": 1.2, "resolutions": list(range(160, 225, 4))}),
    ]
    devices += _cuda_devices() + _table_devices()
    return {d.name: d for d in devices}


def _cuda_devices() -> list[Device]:
    import torch

    if not torch.cuda.is_available():
        return []
    out = [Device("cuda", "measured", f"torch eager on {torch.cuda.get_device_name(0)}", backend="torch",
                  torch_device="cuda")]
    out += [Device(f"cuda:{i}", "measured", f"torch eager on {torch.cuda.get_device_name(i)}", backend="torch",
                   torch_device=f"cuda:{i}") for i in range(torch.cuda.device_count())]
    return out


def _table_devices() -> list[Device]:
    """A ``table`` device per latency column of each registered space that has a table of measurements."""
    import search_spaces

    out = []
    for name in search_spaces.names():
        cls = search_spaces.space_class(name)
        if hasattr(cls, "table_devices"):
            for device, column in search_spaces.get(name).table_devices().items():
                out.append(Device(device, "table", f"{column} of the {name} table", space=name, column=column))
    return out


def load_devices(path: str | os.PathLike | None = None) -> dict[str, Device]:
    """Built-in devices, plus (overriding by name) those defined in the YAML file ``path``."""
    devices = builtin_devices()
    if path is not None:
        for entry in read_device_entries(path):
            if "kind" in entry:
                devices[entry["name"]] = _device_from_entry(entry, path)
    return devices


def read_device_entries(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The ``devices:`` list of a device file, each entry a dict with a ``name`` and a ``kind`` (a
    definition), ``budgets_ms`` (a target), or both."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"device file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"device file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    entries = data.get("devices") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"device file {path} must hold a non-empty list under 'devices:'")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ConfigError(f"device file {path}: entry {i} must be a mapping with a 'name'")
        if "kind" not in entry and "budgets_ms" not in entry:
            raise ConfigError(f"device file {path}: device {entry['name']!r} needs a 'kind' (to define it) or "
                              "'budgets_ms' (to target it), or both")
    return entries


def _device_from_entry(entry: dict[str, Any], path: str | os.PathLike) -> Device:
    known = {f.name for f in fields(Device)}
    unknown = sorted(set(entry) - known - {"budgets_ms"})
    if unknown:
        raise ConfigError(f"device file {path}: device {entry['name']!r} has unknown keys {unknown}")
    values = {k: v for k, v in entry.items() if k in known}
    if values.get("lut") and not os.path.isabs(values["lut"]):
        values["lut"] = str((Path(path).parent / values["lut"]).resolve())
    return Device(**values)


def get_device(name: str, path: str | os.PathLike | None = None) -> Device:
    devices = load_devices(path)
    if name not in devices:
        raise UnknownNameError(f"unknown device {name!r}; known devices: {', '.join(sorted(devices))}")
    return devices[name]


@dataclass(frozen=True)
class DeviceTarget:
    """A device of a device list and its latency budgets (ms, ascending)."""

    device: Device
    budgets_ms: tuple[float, ...]

    @property
    def name(self) -> str:
        return self.device.name


def read_device_list(path: str | os.PathLike) -> list[DeviceTarget]:
    """The targets of the device file ``path``: every entry with ``budgets_ms``, in file order (none
    for a file that only defines devices).

    Raises:
        ConfigError: the file is malformed, lists a device twice, or a budget is not a positive number;
            ``UnknownNameError`` for a device neither built in nor defined in it.
    """
    devices = load_devices(path)
    targets: dict[str, DeviceTarget] = {}
    for entry in read_device_entries(path):
        if "budgets_ms" not in entry:
            continue
        name = entry["name"]
        if name in targets:
            raise ConfigError(f"device file {path}: device {name!r} is listed with budgets twice; merge its budgets_ms")
        if name not in devices:
            raise UnknownNameError(f"device file {path}: unknown device {name!r}; define it with a 'kind' or use one "
                                   f"of {', '.join(sorted(devices))}")
        targets[name] = DeviceTarget(devices[name], _budgets(entry["budgets_ms"], name, path))
    return list(targets.values())


def _budgets(value: Any, name: str, path: str | os.PathLike) -> tuple[float, ...]:
    values = value if isinstance(value, list) else [value]
    good = values and all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < float("inf")
                          for v in values)
    if not good:
        raise ConfigError(f"device file {path}: budgets_ms of {name!r} must be positive numbers of milliseconds "
                          f"(e.g. [5, 10]); got {value!r}")
    if len(set(values)) != len(values):
        raise ConfigError(f"device file {path}: budgets_ms of {name!r} lists a budget twice: {value!r}")
    return tuple(sorted(float(v) for v in values))
