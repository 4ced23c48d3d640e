"""A named registry of classes: the one extension mechanism of spaces, predictors and searchers.

``@registry.register("name")`` on a class records it and sets ``cls.name`` (or the attribute the
registry is told to set); ``registry.get_class(name)`` finds it or raises one clear
``UnknownNameError`` listing the known names. Registering a name twice warns (the later one wins),
as timm's model registry does. No dependencies, so every package may use it.
"""

from __future__ import annotations

import warnings
from typing import Callable, Generic, TypeVar

from nas.errors import UnknownNameError

C = TypeVar("C", bound=type)


class Registry(Generic[C]):
    """Classes by name, for one kind of thing (``what``: "search space", "searcher", ...)."""

    def __init__(self, what: str, name_attribute: str = "name"):
        self.what, self.name_attribute = what, name_attribute
        self._classes: dict[str, C] = {}

    def register(self, name: str) -> Callable[[C], C]:
        def decorator(cls: C) -> C:
            if name in self._classes and self._classes[name] is not cls:
                warnings.warn(f"{self.what} {name!r} was registered twice; the later one wins", stacklevel=2)
            setattr(cls, self.name_attribute, name)
            self._classes[name] = cls
            return cls

        return decorator

    def names(self) -> list[str]:
        return sorted(self._classes)

    def get_class(self, name: str) -> C:
        try:
            return self._classes[name]
        except KeyError:
            raise UnknownNameError(f"unknown {self.what} {name!r}; known: {', '.join(self.names())}") from None
