"""Latency measurement backends by name: how a model is run on a device to be timed.

``torch`` runs the module eagerly (CPU or CUDA); ``onnxruntime`` exports it to ONNX and runs it in an
ONNX Runtime session with a fixed intra-op thread count. Each backend returns a ``LatencyStats``.
"""

from __future__ import annotations

import os
import tempfile
from typing import Callable

import torch

from evaluators.latency import LatencyStats, measure_latency, resolve_clock, time_runs
from nas.errors import UnknownNameError

Backend = Callable[..., LatencyStats]
_BACKENDS: dict[str, Backend] = {}


def register_backend(name: str) -> Callable[[Backend], Backend]:
    """Decorator: ``backend(model, x, *, threads, warmup, runs, device, clock) -> LatencyStats``."""

    def decorator(fn: Backend) -> Backend:
        _BACKENDS[name] = fn
        return fn

    return decorator


def backend_names() -> list[str]:
    return sorted(_BACKENDS)


def get_backend(name: str) -> Backend:
    try:
        return _BACKENDS[name]
    except KeyError:
        raise UnknownNameError(f"unknown latency backend {name!r}; known: {', '.join(backend_names())}") from None


@register_backend("torch")
def measure_torch(model: torch.nn.Module, example_input: torch.Tensor, *, threads: int = 1, warmup: int = 10,
                  runs: int = 50, device: str = "cpu", clock: str = "auto") -> LatencyStats:
    """Eager PyTorch on ``device`` (``cpu``, ``cuda``, ``cuda:N``)."""
    model = model.to(device)
    return measure_latency(model, example_input.to(device), warmup=warmup, runs=runs, threads=threads, clock=clock)


def export_onnx(model: torch.nn.Module, example_input: torch.Tensor, path: str) -> None:
    """Export with the TorchScript-based exporter: no extra dependency, seconds rather than tens."""
    import warnings

    model = model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example_input,), path, dynamo=False, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})


def ort_session(path: str, threads: int = 1):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


@register_backend("onnxruntime")
def measure_onnxruntime(model: torch.nn.Module, example_input: torch.Tensor, *, threads: int = 1, warmup: int = 10,
                        runs: int = 50, device: str = "cpu", clock: str = "auto") -> LatencyStats:
    """ONNX Runtime CPU session (BatchNorm folded into convolutions, as deployed); with one intra-op
    thread the session computes in the calling thread, so the ``thread`` clock applies."""
    clock = resolve_clock(clock, threads)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        export_onnx(model.cpu(), example_input.cpu(), path)
        session = ort_session(path, threads)
    feed = {"x": example_input.cpu().numpy()}
    for _ in range(warmup):
        session.run(None, feed)
    samples = time_runs(lambda: session.run(None, feed), runs, clock)
    return LatencyStats.from_samples(samples, warmup=warmup, batch=int(example_input.shape[0]), threads=threads,
                                     device="cpu-ort", clock=clock)
