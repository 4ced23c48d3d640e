"""``linas``'s batch choice: the hypervolume gain it ranks candidates by, and its reference point."""

from __future__ import annotations

import numpy as np

import nas.searchers
import search_spaces
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


def test_a_far_tail_of_poor_networks_does_not_set_the_reference_point():
    # the bulk of minus-accuracy near -90, two dead networks at -10; latencies without a tail
    minus_accuracy = np.r_[-90 + np.linspace(-2, 2, 18), -10, -10]
    latency = np.linspace(1, 20, 20)
    objectives = np.column_stack([minus_accuracy, latency])
    robust = linas_told(objectives)._reference(objectives)             # default: 2 MADs
    mad = 1.4826 * np.median(np.abs(minus_accuracy - np.median(minus_accuracy)))
    assert np.isclose(robust[0], np.median(minus_accuracy) + 2 * mad)
    assert np.isclose(robust[1], 20 + 0.1 * 19)            # 2 MADs reach past the worst: 10 % beyond it
    plain = linas_told(objectives, reference_mads=None)._reference(objectives)
    assert np.allclose(plain, [-10 + 0.1 * 82, 20 + 0.1 * 19])


def test_the_robust_reference_makes_a_small_gain_at_the_top_win_over_the_tail():
    # front: two accurate networks and a fast poor one; candidate A improves the top slightly at
    # mid latency, candidate B is a faster poor network in the tail
    told = np.array([[-93.0, 10.0], [-94.0, 20.0], [-30.0, 1.0]] + [[-90.0 + d, 15.0] for d in np.linspace(-1, 1, 17)])
    candidates = np.array([[-93.3, 12.0], [-28.0, 0.2]])
    for mads, expected_first in ((2.0, 0), (None, 1)):
        searcher = linas_told(told, reference_mads=mads)
        order = searcher._greedy_hvi(candidates, np.ones(len(told), dtype=bool), 1)
        assert order[0] == expected_first


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
    assert searcher._greedy_hvi(candidates, np.ones(20, dtype=bool), 1)[0] == 0
