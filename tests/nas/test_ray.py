"""The Ray executor on real Ray: two local workers, failures, bad input, and a 2-node local cluster on
which a worker is killed mid-evaluation and the driver is killed with SIGKILL and resumed.

One local Ray instance is shared by the tests that drive a search from this process; the cluster tests
start their own nodes with ``ray start --block`` (explicit ports, a private temp dir) and stop them by
PID, and their drivers are ``nas`` processes.
"""

import importlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import ray

import search_spaces
from nas import executors
from nas.errors import NasError
from nas.runs import LOG, RunStore
from nas.search import SearchConfig, resume_search, start_search

pytestmark = pytest.mark.slow
psutil = importlib.import_module("psutil")            # the copy bundled with Ray: importing ray put it on the path

PIXEL3 = "hw_cifar10_pixel3_latency_ms"
RAY = str(Path(sys.executable).with_name("ray"))
ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def ray_local():
    ray.init(address="local", num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _config(**overrides):
    base = {"space": "nb201", "objectives": ["accuracy", "latency@pixel3"], "evaluations": 24, "searcher": "tpe",
            "batch": 4, "seed": 2, "constraints": ["latency@pixel3<=10ms"]}
    return SearchConfig(**{**base, **overrides})


def _on_this_connection(**options):
    return executors.create("ray", address=None, **options)


def _events(run):
    return RunStore.open(run, write=False).events


def _results(run):
    return [e for e in _events(run) if e["type"] == "result"]


def _distinct(results) -> int:
    space = search_spaces.get("nb201")
    return len({space.canonical(np.array(e["vector"])).tobytes() for e in results})


def test_two_workers_evaluate_each_candidate_once_asking_as_results_come_back(ray_local, tmp_path):
    _, archive = start_search(tmp_path / "run", _config(), executor=_on_this_connection(workers=2))
    events = _events(tmp_path / "run")
    results = [e for e in events if e["type"] == "result"]
    assert [e["n"] for e in results] == list(range(1, 25)) and _distinct(results) == 24
    assert all(e["status"] == "ok" for e in results) and archive["evaluations"] == 24
    space = search_spaces.get("nb201")
    vectors = np.array([e["vector"] for e in results])
    np.testing.assert_allclose([e["values"]["accuracy"] for e in results], space.accuracy(vectors))
    np.testing.assert_allclose([e["values"]["latency@pixel3"] for e in results], space.table_value(vectors, PIXEL3))
    in_flight, most = 0, 0
    for e in events:
        in_flight += len(e["vectors"]) if e["type"] == "ask" else -(e["type"] == "result")
        most = max(most, in_flight)
    assert most == 2 and in_flight == 0                 # one candidate per worker, none left over
    assert sum(e["type"] == "ask" and e["requested"] == 1 for e in events) >= 10   # a new one per result


def test_an_evaluation_that_raises_is_recorded_as_failed_with_its_message(ray_local, tmp_path):
    devices = tmp_path / "devices.yaml"
    devices.write_text("devices:\n  - name: unplugged\n    kind: measured\n    backend: torch\n    torch_device: cuda:99\n")
    config = {"objectives": ["accuracy", "latency@unplugged"], "constraints": [], "searcher": "random", "batch": 3,
              "devices_file": str(devices)}
    start_search(tmp_path / "ray", _config(evaluations=6, **config), executor=_on_this_connection(workers=2))
    start_search(tmp_path / "here", _config(evaluations=3, **config))
    results, here = _results(tmp_path / "ray"), _results(tmp_path / "here")
    assert len(results) == 6 and _distinct(results) == 6               # recorded once each, never retried
    assert all(e["status"] == "failed" and e["values"]["accuracy"] is not None for e in results)
    assert {e["error"] for e in results} == {here[0]["error"]}          # the message the measure raised
    assert here[0]["error"].startswith("latency@unplugged: ")


def test_missing_gpus_and_workers_that_cannot_import_nas_are_refused_before_evaluating(ray_local, tmp_path):
    run = tmp_path / "run"
    start_search(run, _config(evaluations=4))
    before = (run / LOG).read_bytes()
    with pytest.raises(NasError, match=r"^the Ray cluster has 0 GPUs; --gpus-per-eval 1 needs"):
        resume_search(run, 8, executor=_on_this_connection(gpus_per_eval=1))
    with pytest.raises(NasError, match=r"^3 workers of 1 CPUs and 0 GPUs do not fit the Ray cluster \(2 CPUs"):
        start_search(tmp_path / "new", _config(), executor=_on_this_connection(workers=3))
    blocker = tmp_path / "no_nas"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\n\n\nclass NoNas:\n    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'nas':\n            raise ModuleNotFoundError(f'No module named {name!r}')\n\n\n"
        "sys.meta_path.insert(0, NoNas())\n")
    without_nas = _on_this_connection(workers=1, runtime_env={"env_vars": {"PYTHONPATH": str(blocker)}})
    with pytest.raises(NasError, match=r"^Ray workers could not start: ModuleNotFoundError: No module named 'nas.*"
                                       r"install the nas project wherever the Ray workers run"):
        resume_search(run, 8, executor=without_nas)
    assert (run / LOG).read_bytes() == before and not (tmp_path / "new").exists()
    resume_search(run, 8)                                # nothing was lost: it goes on where it stopped
    assert [e["n"] for e in _results(run)] == list(range(1, 9))


