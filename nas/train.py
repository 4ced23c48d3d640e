"""``nas train``: train a supernet on a dataset, into a run folder; resume it after an interruption.

Wires the three parts together: the data (:mod:`evaluators.data`), the space and its trainer
(:mod:`search_spaces.training`), and validation of the smallest and largest subnets after every phase
(:mod:`evaluators.accuracy`). The result is ``OUT/supernet.pt``, which ``nas search --supernet`` takes.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import search_spaces
from evaluators.accuracy import SubnetAccuracy
from evaluators.data import Data, load_data
from nas.errors import ConfigError
from search_spaces.training import ChoiceSampler, TrainConfig, Trainer, stored_config
from search_spaces.training.trainer import refuse_changes


def prepare(config: TrainConfig) -> tuple[search_spaces.SearchSpace, Data]:
    """The space (``n_classes`` taken from the data unless given) and its data at the largest input size."""
    options = dict(config.space_options)
    space_class = search_spaces.space_class(config.space)
    probe = search_spaces.get(config.space, **options)            # the input size does not depend on the data
    size = probe.input_size(ChoiceSampler(probe, {}).largest())
    data = load_data(config.data, image_size=size)
    accepted = inspect.signature(space_class.__init__).parameters
    for key, value in data.implied_options().items():
        if key not in accepted:
            continue
        if key in options and options[key] != value:
            raise ConfigError(f"space option {key}={options[key]} does not fit data {config.data!r}, which has "
                              f"{key}={value}; drop the option or set it to {value}")
        options.setdefault(key, value)
    config.space_options = options
    return search_spaces.get(config.space, **options), data


def train(config: TrainConfig, out: str | Path, progress=None, resume: bool = False,
          changes: dict[str, Any] | None = None) -> Trainer:
    """Start (or, with ``resume``, continue) the training run in ``out`` and run it to the end.

    On resume the stored config is used; ``changes`` (options given again on the command line) must
    equal it, or the run is refused before anything is written.
    """
    if resume:
        config = stored_config(out)
        refuse_changes(out, config, changes or {})
    config.validate()
    space, data = prepare(config)
    validate = SubnetAccuracy(space, data, "val", calib_images=config.calib_images)
    if resume:
        trainer = Trainer.resume(space, data, out, config, validate, progress)
    else:
        trainer = Trainer.start(space, data, config, out, validate, progress)
    trainer.run()
    return trainer
