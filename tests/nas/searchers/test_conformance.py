"""Every registered searcher keeps the ask/tell contract of ``nas.searchers.base`` (like optuna's
sampler conformance tests), on the small ``ofa_mbv3`` space and a synthetic deterministic problem.

The problem: objective 1 is minus a smooth "accuracy" of MACs and params with an interaction term,
objective 2 is params, and one constraint caps MACs. About one network in ten "fails" (nan results,
chosen by a fixed function of the encoding, so a failed network would fail again).

``gp`` is a Gaussian process whose every model-based ask costs seconds in 46 dimensions (tens of
seconds with RUNNING trials, its q-batch acquisition), so its runs here are short: 7 evaluations, 2
per ask, the last one model-based, in the long run and in the continuation after a restore. (Exact
resume with fitted kernels in the checkpoint and RUNNING trials was checked once by hand: 10
evaluations, 4 start-up, checkpoint after 6, nine minutes.) Every other searcher runs the full
lengths (120 evaluations, 8 per ask).
"""

from __future__ import annotations

import functools
import pickle

import numpy as np
import optuna
import pytest
from pymoo.indicators.hv import HV

import nas.searchers
import search_spaces
from nas.errors import ConfigError

optuna.logging.set_verbosity(optuna.logging.WARNING)

SEARCHERS = nas.searchers.names()
MACS_LIMIT = 1.9e6
#: Per searcher: constructor options, ask batch size and length of the long run (evaluations).
OPTIONS = {"gp": {"n_startup_trials": 6}, "tpe": {"n_startup_trials": 10}}
BATCH = {"gp": 2}
RUN_LENGTH = {"gp": 7}
PREFIX = {"gp": 6}      # the determinism check; gp's model-based asks are checked by the resume test


def batch(name: str) -> int:
    return BATCH.get(name, 8)


def run_length(name: str) -> int:
    return RUN_LENGTH.get(name, 120)


def small_ofa(**overrides) -> search_spaces.SearchSpace:
    return search_spaces.get("ofa_mbv3", **{**search_spaces.space_class("ofa_mbv3").small_options, **overrides})


SPACE = small_ofa()


