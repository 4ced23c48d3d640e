"""Where a search's evaluations run, by name: ``in-process`` (the default) or ``ray`` (a Ray cluster).

``create("ray", address="local", workers=2)``; see ``nas.executors.base`` for the interface. Ray itself
is imported only when a Ray executor starts.
"""

# Built-in executors register themselves on import.
from nas.executors import local, ray_executor  # noqa: F401
from nas.executors.base import (
    Executor,
    Outcome,
    create,
    evaluate_candidates,
    names,
    register,
)

__all__ = ["Executor", "Outcome", "create", "evaluate_candidates", "names", "register"]
