"""Latency predictors side by side: throughput, lookup table vs measurement, learned predictors, NB201.

Targets (issue: devices and predictors):
  * >= 10,000,000 OFA-MBv3 lookup-table predictions per second in one process, and the ratio against
    scoring the same candidates one by one in a Python loop;
  * a lookup table built on this CPU vs the measured latency of 100 random extracted subnets:
    Kendall tau >= 0.9 and MAPE <= 10 %;
  * a learned predictor trained on 200 measured subnets of the same device: MAPE <= 5 %;
  * NB201 device tables: a learned predictor trained on 100 random architectures, tested on all the
    rest, for every device: Kendall tau and MAPE.
The ``remeasure`` row scores the test subnets' second measurement against their first: the ceiling of
any predictor on this machine (on the shared 2-core VM: tau 0.28-0.72, MAPE 7.7-21 %).
Measurements: torch eager, batch 1, one thread, timed by that thread's CPU time (the ``cpu`` device's
default clock, see ``evaluators.latency``); each latency is the smallest of ``--rounds`` (3) interleaved
round medians of ``--runs`` runs after warm-up (``evaluators.measure``), pinned to one core.
Run: ``python benchmarks/predictors.py`` (about 15 minutes on 2 quiet cores; the learned predictors take a few of them).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

# Run as a script, this file's folder leads sys.path and its name would shadow the `predictors` package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
import torch  # noqa: E402

import predictors  # noqa: E402
import search_spaces  # noqa: E402
from evaluators.devices import get_device  # noqa: E402
from evaluators.latency import time_runs  # noqa: E402
from evaluators.measure import measure_subnets, unique_random_vectors  # noqa: E402
from predictors.lut import LookupTablePredictor  # noqa: E402
from predictors.metrics import quality_report  # noqa: E402


def throughput(batch: int, loop: int) -> None:
    device = get_device("note10")
    space = search_spaces.get(device.space, **device.space_options)
    lut = LookupTablePredictor.from_ofa_tables(space, device.lut, device="note10")
    vectors = space.random_vectors(batch, np.random.default_rng(0))
    lut.predict(vectors[:10])                                          # compile the kernel once
    print("\n== throughput: OFA-MBv3 w1.2 Note10 lookup table, one process ==")
    print("(per second of this thread's CPU time, which other processes on a shared machine do not inflate; "
          "wall-clock rate beside it)")
    for clock in ("thread", "wall"):
        best = time_runs(lambda: lut.predict(vectors), 5, clock).min() / 1e3                      # seconds
        one_by_one = time_runs(lambda: [lut.predict(vectors[i:i + 1]) for i in range(loop)], 1, clock)[0] / 1e3 / loop
        print(f"{clock:>6} clock: batched ({batch:,} per call) {batch / best:,.0f} predictions/s (goal >= 10,000,000); "
              f"one by one in a Python loop {1 / one_by_one:,.0f}/s; ratio {batch / best * one_by_one:,.0f}x")


def measured_cpu(width: float, resolutions: list[int], n_train: int, n_test: int, n_calib: int,
                 runs: int, rounds: int) -> None:
    space = search_spaces.get("ofa_mbv3", n_classes=10, width_mult=width, resolutions=resolutions)
    cpu = get_device("cpu")
    print(f"\n== this CPU (torch eager, 1 thread, batch 1): ofa_mbv3 width {width}, resolutions {resolutions} ==")
    single, robust = _stability(space, cpu, runs, rounds)
    print(f"measurement stability, median over 8 subnets of (max - min) / mean of 3 repeats: one median of "
          f"{runs} runs {single:.1%}; smallest of {rounds} interleaved round medians {robust:.1%}")
    vectors = unique_random_vectors(space, n_train + n_test + n_calib, seed=1)
    start = time.perf_counter()
    latency = measure_subnets(space, cpu, vectors, warmup=5, runs=runs, rounds=rounds)
    print(f"measured {len(vectors)} extracted subnets in {time.perf_counter() - start:.0f} s "
          f"(latency {latency.min():.2f}..{latency.max():.2f} ms)")
    test, train, calib = np.split(np.arange(len(vectors)), [n_test, n_test + n_train])

    start = time.perf_counter()
    lut = LookupTablePredictor(space, "latency_ms", "cpu").measure_entries(cpu, warmup=5, runs=runs, rounds=rounds)
    lut.fit(vectors[calib], latency[calib])
    seconds = time.perf_counter() - start
    rows = [("lut", f"{len(lut.entries)} layers + overhead on {n_calib} nets", seconds,
             quality_report(latency[test], lut.predict(vectors[test])))]
    # The ceiling: the test subnets measured once more, minutes later, scored against their first
    # measurement. No predictor can agree with the measurements better than they agree with themselves.
    start = time.perf_counter()
    again = measure_subnets(space, cpu, vectors[test], warmup=5, runs=runs, rounds=rounds)
    rows.append(("remeasure", f"the {n_test} test nets measured again", time.perf_counter() - start,
                 quality_report(latency[test], again)))
    for kind in ("ridge", "gbdt", "rf", "mlp", "ensemble"):
        model = predictors.create(kind, space, "latency_ms", "cpu")
        start = time.perf_counter()
        model.fit(vectors[train], latency[train])
        rows.append((kind, f"{n_train} measured nets", time.perf_counter() - start,
                     quality_report(latency[test], model.predict(vectors[test]))))
    print(f"tested on {n_test} other measured subnets (goals: lut tau >= 0.9 and MAPE <= 10 %; learned MAPE <= 5 %)")
    print(f"{'predictor':<10} {'fitted on / measured':<34} {'fit s':>6} {'MAPE %':>7} {'tau':>6} {'rho':>6} {'<=10% err':>9}")
    for kind, fitted_on, seconds, r in rows:
        print(f"{kind:<10} {fitted_on:<34} {seconds:>6.1f} {r['mape']:>7.2f} {r['kendall_tau']:>6.3f} "
              f"{r['spearman_rho']:>6.3f} {r['within_10pct']:>8.0f}%")


def _stability(space, device, runs: int, rounds: int) -> tuple[float, float]:
    """Run-to-run spread (max - min) / mean of the same subnets over 3 repeats: of single medians, and
    of the robust estimate (smallest of 3 interleaved round medians) that predictors are built from."""
    vectors = space.encode(space.sample(8, seed=9))
    single = np.stack([measure_subnets(space, device, vectors, runs=runs, rounds=1) for _ in range(3)])
    robust = np.stack([measure_subnets(space, device, vectors, runs=runs, rounds=rounds) for _ in range(3)])
    spread = lambda a: float(np.median((a.max(axis=0) - a.min(axis=0)) / a.mean(axis=0)))  # noqa: E731
    return spread(single), spread(robust)


def nb201_devices(n_train: int, kind: str) -> None:
    space = search_spaces.get("nb201")
    every = space.table_vectors(np.arange(15625))
    print(f"\n== NB201 device tables: {kind} trained on {n_train} random architectures, tested on the rest ==")
    print(f"{'device':<16} {'tested':>6} {'MAPE %':>7} {'median APE %':>12} {'tau':>6}")
    rng = np.random.default_rng(0)
    for device, column in space.table_devices().items():
        values = space.table_value(every, column)
        known = np.flatnonzero(np.isfinite(values))
        order = rng.permutation(known)
        train, test = order[:n_train], order[n_train:]
        model = predictors.create(kind, space, "latency_ms", device).fit(every[train], values[train])
        r = quality_report(values[test], model.predict(every[test]))
        print(f"{device:<16} {len(test):>6} {r['mape']:>7.2f} {r['median_ape']:>12.2f} {r['kendall_tau']:>6.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--resolutions", type=int, nargs="+", default=[128, 160, 192, 224],
                        help="Input sizes of the subnets (default: OFA's range 128-224, every 32 px).")
    parser.add_argument("--runs", type=int, default=10, help="Timed runs per round.")
    parser.add_argument("--rounds", type=int, default=3, help="Interleaved rounds; the smallest round median counts.")
    parser.add_argument("--nb201-kind", default="gbdt")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})   # one core: less migration noise
    throughput(batch=1_000_000, loop=2_000)
    nb201_devices(100, args.nb201_kind)
    measured_cpu(args.width, args.resolutions, n_train=200, n_test=100, n_calib=20, runs=args.runs,
                 rounds=args.rounds)


if __name__ == "__main__":
    main()
