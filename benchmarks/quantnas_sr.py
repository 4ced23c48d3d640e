"""QuantNAS on the embedded photographs at x2: searched networks vs uniform quantisation, noise vs direct
search, ADQ on vs off; one run, side by side (the Targets of issue 11).

* QuantNAS searches (quantisation noise) at several ``λ_hw``, and one direct-quantisation search at the
  middle ``λ_hw``, same epochs: search wall time of each mode.
* Every found genotype and the fixed architectures of the same space (every layer ``conv3x3``, or every
  layer ``conv5x5``, uniformly at 4 and at 8 bits) are trained as final quantised networks by the
  identical procedure and budget (``quantnas`` with ``genotype``: LSQ/HWGQ at the chosen bit-widths, fresh
  weights); test PSNR (Y, border shaved) and BitOps. Bicubic up-scaling as the floor.
* The 4-bit fixed networks again with ADQ off: the PSNR ADQ adds.

Prints the table (and the settings); saves ``quantnas_sr.png`` beside ``--out`` if matplotlib imports.
The default budget (about 20 minutes on one thread of a shared 2-core machine) is far below the
reference's; raise the steps and epochs elsewhere.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

import evaluators.sr_task  # noqa: F401  (registers the psnr task and the quantnas recipe)
from evaluators.sr_data import bicubic_psnr, load_sr_data
from evaluators.tasks import space_and_task
from search_spaces.training.bilevel import BilevelSearch, config_for


def run(out: Path, space_options: dict, epochs: int, steps: int, batch: int, options: dict,
        rates: dict) -> tuple[dict, float]:
    config = config_for({"method": "quantnas", "space": "quantnas_sr", "space_options": dict(space_options),
                         "data": "photos", "epochs": epochs, "steps_per_epoch": steps, "batch_size": batch,
                         "options": options, **rates})
    space, task = space_and_task(config)
    started = time.perf_counter()
    BilevelSearch.start(space, task, config, out).run()
    return json.loads((out / "derived.json").read_text()), time.perf_counter() - started


def uniform(space_options: dict, op: str, bits: int) -> dict:
    layers = space_options["cells"] * space_options["layers"]
    skips = space_options["cells"] * (space_options["layers"] - 1)
    choice = f"{op}@{bits}"
    return {"body": [choice] * layers, "skip": [choice] * skips, "upsample": choice, "tail": choice}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=12)
    parser.add_argument("--cells", type=int, default=1)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--patch", type=int, default=24, help="LR patch side (the space's lr_size)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--search-steps", type=int, default=50, help="steps per search epoch")
    parser.add_argument("--search-epochs", type=int, default=4)
    parser.add_argument("--train-steps", type=int, default=100, help="steps per final-training epoch")
    parser.add_argument("--train-epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=3e-3, help="weight learning rate (search and training)")
    parser.add_argument("--arch-lr", type=float, default=3e-3,
                        help="α learning rate (the reference's 3e-4 hardly moves α in a budget this short)")
    parser.add_argument("--lambdas", default="0,0.01,0.1")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="seed of every search and training run")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lambdas = [float(v) for v in args.lambdas.split(",")]
    opts = {"scale": 2, "channels": args.channels, "cells": args.cells, "layers": args.layers,
            "ops": ["conv1x1", "conv3x3", "conv5x5"], "bits": [4, 8], "lr_size": args.patch}
    rates = {"lr": args.lr, "arch_lr": args.arch_lr, "seed": args.seed}
    print(f"settings: x2 photos, space {opts}; batch {args.batch} of {args.patch}px LR patches; search "
          f"{args.search_epochs} epochs of {args.search_steps} steps, final training {args.train_epochs} epochs of "
          f"{args.train_steps} steps; lr {args.lr:g}, arch lr {args.arch_lr:g}; lambda_hw {lambdas}; "
          f"{args.threads} threads; seed {args.seed}", flush=True)
    root = Path(args.out or tempfile.mkdtemp(prefix="quantnas_sr_"))
    root.mkdir(parents=True, exist_ok=True)

    searches, genotypes = [], {}
    middle = lambdas[len(lambdas) // 2]
    for mode, lam in [("noise", lam) for lam in lambdas] + [("direct", middle)]:
        name = f"quantnas {mode} λ={lam:g}"
        derived, seconds = run(root / f"search_{mode}_{lam:g}", opts, args.search_epochs, args.search_steps,
                               args.batch, {"mode": mode, "lambda_hw": lam}, rates)
        searches.append((name, mode, lam, seconds, derived))
        genotypes[name] = root / f"search_{mode}_{lam:g}" / "derived.json"
        print(f"  searched {name}: {seconds:.0f} s, {derived['config']}", flush=True)
    for op in ("conv3x3", "conv5x5"):
        for bits in (4, 8):
            path = root / f"uniform_{op}_{bits}.json"
            path.write_text(json.dumps({"space": "quantnas_sr", "options": opts, "config": uniform(opts, op, bits)}))
            genotypes[f"uniform {op}@{bits}"] = path

    rows = []
    for name, path in genotypes.items():
        variants = [(name, opts)]
        if name.startswith("uniform") and name.endswith("@4"):
            variants.append((f"{name} no ADQ", {**opts, "adq": False}))
        for label, space_options in variants:
            slug = label.replace(" ", "_").replace("@", "_").replace("λ=", "")
            result, seconds = run(root / f"train_{slug}", space_options, args.train_epochs, args.train_steps,
                                  args.batch, {"genotype": str(path)}, rates)
            rows.append((label, result["test_psnr"], result["bitops"], seconds))
            print(f"  trained {label}: {result['test_psnr']:.2f} dB, {result['bitops'] / 1e6:.1f} MBitOps, "
                  f"{seconds:.0f} s", flush=True)
    bicubic = bicubic_psnr(load_sr_data("photos", 2), "test")

    print(f"\nFinal networks (test images coffee, flower; x2; BitOps per {args.patch}x{args.patch} LR input)")
    print(f"{'network':32s} {'test PSNR dB':>12s} {'vs bicubic':>10s} {'MBitOps':>10s}")
    for label, value, bitops, _ in rows:
        print(f"{label:32s} {value:12.2f} {value - bicubic:+10.2f} {bitops / 1e6:10.1f}")
    print(f"{'bicubic':32s} {bicubic:12.2f} {0:+10.2f} {0:10.1f}")

    by_name = {label: (value, bitops) for label, value, bitops, _ in rows}
    uniforms = [(v, b) for label, (v, b) in by_name.items() if label.startswith("uniform") and "no ADQ" not in label]
    found = [(v, b) for label, (v, b) in by_name.items() if label.startswith("quantnas noise")]
    dominated = [u for u in uniforms if any(v >= u[0] and b <= u[1] and (v > u[0] or b < u[1]) for v, b in found)]
    print(f"\nuniform baselines dominated by a QuantNAS (noise) network: {len(dominated)} of {len(uniforms)}")

    noise_time = sum(s for _, mode, lam, s, _ in searches if mode == "noise" and lam == middle)
    direct_time = sum(s for _, mode, _, s, _ in searches if mode == "direct")
    print(f"search wall time at λ={middle:g}: noise {noise_time:.0f} s, direct {direct_time:.0f} s, "
          f"ratio {noise_time / direct_time:.2f} (goal <= 0.8)")
    for mode in ("noise", "direct"):
        label = f"quantnas {mode} λ={middle:g}"
        print(f"  {mode}: found network {by_name[label][0]:.2f} dB at {by_name[label][1] / 1e6:.1f} MBitOps")
    for op in ("conv3x3", "conv5x5"):
        on, off = by_name[f"uniform {op}@4"][0], by_name[f"uniform {op}@4 no ADQ"][0]
        print(f"ADQ, uniform {op}@4: on {on:.2f} dB, off {off:.2f} dB, difference {on - off:+.2f} dB")

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, value, bitops, _ in rows:
        marker = "o" if label.startswith("quantnas") else "s"
        ax.scatter(bitops / 1e6, value, marker=marker)
        ax.annotate(label, (bitops / 1e6, value), fontsize=6)
    ax.axhline(bicubic, linestyle="--", color="grey", label="bicubic")
    ax.set_xlabel("MBitOps")
    ax.set_ylabel("test PSNR (dB)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(root / "quantnas_sr.png", dpi=120)
    print(f"plot: {root / 'quantnas_sr.png'}")


if __name__ == "__main__":
    main()
