"""``nas supernet``: import and inspect supernet checkpoints."""

from __future__ import annotations

from pathlib import Path

import typer

from nas.cli import app
from nas.cli._common import OPTION_HELP, console, parse_options
from nas.errors import NasError

supernet_app = typer.Typer(help="Import and inspect supernet checkpoints.", no_args_is_help=True)
import_app = typer.Typer(help="Import a checkpoint made by another implementation.", no_args_is_help=True)
supernet_app.add_typer(import_app, name="import")
app.add_typer(supernet_app, name="supernet")


@import_app.command("ofa")
def import_ofa(path: Path, out: Path = typer.Option(..., "--out", help="Where to write the nas checkpoint."),
               option: list[str] = typer.Option(None, "-o", "--option", help=OPTION_HELP),
               force: bool = typer.Option(False, help="Overwrite --out if it exists.")) -> None:
    """Import a reference Once-for-All MobileNetV3 checkpoint (raw state_dict or under 'state_dict')."""
    from search_spaces.checkpoint import save_supernet
    from search_spaces.ofa_import import import_ofa_checkpoint

    if out.exists() and not force:
        raise NasError(f"{out} exists; choose another --out or pass --force")
    space = import_ofa_checkpoint(path, **parse_options(option))
    save_supernet(space, out, meta={"imported_from": str(path)})
    console.print(f"imported {path} as ofa_mbv3 {space.options} -> {out}")


@supernet_app.command("show")
def show(path: Path) -> None:
    """The space, options and size of a nas supernet checkpoint."""
    from search_spaces.checkpoint import load_supernet

    space = load_supernet(path)
    params = sum(p.numel() for p in space.supernet.parameters())
    console.print(f"{path}: space {space.name}, {params / 1e6:.2f} M parameters, options {space.options}")
