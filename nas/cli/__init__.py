"""The ``nas`` command line. Each command group is a module that adds itself to ``app``."""

from __future__ import annotations

import sys

import typer

from nas.errors import NasError

app = typer.Typer(
    name="nas",
    help="Hardware-aware neural architecture search: supernets, latency predictors, search, extraction.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

from nas.cli import devices, extract, predictors, search, spaces, supernet, train  # noqa: E402,F401  (command groups register on import)


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors print one line on stderr and exit with code 2."""
    try:
        app(args=argv, prog_name="nas")
    except NasError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
