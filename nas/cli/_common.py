"""Helpers shared by the command modules."""

from __future__ import annotations

from typing import Any

import yaml
from rich.console import Console

from nas.errors import ConfigError

console = Console(soft_wrap=True)   # long lines stay whole: users grep and copy them


def parse_options(pairs: list[str] | None) -> dict[str, Any]:
    """``["width_mult=0.5", "ks_list=[3,5]"]`` -> ``{"width_mult": 0.5, "ks_list": [3, 5]}`` (YAML values)."""
    options = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"option {pair!r} is not KEY=VALUE (e.g. -o width_mult=0.5)")
        try:
            options[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"option {key}: cannot parse value {value!r}") from None
    return options


OPTION_HELP = "Space option KEY=VALUE (repeatable), e.g. -o width_mult=0.5 -o resolutions=[128,160]"


class ProgressBars:
    """``rich`` progress bars behind the ``(task, total) -> advance()`` callback the builders take."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=console, transient=False)

    def __enter__(self) -> "ProgressBars":
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def __call__(self, description: str, total: int | None):
        task = self.progress.add_task(description, total=total)
        return lambda: self.progress.advance(task)


DEVICES_HELP = "YAML file adding devices to the built-ins (see devices.yaml)."
