"""Activation layers by name (the reference implementation's names: ``relu``, ``h_swish``, ...)."""

from __future__ import annotations

from torch import nn

from nas.errors import ConfigError

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "h_swish": nn.Hardswish,
    "h_sigmoid": nn.Hardsigmoid,
}


def create_activation(name: str | None, inplace: bool = True) -> nn.Module | None:
    """The activation module called ``name`` (``None`` for no activation)."""
    if name is None:
        return None
    try:
        cls = _ACTIVATIONS[name]
    except KeyError:
        raise ConfigError(f"unknown activation {name!r}; known: {', '.join(_ACTIVATIONS)}") from None
    return cls(inplace=inplace)
