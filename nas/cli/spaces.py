"""``nas spaces``: list, inspect and profile the registered search spaces."""

from __future__ import annotations

import json

import numpy as np
import typer
from rich.table import Table

import search_spaces
from nas.cli import app
from nas.cli._common import OPTION_HELP, console, parse_options

spaces_app = typer.Typer(help="List, inspect and profile search spaces.", no_args_is_help=True)
app.add_typer(spaces_app, name="spaces")


@spaces_app.command("list")
def list_spaces() -> None:
    """Names of the registered search spaces with their size."""
    table = Table("space", "genes", "subnets", "metric", "costs")
    for name in search_spaces.names():
        space = search_spaces.get(name)
        table.add_row(name, str(space.n_genes), f"{space.size():.3g}", space.metric.name, ", ".join(space.costs))
    console.print(table)


@spaces_app.command("show")
def show_space(name: str, option: list[str] = typer.Option(None, "-o", "--option", help=OPTION_HELP),
               as_json: bool = typer.Option(False, "--json", help="Print one JSON object.")) -> None:
    """Genes, their choices and the size of the space NAME."""
    info = search_spaces.get(name, **parse_options(option)).describe()
    if as_json:
        print(json.dumps(info, default=str))
        return
    console.print(f"[bold]{info['name']}[/bold]: {info['genes']} genes, {info['size']:,} distinct subnets")
    console.print(f"metric: {info['metric']}; costs: {', '.join(info['costs'])}")
    console.print(f"options: {info['options']}")
    table = Table("config key", "genes", "choices")
    for entry in info["config_keys"]:
        table.add_row(entry["key"], str(entry["genes"]), str(entry["choices"]))
    console.print(table)
    if "channels" in info:
        console.print(f"channels: {info['channels']}")
    if "note" in info:
        console.print(f"note: {info['note']}")


@spaces_app.command("profile")
def profile_space(name: str, samples: int = typer.Option(8, help="Number of random subnets."),
                  seed: int = typer.Option(0, help="Sampling seed."),
                  option: list[str] = typer.Option(None, "-o", "--option", help=OPTION_HELP),
                  threads: int = typer.Option(1, help="Intra-op threads for timing (1 is stable on shared CPUs)."),
                  runs: int = typer.Option(30, help="Timed runs per subnet (after 10 warm-up runs).")) -> None:
    """Sample subnets of NAME, extract each, and print MACs, params and latency measured on this CPU."""
    from evaluators.latency import measure_latency

    if samples < 1 or runs < 1 or threads < 1:
        raise search_spaces.base.ConfigError("--samples, --runs and --threads must be positive")
    space = search_spaces.get(name, **parse_options(option))
    configs = space.sample(samples, seed)
    vectors = space.encode(configs)
    macs, params = space.macs(vectors), space.params(vectors)
    table = Table("#", "subnet", "MACs (M)", "params (M)", "latency ms (median)", "spread p10-p90")
    with console.status(f"extracting and timing {samples} subnets of {name} on {threads} thread(s)"):
        for i, config in enumerate(configs):
            model = space.extract(config)
            stats = measure_latency(model, space.example_input(config), runs=runs, threads=threads)
            table.add_row(str(i), _summary(config), f"{macs[i] / 1e6:.1f}", f"{params[i] / 1e6:.2f}",
                          f"{stats.median_ms:.2f}", f"{stats.p10_ms:.2f}-{stats.p90_ms:.2f}")
    console.print(table)
    console.print(f"space size {space.size():.3g}; MACs/params analytic; latency: batch 1, {threads} thread(s), "
                  f"median of {runs} runs after 10 warm-up")


def _summary(config: dict) -> str:
    """A one-line description of a config: scalars as they are, lists by their mean."""
    parts = []
    for key, value in config.items():
        parts.append(f"{key}={value}" if not isinstance(value, list) or len(value) <= 6
                     else f"{key}~{np.mean(value):.1f}")
    return " ".join(parts)
