"""Executors without a cluster: the interface, failure isolation, the asynchronous loop and its exact
replay (with an executor registered here that finishes candidates out of order, as remote workers do),
and the Ray executor's refusals that need no Ray instance."""

import json
import shutil
import socket
import warnings

import numpy as np
import pytest

import search_spaces
from nas import executors
from nas.cli import main
from nas.errors import ConfigError, NasError, UnknownNameError
from nas.objectives import Objective
from nas.runs import CHECKPOINT, LOG, RunStore
from nas.search import Search, SearchConfig, resume_search, start_search


@executors.register("shuffled")
class ShuffledExecutor(executors.Executor):
    """In this process, ``slots`` candidates in flight, finishing one or two at a time in a seeded
    random order."""

    def __init__(self, slots: int = 3, seed: int = 0):
        self._slots, self.rng, self.waiting = slots, np.random.default_rng(seed), []

    def start(self, config, run, measures):
        self.measures, self.slots = measures, self._slots

    def submit(self, vectors):
        self.waiting.extend(vectors)

    def wait(self):
        k = min(len(self.waiting), int(self.rng.integers(1, 3)))
        picks = sorted(self.rng.choice(len(self.waiting), k, replace=False), reverse=True)
        return executors.evaluate_candidates(self.measures, np.array([self.waiting.pop(i) for i in picks]))


def _config(**overrides):
    base = {"space": "nb201", "objectives": ["accuracy", "latency@pixel3"], "evaluations": 30, "searcher": "random",
            "batch": 4, "seed": 5, "constraints": ["latency@pixel3<=10ms"]}
    return SearchConfig(**{**base, **overrides})


def _events(run):
    return RunStore.open(run, write=False).events


def _canonical(vectors):
    return [search_spaces.get("nb201").canonical(np.array(v)).tobytes() for v in vectors]


def test_a_failing_measure_fails_only_the_candidates_it_fails_on():
    def picky(vectors):
        if np.any(vectors[:, 0] == 1):
            raise ValueError("gene 0 may not be 1")
        return vectors[:, 1].astype(float)

    measures = {"first": Objective("first", lambda v: v[:, 0].astype(float)), "picky": Objective("picky", picky)}
    vectors = np.array([[0, 3], [1, 2], [2, 1]])
    outcomes = executors.evaluate_candidates(measures, vectors)
    assert [o.error for o in outcomes] == [None, "picky: ValueError: gene 0 may not be 1", None]
    assert [o.values["first"] for o in outcomes] == [0.0, 1.0, 2.0]
    assert outcomes[0].values["picky"] == 3.0 and np.isnan(outcomes[1].values["picky"])
    one = executors.evaluate_candidates(measures, vectors[1:2])
    assert one[0].error == "picky: ValueError: gene 0 may not be 1"

    def user_error(vectors):
        raise ConfigError("fix your configuration")

    with pytest.raises(ConfigError, match="fix your configuration"):
        executors.evaluate_candidates({"bad": Objective("bad", user_error)}, vectors)


def test_executors_are_registered_by_name_and_check_their_options():
    assert {"in-process", "ray"} <= set(executors.names())
    with pytest.raises(UnknownNameError, match="unknown executor 'dask'; known: .*in-process.*ray"):
        executors.create("dask")
    with pytest.raises(ConfigError, match="bad options for executor 'ray'"):
        executors.create("ray", nodes=3)
    for options, message in [({"workers": 0}, "--workers must be at least 1"),
                             ({"cpus_per_eval": 0}, "--cpus-per-eval must be positive"),
                             ({"retries": -1}, "--retries must not be negative")]:
        with pytest.raises(ConfigError, match=message):
            executors.create("ray", **options)


LINAS = {"initial": 8, "exhaustive_limit": 0, "generations": 5, "population": 20}     # cheap rounds


@pytest.mark.parametrize("searcher, options, budget", [("random", {}, 30), ("nsga2", {"pop_size": 6}, 30),
                                                       ("tpe", {}, 30), ("linas", LINAS, 16)])
def test_an_asynchronous_log_replays_exactly_and_resumes_from_any_ask(tmp_path, searcher, options, budget):
    run = tmp_path / "run"
    start_search(run, _config(searcher=searcher, searcher_options=options, evaluations=budget),
                 executor=ShuffledExecutor(3, seed=1))
    events = _events(run)
    results = [e for e in events if e["type"] == "result"]
    assert [e["n"] for e in results] == list(range(1, budget + 1))
    assert len(set(_canonical(e["vector"] for e in results))) == budget
    in_flight = np.cumsum([len(e["vectors"]) if e["type"] == "ask" else -(e["type"] == "result") for e in events])
    assert in_flight.max() == 3 and in_flight[-1] == 0
    out_of_order = [e["vector"] for e in results] != [v for e in events if e["type"] == "ask" for v in e["vectors"]]
    assert out_of_order
    asks = [i for i, e in enumerate(events) if e["type"] == "ask"]
    for cut in (asks[len(asks) // 2], asks[-1]):          # as if killed right after this ask was logged
        copy = tmp_path / f"cut{cut}"
        shutil.copytree(run, copy)
        (copy / LOG).write_text("".join(json.dumps(e) + "\n" for e in events[:cut + 1]))
        (copy / CHECKPOINT).unlink()
        with RunStore.open(copy) as store, warnings.catch_warnings():
            warnings.simplefilter("error")                # a searcher that did not repeat an ask warns
            Search(store.config, store).restore()
            assert len(store.events) == cut + 1           # and logs a "diverged" event: neither happened
    resume_search(copy, executor=ShuffledExecutor(3, seed=2))
    resumed = _events(copy)
    results = [e for e in resumed if e["type"] == "result"]
    assert [e["n"] for e in results] == list(range(1, budget + 1))
    asked = _canonical(v for e in resumed if e["type"] == "ask" for v in e["vectors"])
    assert sorted(asked) == sorted(_canonical(e["vector"] for e in results))   # each asked one evaluated once


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_ray_address_is_one_error_and_changes_nothing(tmp_path, capsys):
    address = f"127.0.0.1:{_free_port()}"
    argv = ["search", "--space", "nb201", "--objectives", "accuracy", "--evaluations", "4", "--run",
            str(tmp_path / "run"), "--ray", address]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: cannot reach a Ray cluster at --ray {address}: ")
    assert not (tmp_path / "run").exists()
    start_search(tmp_path / "run", _config(evaluations=4))
    before = (tmp_path / "run" / LOG).read_bytes()
    with pytest.raises(NasError, match="cannot reach a Ray cluster"):
        resume_search(tmp_path / "run", 8, executor=executors.create("ray", address=address))
    assert (tmp_path / "run" / LOG).read_bytes() == before


@pytest.mark.parametrize("option", [["--workers", "2"], ["--gpus-per-eval", "1"], ["--retries", "0"]])
def test_ray_options_without_ray_are_refused(tmp_path, capsys, option):
    with pytest.raises(SystemExit) as exit_info:
        main(["search", "--space", "nb201", "--objectives", "accuracy", "--evaluations", "4", "--run",
              str(tmp_path / "run"), *option])
    assert exit_info.value.code == 2 and f"{option[0]} needs --ray" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
