"""Ray executor: throughput with 2 workers vs 1, and per-evaluation overhead vs the in-process path.

Goals (issue: Ray): 2 workers >= 1.8x the throughput of 1 on this 2-core machine; the Ray path adds
<= 10 ms per evaluation to the in-process path.

Each evaluation is 0.5 s of CPU work: the objective is ``latency@cpu-work``, a measured device whose
latency backend (registered by this script, and on every Ray worker through the job's
``worker_process_setup_hook``) runs a fixed pure-Python loop, calibrated here to 0.5 s on one core
(split over the measurement rounds), instead of timing the network. Fixed work, not a fixed time, so
two workers only go twice as fast if they really run in parallel. The same search (``random`` on
``nb201``) is timed as a whole ``Search.run`` (ask, evaluate, log with fsync, tell, checkpoint) once
the workers are up, in-process, on 1 Ray worker and on 2, interleaved over rounds in one process;
medians are reported. The overhead is the time a search spends outside evaluations (its wall time
minus the evaluation times it logged, measured where they ran) per evaluation, Ray on 1 worker minus
in-process: on a shared virtual machine the work itself varies by tens of ms per evaluation, which a
plain difference of wall times would report as overhead. Run:
``python benchmarks/ray_scaling.py [--evaluations 8] [--rounds 5]``.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import tempfile
import time
from pathlib import Path

# Run as a script, this folder leads sys.path, and benchmarks/predictors.py would shadow the package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np  # noqa: E402

from evaluators.backends import register_backend  # noqa: E402
from evaluators.latency import LatencyStats  # noqa: E402
from evaluators.measure import measure_subnets  # noqa: E402
from nas import executors  # noqa: E402
from nas.runs import RunStore  # noqa: E402
from nas.search import Search, SearchConfig  # noqa: E402

SECONDS_OF_WORK = 0.5
ROUNDS = inspect.signature(measure_subnets).parameters["rounds"].default   # backend calls per evaluation
ITERATIONS = 0                                                               # of the loop per evaluation


def burn(iterations: int) -> int:
    x = 0
    for i in range(iterations):
        x ^= i
    return x


def calibrate(seconds: float) -> int:
    """Loop iterations that take ``seconds`` of CPU time on one core (best of 5 timings of ~0.1 s)."""
    n = 3_000_000
    best = min(_cpu_time(lambda: burn(n)) for _ in range(5))
    return int(seconds * n / best)


def _cpu_time(work) -> float:
    start = time.process_time()
    work()
    return time.process_time() - start


def cpu_work(model, example_input, *, threads: int = 1, warmup: int = 0, runs: int = 1,
             device: str = "cpu", clock: str = "wall") -> LatencyStats:
    """A latency backend that does a fixed share of the evaluation's CPU work, always timed by the wall
    clock (``clock`` is part of the backend signature; the benchmark measures elapsed time)."""
    start = time.perf_counter()
    burn(ITERATIONS // ROUNDS)
    elapsed_ms = np.array([(time.perf_counter() - start) * 1e3])
    return LatencyStats.from_samples(elapsed_ms, warmup=warmup, batch=len(example_input), threads=threads,
                                     device=device)


def register_cpu_work() -> None:
    """Runs in this process and, as the Ray job's setup hook, in every worker (pickled by value)."""
    register_backend("cpu-work")(cpu_work)


def timed_search(folder: Path, config: SearchConfig, executor) -> tuple[float, float]:
    """Seconds of one whole search on a new run folder, and of the evaluations in it, evaluated by
    ``executor`` (already started, or ``None`` for a new in-process one)."""
    store = RunStore.create(folder, config.to_dict())
    try:
        search = Search(store.config, store)
        if executor is None:
            executor = executors.create("in-process")
            executor.start(store.config, store.path, search.measures)
        start = time.perf_counter()
        search.run(executor=executor)
        wall = time.perf_counter() - start
        return wall, sum(e["seconds"] for e in store.results())
    finally:
        store.close()


def main() -> None:
    global ITERATIONS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--evaluations", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    ITERATIONS = calibrate(SECONDS_OF_WORK)
    register_cpu_work()
    import ray

    ray.init(address="local", num_cpus=3, num_gpus=0, include_dashboard=False, log_to_driver=False,
             runtime_env={"worker_process_setup_hook": register_cpu_work})
    with tempfile.TemporaryDirectory() as tmp:
        devices = Path(tmp) / "devices.yaml"
        devices.write_text("devices:\n  - name: cpu-work\n    kind: measured\n    backend: cpu-work\n")
        config = SearchConfig(space="nb201", objectives=["latency@cpu-work"], evaluations=args.evaluations,
                              searcher="random", batch=4, seed=0, devices_file=str(devices))
        probe = Search(config.to_dict())
        paths = {"in-process": None}
        for workers in (1, 2):                 # 3 CPUs declared so both sets of workers stay up; one runs at a time
            paths[f"ray, {workers} worker{'s' * (workers > 1)}"] = executors.create("ray", address=None,
                                                                                   workers=workers)
            paths[f"ray, {workers} worker{'s' * (workers > 1)}"].start(config.to_dict(), None, probe.measures)
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in paths}
        for r in range(args.rounds):
            for name, executor in paths.items():
                times[name].append(timed_search(Path(tmp) / f"{r}-{name}", config, executor))
        for executor in paths.values():
            if executor is not None:
                executor.close()
    ray.shutdown()
    report({name: float(np.median([wall for wall, _ in t])) for name, t in times.items()},
           {name: float(np.median([wall - work for wall, work in t])) for name, t in times.items()},
           args.evaluations)


def report(median_s: dict[str, float], outside_s: dict[str, float], evaluations: int) -> None:
    print(f"{evaluations} evaluations of {SECONDS_OF_WORK} s CPU work each ({ITERATIONS:,} loop iterations), "
          f"median of interleaved rounds; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end")
    print(f"{'path':<16}{'search s':>10}{'s / evaluation':>16}{'evaluations / s':>17}{'ms / evaluation outside it':>28}")
    for name, seconds in median_s.items():
        outside = "(in parallel)" if name == "ray, 2 workers" else f"{outside_s[name] / evaluations * 1e3:.1f}"
        print(f"{name:<16}{seconds:>10.3f}{seconds / evaluations:>16.4f}{evaluations / seconds:>17.3f}{outside:>28}")
    speedup = median_s["ray, 1 worker"] / median_s["ray, 2 workers"]
    overhead_ms = (outside_s["ray, 1 worker"] - outside_s["in-process"]) / evaluations * 1e3
    wall_ms = (median_s["ray, 1 worker"] - median_s["in-process"]) / evaluations * 1e3
    print(f"throughput, 2 workers vs 1: {speedup:.2f}x (goal >= 1.8x) {'PASS' if speedup >= 1.8 else 'FAIL'}")
    print(f"overhead of the Ray path per evaluation (1 worker vs in-process): {overhead_ms:+.1f} ms (goal <= 10 ms) "
          f"{'PASS' if overhead_ms <= 10 else 'FAIL'} (difference of wall times: {wall_ms:+.1f} ms)")


if __name__ == "__main__":
    main()
