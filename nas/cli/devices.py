"""``nas devices``: the devices latency can come from."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from nas.cli import app
from nas.cli._common import DEVICES_HELP, console

devices_app = typer.Typer(help="List and inspect devices.", no_args_is_help=True)
app.add_typer(devices_app, name="devices")


@devices_app.command("list")
def list_devices(devices: Path = typer.Option(None, "--devices", help=DEVICES_HELP)) -> None:
    """Every known device: built-ins and those in --devices."""
    from evaluators.devices import load_devices

    table = Table("device", "kind", "space", "description")
    for name, device in sorted(load_devices(devices).items()):
        table.add_row(name, device.kind, device.space or "any", device.description)
    console.print(table)


@devices_app.command("show")
def show_device(name: str, devices: Path = typer.Option(None, "--devices", help=DEVICES_HELP)) -> None:
    """How latency on device NAME is obtained."""
    from evaluators.devices import get_device

    print(json.dumps(get_device(name, devices).to_dict(), indent=2))
