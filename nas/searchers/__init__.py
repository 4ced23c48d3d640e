"""Searchers behind one ask/tell interface, registered by name (``create("nsga2", space, ...)``)."""

from nas.searchers.base import MANY_OBJECTIVES, Searcher, choose, create, default_for, names, register

# Built-in searchers register themselves on import.
from nas.searchers import linas, optuna_searchers, pymoo_searchers, random_search  # noqa: E402,F401

__all__ = ["MANY_OBJECTIVES", "Searcher", "choose", "create", "default_for", "names", "register"]
