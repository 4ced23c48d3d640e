"""The super-resolution task of the differentiable searches (``psnr``): L1 on patches, PSNR on images.

Registered for spaces judged by PSNR (``quantnas_sr``). The data (:mod:`evaluators.sr_data`) is loaded
at the space's ``scale``; the LR patch side is the space's ``lr_size`` (the side its costs are
counted at, so BitOps describe the patches the search trains on).

Which data each step sees: the weight step takes random patches of the **training images**; the
architecture step takes random patches of the **validation images** (the reference's "valid" loader).
The two are disjoint by image. The reported validation PSNR is measured on those same validation images
(whole, Y channel, border shaved by the scale); α, a few hundred numbers, hardly fits them, and the
number that judges a final network is the PSNR on the **test images**, which no step ever sees
(``evaluate(net, "test")``; :mod:`search_spaces.training.quantnas_search` reports it after retraining).
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F

import search_spaces
from evaluators.sr_data import SRData, load_sr_data, psnr
from evaluators.tasks import register_task
from nas.errors import ConfigError
from search_spaces.base import Config, SearchSpace
from search_spaces.checkpoint import read_checkpoint
from search_spaces.training.quantnas_search import prepare_for_direct, read_derived

#: Which split of the images each step's patches come from.
ROLE_SPLITS = {"weights": "train", "arch": "val"}


class SRTask:
    """L1 loss on aligned LR/HR patches; mean PSNR (dB) over whole images of a split."""

    metric = "psnr"

    def __init__(self, space: SearchSpace, data: SRData):
        scale = space.options["scale"]
        if data.scale != scale:
            raise ConfigError(f"data {data.spec!r} is at scale x{data.scale}, but the space was built for x{scale}; "
                              f"load the data at x{scale} or build the space with -o scale={data.scale}")
        self.space, self.data, self.scale, self.patch = space, data, scale, space.options["lr_size"]
        for split in ROLE_SPLITS.values():        # refuse too small images now, not mid-search
            next(data.train_batches(1, self.patch, 1, seed=0, split=split))

    def batches(self, role: str, batch_size: int, steps: int | None, seed: int
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if role not in ROLE_SPLITS:
            raise ConfigError(f"unknown batch role {role!r}; use weights or arch")
        split = ROLE_SPLITS[role]
        count = self._steps(split, batch_size) if steps is None else steps
        return self.data.train_batches(batch_size, self.patch, count, seed=seed, split=split)

    def _steps(self, split: str, batch_size: int) -> int:
        """One "pass": as many patches as cover the split's LR pixels once."""
        pixels = sum(int(np.prod(image.lr.shape[-2:])) for image in self.data.split(split))
        return max(1, pixels // (self.patch ** 2 * batch_size))

    def steps(self, batch_size: int) -> int:
        return self._steps("train", batch_size)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.l1_loss(output, target)

    def evaluate(self, net: torch.nn.Module, split: str = "val") -> float:
        """Mean PSNR of ``net`` (in evaluation mode) over the whole images of ``split``, one at a time."""
        was_training = net.training
        net.eval()
        values = []
        with torch.no_grad():
            for image in self.data.split(split):
                lr, hr = image.pair()
                values.append(psnr(net(lr), hr, self.scale).item())
        net.train(was_training)
        return float(np.mean(values))

    def describe(self) -> dict[str, Any]:
        return {**self.data.describe(), "patch": self.patch, "weights": ROLE_SPLITS["weights"],
                "arch": ROLE_SPLITS["arch"]}


def space_options_of(config) -> dict[str, Any]:
    """``config.space_options``, completed (when retraining a genotype) with the options of the search
    that found it, so ``--genotype OUT/derived.json`` needs no ``-o`` repeated."""
    genotype = config.options.get("genotype") if isinstance(config.options, dict) else None
    if genotype is None:
        return dict(config.space_options)
    record = read_derived(genotype, config.space)
    return {**record.get("options", {}), **config.space_options}


class SubnetPSNR:
    """``psnr(configs)``: mean validation PSNR of each subnet of a trained supernet, its BatchNorm (ADQ's)
    re-calibrated per subnet on the same few training patches, as accuracy does for classifiers.

    A supernet searched in ``noise`` mode never trained its LSQ steps; they are initialised from its
    weights first (:func:`~search_spaces.training.quantnas_search.prepare_for_direct`).
    """

    def __init__(self, space: SearchSpace, data: SRData, split: str = "val", searched_with_noise: bool = False,
                 calib_batches: int = 4, batch_size: int = 8):
        self.space, self.task, self.split = space, SRTask(space, data), split
        self.calibration = [x for x, _ in data.train_batches(batch_size, self.task.patch, calib_batches, seed=0)]
        if searched_with_noise:
            prepare_for_direct(space)

    def __call__(self, configs: list[Config]) -> list[float]:
        out = []
        for config in configs:
            self.space.recalibrate_bn(config, self.calibration)
            out.append(self.task.evaluate(self.space.supernet, self.split))
        return out

    def vectors(self, vectors: np.ndarray) -> np.ndarray:
        """The batched objective form: one PSNR per encoding."""
        return np.asarray(self(self.space.decode(self.space.check_vectors(vectors))), dtype=float)


def supernet_psnr(space: SearchSpace, supernet: str, data: str) -> SubnetPSNR:
    """The ``psnr`` objective of the subnets of the supernet checkpoint ``supernet`` (``nas train``'s
    ``supernet.pt`` of a QuantNAS search) on ``data`` at the space's scale."""
    trained = read_checkpoint(supernet).get("meta", {}).get("trained", {})
    options = trained.get("config", {}).get("options", {})
    noise = options.get("mode", "noise") == "noise" and options.get("genotype") is None
    return SubnetPSNR(space, load_sr_data(data, space.options["scale"]), searched_with_noise=noise)


@register_task("psnr")
def _super_resolution(config) -> tuple[SearchSpace, SRTask]:
    config.space_options = space_options_of(config)
    space = search_spaces.get(config.space, **config.space_options)
    data = load_sr_data(config.data, space.options["scale"])
    return space, SRTask(space, data)
