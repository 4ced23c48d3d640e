"""``nas train``: train a supernet on a dataset, into a run folder; resume it after an interruption.

Two kinds of run share the command. Weight-sharing training (``ps``, ``deps``, ``full``, ``sorted``...:
:mod:`search_spaces.training.trainer`) samples subnets and validates the smallest and largest after
every phase (:mod:`evaluators.accuracy`); its result is ``OUT/supernet.pt``, which ``nas search
--supernet`` takes. Differentiable searches (``dass``, ``darts``, ``quantnas``...:
:mod:`search_spaces.training.bilevel`) train architecture parameters beside the weights and write the
derived architecture to ``OUT/derived.json``. The method decides which; a space without a ``--method``
gets its own default (:attr:`SearchSpace.training_method`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import evaluators.sr_task  # noqa: F401  (registers the psnr task)
import search_spaces
from evaluators.accuracy import SubnetAccuracy
from evaluators.data import Data
from evaluators.tasks import space_and_data, space_and_task
from nas.errors import ConfigError
from search_spaces.training import TrainConfig, Trainer, stored_config
from search_spaces.training.bilevel import BilevelConfig, BilevelSearch, recipe_names, stored_bilevel_config
from search_spaces.training.trainer import read_run_file, refuse_changes


def prepare(config: TrainConfig) -> tuple[search_spaces.SearchSpace, Data]:
    """The space (``n_classes`` taken from the data unless given) and its data at the largest input size."""
    return space_and_data(config)


def default_method(space: str) -> str:
    """The training method of ``space`` when none is given."""
    method = search_spaces.space_class(space).training_method
    if method is None:
        raise ConfigError(f"space {space!r} has no supernet to train (its metric comes from a table)")
    return method


def is_differentiable(method: str) -> bool:
    return method in recipe_names()


def stored_runner(out: str | Path) -> str:
    """``"bilevel"`` for a differentiable search in ``out``, ``"trainer"`` for weight-sharing training."""
    return read_run_file(out).get("runner", "trainer")


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


def search_differentiable(config: BilevelConfig, out: str | Path, progress=None, resume: bool = False,
                          changes: dict[str, Any] | None = None) -> BilevelSearch:
    """Start (or continue) the differentiable search in ``out`` and run it to the end; as :func:`train`."""
    if resume:
        config = stored_bilevel_config(out)
        refuse_changes(out, config, changes or {})
    config.validate()
    space, task = space_and_task(config)
    if resume:
        search = BilevelSearch.resume(space, task, out, progress)
    else:
        search = BilevelSearch.start(space, task, config, out, progress)
    search.run()
    return search

