"""Registry of search spaces by name: ``register`` a class, ``get`` an instance, list ``names``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from nas.errors import ConfigError
from nas.registry import Registry

if TYPE_CHECKING:
    from search_spaces.base import SearchSpace

SPACES: Registry[type["SearchSpace"]] = Registry("search space")
register = SPACES.register
names = SPACES.names
space_class = SPACES.get_class


def get(name: str, **options) -> "SearchSpace":
    """Build the space ``name`` with its constructor ``options`` (e.g. ``width_mult=0.5``)."""
    cls = space_class(name)
    try:
        return cls(**options)
    except TypeError as exc:  # an option the space does not take
        raise ConfigError(f"bad options for search space {name!r}: {exc}") from None
