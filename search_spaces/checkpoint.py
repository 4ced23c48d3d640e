"""The project's supernet checkpoint format, and reading other people's checkpoints safely.

A checkpoint is a ``torch.save`` dict ``{"format", "space", "options", "state_dict", "meta"}``: the
registered space name and its constructor options rebuild the supernet, so a file is self-describing.
Files are written atomically (temporary file, fsync, rename): an interrupted write never leaves a
half-written checkpoint in place of a good one. Files are read with ``weights_only=True``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch

from nas.atomic import atomic_write
from nas.errors import CheckpointError, NasError
from search_spaces._registry import get
from search_spaces.base import SearchSpace

FORMAT = "nas.supernet/1"


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path`` so that readers see the old file or the new one, never a torn one."""
    atomic_write(path, lambda fh: torch.save(obj, fh))


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes (fingerprints the checkpoint a search or an export came from)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint file with ``weights_only=True``; one clear error if it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or foreign files
        raise CheckpointError(f"cannot read checkpoint {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(data).__name__}, not a state_dict")
    return data


def state_dict_of(data: Mapping, path: str | os.PathLike = "checkpoint") -> dict[str, torch.Tensor]:
    """The state_dict inside a checkpoint: the dict itself, or the one under ``state_dict``."""
    state = data.get("state_dict", data)
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} holds no state_dict of tensors (expected a raw state_dict or one under 'state_dict')")
    return dict(state)


def save_supernet(space: SearchSpace, path: str | os.PathLike, meta: dict | None = None) -> None:
    """Write ``space``'s supernet weights with everything needed to rebuild it."""
    atomic_torch_save({"format": FORMAT, "space": space.name, "options": space.options,
                       "state_dict": space.supernet.state_dict(), "meta": meta or {}}, path)


def load_supernet(path: str | os.PathLike, expect_space: str | None = None) -> SearchSpace:
    """Rebuild the space stored in ``path`` and load its weights strictly."""
    data = read_checkpoint(path)
    if data.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a nas supernet checkpoint (format {data.get('format')!r}); "
                              "import foreign checkpoints with `nas supernet import`")
    if expect_space is not None and data["space"] != expect_space:
        raise CheckpointError(f"{path} holds a {data['space']!r} supernet, not {expect_space!r}")
    try:
        space = get(data["space"], **data["options"])
        space.supernet.load_state_dict(data["state_dict"])
    except NasError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    except RuntimeError as exc:
        detail = state_dict_mismatch(data["state_dict"], space.supernet.state_dict()) or str(exc).splitlines()[0]
        raise CheckpointError(f"{path} does not fit the {data['space']} supernet its options build: {detail} "
                              "(a checkpoint written by another version of nas must be retrained)") from None
    return space


def state_dict_mismatch(given: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> str:
    """What keeps ``given`` from loading strictly into a module whose state_dict is ``target`` ('' if nothing)."""
    def first(items: list[str]) -> str:
        more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
        return ", ".join(items[:3]) + more

    problems = (("missing keys", [k for k in target if k not in given]),
                ("unexpected keys", [k for k in given if k not in target]),
                ("shape mismatches", [f"{k} {tuple(v.shape)} != {tuple(target[k].shape)}"
                                      for k, v in given.items() if k in target and v.shape != target[k].shape]))
    return "; ".join(f"{len(items)} {kind}: {first(items)}" for kind, items in problems if items)
