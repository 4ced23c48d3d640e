"""Every searcher on the real NAS-Bench-201 table: hypervolume fraction after 20..300 evaluations.

For each device with complete latency data (pixel3, raspi4, fpga, eyeriss) and CIFAR-10 accuracy, the
fraction of the true Pareto front's hypervolume reached after 20, 50, 100, 200 and 300 evaluations,
median over seeds, with the ``floor_p90`` definition of ``pareto.json`` (normalise accuracy by the
90th-percentile floor and the best accuracy, latency by its min/max; reference point (1, 1)).
Goal for the best searcher: >= 0.85 after 100 and >= 0.95 after 300 on every device; random reaches
about 0.55 after 100. Also prints the search overhead (wall time not spent in table lookups) per
evaluation; goal <= 0.1 s for ``linas``. Each lookup of a distinct network is one evaluation; the
searchers never re-propose one (they de-duplicate by canonical encoding).
With ``--floor-constraint`` every searcher is also given the metric's accuracy floor as a constraint
(``accuracy >= acc_floor`` of ``floor_p90``, 92.93 % on CIFAR-10), as a user states the accuracy they
need with ``--constraint``: the score counts only networks above that floor, and a searcher told so
can spend its evaluations there. The table says which mode ran.
Run: ``python benchmarks/nb201_searchers.py [--seeds 10] [--searchers random nsga2 ...] [--floor-constraint]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

# Run as a script, this folder leads sys.path, and benchmarks/predictors.py would shadow the package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402

import nas.searchers as searchers  # noqa: E402
import search_spaces  # noqa: E402
from nas.pareto import hypervolume  # noqa: E402
from search_spaces.nb201 import pareto_fronts  # noqa: E402

DEVICES = ("pixel3", "raspi4", "fpga", "eyeriss")
CHECKPOINTS = (20, 50, 100, 200, 300)


def hv_fraction(space, vectors: np.ndarray, device: str) -> float:
    """The shared README's floor_p90 score of the networks evaluated so far."""
    objective = pareto_fronts()["objectives"][f"{device}_latency_ms"]
    hv = objective["hv"]["floor_p90"]
    accuracy = space.accuracy(vectors)
    latency = space.table_value(vectors, space.table_devices()[device])
    f1 = 1 - (accuracy - hv["acc_floor"]) / (objective["acc_max"] - hv["acc_floor"])
    f2 = (latency - objective["cost_min"]) / (objective["cost_max"] - objective["cost_min"])
    return hypervolume(np.column_stack([f1, f2]), np.array([1.0, 1.0])) / hv["hypervolume"]


def accuracy_floor(device: str) -> float:
    """The accuracy (%) below which a network adds nothing to the floor_p90 score."""
    return pareto_fronts()["objectives"][f"{device}_latency_ms"]["hv"]["floor_p90"]["acc_floor"]


def run_one(name: str, device: str, seed: int, evaluations: int, batch: int,
            floor_constraint: bool) -> tuple[list[float], float]:
    space = search_spaces.get("nb201")
    column = space.table_devices()[device]
    floor = accuracy_floor(device)
    searcher = searchers.create(name, space, 2, int(floor_constraint), seed)
    seen = np.zeros((0, space.n_genes), dtype=np.int64)
    overhead, scores = 0.0, []
    while len(seen) < evaluations:
        start = time.perf_counter()
        vectors = searcher.ask(min(batch, evaluations - len(seen)))
        overhead += time.perf_counter() - start
        if len(vectors) == 0:
            break
        accuracy = space.accuracy(vectors)
        objectives = np.column_stack([-accuracy, space.table_value(vectors, column)])
        constraints = (floor - accuracy)[:, None] if floor_constraint else None
        start = time.perf_counter()
        searcher.tell(vectors, objectives, constraints)
        overhead += time.perf_counter() - start
        before, seen = len(seen), np.vstack([seen, vectors])
        scores += [hv_fraction(space, seen[:c], device) for c in CHECKPOINTS if before < c <= len(seen)]
    return scores, overhead / max(len(seen), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--searchers", nargs="+", default=["random", "nsga2", "agemoea", "tpe", "gp", "linas"])
    parser.add_argument("--devices", nargs="+", default=list(DEVICES))
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=1, help="Parallel processes (overheads then share cores).")
    parser.add_argument("--floor-constraint", action="store_true",
                        help="Give every searcher the constraint accuracy >= the metric's accuracy floor.")
    args = parser.parse_args()
    evaluations = CHECKPOINTS[-1]
    jobs = [(s, d, seed) for s in args.searchers for d in args.devices for seed in range(args.seeds)]
    with ProcessPoolExecutor(args.jobs) as pool:
        futures = {job: pool.submit(run_one, *job, evaluations, args.batch, args.floor_constraint) for job in jobs}
        results = {job: f.result() for job, f in futures.items()}
    print(f"NB201 CIFAR-10 accuracy vs device latency, floor_p90 hypervolume fraction, median of {args.seeds} seeds, "
          f"batch {args.batch}, "
          + ("every searcher given the constraint accuracy >= the floor (--floor-constraint)" if args.floor_constraint
             else "no constraint"))
    header = " | ".join(f"@{c}: " + "/".join(d[:4] for d in args.devices) for c in CHECKPOINTS)
    print(f"{'searcher':<9} | {header} | overhead s/eval")
    for name in args.searchers:
        cells = []
        for i in range(len(CHECKPOINTS)):
            medians = [np.median([results[(name, d, s)][0][i] for s in range(args.seeds)]) for d in args.devices]
            cells.append("/".join(f"{m:.2f}" for m in medians))
        overhead = np.median([results[(name, d, s)][1] for d in args.devices for s in range(args.seeds)])
        print(f"{name:<9} | " + " | ".join(f"{' ' * 5}{c}" for c in cells) + f" | {overhead:.4f}")


if __name__ == "__main__":
    main()
