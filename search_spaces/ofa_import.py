"""Import a reference Once-for-All MobileNetV3 checkpoint (e.g. ``ofa_mbv3_d234_e346_k357_w1.2``).

``n_classes`` and ``width_mult`` are read off the tensors' shapes; the choice lists default to the
published supernets' (``ks_list=[3,5,7]``, ``expand_ratio_list=[3,4,6]``, ``depth_list=[2,3,4]``) and
can be overridden. The weights are loaded strictly and the largest and smallest subnets are run once
to verify the result is usable.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from nas.errors import CheckpointError
from search_spaces._registry import get
from search_spaces.checkpoint import read_checkpoint, state_dict_of
from search_spaces.ofa_mbv3 import OFAMobileNetV3Space
from search_spaces.ofa_supernet import Widths


def _tensor(state: dict[str, torch.Tensor], suffix: str) -> torch.Tensor:
    for key, value in state.items():
        if key.endswith(suffix):
            return value
    raise CheckpointError(f"not an OFA-MBv3 checkpoint: no key ending in {suffix!r}")


def infer_ofa_options(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """``n_classes`` and ``width_mult`` of an OFA-MBv3 state_dict, from its tensor shapes."""
    n_classes = _tensor(state, "classifier.linear.weight").shape[0]
    feature_mix = _tensor(state, "feature_mix_layer.conv.weight").shape[0]
    final_expand = _tensor(state, "final_expand_layer.conv.weight").shape[0]
    for width_mult in np.round(np.arange(0.05, 4.0001, 0.05), 2):
        w = Widths.for_width(float(width_mult))
        if (w.feature_mix, w.final_expand) == (feature_mix, final_expand):
            return {"n_classes": int(n_classes), "width_mult": float(width_mult)}
    raise CheckpointError(f"no width_mult (0.05..4.0, step 0.05) gives {final_expand} final-expand and "
                          f"{feature_mix} feature-mix channels; pass width_mult explicitly")


def import_ofa_checkpoint(path: str | os.PathLike, **options) -> OFAMobileNetV3Space:
    """Build an ``ofa_mbv3`` space holding the weights of the reference checkpoint at ``path``."""
    state = state_dict_of(read_checkpoint(path), path)
    resolved = {**infer_ofa_options(state), **options}
    space = get("ofa_mbv3", **resolved)
    try:
        space.supernet.load_state_dict(state)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    verify_supernet(space)
    return space


@torch.no_grad()
def verify_supernet(space: OFAMobileNetV3Space) -> None:
    """Run the largest and the smallest subnet once; their outputs must be finite."""
    net = space.supernet.eval()
    for pick in (-1, 0):
        config = {"ks": [space.ks_list[pick]] * space.n_blocks, "e": [space.expand_ratio_list[pick]] * space.n_blocks,
                  "d": [space.depth_list[pick]] * 5, "r": space.resolutions[pick]}
        space.activate(config)
        if not torch.isfinite(net(space.example_input(config, 2))).all():
            raise CheckpointError("the imported weights give non-finite outputs; the checkpoint is damaged")
