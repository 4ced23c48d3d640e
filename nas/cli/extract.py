"""``nas export``: one archived subnet as a standalone, measured, tested model."""

from __future__ import annotations

import json
from pathlib import Path

import typer

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
