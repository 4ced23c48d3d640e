"""Supernet training on scikit-learn's digits: progressive shrinking vs DεpS vs the largest network
alone, at the same budget in epochs, side by side in one run.

For each method: test accuracy (BatchNorm re-calibrated per subnet on 500 training images) of the
smallest and largest subnets and of 20 random subnets (the same 20 for every method), wall time and
images processed. Then the training throughput of the supernet's full-network phase against the
largest network built as a plain static network, timed on identical batches in interleaved rounds.

Goals (issue #5): after progressive shrinking the largest subnet >= 97 % test accuracy, the smallest
>= 93 %, every one of 20 random subnets >= 90 %; supernet/static throughput >= 0.8 in the full phase.

    python benchmarks/train_digits.py [--epochs 30] [--methods ps,deps,full] [--threads 1]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import copy  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import yaml  # noqa: E402

from evaluators.accuracy import SubnetAccuracy  # noqa: E402
from nas.train import prepare  # noqa: E402
from search_spaces.training import ChoiceSampler, TrainConfig, Trainer  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "examples" / "digits_train.yaml"


def train_and_test(method: str, epochs: int, settings: dict, randoms: list[dict] | None, folder: Path):
    config = TrainConfig.from_dict({**settings, "method": method, "epochs": epochs, "data": "digits",
                                    "space": "ofa_mbv3"})
    space, data = prepare(config)
    started = time.perf_counter()
    trainer = Trainer.start(space, data, config, folder / method)
    trainer.run()
    seconds = time.perf_counter() - started
    sampler = ChoiceSampler(space, {})
    randoms = randoms or [sampler.random(1, np.random.default_rng(1000 + i))[0] for i in range(20)]
    test = SubnetAccuracy(space, data, "test")
    smallest, largest = test([sampler.smallest(), sampler.largest()])
    random_acc = test(randoms)
    images = trainer.position["step"] * config.batch_size
    return {"method": method, "min": smallest, "max": largest, "random_min": min(random_acc),
            "random_median": statistics.median(random_acc), "seconds": seconds, "steps": trainer.position["step"],
            "images": images}, randoms


def throughput_ratio(settings: dict, rounds: int = 5, steps: int = 10) -> tuple[float, float, float]:
    """Images/s of one full-network training step through the supernet and through the static network."""
    config = TrainConfig.from_dict({**settings, "data": "digits", "space": "ofa_mbv3"})
    space, data = prepare(config)
    largest = ChoiceSampler(space, {}).largest()
    space.activate(largest)
    supernet = space.supernet.train()
    static = space.from_scratch(largest).train()
    size = space.input_size(largest)
    batches = [data.eval_view(x, size) for x, _ in data.train.batches(config.batch_size, drop_last=True)][:steps]
    labels = [y for _, y in data.train.batches(config.batch_size, drop_last=True)][:steps]

    def timed(model):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
        start = time.perf_counter()
        for x, y in zip(batches, labels, strict=True):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y, label_smoothing=0.1).backward()
            optimizer.step()
        return len(batches) * config.batch_size / (time.perf_counter() - start)

    timed(copy.deepcopy(supernet)), timed(copy.deepcopy(static))                 # warm-up
    elastic, plain = [], []
    for _ in range(rounds):
        elastic.append(timed(supernet))
        plain.append(timed(static))
    e, p = statistics.median(elastic), statistics.median(plain)
    return e, p, e / p


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--methods", default="ps,deps,full")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = yaml.safe_load(CONFIG.read_text())
    settings.pop("method", None)
    settings.pop("epochs", None)
    print(f"space {settings['space_options']}, batch {settings['batch_size']}, lr {settings['lr']}, "
          f"{args.epochs} epochs per method, {args.threads} thread(s)")
    e, p, ratio = throughput_ratio(settings)
    print(f"full-network training throughput: supernet {e:.0f} img/s, static network {p:.0f} img/s, "
          f"ratio {ratio:.3f} (goal >= 0.8)")
    rows, randoms = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods.split(","):
            row, randoms = train_and_test(method, args.epochs, settings, randoms, Path(tmp))
            rows.append(row)
            print(f"  trained {method} in {row['seconds']:.0f} s", flush=True)
    print(f"\n{'method':8} {'min':>7} {'max':>7} {'rand min':>9} {'rand med':>9} {'time s':>7} {'img/s':>7}")
    for r in rows:
        print(f"{r['method']:8} {r['min']:7.2f} {r['max']:7.2f} {r['random_min']:9.2f} {r['random_median']:9.2f} "
              f"{r['seconds']:7.0f} {r['images'] / r['seconds']:7.0f}")
    ps = next((r for r in rows if r["method"] == "ps"), None)
    if ps is not None:
        print(f"\nprogressive shrinking vs goals: largest {ps['max']:.2f} % (>= 97), smallest {ps['min']:.2f} % "
              f"(>= 93), worst of 20 random {ps['random_min']:.2f} % (>= 90)")


if __name__ == "__main__":
    main()
