"""Top-1 accuracy of subnets of a trained supernet, after BatchNorm re-calibration.

A weight-sharing supernet's stored BatchNorm statistics belong to no particular subnet, so each
subnet's statistics are re-estimated on training images (no augmentation, a fixed subset) before it is
evaluated, in batches and under ``torch.inference_mode``. The validation split scores candidates during
a search; the test split is kept for final reports.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

from evaluators.data import Data, load_data
from nas.errors import ConfigError
from search_spaces.base import Config, SearchSpace
from search_spaces.training import ChoiceSampler


def data_for(space: SearchSpace, spec: str, supernet: str | None = None) -> Data:
    """The data ``spec`` stored at the space's largest input size, refused if its classes do not match
    those the (trained) space classifies."""
    data = load_data(spec, image_size=space.input_size(ChoiceSampler(space, {}).largest()))
    if space.options.get("n_classes", data.n_classes) != data.n_classes:
        raise ConfigError(f"data {spec!r} has {data.n_classes} classes but the supernet "
                          f"{supernet or space.name} classifies {space.options['n_classes']}")
    return data


def top1(model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Top-1 accuracy in percent of ``model`` (put in eval mode) over ``batches``."""
    model.eval()
    correct = seen = 0
    with torch.inference_mode():
        for x, y in batches:
            correct += int((model(x).argmax(dim=1) == y).sum())
            seen += len(y)
    return 100.0 * correct / max(seen, 1)


class SubnetAccuracy:
    """``accuracy(configs)``: top-1 (%) of each subnet on ``split`` of ``data`` after BN re-calibration.

    ``calib_images`` training images (the same ones for every subnet) re-estimate the statistics, as the
    reference Once-for-All code does with 2,000 ImageNet images.
    """

    def __init__(self, space: SearchSpace, data, split: str = "val", calib_images: int = 500,
                 batch_size: int = 250):
        self.space, self.data, self.split = space, data, data.split(split)
        self.calib_images, self.batch_size = min(calib_images, len(data.train)), batch_size

    def calibration_batches(self, size: int | None):
        for x, _ in self.data.train.batches(self.batch_size, shuffle=True, seed=0, limit=self.calib_images):
            yield self.data.eval_view(x, size)

    def eval_batches(self, size: int | None):
        for x, y in self.split.batches(self.batch_size):
            yield self.data.eval_view(x, size), y

    def __call__(self, configs: list[Config]) -> list[float]:
        out = []
        for config in configs:
            size = self.space.input_size(config)
            self.space.recalibrate_bn(config, self.calibration_batches(size))
            out.append(top1(self.space.supernet, self.eval_batches(size)))
        return out

    def vectors(self, vectors: np.ndarray) -> np.ndarray:
        """The batched objective form: one accuracy per encoding."""
        return np.asarray(self(self.space.decode(self.space.check_vectors(vectors))), dtype=float)

    def model_accuracy(self, model: torch.nn.Module, size: int | None) -> float:
        """Accuracy of a standalone (extracted) network on this evaluator's split."""
        return top1(model, self.eval_batches(size))