def test_two_workers_measure_accuracy_on_the_trained_digits_supernet(ray_local, tiny_digits, tiny_ofa, tmp_path):
    from evaluators.accuracy import SubnetAccuracy
    from evaluators.data import load_data
    from search_spaces.checkpoint import load_supernet
    from search_spaces.training import TrainConfig, Trainer

    train = TrainConfig(space_options=tiny_ofa, data=tiny_digits, method="full", epochs=2, batch_size=16,
                        calib_images=40)
    Trainer.start(search_spaces.get("ofa_mbv3", **tiny_ofa), load_data(tiny_digits), train, tmp_path / "sn").run()
    config = SearchConfig(space="ofa_mbv3", objectives=["accuracy", "macs"], evaluations=6, searcher="random",
                          batch=3, supernet=str(tmp_path / "sn" / "supernet.pt"))
    start_search(tmp_path / "run", config, executor=_on_this_connection(workers=2))
    results = _results(tmp_path / "run")
    assert len(results) == 6 and all(e["status"] == "ok" for e in results)
    # each worker loaded the supernet and data once; their accuracies equal an evaluation in this process
    space = load_supernet(tmp_path / "sn" / "supernet.pt")
    here = SubnetAccuracy(space, load_data(tiny_digits), "val").vectors(np.array([e["vector"] for e in results]))
    np.testing.assert_allclose([e["values"]["accuracy"] for e in results], here)


# ---------------------------------------------------------------------- a 2-node local cluster
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_options() -> list[str]:
    """Every port a node would otherwise take by default (and share with other Ray instances here)."""
    names = ["--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--runtime-env-agent-port",
             "--metrics-export-port", "--node-manager-port", "--object-manager-port"]
    return [arg for name in names for arg in (name, str(_free_port()))]


