"""Tasks for the differentiable searches (:mod:`search_spaces.training.bilevel`), one per task metric.

A task supplies the batches of the weight and architecture steps, the loss and the validation metric.
Tasks are registered by the metric they report (``accuracy``; ``psnr`` for super-resolution), so
``space_and_task(config)`` picks the one the space's :class:`~search_spaces.base.Metric` calls for and
builds the space with the options its data implies (classes, for instance).

Classification follows DARTS: the training split is halved at random (seeded, stratified by nothing
but chance), weights train on one half and α on the other, and the validation split stays untouched
for the reported accuracy.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

import search_spaces
from evaluators.accuracy import top1
from evaluators.data import Data, Split, load_data
from nas.errors import ConfigError
from search_spaces.base import SearchSpace
from search_spaces.training import ChoiceSampler

#: ``factory(config) -> (space, task)``; ``config`` has ``space``, ``space_options``, ``data`` and
#: ``seed``, and its ``space_options`` are completed with what the data implies.
TaskFactory = Callable[[Any], tuple[SearchSpace, Any]]
_TASKS: dict[str, TaskFactory] = {}


def register_task(metric: str):
    """Decorator: the task factory for spaces judged by ``metric``."""

    def decorator(factory: TaskFactory) -> TaskFactory:
        _TASKS[metric] = factory
        return factory

    return decorator


def space_and_task(config) -> tuple[SearchSpace, Any]:
    """The space of ``config`` and the task its metric calls for, on ``config.data``."""
    metric = search_spaces.space_class(config.space).metric.name
    if metric not in _TASKS:
        raise ConfigError(f"no differentiable-search task for metric {metric!r} (space {config.space}); "
                          f"tasks exist for: {', '.join(sorted(_TASKS))}")
    return _TASKS[metric](config)


def space_and_data(config) -> tuple[SearchSpace, Data]:
    """The space (options the data implies, e.g. ``n_classes``, filled in unless given) and its
    classification data at the space's largest input size; ``config.space_options`` is completed."""
    options = dict(config.space_options)
    space_class = search_spaces.space_class(config.space)
    probe = search_spaces.get(config.space, **options)            # the input size does not depend on the data
    data = load_data(config.data, image_size=probe.input_size(ChoiceSampler(probe, {}).largest()))
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


def subset(split: Split, index: np.ndarray) -> Split:
    """The samples ``index`` of ``split`` (sliced tensors for in-memory data)."""
    tensors = getattr(split.dataset, "tensors", None)
    if tensors is not None:
        idx = torch.from_numpy(index)
        return Split(torch.utils.data.TensorDataset(*(t[idx] for t in tensors)), split.labels[index])
    return Split(torch.utils.data.Subset(split.dataset, index.tolist()), split.labels[index])


class ClassificationTask:
    """Cross-entropy on halves of the training split; top-1 (%) on the validation split."""

    metric = "accuracy"

    def __init__(self, space: SearchSpace, data: Data, arch_fraction: float = 0.5, seed: int = 0):
        if not 0 < arch_fraction < 1:
            raise ConfigError(f"arch_fraction must be in (0, 1); got {arch_fraction}")
        self.space, self.data = space, data
        order = np.random.default_rng(seed).permutation(len(data.train))
        cut = int(round(len(order) * (1 - arch_fraction)))
        self.splits = {"weights": subset(data.train, np.sort(order[:cut])),
                       "arch": subset(data.train, np.sort(order[cut:]))}
        self.size = data.image_size

    def batches(self, role: str, batch_size: int, steps: int | None, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        split = self.splits[role]
        if len(split) < batch_size:
            raise ConfigError(f"the {role} half of {self.data.spec}'s training split has {len(split)} samples, "
                              f"fewer than the batch size {batch_size}; lower batch_size")
        generator = torch.Generator().manual_seed(seed)
        done, epoch = 0, 0
        while steps is None or done < steps:
            for x, y in split.batches(batch_size, shuffle=True, seed=seed + epoch, drop_last=True):
                yield self.data.train_view(x, self.size, generator), y
                done += 1
                if steps is not None and done >= steps:
                    return
            if steps is None:
                return
            epoch += 1

    def steps(self, batch_size: int) -> int:
        return max(1, len(self.splits["weights"]) // batch_size)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(output, target)

    def evaluate(self, net: torch.nn.Module, split: str = "val") -> float:
        was_training = net.training
        batches = self.data.split(split).batches(250)
        accuracy = top1(net, ((self.data.eval_view(x, self.size), y) for x, y in batches))
        net.train(was_training)
        return accuracy

    def describe(self) -> dict[str, Any]:
        return {**self.data.describe(), "weights": len(self.splits["weights"]), "arch": len(self.splits["arch"])}


@register_task("accuracy")
def _classification(config) -> tuple[SearchSpace, ClassificationTask]:
    space, data = space_and_data(config)
    return space, ClassificationTask(space, data, seed=config.seed)
