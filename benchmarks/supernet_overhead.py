"""Elastic forward vs extracted network vs the same shape built from scratch, side by side.

Goals (issue: foundation): elastic <= 1.15x extracted; extracted = from-scratch +- 5 %.
All three are timed in interleaved rounds in one process (batch 1, one thread, inference mode),
so drift on a shared machine hits them equally. Run: ``python benchmarks/supernet_overhead.py``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Run as a script, this folder leads sys.path, and benchmarks/predictors.py would shadow the package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
import torch  # noqa: E402

import search_spaces  # noqa: E402
from evaluators.latency import measure_latency  # noqa: E402


def interleaved_medians(models: dict, x: torch.Tensor, rounds: int, runs: int) -> dict[str, float]:
    samples = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            samples[name].append(measure_latency(model, x, warmup=3, runs=runs, threads=1).median_ms)
    return {name: float(np.median(v)) for name, v in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width-mult", type=float, default=1.0)
    parser.add_argument("--subnets", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(1)

    space = search_spaces.get("ofa_mbv3", width_mult=args.width_mult)
    space.supernet.eval()
    configs = space.sample(args.subnets, seed=0)
    configs[0] = {"ks": [7] * 20, "e": [6] * 20, "d": [4] * 5, "r": 224}
    configs[1] = {"ks": [3] * 20, "e": [3] * 20, "d": [2] * 5, "r": 128}
    rows = []
    print(f"ofa_mbv3 w{args.width_mult}: batch 1, 1 thread, median of {args.rounds} interleaved rounds x "
          f"{args.runs} runs")
    print(f"{'subnet':>6} {'res':>4} {'MMACs':>7} {'elastic ms':>10} {'extracted ms':>12} {'scratch ms':>10} "
          f"{'elastic/extr':>12} {'extr/scratch':>12}")
    for i, config in enumerate(configs):
        extracted = space.extract(config).eval()
        scratch = space.from_scratch(config).eval()
        space.activate(config)
        x = space.example_input(config)
        t = interleaved_medians({"elastic": space.supernet, "extracted": extracted, "scratch": scratch},
                                x, args.rounds, args.runs)
        ratio_e, ratio_s = t["elastic"] / t["extracted"], t["extracted"] / t["scratch"]
        rows.append((ratio_e, ratio_s))
        macs = space.macs(space.encode(config))[0] / 1e6
        print(f"{i:>6} {config['r']:>4} {macs:>7.0f} {t['elastic']:>10.2f} {t['extracted']:>12.2f} "
              f"{t['scratch']:>10.2f} {ratio_e:>12.3f} {ratio_s:>12.3f}")
    ratios = np.array(rows)
    print(f"median elastic/extracted = {np.median(ratios[:, 0]):.3f} (goal <= 1.15), "
          f"worst {ratios[:, 0].max():.3f}")
    print(f"median extracted/scratch = {np.median(ratios[:, 1]):.3f} (goal 0.95..1.05), "
          f"range {ratios[:, 1].min():.3f}..{ratios[:, 1].max():.3f}")


if __name__ == "__main__":
    main()
