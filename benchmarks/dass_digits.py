"""DASS vs DARTS on ``digits``: cells searched with and without sparsity, retrained and pruned alike.

For each seed: a DASS search at each keep ratio (three phases, the ``dass`` recipe) and one dense DARTS
search (the ``darts`` recipe, same budget). Each derived cell is retrained by the identical procedure
and budget (the ``dass`` recipe's retraining: dense training, pruning with scaled score init at the
keep ratio, fine-tuning; a bigger network than the search's): the DASS cell found at ratio k and the
DARTS cell, both at k. Test accuracy per keep ratio, medians over the seeds.

Then, for the retrained DASS network of the first seed at each keep ratio: latency at batch 1, one
thread, of the extracted network executed dense (zeros included), all sparse (CSR), and as exported by
``DassDartsSpace.deploy`` (the faster path per layer, chosen by timing); the non-zero MAC ratio; the
speed-up, also over the layers where the sparse path was chosen.

Digits are used at their own 8x8 (``--resolution`` upsamples; upsampling adds compute, not difficulty).
Searches and retraining use the DARTS split (weights on one half of the training split, α on the other).
Everything runs on one thread (the machine is shared).
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's folder leads sys.path and its names would shadow the packages.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.stats import wilcoxon  # noqa: E402

from evaluators.tasks import space_and_task  # noqa: E402
from search_spaces.ops.sparse_exec import _sparse_exec_of, replace_modules  # noqa: E402
from search_spaces.training.bilevel import BilevelSearch, config_for  # noqa: E402


def run_search(out: Path, method: str, space_options: dict, epochs: int, steps: int, batch: int, seed: int,
               options: dict) -> tuple[BilevelSearch, dict]:
    config = config_for({"method": method, "space": "dass_darts", "space_options": dict(space_options),
                         "data": "digits", "epochs": epochs, "steps_per_epoch": steps, "batch_size": batch,
                         "seed": seed, "options": options})
    space, task = space_and_task(config)
    search = BilevelSearch.start(space, task, config, out)
    search.run()
    return search, json.loads((out / "derived.json").read_text())


def paired_p(a: list[float], b: list[float]) -> float:
    """Two-sided Wilcoxon signed-rank p-value of ``a`` against ``b`` paired by seed; 1 where they never differ."""
    if all(x == y for x, y in zip(a, b)):
        return 1.0
    return float(wilcoxon(a, b).pvalue)


def median_ms(model, x, runs: int, rounds: int) -> float:
    rounds_ms = []
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        for _ in range(rounds):
            samples = []
            for _ in range(runs):
                start = time.perf_counter()
                model(x)
                samples.append(time.perf_counter() - start)
            rounds_ms.append(1e3 * float(np.median(samples)))
    return min(rounds_ms)


def latency_rows(search: BilevelSearch, config: dict, keep: float, runs: int) -> dict:
    space = search.space
    x = space.example_input(config)
    dense = space.extract(config).eval()
    deployed, choices = space.deploy(config, x, rounds=3, runs=runs, warmup=2)
    all_sparse = replace_modules(dense, lambda name, m: _sparse_exec_of(m))  # every conv/linear as CSR
    v = space.encode(config)[None]
    chosen = [c for c in choices if c.sparse]
    return {"keep": keep, "dense_ms": median_ms(dense, x, runs, 3), "all_sparse_ms": median_ms(all_sparse, x, runs, 3),
            "deployed_ms": median_ms(deployed, x, runs, 3),
            "nonzero_mac_ratio": float(space.nonzero_macs(v)[0] / space.macs(v)[0]),
            "layers": len(choices), "sparse_layers": len(chosen),
            "chosen_dense_ms": sum(c.dense_ms for c in chosen), "chosen_sparse_ms": sum(c.sparse_ms for c in chosen)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--keeps", default="0.1,0.05,0.01")
    parser.add_argument("--resolution", type=int, default=8)
    parser.add_argument("--search-C", type=int, default=4)
    parser.add_argument("--search-layers", type=int, default=3)
    parser.add_argument("--search-epochs", type=int, default=5)
    parser.add_argument("--search-steps", type=int, default=8, help="steps per search epoch")
    parser.add_argument("--retrain-C", type=int, default=8)
    parser.add_argument("--retrain-layers", type=int, default=5)
    parser.add_argument("--retrain-epochs", type=int, default=24)
    parser.add_argument("--batch", type=int, default=32, help="search batch size")
    parser.add_argument("--retrain-batch", type=int, default=64)
    parser.add_argument("--latency-runs", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    keeps = [float(k) for k in args.keeps.split(",")]
    search_options = {"C": args.search_C, "layers": args.search_layers, "resolution": args.resolution}
    retrain_options = {"C": args.retrain_C, "layers": args.retrain_layers, "resolution": args.resolution}
    print(f"settings: digits {args.resolution}x{args.resolution}, seeds {args.seeds}, keep ratios {keeps}; search "
          f"{search_options} {args.search_epochs} epochs x {args.search_steps} steps (DASS phases 2/5, 1/5, 2/5; DARTS "
          f"one dense phase), batch {args.batch}, first-order α; retrain {retrain_options} {args.retrain_epochs} epochs, "
          f"batch {args.retrain_batch} "
          f"(one pass over the weight half each, phases 2/5 1/5 2/5); one thread", flush=True)
    acc = {(m, k): [] for m in ("dass", "darts") for k in keeps}
    genotypes: dict = {}
    latency = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for seed in range(args.seeds):
            cells = {}
            for k in keeps:
                out = root / f"dass_{seed}_{k}"
                run_search(out, "dass", search_options, args.search_epochs, args.search_steps, args.batch, seed,
                           {"keep_ratio": k})
                cells["dass", k] = out / "genotype.json"
            out = root / f"darts_{seed}"
            run_search(out, "darts", search_options, args.search_epochs, args.search_steps, args.batch, seed, {})
            for k in keeps:
                cells["darts", k] = out / "genotype.json"
            print(f"seed {seed}: searches done at {time.perf_counter() - started:.0f} s", flush=True)
            for (method, k), path in cells.items():
                genotypes.setdefault((method, k), []).append(json.loads(path.read_text()))
                search, derived = run_search(root / f"re_{method}_{seed}_{k}", "dass", retrain_options,
                                             args.retrain_epochs, None, args.retrain_batch, seed,
                                             {"keep_ratio": k, "genotype": str(path)})
                acc[method, k].append(derived["test_accuracy"])
                print(f"  retrain {method:5s} cell at keep {k}: test {derived['test_accuracy']:.2f} %, "
                      f"val {derived['final']['val_accuracy']:.2f} %", flush=True)
                if seed == 0 and method == "dass":
                    latency.append(latency_rows(search, derived["config"], k, args.latency_runs))
            print(f"seed {seed} done at {time.perf_counter() - started:.0f} s", flush=True)

    print("\ntest accuracy (%) after retraining + pruning, median over seeds [per seed]; wins: seeds where the "
          "DASS cell beats the DARTS cell; p: Wilcoxon signed-rank test of the paired differences (two-sided)")
    print(f"{'keep':>6} {'DASS cell':>22} {'DARTS cell':>22} {'DASS-DARTS':>11} {'wins':>6} {'p':>6}")
    for k in keeps:
        d, b = acc["dass", k], acc["darts", k]
        print(f"{k:>6} {np.median(d):>7.2f} {str([round(x, 1) for x in d]):>14} {np.median(b):>7.2f} "
              f"{str([round(x, 1) for x in b]):>14} {np.median(d) - np.median(b):>+11.2f} "
              f"{sum(x > y for x, y in zip(d, b)):>3}/{len(d):<2} {paired_p(d, b):>6.2f}")
    print("\nextracted retrained DASS network (seed 0), batch 1, one thread, ms")
    print(f"{'keep':>6} {'nz MACs':>8} {'dense':>8} {'all CSR':>8} {'deployed':>9} {'speed-up':>9} "
          f"{'CSR layers':>11} {'their speed-up':>15}")
    for r in latency:
        their = r["chosen_dense_ms"] / r["chosen_sparse_ms"] if r["chosen_sparse_ms"] else float("nan")
        print(f"{r['keep']:>6} {r['nonzero_mac_ratio']:>8.3f} {r['dense_ms']:>8.3f} {r['all_sparse_ms']:>8.3f} "
              f"{r['deployed_ms']:>9.3f} {r['dense_ms'] / r['deployed_ms']:>8.2f}x {r['sparse_layers']:>4}/{r['layers']:<6}"
              f" {their:>14.2f}x")
    print("\nderived normal cells (seed 0):")
    for (method, k), gs in sorted(genotypes.items()):
        if method == "darts" and k != keeps[0]:
            continue
        label = "darts" if method == "darts" else f"dass@{k}"
        print(f"  {label:10s} {[tuple(g) for g in gs[0]['normal']]}")
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
