"""Dense vs sparse execution of single layers at keep ratios 1.0, 0.1, 0.05, 0.01, side by side.

Target (issue: DASS): the sparse path >= 2x faster than the dense layer at keep ratio 0.05 for the
layers where it is used. Columns: the dense layer holding the zeros (what an extracted network
runs), the ``torch.sparse`` route (CSR ``addmm`` for linear layers, ``F.unfold`` + CSR matmul for
convolutions) as a reference, and ours (``SparseExec*``: compiled CSR / direct sparse convolution).
Each layer's mask is the top-k of random scores. Timing: batch 1, one thread, process pinned to one
core, inference mode; each latency is the median of ``--rounds`` interleaved round medians of
``--runs`` runs after warm-up. ``use`` is what ``choose_execution`` would keep (ours if faster).
Run: ``python benchmarks/sparse_ops.py`` (about 20 s).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

# Run as a script, this folder leads sys.path, and benchmarks/predictors.py would shadow the package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from evaluators.latency import measure_latency
from search_spaces.ops.sparse import SparseConv2d, SparseLinear
from search_spaces.ops.sparse_exec import SparseExecConv2d, SparseExecLinear

RATIOS = (1.0, 0.1, 0.05, 0.01)
LAYERS = {  # name: (factory, input shape)
    "conv1x1 128->128 @16x16": (lambda k: SparseConv2d(128, 128, 1, bias=False, keep_ratio=k), (1, 128, 16, 16)),
    "conv3x3 64->64 @16x16": (lambda k: SparseConv2d(64, 64, 3, padding=1, bias=False, keep_ratio=k),
                              (1, 64, 16, 16)),
    "conv3x3 s2 64->128 @16x16": (lambda k: SparseConv2d(64, 128, 3, 2, 1, bias=False, keep_ratio=k),
                                  (1, 64, 16, 16)),
    "dw3x3 128 @16x16": (lambda k: SparseConv2d(128, 128, 3, padding=1, groups=128, bias=False, keep_ratio=k),
                         (1, 128, 16, 16)),
    "dil3x3 d2 32->32 @32x32": (lambda k: SparseConv2d(32, 32, 3, padding=2, dilation=2, bias=False, keep_ratio=k),
                                (1, 32, 32, 32)),
    "linear 512->512": (lambda k: SparseLinear(512, 512, keep_ratio=k), (1, 512)),
}


class TorchSparseLinear(nn.Module):
    """Reference: the masked weight as a ``torch.sparse`` CSR tensor, ``addmm``."""

    def __init__(self, layer: nn.Linear):
        super().__init__()
        self.weight, self.bias = layer.weight.detach().to_sparse_csr(), layer.bias.detach()[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, self.weight, x.T).T


class TorchSparseConv2d(nn.Module):
    """Reference: im2col by ``F.unfold``, then a ``torch.sparse`` CSR matmul (groups as a block-diagonal weight)."""

    def __init__(self, layer: nn.Conv2d):
        super().__init__()
        self.layer = layer
        groups = layer.weight.detach().reshape(layer.groups, layer.out_channels // layer.groups, -1)
        self.weight = torch.block_diag(*groups).to_sparse_csr()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.layer
        cols = F.unfold(x, c.kernel_size, c.dilation, c.padding, c.stride)[0]
        h, w = ((size + 2 * p - d * (k - 1) - 1) // s + 1 for size, p, d, k, s in
                zip(x.shape[2:], c.padding, c.dilation, c.kernel_size, c.stride))
        return (self.weight @ cols).view(1, c.out_channels, h, w)


def masked_layer(factory, k: float, seed: int) -> nn.Module:
    """The plain layer holding the weights kept by the top-k of random scores."""
    torch.manual_seed(seed)
    layer = factory(k)
    with torch.no_grad():
        layer.scores.normal_()
    return layer.extract().eval()


def interleaved_medians(models: dict[str, nn.Module], x: torch.Tensor, rounds: int, runs: int) -> dict[str, float]:
    samples = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            samples[name].append(measure_latency(model, x, warmup=5, runs=runs, threads=1).median_ms)
    return {name: float(np.median(v)) for name, v in samples.items()}


def pin_to_one_core() -> int:
    core = max(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    return core


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
    core = pin_to_one_core()
    torch.set_num_threads(1)
    print(f"batch 1, 1 thread pinned to core {core}, torch {torch.__version__}; median of {args.rounds} interleaved "
          f"rounds x {args.runs} runs; times in microseconds")
    print(f"{'layer':<26} {'keep':>5} {'nz MACs':>8} {'dense':>8} {'torch.sparse':>12} {'ours':>8} "
          f"{'ours/dense':>10} {'use':>6}")
    verdicts = []
    for i, (name, (factory, shape)) in enumerate(LAYERS.items()):
        x = torch.randn(shape)
        for k in RATIOS:
            dense = masked_layer(factory, k, seed=i)
            linear = isinstance(dense, nn.Linear)
            models = {"dense": dense, "torch": (TorchSparseLinear if linear else TorchSparseConv2d)(dense),
                      "ours": (SparseExecLinear if linear else SparseExecConv2d)(dense)}
            t = interleaved_medians(models, x, args.rounds, args.runs)
            speedup = t["dense"] / t["ours"]
            density = models["ours"].values.numel() / dense.weight.numel()
            print(f"{name:<26} {k:>5} {density:8.4f} {t['dense'] * 1e3:8.1f} {t['torch'] * 1e3:12.1f} {t['ours'] * 1e3:8.1f} "
                  f"{speedup:9.2f}x {'sparse' if speedup > 1 else 'dense':>6}")
            if k == 0.05:
                verdicts.append((name, speedup))
    print("\nTarget: ours >= 2x faster than dense at keep ratio 0.05")
    for name, speedup in verdicts:
        print(f"  {name:<26} {speedup:5.2f}x  {'met' if speedup >= 2 else 'NOT met'}")


if __name__ == "__main__":
    main()