def evaluate(space: search_spaces.SearchSpace, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``objectives (n, 2)`` (both minimised) and ``constraints (n, 1)`` (feasible iff <= 0)."""
    macs, params = space.macs(vectors) / 1e6, space.params(vectors) / 1e6
    lm, lp = np.log(macs), np.log(params / 0.3)
    accuracy = 0.5 * lm + 0.3 * lp + 0.4 * lm * lp - 0.2 * lm ** 2
    objectives = np.stack([-accuracy, params], axis=1)
    constraints = (macs - MACS_LIMIT / 1e6)[:, None]
    failed = vectors.sum(axis=1) % 11 == 0
    objectives[failed] = np.nan
    constraints[failed] = np.nan
    return objectives, constraints


def make(name: str, seed: int = 0, space: search_spaces.SearchSpace = SPACE) -> nas.searchers.Searcher:
    return nas.searchers.create(name, space, n_objectives=2, n_constraints=1, seed=seed, **OPTIONS.get(name, {}))


def tell_shuffled(searcher: nas.searchers.Searcher, vectors: np.ndarray, step: int) -> None:
    """Tell the results of ``vectors`` in a shuffled order (fixed by ``step``), in two pieces."""
    objectives, constraints = evaluate(searcher.space, vectors)
    order = np.random.default_rng(step).permutation(len(vectors))
    for part in np.array_split(order, 2):
        searcher.tell(vectors[part], objectives[part], constraints[part])


def check_asked(searcher: nas.searchers.Searcher, vectors: np.ndarray, n: int, seen: set[bytes]) -> None:
    """The contract of one ``ask(n)``: at most ``n`` canonical encodings, none returned before."""
    assert vectors.ndim == 2 and vectors.shape[1] == searcher.space.n_genes and len(vectors) <= n
    assert vectors.dtype == np.int64
    assert np.array_equal(searcher.space.canonical(vectors), vectors)
    keys = [v.tobytes() for v in vectors]
    assert len(set(keys)) == len(keys) and not seen.intersection(keys)
    seen.update(keys)


def drive(searcher: nas.searchers.Searcher, evaluations: int, size: int, seen: set[bytes] | None = None,
          step: int = 0) -> list[np.ndarray]:
    """Ask ``size`` at a time and tell the results (shuffled, in pieces) until ``evaluations``.

    Batch ``i`` of the run (counting from ``step + 1``) is told in the order fixed by ``i``.
    """
    seen = set() if seen is None else seen
    asked: list[np.ndarray] = []
    while sum(map(len, asked)) < evaluations:
        n = min(size, evaluations - sum(map(len, asked)))
        vectors = searcher.ask(n)
        check_asked(searcher, vectors, n, seen)
        assert len(vectors) > 0, "ask returned nothing although every asked network was told"
        asked.append(vectors)
        tell_shuffled(searcher, vectors, step + len(asked))
    return asked


@functools.cache
def reference_run(name: str) -> np.ndarray:
    """All encodings asked by an uninterrupted seed-0 run (shared by several tests)."""
    return np.concatenate(drive(make(name), run_length(name), batch(name)))


# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SEARCHERS)
def test_whole_run_never_repeats_and_accepts_failures(name):
    asked = reference_run(name)
    assert len(asked) == run_length(name)
    assert len({v.tobytes() for v in asked}) == len(asked)       # check_asked also held per ask
    failed = np.isnan(evaluate(SPACE, asked)[0]).any(axis=1)
    assert 0 < failed.sum() < len(asked)                          # failures were told, and not re-proposed


@pytest.mark.parametrize("name", SEARCHERS)
def test_same_seed_same_sequence_other_seed_differs(name):
    reference = reference_run(name)
    prefix = PREFIX.get(name, 24)
    again = np.concatenate(drive(make(name, seed=0), prefix, batch(name)))
    assert np.array_equal(again, reference[:prefix])
    other = np.concatenate(drive(make(name, seed=1), prefix, batch(name)))
    assert not np.array_equal(other, reference[:prefix])


@pytest.mark.parametrize("name", SEARCHERS)
def test_state_dict_resumes_exactly(name):
    """Checkpoint mid-run with asks outstanding, restore into a fresh searcher (through pickle) and
    finish the run there: the whole sequence equals the uninterrupted run's."""
    size, length = batch(name), run_length(name)
    original, seen = make(name), set()
    asked = drive(original, (length // 2) // size * size, size, seen)
    outstanding = original.ask(size)
    check_asked(original, outstanding, size, seen)
    state = pickle.loads(pickle.dumps(original.state_dict()))
    del original

    restored = make(name)
    restored.load_state_dict(state)
    tell_shuffled(restored, outstanding, len(asked) + 1)
    asked.append(outstanding)
    asked += drive(restored, length - sum(map(len, asked)), size, seen, step=len(asked))
    assert np.array_equal(np.concatenate(asked), reference_run(name))


@pytest.mark.parametrize("name", SEARCHERS)
def test_ask_before_tell(name):
    """Asynchronous use: ask twice a batch before telling anything, then tell, then ask again."""
    searcher, seen, n = make(name), set(), 2 * batch(name)
    first = searcher.ask(n)
    check_asked(searcher, first, n, seen)
    assert len(first) > 0
    second = searcher.ask(n)           # generational searchers may return fewer, even none
    check_asked(searcher, second, n, seen)
    tell_shuffled(searcher, np.concatenate([second, first]), 7)
    third = searcher.ask(1)
    check_asked(searcher, third, 1, seen)
    assert len(third) == 1


@pytest.mark.parametrize("name", SEARCHERS)
@pytest.mark.parametrize("resolutions", [[32], list(range(32, 72, 4))])
def test_tiny_space_is_exhausted_gracefully(name, resolutions):
    """A space of 1 or 10 networks (only the resolution varies) is handed out completely, then ``ask``
    returns nothing."""
    tiny = small_ofa(ks_list=[3], expand_ratio_list=[3], depth_list=[2], resolutions=resolutions)
    assert tiny.size() == len(resolutions)
    searcher, seen = make(name, space=tiny), set()
    for step in range(12):
        vectors = searcher.ask(8)
        check_asked(searcher, vectors, 8, seen)
        tell_shuffled(searcher, vectors, step)
    assert len(seen) == tiny.size()
    assert len(searcher.ask(8)) == 0


def test_generational_searchers_hand_out_one_generation_at_a_time():
    searcher = nas.searchers.create("nsga2", SPACE, 2, 1, seed=0, pop_size=12)
    assert len(searcher.ask(8)) == 8 and len(searcher.ask(8)) == 4 and len(searcher.ask(8)) == 0
    searcher = nas.searchers.create("nsga2", SPACE, 2, 1, seed=0, pop_size=12)
    first = searcher.ask(12)
    tell_shuffled(searcher, first[:11], 0)
    assert len(searcher.ask(4)) == 0                # one member still pending: pymoo cannot go on
    tell_shuffled(searcher, first[11:], 1)
    assert len(searcher.ask(4)) == 4


def test_generational_searchers_go_on_when_pymoo_proposes_nothing(monkeypatch):
    """When mating finds no unique offspring, pymoo gets a generation of uniform unseen encodings."""
    searcher, seen = nas.searchers.create("nsga2", SPACE, 2, 1, seed=0, pop_size=12), set()
    drive(searcher, 12, 12, seen)
    monkeypatch.setattr(searcher.algorithm, "ask", lambda: None)
    fallback = searcher.ask(12)
    check_asked(searcher, fallback, 12, seen)
    assert len(fallback) == 12
    tell_shuffled(searcher, fallback, 3)
    monkeypatch.undo()
    assert searcher.algorithm.n_gen == 3 and len(searcher.ask(12)) == 12


def test_registry_and_bad_options():
    assert {"random", "nsga2", "agemoea", "nsga3", "tpe", "gp"} <= set(SEARCHERS)
    with pytest.raises(ConfigError):
        nas.searchers.create("nsga2", SPACE, 2, pop_size_typo=3)
    with pytest.raises(ConfigError):
        nas.searchers.create("nsga2", SPACE, 2, pop_size=1)


def test_nsga3_sizes_reference_directions_to_the_objectives():
    from nas.searchers.pymoo_searchers import reference_directions

    assert reference_directions(2, 20, 0).shape == (20, 2)
    assert reference_directions(3, 20, 0).shape == (15, 3)        # 5 partitions: C(7, 2) = 21 > 20
    assert reference_directions(6, 4, 0).shape == (6, 6)          # more objectives than points
    searcher = nas.searchers.create("nsga3", SPACE, 4, seed=0)
    assert len(searcher.ask(100)) == searcher.algorithm.pop_size


# ---------------------------------------------------------------------------------------------------------
def hypervolume(vectors: np.ndarray) -> float:
    """Hypervolume of the feasible evaluated points, objectives scaled by a fixed random sample."""
    sample = SPACE.random_vectors(2000, np.random.default_rng(123))
    objectives, constraints = evaluate(SPACE, sample)
    ok = ~np.isnan(objectives).any(axis=1)
    ideal, nadir = objectives[ok].min(axis=0), objectives[ok].max(axis=0)
    objectives, constraints = evaluate(SPACE, vectors)
    feasible = ~np.isnan(objectives).any(axis=1) & (constraints[:, 0] <= 0)
    scaled = (objectives[feasible] - ideal) / (nadir - ideal)
    return float(HV(ref_point=np.full(2, 1.1))(scaled))


def test_nsga2_beats_random_on_hypervolume():
    medians = {}
    for name in ("nsga2", "random"):
        volumes = [hypervolume(np.concatenate(drive(make(name, seed), 200, 8))) for seed in (0, 1, 2)]
        medians[name] = float(np.median(volumes))
    print("hypervolume medians after 200 evaluations:", medians)
    assert medians["nsga2"] > medians["random"]
