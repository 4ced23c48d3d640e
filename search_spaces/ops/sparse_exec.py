"""Sparse execution for inference: masked layers run as CSR with compiled one-thread CPU kernels.

``SparseExecLinear`` / ``SparseExecConv2d`` are built from a (masked) ``nn.Linear`` / ``nn.Conv2d``
or a sparse op and hold only the non-zero weights; their cost follows the non-zero MACs (kernels in
``_sparse_kernels``). ``choose_execution`` is the export step: it times dense and sparse execution
of every layer on its real input and keeps the faster ("the engine chooses the faster path per layer").

Why not ``torch.sparse``: on one CPU thread here, CSR ``addmm`` (linear) and ``F.unfold`` + CSR
matmul (convolution) measured 1.5-14x slower than these kernels at keep ratio 0.05, and mostly
slower than the dense layer (``unfold`` alone costs most of a dense 3x3 convolution);
``benchmarks/sparse_ops.py`` prints all three.

Export: these modules run numba code on numpy views, so they cannot be traced, scripted, compiled
or exported to ONNX (they raise instead of being silently recorded as constants). Export the model
from ``extract_sparse_ops`` (dense with zeros); ``choose_execution`` is for running in PyTorch.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from nas.errors import ConfigError
from search_spaces.ops import _sparse_kernels as kernels
from search_spaces.ops.counting import register_mac_counter
from search_spaces.ops.sparse import extract_sparse_ops, nonzero_macs, replace_modules

_EXEC_DTYPES = (torch.float32, torch.float64)


def _plain_weights(layer: nn.Conv2d | nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    if hasattr(layer, "extract"):  # a sparse op: its mask baked in
        layer = layer.extract()
    return layer.weight.detach(), None if layer.bias is None else layer.bias.detach()


def _csr(rows: torch.Tensor, column_offset: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """CSR of the 2-D ``rows``, each row's column indices shifted by ``column_offset[row]``."""
    row, col = rows.nonzero(as_tuple=True)
    indptr = torch.zeros(rows.shape[0] + 1, dtype=torch.int64)
    indptr[1:] = torch.bincount(row, minlength=rows.shape[0]).cumsum(0)
    return indptr, col + column_offset[row], rows[row, col].contiguous()


class _SparseExec(nn.Module):
    """A layer held as CSR weight rows (``indptr``, ``indices``, ``values`` buffers) plus a dense bias.

    Inference only, on CPU, float32/float64. The kernels read numpy views of the buffers, made on
    first use and dropped whenever the module is converted (``_apply``: ``.to``, ``.double``, ...);
    ``load_state_dict`` copies into the buffers, so the views see it. An input that requires grad,
    tracing and compiling are refused rather than silently cut out of the graph.
    """

    def _init_csr(self, rows: torch.Tensor, column_offset: torch.Tensor, bias: torch.Tensor | None) -> None:
        if rows.device.type != "cpu" or rows.dtype not in _EXEC_DTYPES:
            raise ConfigError(f"sparse execution runs float32/float64 layers on CPU, got {rows.dtype} on "
                              f"{rows.device}")
        indptr, indices, values = _csr(rows, column_offset)
        self.register_buffer("indptr", indptr)
        self.register_buffer("indices", indices)
        self.register_buffer("values", values)
        self.register_buffer("bias", None if bias is None else bias.clone())
        self._forget_views()

    def _forget_views(self) -> None:
        self._views: tuple[np.ndarray, ...] | None = None
        self._layouts: dict[tuple[int, int], tuple] = {}

    def _apply(self, fn, recurse=True):
        self._forget_views()
        return super()._apply(fn, recurse)

    def extra_repr(self) -> str:
        return f"nonzero={self.values.numel()}, bias={self.bias is not None}"

    def nonzero_params(self) -> int:
        """Stored non-zero weights plus the bias."""
        return self.values.numel() + (self.bias.numel() if self.bias is not None else 0)

    def _numpy_views(self) -> tuple[np.ndarray, ...]:
        """``indptr``, ``indices`` (unsigned: numba then skips wrap-around checks), ``values``, bias."""
        if self._views is None:
            values = self.values.numpy()
            bias = np.zeros(self.indptr.numel() - 1, values.dtype) if self.bias is None else self.bias.numpy()
            self._views = (self.indptr.numpy(), self.indices.numpy().view(np.uint64), values, bias)
        return self._views

    def _check_input(self, x: torch.Tensor) -> None:
        if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling():
            raise RuntimeError(f"{type(self).__name__} runs a compiled CPU kernel and cannot be traced, scripted, "
                               "compiled or exported; export the model from extract_sparse_ops() instead")
        if x.requires_grad:
            raise RuntimeError(f"{type(self).__name__} is inference-only: call it under torch.no_grad()")


