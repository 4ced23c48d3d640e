"""Training weight-sharing supernets: methods (phases), the trainer, and its run folder."""

from search_spaces.training.methods import TrainConfig, build_phases, method_names, register_method
from search_spaces.training.phases import ChoiceSampler, EpsilonSchedule, Phase
from search_spaces.training.trainer import Trainer, stored_config

__all__ = ["ChoiceSampler", "EpsilonSchedule", "Phase", "TrainConfig", "Trainer", "build_phases", "method_names",
           "register_method", "stored_config"]

# The differentiable-search recipes register themselves on import (dass, darts, quantnas).
from search_spaces.training import dass_search, quantnas_search  # noqa: E402,F401
