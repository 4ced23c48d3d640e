"""nas: a hardware-aware neural architecture search engine.

The package ``nas`` is the engine (CLI, searchers, run store, executors). The supernets live in
``search_spaces``, cost models in ``predictors`` and measurements in ``evaluators``; dependencies
point one way: ``nas`` -> ``predictors`` -> ``evaluators`` -> ``search_spaces``.
"""

__version__ = "0.1.0"