class SparseExecLinear(_SparseExec):
    """Inference ``nn.Linear`` as CSR rows: cost proportional to the non-zero weights."""

    def __init__(self, layer: nn.Linear):
        super().__init__()
        weight, bias = _plain_weights(layer)
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self._init_csr(weight, torch.zeros(weight.shape[0], dtype=torch.int64), bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {super().extra_repr()}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        flat = x if x.dim() == 2 else x.reshape(-1, self.in_features)
        out = torch.from_numpy(kernels.sparse_linear(flat.contiguous().numpy(), *self._numpy_views()))
        return out if x.dim() == 2 else out.view(*x.shape[:-1], self.out_features)


class SparseExecConv2d(_SparseExec):
    """Inference ``nn.Conv2d`` (any stride, padding, dilation, groups; zero padding) as a direct sparse conv.

    The weight is held as CSR over ``(out_channels, in_channels * kh * kw)`` columns (grouped weights
    placed in their group's columns, so the non-zeros alone are stored); each input size gets its own
    offsets into the phase planes the kernel reads (see ``_sparse_kernels``), cached for the last size.
    """

    def __init__(self, layer: nn.Conv2d):
        super().__init__()
        if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
            raise ConfigError(f"sparse execution needs explicit zero padding, got padding={layer.padding!r} "
                              f"padding_mode={layer.padding_mode!r}")
        weight, bias = _plain_weights(layer)
        self.in_channels, self.out_channels = layer.in_channels, layer.out_channels
        self.kernel_size, self.stride = layer.kernel_size, layer.stride
        self.padding, self.dilation = layer.padding, layer.dilation
        group = torch.arange(layer.out_channels) // (layer.out_channels // layer.groups)
        self._init_csr(weight.reshape(layer.out_channels, -1), group * weight[0].numel(), bias)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, {super().extra_repr()}")

    def _layout(self, h: int, w: int) -> tuple:
        """Output size, phase-plane size, tail, and the per-non-zero offsets for an ``h x w`` input (cached)."""
        if (h, w) not in self._layouts:
            self._layouts = {(h, w): self._compute_layout(h, w)}  # keep the last size only
        return self._layouts[h, w]

    def _compute_layout(self, h: int, w: int) -> tuple:
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel_size, self.stride, self.padding, self.dilation
        hp, wp = h + 2 * ph, w + 2 * pw
        ho, wo = (hp - dh * (kh - 1) - 1) // sh + 1, (wp - dw * (kw - 1) - 1) // sw + 1
        hq, wq = -(-hp // sh), -(-wp // sw)
        col = self.indices.numpy()
        channel, tap = col // (kh * kw), col % (kh * kw)
        dy, dx = tap // kw * dh, tap % kw * dw
        offsets = ((channel * sh + dy % sh) * sw + dx % sw) * (hq * wq) + dy // sh * wq + dx // sw
        return ho, wo, hq, wq, (kw - 1) * dw // sw, offsets

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        n, c, h, w = x.shape
        ho, wo, hq, wq, tail, offsets = self._layout(h, w)
        (ph, pw), (sh, sw) = self.padding, self.stride
        pixels = x.contiguous().numpy()
        if (ph, pw, sh, sw, tail) == (0, 0, 1, 1, 0):  # the input is its own single phase plane
            phases = pixels.reshape(-1)
        else:
            phases = kernels.phase_planes(pixels, ph, pw, sh, sw, hq, wq, tail)
        indptr, _, values, bias = self._numpy_views()
        sample = c * sh * sw * hq * wq
        return torch.from_numpy(kernels.sparse_conv(phases, n, sample, indptr, offsets, values, bias, ho, wo, wq))


@register_mac_counter(SparseExecConv2d)
def _exec_conv_macs(module: SparseExecConv2d, inp: torch.Tensor, out: torch.Tensor) -> int:
    return nonzero_macs(module.values.numel(), out, module.out_channels)


@register_mac_counter(SparseExecLinear)
def _exec_linear_macs(module: SparseExecLinear, inp: torch.Tensor, out: torch.Tensor) -> int:
    return nonzero_macs(module.values.numel(), out, module.out_features)


@dataclass(frozen=True)
class LayerChoice:
    """One layer's two execution paths as timed by ``choose_execution`` (median milliseconds)."""

    name: str
    density: float
    dense_ms: float
    sparse_ms: float

    @property
    def sparse(self) -> bool:
        """Whether the sparse execution path was kept (it measured faster)."""
        return self.sparse_ms < self.dense_ms

    @property
    def speedup(self) -> float:
        """Dense time over sparse time."""
        return self.dense_ms / self.sparse_ms


def _sparse_exec_of(module: nn.Module) -> _SparseExec | None:
    """The sparse execution twin of a plain ``Conv2d`` / ``Linear`` it supports, else None."""
    exec_class = {nn.Conv2d: SparseExecConv2d, nn.Linear: SparseExecLinear}.get(type(module))
    try:
        return None if exec_class is None else exec_class(module)
    except ConfigError:  # not on CPU, not float32/float64, or not zero-padded
        return None


@contextlib.contextmanager
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _median_ms(module: nn.Module, x: torch.Tensor, runs: int) -> float:
    samples = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter()
        module(x)
        samples[i] = time.perf_counter() - start
    return 1e3 * float(np.median(samples))


def _time_paths(dense: nn.Module, sparse: nn.Module, x: torch.Tensor, *, rounds: int = 5, runs: int = 20,
               warmup: int = 3) -> tuple[float, float]:
    """Median milliseconds of ``dense(x)`` and ``sparse(x)``: one thread, inference mode, interleaved rounds.

    Interleaving makes drift on a shared machine hit both paths alike; each path's time is the
    median of its round medians.
    """
    dense_ms, sparse_ms = [], []
    with _one_thread(), torch.inference_mode():
        for module in (dense, sparse):
            for _ in range(warmup):
                module(x)
        for _ in range(rounds):
            dense_ms.append(_median_ms(dense, x, runs))
            sparse_ms.append(_median_ms(sparse, x, runs))
    return float(np.median(dense_ms)), float(np.median(sparse_ms))


def _layer_inputs(model: nn.Module, example_input: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    """The input each named layer sees in one forward of ``example_input`` (its first call, copied)."""
    inputs: dict[str, torch.Tensor] = {}

    def recorder(name: str):
        return lambda module, args: inputs.setdefault(name, args[0].detach().clone())

    handles = [model.get_submodule(name).register_forward_pre_hook(recorder(name)) for name in names]
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        for handle in handles:
            handle.remove()
    return inputs


def choose_execution(model: nn.Module, example_input: torch.Tensor, *, rounds: int = 5, runs: int = 20,
                     warmup: int = 3) -> tuple[nn.Module, list[LayerChoice]]:
    """Export ``model`` for inference with the faster of dense and sparse execution in each layer.

    Sparse ops are extracted first (``extract_sparse_ops``); then every plain CPU float ``Conv2d`` /
    ``Linear`` is timed dense and as ``SparseExec*`` on the input it sees for ``example_input``
    (that batch size, one thread, see ``_time_paths``) and replaced where sparse measured faster. The
    result is a new model in eval mode; ``model`` is untouched.

    Returns:
        The new model and one :class:`LayerChoice` per timed layer, in forward order.
    """
    model = extract_sparse_ops(model).eval()
    candidates = {name: fast for name, m in model.named_modules() if (fast := _sparse_exec_of(m)) is not None}
    inputs = _layer_inputs(model, example_input, list(candidates))
    choices, faster = [], {}
    for name, x in inputs.items():
        layer, fast = model.get_submodule(name), candidates[name]
        dense_ms, sparse_ms = _time_paths(layer, fast, x, rounds=rounds, runs=runs, warmup=warmup)
        choice = LayerChoice(name, fast.values.numel() / layer.weight.numel(), dense_ms, sparse_ms)
        choices.append(choice)
        if choice.sparse:
            faster[name] = fast
    return replace_modules(model, lambda name, m: faster.get(name)), choices