class Cluster:
    """A head node and a worker node of one CPU each, started with ``ray start --block``."""

    def __init__(self, temp_dir: str):
        port = _free_port()
        self.address, self.nodes, self.temp_dir = f"127.0.0.1:{port}", [], temp_dir
        common = ["--block", "--num-cpus", "1", "--num-gpus", "0", "--node-ip-address", "127.0.0.1",
                  "--disable-usage-stats"]
        self._start("head", ["--head", "--port", str(port), "--include-dashboard", "false", "--temp-dir", temp_dir,
                             *common])
        self._start("worker", ["--address", self.address, *common])

    def _start(self, name: str, args: list[str]) -> None:
        log = Path(self.temp_dir) / f"{name}.log"
        with open(log, "w") as out:
            self.nodes.append(subprocess.Popen([RAY, "start", *args, *_port_options()], env=ENV, stdout=out,
                                               stderr=subprocess.STDOUT))
        deadline = time.time() + 120
        while b"Ray runtime started." not in log.read_bytes():
            assert time.time() < deadline and self.nodes[-1].poll() is None, log.read_text()[-2000:]
            time.sleep(0.2)

    def processes(self):
        """Every process of the two nodes (the ``ray start`` processes and all their descendants)."""
        out = []
        for node in self.nodes:
            try:
                parent = psutil.Process(node.pid)
                out += [parent, *parent.children(recursive=True)]
            except psutil.NoSuchProcess:
                pass
        return out

    def evaluating_worker(self, timeout_s: float = 120):
        """The PID of a worker of this cluster in the middle of an evaluation."""
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            for process in self.processes():
                try:
                    if " ".join(process.cmdline()).startswith("ray::EvaluationWorker.evaluate"):
                        return process.pid
                except psutil.Error:        # it ended meanwhile
                    continue
            time.sleep(0.02)
        raise AssertionError("no worker of the cluster started an evaluation")

    def stop(self) -> None:
        for process in self.processes():
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        for node in self.nodes:
            node.wait(30)


@pytest.fixture(scope="module")
def cluster():
    temp_dir = tempfile.mkdtemp(prefix="nasray")          # short: Ray's socket paths must stay < 108 bytes
    started = Cluster(temp_dir)
    yield started
    started.stop()
    shutil.rmtree(temp_dir, ignore_errors=True)


def _nas(*args: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "nas", *args], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


SLOW_SEARCH = ["--space", "nb201", "--objectives", "accuracy,latency@cpu", "--batch", "2", "--workers", "2"]


def test_a_worker_killed_mid_evaluation_has_its_candidate_evaluated_once_elsewhere(cluster, tmp_path):
    run = tmp_path / "run"
    driver = _nas("search", *SLOW_SEARCH, "--searcher", "random", "--evaluations", "8", "--run", str(run),
                  "--ray", cluster.address)
    os.kill(cluster.evaluating_worker(), signal.SIGKILL)
    _, err = driver.communicate(timeout=300)
    assert driver.returncode == 0, err
    assert "a Ray worker died while evaluating" in err and "re-issuing it" in err
    results = _results(run)
    assert [e["n"] for e in results] == list(range(1, 9)) and _distinct(results) == 8
    assert all(e["status"] == "ok" and e["values"]["latency@cpu"] > 0 for e in results)


def test_a_driver_killed_with_sigkill_resumes_on_the_cluster_losing_nothing(cluster, tmp_path):
    run = tmp_path / "run"
    driver = _nas("search", *SLOW_SEARCH, "--searcher", "nsga2", "--searcher-option", "pop_size=4",
                  "--evaluations", "10", "--run", str(run), "--ray", cluster.address)
    deadline = time.time() + 240
    while driver.poll() is None and time.time() < deadline:
        if (run / LOG).exists() and (run / LOG).read_bytes().count(b'"type":"result"') >= 3:
            break
        time.sleep(0.01)
    os.kill(driver.pid, signal.SIGKILL)
    driver.communicate()
    before = _events(run)
    done = sum(e["type"] == "result" for e in before)
    assert 3 <= done < 10, "the kill should land mid-search"
    resumed = _nas("resume", str(run), "--ray", cluster.address, "--workers", "2")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    after = _events(run)
    assert after[:len(before)] == before                        # every logged event kept as it was
    assert not any(e["type"] == "diverged" for e in after), err  # the searcher replayed exactly
    results = [e for e in after if e["type"] == "result"]
    assert [e["n"] for e in results] == list(range(1, 11)) and _distinct(results) == 10
    asked = {tuple(v) for e in after if e["type"] == "ask" for v in e["vectors"]}
    assert asked == {tuple(e["vector"]) for e in results}       # in flight at the kill: evaluated after it
