"""Search-free selection (SortedNet): the largest sub-model of a space's nested order within budgets.

A sorted (nested) supernet orders its sub-models in a chain, each a sub-model of the next, so costs rise
along it. For budgets on any objective the search engine knows (``latency@DEVICE``, ``macs``,
``params``), the choice is the last sub-model of the chain meeting every constraint: no search at all.
Comparing it with a real search over the same space tells users whether searching finds a better one.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nas.errors import ConfigError
from nas.objectives import Context, parse_constraint, resolve
from nas.search import SearchConfig, open_space


def select_nested(config: SearchConfig, with_metric: bool = True) -> dict[str, Any]:
    """The chosen sub-model, its position in the chain, its constraint values and (with a trained
    supernet and ``with_metric``) its task metric; a clear error if no sub-model meets the budgets."""
    space = open_space(config)
    if not hasattr(space, "nested_order"):
        raise ConfigError(f"space {space.name!r} has no nested order of sub-models; use `nas search` instead")
    if not config.constraints:
        raise ConfigError("nas select needs at least one --constraint (e.g. \"macs<=2M\")")
    context = Context(space, config.devices_file, config.latency_predictors, config.supernet, config.data)
    constraints = [parse_constraint(c) for c in config.constraints]
    chain = space.nested_order()
    vectors = space.encode(chain)
    values = {c.name: np.asarray(resolve(c.name, context).evaluate(vectors), dtype=float) for c in constraints}
    feasible = np.all([c.violation(values[c.name]) <= 0 for c in constraints], axis=0)
    if not feasible.any():
        smallest = {c.name: float(values[c.name][0]) for c in constraints}
        raise ConfigError(f"no sub-model of the nested order meets {', '.join(config.constraints)}; the smallest "
                          f"sub-model has {smallest}")
    index = int(np.flatnonzero(feasible)[-1])
    out = {"config": chain[index], "position": index + 1, "chain_length": len(chain),
           "values": {name: float(v[index]) for name, v in values.items()}}
    if with_metric and config.supernet is not None:
        metric = resolve(space.metric.name, context)
        out["values"][space.metric.name] = float(metric.evaluate(vectors[index:index + 1])[0])
    return out
