"""``nas train``: train a supernet (progressive shrinking, DεpS, or the largest network alone)."""

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
        accuracy = ""
        if "val_acc_max" in record:
            accuracy = f": val accuracy min {record['val_acc_min']:.2f} %, max {record['val_acc_max']:.2f} %"
        self.progress.console.print(f"phase {record['phase']} done in {record['seconds']:.0f} s{accuracy}")


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
def train(space: str = typer.Argument(..., help="Space to train (ofa_mbv3)."),
          out: Path = typer.Option(..., "--out", help="Run folder; OUT/supernet.pt is the result."),
          data: str = typer.Option(None, help="digits | npz:PATH | folder:PATH | cifar10:ROOT | imagenet:ROOT"),
          method: str = typer.Option(None, help="ps (progressive shrinking), deps, full (largest alone)."),
          epochs: int = typer.Option(None, help="Total budget in epochs, shared out over the phases."),
          width_mult: float = typer.Option(None, "--width-mult", help="Space option width_mult."),
          resolutions: str = typer.Option(None, help="Space option resolutions, e.g. 32,40."),
          option: list[str] = typer.Option(None, "-o", "--option", help=OPTION_HELP),
          config: Path = typer.Option(None, "--config", help="YAML file of training settings (see examples/)."),
          setting: list[str] = typer.Option(None, "--set", help="Training setting KEY=VALUE, e.g. --set lr=0.1."),
          resume: bool = typer.Option(False, help="Continue the run in OUT where it stopped.")) -> None:
    """Train SPACE's supernet on DATA; `nas search --supernet OUT/supernet.pt` then searches it."""
    from nas.train import train as run_training
    from search_spaces.training import TrainConfig
    from search_spaces.training.trainer import stored_config

    settings = {**_config_file(config), **parse_options(setting)}
    space_options = {**settings.pop("space_options", {}), **parse_options(option)}
    if width_mult is not None:
        space_options["width_mult"] = width_mult
    if resolutions is not None:
        space_options["resolutions"] = [int(r) for r in resolutions.split(",") if r.strip()]
    given = {"data": data, "method": method, "epochs": epochs}
    settings.update({k: v for k, v in given.items() if v is not None})
    if resume:
        stored = stored_config(out)
        settings["space"] = space
        if space_options:
            settings["space_options"] = {**stored.space_options, **space_options}
        trainer = _run(lambda bars: run_training(stored, out, bars, resume=True, changes=settings))
    else:
        train_config = TrainConfig.from_dict({**settings, "space": space, "space_options": space_options})
        trainer = _run(lambda bars: run_training(train_config, out, bars))
    console.print(f"supernet: {out / 'supernet.pt'}  ({trainer.config.method}, {trainer.config.epochs} epochs, "
                  f"data {trainer.config.data})")


def _run(job):
    with TrainBars() as bars:
        return job(bars)
