import itertools

import numpy as np

from nas.pareto import hypervolume, non_dominated


def _brute_force_front(f):
    return np.array([not any(np.all(g <= x) and np.any(g < x) for g in f) for x in f])


def test_non_dominated_equals_brute_force():
    rng = np.random.default_rng(0)
    for m in (2, 3):
        f = rng.integers(0, 6, size=(60, m)).astype(float)
        np.testing.assert_array_equal(non_dominated(f), _brute_force_front(f))


def test_nan_rows_are_never_on_the_front():
    f = np.array([[0.0, 0.0], [np.nan, -1.0], [1.0, 1.0]])
    np.testing.assert_array_equal(non_dominated(f), [True, False, False])


def test_hypervolume_two_objectives_by_hand():
    f = np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0], [3.5, 3.5], [5.0, 0.0]])
    # reference (4, 4): rectangles 3*1 + 2*1 + 1*1 = 6 (the (3.5,3.5) point adds nothing; (5,0) is outside)
    assert hypervolume(f, np.array([4.0, 4.0])) == 6.0


def test_hypervolume_three_objectives_matches_grid_count():
    rng = np.random.default_rng(1)
    f = rng.integers(0, 4, size=(8, 3)).astype(float)
    ref = np.array([4.0, 4.0, 4.0])
    cells = sum(np.any(np.all(f <= np.array(c), axis=1)) for c in itertools.product(range(4), repeat=3))
    assert abs(hypervolume(f, ref) - cells) < 1e-9
