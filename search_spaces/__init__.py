"""Search spaces: supernets and the integer encodings of their subnetworks.

``search_spaces.get(name, **options)`` builds a registered space; ``search_spaces.names()`` lists
them. A new space is one module that decorates its ``SearchSpace`` subclass with
``@search_spaces.register("name")`` and is imported below.
"""

from search_spaces._registry import get, names, register, space_class
from search_spaces.base import Config, Gene, LayoutEntry, Metric, SearchSpace

# Built-in spaces register themselves on import.
from search_spaces import ofa_mbv3  # noqa: E402,F401
from search_spaces import nb201  # noqa: E402,F401
from search_spaces import sortednet_cnn, sortednet_transformer  # noqa: E402,F401
from search_spaces import dass_darts  # noqa: E402,F401
from search_spaces import quantnas_sr  # noqa: E402,F401

__all__ = ["Config", "Gene", "LayoutEntry", "Metric", "SearchSpace", "get", "names", "register", "space_class"]
