"""``nas predictors``: build latency predictors and read their quality reports."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from nas.cli import app
from nas.cli._common import DEVICES_HELP, OPTION_HELP, ProgressBars, console, parse_options
from nas.errors import NasError

predictors_app = typer.Typer(help="Build latency predictors and report their quality.", no_args_is_help=True)
app.add_typer(predictors_app, name="predictors")


@predictors_app.command("build")
def build(device: str = typer.Option(..., help="Device name (nas devices list)."),
          out: Path = typer.Option(..., "--out", help="Predictor file to write (.npz)."),
          space: str = typer.Option(None, help="Search space (lut/table devices fix their own)."),
          option: list[str] = typer.Option(None, "-o", "--option", help=OPTION_HELP),
          kind: str = typer.Option("lut", help="lut, ridge, gbdt, rf, mlp or ensemble."),
          samples: int = typer.Option(100, help="Subnets measured (or looked up) to fit and report on."),
          seed: int = typer.Option(0), warmup: int = typer.Option(5),
          runs: int = typer.Option(10, help="Timed runs per round (3 interleaved rounds; the smallest round median counts)."),
          devices: Path = typer.Option(None, "--devices", help=DEVICES_HELP),
          supernet: Path = typer.Option(None, help="Take the space and its options from this supernet checkpoint."),
          force: bool = typer.Option(False, help="Overwrite --out if it exists.")) -> None:
    """Measure what is needed on DEVICE, fit a latency predictor, print and store its quality report."""
    import predictors
    from evaluators.devices import get_device
    from predictors.build import build_latency_predictor, space_for_device

    if out.exists() and not force:
        raise NasError(f"{out} exists; choose another --out or pass --force")
    if kind not in predictors.kinds():
        raise NasError(f"unknown predictor kind {kind!r}; known kinds: {', '.join(predictors.kinds())}")
    target = get_device(device, devices)
    options = parse_options(option)
    if supernet is not None:
        from search_spaces.checkpoint import load_supernet

        trained = load_supernet(supernet, expect_space=space)
        space, options = trained.name, {**trained.options, **options}
    search_space = space_for_device(target, space, options)
    with ProgressBars() as bars:
        predictor = build_latency_predictor(search_space, target, kind, samples, seed, warmup, runs, bars)
    predictor.save(out)
    console.print(f"{kind} latency predictor for {search_space.name} on {device} -> {out}")
    console.print(f"held-out quality: {predictor.report_line()}")


@predictors_app.command("report")
def report(path: Path, as_json: bool = typer.Option(False, "--json")) -> None:
    """What a predictor file predicts and how well it did on held-out data."""
    from predictors import read_meta
    from predictors.metrics import format_report

    meta, _ = read_meta(path)
    if as_json:
        print(json.dumps(meta))
        return
    console.print(f"{path}: {meta['kind']} predictor of {meta['target']} on device {meta['device']} for "
                  f"{meta['space']} {meta['space_options']}, trained on {meta['n_train']} samples")
    console.print("held-out quality: " + (format_report(meta["report"]) if meta["report"]
                                          else "none (an imported table: no held-out measurements here)"))
