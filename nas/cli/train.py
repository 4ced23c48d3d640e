"""``nas train``: train a supernet (progressive shrinking, DεpS, sorted, the largest network alone) or run
a differentiable search (DASS, DARTS, QuantNAS)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
import yaml

from nas.cli import app
from nas.cli._common import OPTION_HELP, console, parse_options
from nas.errors import ConfigError


class TrainBars:
    """One progress bar per epoch (loss, images/s), and a line per finished phase."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("{task.fields[status]}"), console=console)
        self.task = None

    def __enter__(self) -> "TrainBars":
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def epoch(self, phase: str, epoch: int, epochs: int, steps: int) -> None:
        if self.task is not None:
            self.progress.update(self.task, visible=False)
        self.task = self.progress.add_task(f"{phase} {epoch}/{epochs}", total=steps, status="")

    def step(self, loss: float, images_per_second: float) -> None:
        self.progress.update(self.task, advance=1, status=f"loss {loss:.3f} | {images_per_second:.0f} img/s")

    def phase_done(self, record: dict[str, Any]) -> None:
        metrics = ", ".join(f"{k[4:]} {v:.2f}" for k, v in record.items() if k.startswith("val_") and v is not None)
        if "val_acc_max" in record:
            metrics = f"accuracy min {record['val_acc_min']:.2f} %, max {record['val_acc_max']:.2f} %"
        suffix = f": validation {metrics}" if metrics else ""
        self.progress.console.print(f"phase {record['phase']} done in {record['seconds']:.0f} s{suffix}")


def _config_file(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read training config {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"training config {path} must be a mapping of settings (see examples/)")
    return data


@app.command()
def train(space: str = typer.Argument(..., help="Space to train (ofa_mbv3, sortednet_cnn, dass_darts, quantnas_sr...)."),
          out: Path = typer.Option(..., "--out", help="Run folder; OUT/supernet.pt is the result."),
          data: str = typer.Option(None, help="digits | npz:PATH | folder:PATH | cifar10:ROOT | imagenet:ROOT | "
                                              "photos (super-resolution)"),
          method: str = typer.Option(None, help="ps, deps, full, sorted (weight sharing); dass, darts, quantnas "
                                                "(differentiable). Default: the space's own."),
          epochs: int = typer.Option(None, help="Total budget in epochs, shared out over the phases."),
          width_mult: float = typer.Option(None, "--width-mult", help="Space option width_mult."),
          resolutions: str = typer.Option(None, help="Space option resolutions, e.g. 32,40."),
          keep_ratio: float = typer.Option(None, "--keep-ratio", help="DASS: target keep ratio (1 - sparsity)."),
          genotype: Path = typer.Option(None, "--genotype", help="Retrain this derived architecture (DASS, "
                                                                 "QuantNAS) instead of searching."),
          dense_search: bool = typer.Option(False, "--dense-search", help="DASS: plain DARTS (no sparse ops during "
                                                                          "the search); same as --method darts."),
          mode: str = typer.Option(None, help="QuantNAS search mode: noise or direct."),
          lambda_hw: float = typer.Option(None, "--lambda-hw", help="QuantNAS: weight of the BitOps penalty."),
          adq: bool = typer.Option(None, "--adq/--no-adq", help="QuantNAS: ADQ residual wrappers (space option)."),
          option: list[str] = typer.Option(None, "-o", "--option", help=OPTION_HELP),
          config: Path = typer.Option(None, "--config", help="YAML file of training settings (see examples/)."),
          setting: list[str] = typer.Option(None, "--set", help="Training setting KEY=VALUE, e.g. --set lr=0.1."),
          resume: bool = typer.Option(False, help="Continue the run in OUT where it stopped."),
          threads: int = typer.Option(1, "--threads", help="CPU threads torch computes with. 1 (the default) is "
                                                          "fastest for small networks, where more threads cost more "
                                                          "in synchronisation than they gain; raise it for large "
                                                          "networks on free cores.")) -> None:
    """Train SPACE's supernet on DATA, or search it differentiably; `nas search --supernet OUT/supernet.pt`
    then searches a trained supernet."""
    import torch

    from nas.train import default_method, is_differentiable, stored_runner

    if threads < 1:
        raise ConfigError(f"--threads must be >= 1; got {threads}")
    torch.set_num_threads(threads)

    settings = {**_config_file(config), **parse_options(setting)}
    space_options = {**settings.pop("space_options", {}), **parse_options(option)}
    given_space = {"width_mult": width_mult, "adq": adq,
                   "resolutions": [int(r) for r in resolutions.split(",") if r.strip()] if resolutions else None}
    space_options.update({k: v for k, v in given_space.items() if v is not None})
    if dense_search:
        if method not in (None, "darts"):
            raise ConfigError(f"--dense-search runs the darts method; it cannot go with --method {method}")
        method = "darts"
    settings.update({k: v for k, v in {"data": data, "method": method, "epochs": epochs}.items() if v is not None})
    method_options = {"keep_ratio": keep_ratio, "mode": mode, "lambda_hw": lambda_hw,
                      "genotype": str(genotype.resolve()) if genotype else None}
    method_options = {k: v for k, v in method_options.items() if v is not None}
    if method_options:
        settings["options"] = {**settings.get("options", {}), **method_options}
    if resume:
        differentiable = stored_runner(out) == "bilevel"
    else:
        settings.setdefault("method", default_method(space))
        differentiable = is_differentiable(settings["method"])
    if not differentiable and method_options:
        raise ConfigError(f"{', '.join('--' + k.replace('_', '-') for k in method_options)} belong to the "
                          "differentiable searches (dass, darts, quantnas), not to weight-sharing training")
    job = _differentiable_job if differentiable else _training_job
    trainer = job(space, space_options, settings, out, resume)
    console.print(f"supernet: {out / 'supernet.pt'}  ({trainer.config.method}, {trainer.config.epochs} epochs, "
                  f"data {trainer.config.data})")
    if differentiable:
        console.print(f"derived architecture: {out / 'derived.json'}")


def _training_job(space: str, space_options: dict, settings: dict, out: Path, resume: bool):
    from nas.train import train as run_training
    from search_spaces.training import TrainConfig, stored_config

    return _start_or_resume(stored_config, TrainConfig.from_dict, run_training,
                            space, space_options, settings, out, resume)


def _differentiable_job(space: str, space_options: dict, settings: dict, out: Path, resume: bool):
    from nas.train import search_differentiable
    from search_spaces.training.bilevel import config_for, stored_bilevel_config

    return _start_or_resume(stored_bilevel_config, config_for, search_differentiable,
                            space, space_options, settings, out, resume)


def _start_or_resume(load_stored, build, run, space: str, space_options: dict, settings: dict, out: Path,
                     resume: bool):
    """Run ``run(config, out, bars)`` on a new config from ``build(settings)``, or resume the run in
    ``out`` with the given settings as changes; options given again merge into the stored ones."""
    if not resume:
        config = build({**settings, "space": space, "space_options": space_options})
        return _run(lambda bars: run(config, out, bars))
    stored = load_stored(out)
    settings["space"] = space
    if space_options:
        settings["space_options"] = {**stored.space_options, **space_options}
    if "options" in settings and hasattr(stored, "options"):
        settings["options"] = {**stored.options, **settings["options"]}
    return _run(lambda bars: run(stored, out, bars, resume=True, changes=settings))


def _run(job):
    with TrainBars() as bars:
        return job(bars)
