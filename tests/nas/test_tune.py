"""``nas.tune.NasSearcher``: a nas searcher behind Ray Tune's ``Searcher``; save/restore, and a Tune
experiment whose driver is killed with SIGKILL and which ``Tuner.restore`` then finishes."""

import importlib.util
import json
import os
import pickle
import signal
import subprocess
import sys
import time

import pytest

from nas.tune import NasSearcher

pytestmark = pytest.mark.slow

ARGS = {"space": "nb201", "metric": ["accuracy", "latency@pixel3"], "mode": ["max", "min"], "searcher": "nsga2",
        "constraints": ["latency@pixel3<=8ms"], "seed": 1, "searcher_options": {"pop_size": 4}}

JOB = '''
import os
import sys
import time

from ray import tune

import search_spaces
from nas.tune import NasSearcher

MARKS = {marks!r}


def trainable(config):
    space = search_spaces.get("nb201")
    vector = space.encode(config["subnet"])[None, :]
    time.sleep(0.3)
    open(os.path.join(MARKS, f"{{tune.get_context().get_trial_id()}}-{{time.time_ns()}}"), "w").close()
    tune.report({{"accuracy": float(space.accuracy(vector)[0]),
                 "latency@pixel3": float(space.table_value(vector, "hw_cifar10_pixel3_latency_ms")[0])}})


if __name__ == "__main__":
    import ray

    ray.init(address=sys.argv[1], log_to_driver=False)
    searcher = NasSearcher(**{args!r})
    tuner = tune.Tuner(trainable, tune_config=tune.TuneConfig(search_alg=searcher, num_samples=12, reuse_actors=True),
                       run_config=tune.RunConfig(storage_path=sys.argv[2], name="exp", verbose=0))
    tuner.fit()
'''


def _report(searcher, trial, config):
    import search_spaces

    space = search_spaces.get("nb201")
    vector = space.encode(config["subnet"])[None, :]
    searcher.on_trial_complete(trial, {"accuracy": float(space.accuracy(vector)[0]),
                                       "latency@pixel3": float(space.table_value(vector, "hw_cifar10_pixel3_latency_ms")[0])})


def test_save_and_restore_continue_exactly_with_trials_in_flight(tmp_path):
    original = NasSearcher(**ARGS)
    configs = {f"t{i}": original.suggest(f"t{i}") for i in range(4)}
    assert original.suggest("t4") is None                  # the generation is out: wait for results
    for trial in ("t2", "t0"):
        _report(original, trial, configs[trial])
    original.save(str(tmp_path / "state.pkl"))
    restored = NasSearcher(**{**ARGS, "seed": 99})         # restore replaces everything, seed included
    restored.restore(str(tmp_path / "state.pkl"))
    copied = pickle.loads(pickle.dumps(original))          # how Tune stores its search algorithm
    for searcher in (original, restored, copied):
        _report(searcher, "t1", configs["t1"])
        searcher.on_trial_complete("t3", error=True)       # told as a failed evaluation
    suggestions = [[s.suggest(f"n{i}") for i in range(4)] for s in (original, restored, copied)]
    assert suggestions[0] == suggestions[1] == suggestions[2] and None not in suggestions[0]


def test_tuner_restore_finishes_an_experiment_whose_driver_was_killed(tmp_path, monkeypatch):
    import ray

    ray.init(address="local", num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False)
    try:
        marks = tmp_path / "marks"
        marks.mkdir()
        job = tmp_path / "tune_job.py"
        job.write_text(JOB.format(marks=str(marks), args=ARGS))
        env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "0", "RAY_USAGE_STATS_ENABLED": "0"}
        storage = tmp_path / "tune"
        driver = subprocess.Popen([sys.executable, str(job), ray.get_runtime_context().gcs_address, str(storage)],
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 180
        while len(os.listdir(marks)) < 4 and driver.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        os.kill(driver.pid, signal.SIGKILL)
        _, err = driver.communicate()
        completed_before = {name.split("-")[0] for name in os.listdir(marks)}
        assert 4 <= len(completed_before) < 12, err[-3000:]

        spec = importlib.util.spec_from_file_location("tune_job", job)
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, "tune_job", module)
        spec.loader.exec_module(module)
        ray.cloudpickle.register_pickle_by_value(module)      # Tune's workers cannot import it by name
        from ray import tune

        results = tune.Tuner.restore(str(storage / "exp"), trainable=module.trainable).fit()
        assert len(results) == 12 and not results.errors
        subnets = [json.dumps(r.config["subnet"]) for r in results]
        assert len(set(subnets)) == 12                         # the restored searcher went on; it did not restart
        runs = [name.split("-")[0] for name in os.listdir(marks)]
        assert len(set(runs)) == 12 and len(runs) <= 12 + 2    # only the trials running at the kill ran again
    finally:
        ray.shutdown()
