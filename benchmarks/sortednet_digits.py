"""SortedNet: one sorted network against its smallest and largest sub-models trained alone, side by side.

For each task (``sortednet_cnn`` on scikit-learn's digits, ``sortednet_transformer`` on the generated
``sequences`` task) at the same budget in epochs:

* **sorted**: one network trained with ``--method sorted`` (sub-models sampled uniformly over the grid
  plus the full model in every step); every sub-model of its nested order (each a sub-model of the
  next) is tested (test split; BatchNorm re-calibrated per sub-model for the CNN) and listed with its
  MACs; goal (issue #6): >= 16 sub-models, each keeping >= 96 % of the full model's test accuracy;
* **largest alone** and **smallest alone**: the full model, and a network of the smallest sub-model's
  shape (its MACs are printed beside the sub-model's), each trained with ``--method full``;
* the training time of the sorted network relative to the largest alone;
* search-free selection against a search: for a MACs budget (half of the full model's), the last
  sub-model of the nested order within it (``nas select``) against the best found by ``nsga2`` with
  ``--evaluations`` evaluations through the same supernet (validation accuracy, as a search sees it).

    python benchmarks/sortednet_digits.py [--epochs 30] [--tasks cnn,transformer] [--evaluations 40]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from evaluators.accuracy import SubnetAccuracy  # noqa: E402
from nas.search import SearchConfig, start_search  # noqa: E402
from nas.select import select_nested  # noqa: E402
from nas.train import prepare  # noqa: E402
from search_spaces.training import TrainConfig, Trainer  # noqa: E402

TASKS = {
    "cnn": {"space": "sortednet_cnn", "data": "digits",
            "space_options": {"resolution": 16, "widths": [16, 32, 64], "depth_grid": [1, 2],
                              "width_grid": [0.25, 0.5, 0.75, 1.0]},
            "settings": {"batch_size": 64, "lr": 0.05, "subnets": 2},
            # the smallest sub-model as a network of its own: a quarter of the widths, one block per stage
            "smallest": {"resolution": 16, "widths": [4, 8, 16], "depth_grid": [1], "width_grid": [1.0]}},
    "transformer": {"space": "sortednet_transformer", "data": "sequences",
                    "space_options": {"d_model": 64, "n_heads": 4, "d_ff": 128, "n_layers": 2,
                                      "depth_grid": [1, 2], "embed_grid": [0.25, 0.5, 0.75, 1.0],
                                      "heads_grid": [0.25, 0.5, 0.75, 1.0], "ffn_grid": [0.25, 0.5, 0.75, 1.0]},
                    "settings": {"batch_size": 64, "lr": 0.05, "subnets": 2},
                    "smallest": {"d_model": 16, "n_heads": 1, "d_ff": 32, "n_layers": 1, "depth_grid": [1],
                                 "embed_grid": [1.0], "heads_grid": [1.0], "ffn_grid": [1.0]}},
}


def train(task: dict, options: dict, method: str, epochs: int, folder: Path):
    config = TrainConfig.from_dict({**task["settings"], "space": task["space"], "space_options": options,
                                    "data": task["data"], "method": method, "epochs": epochs})
    space, data = prepare(config)
    started = time.perf_counter()
    Trainer.start(space, data, config, folder).run()
    return space, data, time.perf_counter() - started


def nested_accuracies(space, data) -> tuple[list, np.ndarray, list[float]]:
    chain = space.nested_order()
    accuracies = SubnetAccuracy(space, data, "test")(chain)
    return chain, space.macs(space.encode(chain)), accuracies


def selection_vs_search(task: dict, space, supernet: Path, budget: float, evaluations: int, run: Path) -> tuple:
    base = dict(space=task["space"], space_options=space.options, supernet=str(supernet), data=task["data"])
    chosen = select_nested(SearchConfig(**base, objectives=["accuracy", "macs"], constraints=[f"macs<={budget:.0f}"],
                                        evaluations=1))
    config = SearchConfig(**base, objectives=["accuracy", "macs"], constraints=[f"macs<={budget:.0f}"],
                          searcher="nsga2", evaluations=evaluations)
    store, _ = start_search(run, config)
    feasible = [e for e in store.results() if e["status"] == "ok" and e["values"]["macs"] <= budget]
    best = max(feasible, key=lambda e: e["values"]["accuracy"], default=None)
    return chosen, best


def report_task(name: str, task: dict, epochs: int, evaluations: int, folder: Path) -> None:
    print(f"\n## {name}: {task['space']} on {task['data']}, {epochs} epochs, options {task['space_options']}, "
          f"settings {task['settings']}", flush=True)
    space, data, sorted_s = train(task, task["space_options"], "sorted", epochs, folder / "sorted")
    chain, macs, acc = nested_accuracies(space, data)
    full = acc[-1]
    large_space, large_data, largest_s = train(task, task["space_options"], "full", epochs, folder / "largest")
    largest_alone = SubnetAccuracy(large_space, large_data, "test")([large_space.max_config()])[0]
    small_space, small_data, small_s = train(task, task["smallest"], "full", epochs, folder / "smallest")
    smallest_alone = SubnetAccuracy(small_space, small_data, "test")([small_space.max_config()])[0]
    small_macs = int(small_space.macs(small_space.encode([small_space.max_config()]))[0])

    print("\n| # | MACs | test acc | % of full |\n|---|---|---|---|")
    for i, (m, a) in enumerate(zip(macs, acc)):
        print(f"| {i + 1} | {int(m):,} | {a:.2f} | {100 * a / full:.1f} |")
    keep = min(acc) / full
    print(f"\n{len(chain)} nested sub-models; worst keeps {100 * keep:.1f} % of the full model's {full:.2f} % "
          f"(goal: >= 16 sub-models, each >= 96 %): {'met' if len(chain) >= 16 and keep >= 0.96 else 'NOT met'}")
    print(f"smallest sub-model ({int(macs[0]):,} MACs): sorted {acc[0]:.2f} % vs trained alone {smallest_alone:.2f} % "
          f"({small_macs:,} MACs); "
          f"largest: sorted {full:.2f} % vs trained alone {largest_alone:.2f} %")
    print(f"training time: sorted {sorted_s:.0f} s, largest alone {largest_s:.0f} s (ratio {sorted_s / largest_s:.2f}), "
          f"smallest alone {small_s:.0f} s")

    budget = float(macs[-1]) / 2
    chosen, best = selection_vs_search(task, space, folder / "sorted" / "supernet.pt", budget, evaluations,
                                       folder / "search")
    found = "none feasible" if best is None else (f"{best['values']['accuracy']:.2f} % at {best['values']['macs']:,.0f}"
                                                  " MACs")
    print(f"MACs <= {budget:,.0f}: nested order picks sub-model {chosen['position']}/{chosen['chain_length']} "
          f"({chosen['values']['accuracy']:.2f} % val, {chosen['values']['macs']:,.0f} MACs); nsga2 with "
          f"{evaluations} evaluations: {found}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--tasks", default="cnn,transformer")
    parser.add_argument("--evaluations", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.tasks.split(","):
            report_task(name, TASKS[name], args.epochs, args.evaluations, Path(tmp) / name)
    print(f"\nall in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
