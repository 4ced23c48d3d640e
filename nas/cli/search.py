"""``nas search``, ``nas resume``, ``nas report``: the product's core job."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from nas.cli import app
from nas.cli._common import DEVICES_HELP, OPTION_HELP, console, parse_options
from nas.errors import ConfigError


def _latency_predictors(pairs: list[str] | None) -> dict[str, str]:
    out = {}
    for pair in pairs or []:
        device, sep, path = pair.partition("=")
        if not sep or not device or not path:
            raise ConfigError(f"--latency-predictor {pair!r} is not DEVICE=FILE")
        out[device] = str(Path(path).resolve())
    return out


RayAddress = Annotated[str | None, typer.Option(
    "--ray", help="Evaluate on Ray workers: local (a Ray instance for this search), auto (the running cluster) "
                  "or HOST:PORT.")]
RayWorkers = Annotated[int | None, typer.Option(help="Ray workers (default: as many as the cluster holds).")]
RayCpus = Annotated[float | None, typer.Option(help="CPUs of each Ray worker (default 1).")]
RayGpus = Annotated[float | None, typer.Option(help="GPUs of each Ray worker (default 0).")]
RayRetries = Annotated[int | None, typer.Option(help="Re-issues of a candidate whose Ray worker died (default 2).")]


def _executor(ray: str | None, workers: int | None, cpus_per_eval: float | None, gpus_per_eval: float | None,
              retries: int | None):
    """The Ray executor the options ask for, or ``None`` to evaluate in this process."""
    given = {k: v for k, v in {"workers": workers, "cpus_per_eval": cpus_per_eval, "gpus_per_eval": gpus_per_eval,
                               "retries": retries}.items() if v is not None}
    if ray is None:
        if given:
            raise ConfigError(f"--{next(iter(given)).replace('_', '-')} needs --ray (local, auto or HOST:PORT)")
        return None
    from nas import executors

    return executors.create("ray", address=ray, **given)


class _Bar:
    """A progress bar (evaluations done, best feasible value, hypervolume), shown from the first batch
    on, so that a configuration refused before the search starts prints only its error."""

    def __enter__(self):
        self.progress = None
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.stop()

    def __call__(self, done: int, budget: int, status: str) -> None:
        if self.progress is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(TextColumn("search"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                     TextColumn("{task.description}"), console=console)
            self.progress.start()
            self.task = self.progress.add_task("", total=budget)
        self.progress.update(self.task, completed=done, total=budget, description=status)


DEVICE_LIST_HELP = ("Device file (see examples/devices.yaml): the devices it defines join the built-ins, and each "
                    "device with budgets_ms adds a latency@DEVICE objective (budgets kept for nas extract).")


@app.command()
def search(space: str = typer.Option(..., help="Search space (nas spaces list)."),
           objectives: str = typer.Option(..., help="Comma-separated, e.g. accuracy,latency@cpu,macs."),
           evaluations: int = typer.Option(..., help="Budget of real evaluations."),
           run: Path = typer.Option(..., "--run", help="New run folder (e.g. runs/my-search)."),
           searcher: str = typer.Option(None, help="random, nsga2, agemoea, nsga3, tpe, gp, linas (default: nsga2; "
                                                   "nsga3 from 3 objectives on)."),
           constraint: list[str] = typer.Option(None, help='e.g. "latency@cpu<=12ms" (repeatable).'),
           seed: int = typer.Option(0), batch: int = typer.Option(10, help="Candidates per ask."),
           option: list[str] = typer.Option(None, "-o", "--option", help=OPTION_HELP),
           searcher_option: list[str] = typer.Option(None, "--searcher-option", help="KEY=VALUE for the searcher."),
           latency_predictor: list[str] = typer.Option(None, help="DEVICE=FILE: use a predictor for latency@DEVICE."),
           devices: Path = typer.Option(None, "--devices", help=DEVICE_LIST_HELP),
           supernet: Path = typer.Option(None, help="Trained supernet (nas train): its weights and accuracy."),
           data: str = typer.Option(None, help="Data for accuracy (default: what the supernet was trained on)."),
           ray: RayAddress = None, workers: RayWorkers = None, cpus_per_eval: RayCpus = None,
           gpus_per_eval: RayGpus = None, retries: RayRetries = None) -> None:
    """Search SPACE for the Pareto front of OBJECTIVES within the constraints."""
    from nas import searchers
    from nas.extract_devices import add_device_list
    from nas.objectives import parse_objective_names
    from nas.search import SearchConfig, start_search

    config = SearchConfig(space=space, objectives=parse_objective_names(objectives), evaluations=evaluations,
                          space_options=parse_options(option), constraints=list(constraint or []),
                          searcher_options=parse_options(searcher_option), seed=seed, batch=batch,
                          latency_predictors=_latency_predictors(latency_predictor),
                          supernet=str(supernet) if supernet else None, data=data)
    if devices is not None:
        add_device_list(config, devices)
    config.searcher = searchers.choose(searcher, len(config.objectives))
    executor = _executor(ray, workers, cpus_per_eval, gpus_per_eval, retries)
    with _Bar() as bar:
        store, archive = start_search(run, config, bar, executor)
    _print_summary(store.path, archive)


@app.command()
def select(space: str = typer.Option(..., help="A space with nested sub-models (sortednet_cnn, ...)."),
           constraint: list[str] = typer.Option(..., help='Budget, e.g. "macs<=2M" (repeatable).'),
           supernet: Path = typer.Option(None, help="Trained supernet: also measure the chosen sub-model."),
           data: str = typer.Option(None, help="Data for the task metric (default: the supernet's)."),
           option: list[str] = typer.Option(None, "-o", "--option", help=OPTION_HELP),
           latency_predictor: list[str] = typer.Option(None, help="DEVICE=FILE: use a predictor for latency@DEVICE."),
           devices: Path = typer.Option(None, "--devices", help=DEVICES_HELP)) -> None:
    """Search-free selection: the largest sub-model of the nested order that meets every budget."""
    from nas.search import SearchConfig, with_supernet
    from nas.select import select_nested

    config = SearchConfig(space=space, objectives=[], evaluations=1, space_options=parse_options(option),
                          constraints=list(constraint), devices_file=str(devices.resolve()) if devices else None,
                          latency_predictors=_latency_predictors(latency_predictor),
                          supernet=str(supernet) if supernet else None, data=data)
    if config.supernet is not None:
        with_supernet(config)
    chosen = select_nested(config)
    values = ", ".join(f"{k} {v:.4g}" for k, v in chosen["values"].items())
    console.print(f"sub-model {chosen['position']} of {chosen['chain_length']} in the nested order: {values}")
    console.print(f"config: {json.dumps(chosen['config'], separators=(',', ':'))}")


@app.command()
def resume(run: Path, evaluations: int = typer.Option(None, help="New, larger budget."),
           space: str = typer.Option(None, help="Refuse to resume unless the run searches this space."),
           searcher: str = typer.Option(None, help="Refuse to resume unless the run uses this searcher."),
           objectives: str = typer.Option(None, help="Refuse to resume unless the run has these objectives."),
           ray: RayAddress = None, workers: RayWorkers = None, cpus_per_eval: RayCpus = None,
           gpus_per_eval: RayGpus = None, retries: RayRetries = None) -> None:
    """Continue the search in RUN where it stopped (to its budget or a larger --evaluations)."""
    from nas.objectives import parse_objective_names
    from nas.search import resume_search

    expect = {"space": space, "searcher": searcher,
              "objectives": parse_objective_names(objectives) if objectives else None}
    executor = _executor(ray, workers, cpus_per_eval, gpus_per_eval, retries)
    with _Bar() as bar:
        store, archive = resume_search(run, evaluations, bar, expect, executor)
    _print_summary(store.path, archive)


@app.command()
def report(run: Path, as_json: bool = typer.Option(False, "--json", help="One JSON object (shape in the README)."),
           plot: Path = typer.Option(None, help="Write the Pareto plot to this PNG.")) -> None:
    """Every evaluation and the Pareto front of the run in RUN."""
    from nas.report import load_report, write_plot

    data = load_report(run)
    if plot is not None:
        write_plot(data, plot)
    if as_json:
        print(json.dumps(data))
        return
    _print_summary(run, data["archive"], data)
    if plot is not None:
        console.print(f"plot: {plot}")


def _print_summary(run: Path, archive: dict, data: dict | None = None) -> None:
    from nas.report import load_report, write_plot

    data = data or load_report(run)
    by_n = {e["n"]: e for e in data["evaluations"]}
    names = archive["objectives"]
    table = Table("#", *names, "config", title=f"Pareto front ({len(archive['front'])} subnets, "
                                                 f"{archive['evaluations']} evaluations, {archive['failed']} failed)")
    for n in archive["front"]:
        e = by_n[n]
        table.add_row(str(n), *[f"{e['values'][k]:.4g}" if e["values"].get(k) is not None else "-" for k in names],
                      _short(e["config"]))
    console.print(table)
    if archive.get("best") is not None:
        best = by_n[archive["best"]]
        console.print(f"best feasible: #{best['n']} {names[0]}={best['values'][names[0]]:.4g} config={best['config']}")
    elif archive.get("closest"):
        console.print(f"no evaluated subnet meets the constraints; closest values seen: {archive['closest']}")
    plot = Path(run) / "pareto.png"
    write_plot(data, plot)
    console.print(f"run: {run}  plot: {plot}")


def _short(config: dict) -> str:
    text = json.dumps(config, separators=(",", ":"))
    return text if len(text) <= 60 else text[:57] + "..."
