"""The search engine end to end on the real nb201 table: budgets, archive, resume, bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import search_spaces
from nas.cli import main
from nas.errors import ConfigError
from nas.runs import LOG, RunError, RunStore
from nas.search import SearchConfig, resume_search, start_search

OBJECTIVES = ["accuracy", "latency@pixel3"]


def _config(**overrides):
    base = dict(space="nb201", objectives=OBJECTIVES, evaluations=40, searcher="random", batch=8, seed=3,
                constraints=["latency@pixel3<=10ms"])
    return SearchConfig(**{**base, **overrides})


def _results(run):
    return RunStore.open(run, write=False).results()


def test_search_respects_the_budget_and_reports_the_feasible_front(tmp_path):
    store, archive = start_search(tmp_path / "run", _config())
    results = _results(tmp_path / "run")
    assert [e["n"] for e in results] == list(range(1, 41))
    space = search_spaces.get("nb201")
    vectors = np.array([e["vector"] for e in results])
    np.testing.assert_allclose([e["values"]["accuracy"] for e in results], space.accuracy(vectors))
    latency = np.array([e["values"]["latency@pixel3"] for e in results])
    accuracy = np.array([e["values"]["accuracy"] for e in results])
    feasible = latency <= 10
    best = next(e for e in results if e["n"] == archive["best"])
    assert best["values"]["accuracy"] == accuracy[feasible].max() and archive["best"] in archive["front"]
    ties = feasible & (accuracy == accuracy[feasible].max())
    assert best["values"]["latency@pixel3"] == latency[ties].min()      # among equals, the fastest
    front = [e for e in results if e["n"] in archive["front"]]
    for e in front:                                   # feasible and not dominated by any feasible result
        assert e["values"]["latency@pixel3"] <= 10
        dominated = (accuracy[feasible] >= e["values"]["accuracy"]) & (latency[feasible] <= e["values"]["latency@pixel3"]) \
            & ((accuracy[feasible] > e["values"]["accuracy"]) | (latency[feasible] < e["values"]["latency@pixel3"]))
        assert not dominated.any()
    assert len({tuple(space.canonical(np.array(e["vector"]))) for e in results}) == 40   # no repeats


def test_an_impossible_budget_states_the_smallest_achievable_value(tmp_path):
    smallest = np.nanmin(search_spaces.get("nb201").table_value(np.array(
        search_spaces.get("nb201").table_vectors(np.arange(15625))), "hw_cifar10_pixel3_latency_ms"))
    with pytest.raises(ConfigError, match=f"smallest achievable latency@pixel3 is {smallest:.6g} ms"):
        start_search(tmp_path / "run", _config(constraints=[f"latency@pixel3<={smallest / 2}ms"]))
    assert not (tmp_path / "run").exists()


def test_resume_extends_the_budget_and_refuses_what_it_should(tmp_path):
    start_search(tmp_path / "run", _config(evaluations=16))
    with pytest.raises(RunError, match="already holds a run"):
        start_search(tmp_path / "run", _config())
    with pytest.raises(RunError, match="is finished .16 of 16 evaluations"):
        resume_search(tmp_path / "run")
    with pytest.raises(RunError, match="searcher 'random' .asked: 'nsga2'"):
        resume_search(tmp_path / "run", 30, expect={"searcher": "nsga2"})
    resume_search(tmp_path / "run", 30)
    assert len(_results(tmp_path / "run")) == 30


@pytest.mark.parametrize("searcher", ["random", "nsga2", "linas"])
def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, searcher):
    """A real process is killed with SIGKILL mid-search, then resumed from another process."""
    args = ["search", "--space", "nb201", "--objectives", "accuracy,latency@raspi4", "--searcher", searcher,
            "--evaluations", "120", "--batch", "4", "--seed", "1"]
    assert _cli(args + ["--run", str(tmp_path / "whole")]).returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "nas", *args, "--run", str(tmp_path / "cut")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = tmp_path / "cut" / LOG
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and log.read_bytes().count(b'"type":"result"') >= 30:
            break
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(_results(tmp_path / "cut"))
    assert 0 < done < 120, "the kill should land mid-search"
    assert _cli(["resume", str(tmp_path / "cut")]).returncode == 0
    whole, cut = _results(tmp_path / "whole"), _results(tmp_path / "cut")
    assert [e["vector"] for e in cut] == [e["vector"] for e in whole]
    assert [e["values"] for e in cut] == [e["values"] for e in whole]
    archive = lambda run: json.loads((run / "archive.json").read_text())  # noqa: E731
    assert archive(tmp_path / "cut")["front"] == archive(tmp_path / "whole")["front"]


def _cli(args):
    return subprocess.run([sys.executable, "-m", "nas", *args], capture_output=True, text=True, timeout=300)


def test_report_json_has_every_evaluation_and_the_front(tmp_path, capsys):
    start_search(tmp_path / "run", _config(evaluations=12))
    with pytest.raises(SystemExit):
        main(["report", str(tmp_path / "run"), "--json", "--plot", str(tmp_path / "p.png")])
    data = json.loads(capsys.readouterr().out)
    assert [e["n"] for e in data["evaluations"]] == list(range(1, 13))
    assert set(data["evaluations"][0]) == {"n", "config", "vector", "values", "status", "error", "seconds"}
    assert set(data["archive"]["front"]) <= set(range(1, 13)) and data["config"]["searcher"] == "random"
    assert (tmp_path / "p.png").stat().st_size > 1000


@pytest.mark.parametrize("argv, message", [
    (["--space", "nope", "--objectives", "accuracy"], "unknown search space 'nope'"),
    (["--space", "nb201", "--objectives", "accuracy", "--searcher", "nope"], "unknown searcher 'nope'"),
    (["--space", "nb201", "--objectives", "accuracy,latency@nowhere"], "unknown device 'nowhere'"),
    (["--space", "nb201", "--objectives", "accuracy,energy"], "unknown objective 'energy'"),
    (["--space", "nb201", "--objectives", "accuracy", "--constraint", "latency@pixel3 < 3"], "is not NAME<=VALUE"),
    (["--space", "nb201", "--objectives", "accuracy", "--constraint", "latency@pixel3<=0ms"], "must be positive"),
    (["--space", "nb201", "--objectives", "accuracy", "--evaluations", "0"], "--evaluations must be a positive"),
    (["--space", "ofa_mbv3", "--objectives", "accuracy,macs"], "pass --supernet FILE"),
])
def test_bad_search_input_exits_2_and_writes_nothing(tmp_path, capsys, argv, message):
    argv = ["search", *argv, "--run", str(tmp_path / "run")]
    if "--evaluations" not in argv:
        argv += ["--evaluations", "5"]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_resume_of_a_corrupt_log_is_refused_and_nothing_changes(tmp_path, capsys):
    start_search(tmp_path / "run", _config(evaluations=8))
    log = tmp_path / "run" / LOG
    lines = log.read_bytes().split(b"\n")
    lines[2] = b"{broken"
    log.write_bytes(b"\n".join(lines))
    before = log.read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        main(["resume", str(tmp_path / "run"), "--evaluations", "20"])
    assert exit_info.value.code == 2 and "corrupt at line 3" in capsys.readouterr().err
    assert log.read_bytes() == before


def test_latency_predictor_files_are_copied_into_the_run(tmp_path):
    import predictors

    space = search_spaces.get("nb201")
    vectors = space.table_vectors(np.arange(0, 15625, 97))
    model = predictors.create("ridge", space, "latency_ms", "raspi4")
    model.fit(vectors, space.table_value(vectors, "hw_cifar10_raspi4_latency_ms"))
    source = tmp_path / "raspi4.npz"
    model.save(source)
    config = _config(objectives=["accuracy", "latency@raspi4"], constraints=[], evaluations=10,
                     latency_predictors={"raspi4": str(source)})
    start_search(tmp_path / "run", config)
    source.unlink()                                    # the run no longer needs the user's file
    resume_search(tmp_path / "run", 20)
    results = _results(tmp_path / "run")
    np.testing.assert_allclose([e["values"]["latency@raspi4"] for e in results],
                               model.predict(np.array([e["vector"] for e in results])))


def test_impossible_lookup_table_budget_on_ofa_is_refused_with_the_smallest_latency(tmp_path):
    from evaluators.devices import get_device
    from predictors.lut import LookupTablePredictor

    device = get_device("note10")
    space = search_spaces.get("ofa_mbv3", **device.space_options)
    smallest_config = {"ks": [3] * 20, "e": [3] * 20, "d": [2] * 5, "r": 160}
    lut = LookupTablePredictor.from_ofa_tables(space, device.lut)
    floor = lut.predict(space.encode(smallest_config)[None, :])[0]
    config = SearchConfig(space="ofa_mbv3", space_options=device.space_options, objectives=["macs", "latency@note10"],
                          constraints=["latency@note10<=1ms"], evaluations=10)
    with pytest.raises(ConfigError, match=r"smallest achievable latency@note10 is ([0-9.]+) ms \(about") as err:
        start_search(tmp_path / "run", config)
    stated = float(str(err.value).split(" is ")[1].split(" ms")[0])
    assert stated <= floor * (1 + 1e-6) and not (tmp_path / "run").exists()


def test_resume_without_checkpoint_survives_a_searcher_that_does_not_repeat_itself(tmp_path):
    start_search(tmp_path / "run", _config(evaluations=16, constraints=[]))
    (tmp_path / "run" / "searcher" / "state.pkl").unlink()         # force a replay of the whole log
    log = tmp_path / "run" / LOG
    events = [json.loads(line) for line in log.read_text().splitlines()]
    last_ask = max(i for i, e in enumerate(events) if e["type"] == "ask")
    events[last_ask]["vectors"] = events[last_ask]["vectors"][::-1]   # as if the searcher had changed its mind
    log.write_text("".join(json.dumps(e) + "\n" for e in events))
    with pytest.warns(UserWarning, match="did not repeat its proposals"):
        resume_search(tmp_path / "run", 24)
    results = _results(tmp_path / "run")
    space = search_spaces.get("nb201")
    assert len(results) == 24
    assert len({space.canonical(np.array(e["vector"])).tobytes() for e in results}) == 24


def test_lookup_table_devices_accept_any_options_their_tables_cover():
    from nas.search import Search

    covered = _config(space="ofa_mbv3", space_options={"width_mult": 1.2, "resolutions": [160, 224]},
                      objectives=["macs", "latency@note10"], constraints=[])
    values = Search(covered.to_dict()).measures["latency@note10"].evaluate(
        search_spaces.get("ofa_mbv3", width_mult=1.2, resolutions=[160, 224]).random_vectors(3, np.random.default_rng(0)))
    assert np.all(values > 0)
    other_width = _config(space="ofa_mbv3", space_options={"resolutions": [160]}, objectives=["macs", "latency@note10"],
                          constraints=[])
    with pytest.raises(Exception, match="no entry for layer '160:Conv-input:160x160x3-output:80x80x16'"):
        Search(other_width.to_dict())
