"""``nas export`` (one archived subnet) and ``nas extract`` (one per device and budget of a device
list) as standalone, measured, tested models."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.table import Table

from nas.cli import app
from nas.cli._common import DEVICES_HELP, console


@app.command("export")
def export(run: Path,
           n: int = typer.Option(None, "--n", help="Evaluation number (nas report); default: the best feasible."),
           out: Path = typer.Option(None, help="Folder to write (default RUN/subnets/n<N>)."),
           formats: str = typer.Option("onnx,torchscript,state_dict", help="Comma-separated export formats."),
           device: str = typer.Option("cpu", help="Measured device to time the exported model on."),
           devices: Path = typer.Option(None, "--devices", help=DEVICES_HELP)) -> None:
    """Extract a subnet of the search in RUN: export it, measure it, test it, write its card."""
    from nas.extract import ExportOptions, export_subnet

    options = ExportOptions(formats=tuple(f.strip() for f in formats.split(",") if f.strip()), device=device,
                            devices_file=str(devices.resolve()) if devices else None)
    card = export_subnet(run, n, out, options)
    print_card(card)


def print_card(card: dict) -> None:
    values = card["search_values"]
    console.print(f"subnet #{card['evaluation']} of {card['run']}: {json.dumps(card['config'], separators=(',', ':'))}")
    console.print(f"  MACs {card['macs'] / 1e6:.3f} M, params {card['params'] / 1e6:.3f} M")
    if "test_accuracy" in card:
        val = values.get("accuracy")
        val_text = f" (validation {val:.2f} % in the search)" if val is not None else ""
        console.print(f"  test accuracy {card['test_accuracy']:.2f} %{val_text}")
    latency = card.get("latency") or {}
    if latency.get("measured_ms") is not None:
        searched = values.get(f"latency@{latency['device']}")
        searched_text = f", predicted in the search {searched:.3f} ms" if searched is not None else ""
        console.print(f"  latency on {latency['device']}: measured {latency['measured_ms']:.3f} ms "
                      f"(spread {100 * latency['spread']:.1f} % over {len(latency['round_medians_ms'])} rounds)"
                      f"{searched_text}")
    if card.get("note"):
        console.print(f"  {card['note']}")
    for name, path in card["files"].items():
        console.print(f"  {name}: {path}")


@app.command("extract")
def extract(run: Path,
            devices: Path = typer.Option(None, "--devices", help="Device list: a device file with budgets_ms "
                                         "(default: the one the search was run with)."),
            formats: str = typer.Option("onnx,torchscript,state_dict", help="Comma-separated export formats."),
            strict: bool = typer.Option(False, "--strict", help="Exit with code 2 when a budget gets no subnet."),
            tries: int = typer.Option(5, help="Candidates measured per budget on a measured device before giving up."),
            ) -> None:
    """One subnet per (device, budget) of a device list from the search in RUN: exported, measured, tested."""
    from nas.extract import ExportOptions
    from nas.extract_devices import extract_for_devices

    options = ExportOptions(formats=tuple(f.strip() for f in formats.split(",") if f.strip()))
    rows = extract_for_devices(run, devices, options, tries)
    console.print(_summary(rows, run / "subnets"))
    for note, where in _notes(rows).items():
        console.print(f"{', '.join(where)}: {note}")
    unmet = [r for r in rows if not r.met]
    if unmet:
        listed = ", ".join(f"{r.device} {r.budget_ms:g} ms" for r in unmet)
        print(f"warning: {len(unmet)} of {len(rows)} budgets got no subnet ({listed})", file=sys.stderr)
        if strict:
            raise typer.Exit(code=2)


def _summary(rows, subnets: Path) -> Table:
    table = Table("device", "budget ms", "subnet", "val acc", "test acc", "search ms", "measured ms", "folder",
                  title=f"one subnet per (device, budget), under {subnets}")
    for r in rows:
        folder = str(Path(r.folder).relative_to(subnets)) if r.met else "-"
        table.add_row(r.device, f"{r.budget_ms:g}", f"#{r.evaluation}" if r.met else "-", _number(r.metric),
                      _number(r.test_metric), _number(r.predicted_ms, ".3f"), _number(r.measured_ms, ".3f"), folder)
    return table


def _notes(rows) -> dict[str, list[str]]:
    """Each distinct note and the (device, budget) rows it concerns."""
    out: dict[str, list[str]] = {}
    for row in rows:
        for note in row.notes:
            out.setdefault(note, []).append(f"{row.device} {row.budget_ms:g} ms")
    return out


def _number(value: float | None, fmt: str = ".2f") -> str:
    return "-" if value is None else format(value, fmt)
