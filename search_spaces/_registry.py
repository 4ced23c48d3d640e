"""Registry of search spaces by name: ``register`` a class, ``get`` an instance, list ``names``."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Callable, TypeVar

from nas.errors import ConfigError, UnknownNameError

if TYPE_CHECKING:
    from search_spaces.base import SearchSpace

_SPACES: dict[str, type["SearchSpace"]] = {}
S = TypeVar("S", bound=type)


def register(name: str) -> Callable[[S], S]:
    """Class decorator: make a ``SearchSpace`` subclass available as ``get(name, **options)``."""

    def decorator(cls: S) -> S:
        if name in _SPACES and _SPACES[name] is not cls:
            warnings.warn(f"search space {name!r} was registered twice; the later one wins", stacklevel=2)
        cls.name = name
        _SPACES[name] = cls
        return cls

    return decorator


def names() -> list[str]:
    """Names of every registered search space, sorted."""
    return sorted(_SPACES)


def space_class(name: str) -> type["SearchSpace"]:
    try:
        return _SPACES[name]
    except KeyError:
        raise UnknownNameError(
            f"unknown search space {name!r}; known spaces: {', '.join(names())}"
        ) from None


def get(name: str, **options) -> "SearchSpace":
    """Build the space ``name`` with its constructor ``options`` (e.g. ``width_mult=0.5``)."""
    cls = space_class(name)
    try:
        return cls(**options)
    except TypeError as exc:  # an option the space does not take
        raise ConfigError(f"bad options for search space {name!r}: {exc}") from None
