"""``linas``'s batch choice: the hypervolume gain it ranks candidates by, its focused reference point,
and the order of the rest of a batch."""

from __future__ import annotations

import numpy as np
import pytest

import nas.searchers
import search_spaces
from nas.errors import ConfigError
from nas.pareto import hypervolume
from nas.searchers.linas import _hypervolume_gain_2d


def test_hypervolume_gain_equals_the_difference_of_hypervolumes():
    rng = np.random.default_rng(0)
    front, points = rng.random((6, 2)), rng.random((40, 2)) * 1.3
    reference = np.array([1.2, 0.9])
    base = hypervolume(front, reference)
    expected = [hypervolume(np.vstack([front, p]), reference) - base for p in points]
    assert np.allclose(_hypervolume_gain_2d(front, points, reference), expected)


def linas_told(objectives: np.ndarray, **options) -> nas.searchers.Searcher:
    space = search_spaces.get("nb201")
    searcher = nas.searchers.create("linas", space, 2, seed=0, **options)
    searcher.tell(space.table_vectors(np.arange(len(objectives))), objectives)
    return searcher


class Fixed:
    """A stand-in predictor with known predictions: the first ``len(values)`` networks' values repeated."""

    def __init__(self, values: np.ndarray):
        self.values = values

    def predict(self, vectors: np.ndarray) -> np.ndarray:
        return np.resize(self.values, len(vectors))


def test_focus_puts_the_reference_at_the_predicted_quantile_of_the_space():
    searcher = linas_told(np.zeros((20, 2)))                      # default: focus 0.9 on the first objective
    minus_accuracy = -np.linspace(10, 94, 85)
    levels = searcher._focus_levels([Fixed(minus_accuracy), Fixed(np.arange(85.0))])
    assert np.isclose(levels[0], np.quantile(np.resize(minus_accuracy, 15625), 0.1)) and np.isnan(levels[1])
    told = np.column_stack([-np.linspace(10, 94, 20), np.linspace(1, 20, 20)])
    assert np.allclose(searcher._reference(told, levels), [levels[0], 20 + 0.1 * 19])
    assert np.allclose(searcher._reference(told, np.full(2, np.nan)), [-10 + 0.1 * 84, 20 + 0.1 * 19])
    per_objective = linas_told(np.zeros((20, 2)), focus=[None, 0.5])._focus_levels([Fixed(minus_accuracy),
                                                                                     Fixed(np.arange(85.0))])
    assert np.isnan(per_objective[0]) and np.isclose(per_objective[1], np.quantile(np.resize(np.arange(85.0), 15625), 0.5))


def test_focus_rejects_values_outside_the_unit_interval_and_too_many_of_them():
    for bad in (0.0, 1.5, True, "top", [0.9, 0.9, 0.9]):
        with pytest.raises(ConfigError, match="focus"):
            nas.searchers.create("linas", search_spaces.get("nb201"), 2, focus=bad)


def test_a_focused_reference_makes_a_small_gain_at_the_top_win_over_the_tail():
    # front: two accurate networks and a fast poor one; candidate A improves the top slightly at
    # mid latency, candidate B is a faster poor network in the tail
    told = np.array([[-93.0, 10.0], [-94.0, 20.0], [-30.0, 1.0]] + [[-90.0 + d, 15.0] for d in np.linspace(-1, 1, 17)])
    candidates = np.array([[-93.3, 12.0], [-28.0, 0.2]])
    searcher = linas_told(told)
    for levels, expected_first in (([-92.0, np.nan], 0), ([np.nan, np.nan], 1)):
        order = searcher._greedy_hvi(candidates, np.ones(len(told), dtype=bool), 1, np.array(levels))
        assert order[0] == expected_first


def test_when_nothing_adds_hypervolume_the_candidates_closest_to_the_front_come_first():
    told = np.array([[-94.0, 20.0], [-93.0, 10.0]] + [[-85.0, 30.0]] * 18)
    # every candidate is dominated by the front; the extremes (fastest, most accurate) are far from it
    candidates = np.array([[-80.0, 11.0], [-92.9, 10.2], [-93.9, 35.0], [-92.0, 12.0]])
    order = linas_told(told)._greedy_hvi(candidates, np.ones(len(told), dtype=bool), 4, np.full(2, np.nan))
    assert list(order) == [1, 3, 2, 0]


def test_a_constraint_bounds_the_region_the_picks_fill():
    # accuracy >= 92 as a constraint: three feasible networks, seventeen fast infeasible ones. Scaled by
    # every network (penalties included), any step at the fast end of the feasible front looked huge
    # (B); scaled by the feasible ones, filling the gap between the two accurate networks wins (A).
    accuracy = np.r_[93.0, 94.0, 92.5, np.linspace(85, 90, 17)]
    latency = np.r_[10.0, 20.0, 5.0, np.linspace(1, 3, 17)]
    space = search_spaces.get("nb201")
    searcher = nas.searchers.create("linas", space, 2, n_constraints=1, seed=0)
    searcher.tell(space.table_vectors(np.arange(20)), np.column_stack([-accuracy, latency]), (92 - accuracy)[:, None])
    candidates = np.array([[-93.5, 15.0], [-92.6, 4.5]])            # A, B: both predicted feasible
    assert searcher._greedy_hvi(candidates, np.ones(20, dtype=bool), 1, np.full(2, np.nan))[0] == 0
