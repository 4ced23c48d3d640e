"""Sparse ops (DASS/HYDRA): top-k masks, straight-through scores, extraction, counting, sparse execution."""

import math
from fractions import Fraction

import numpy as np
import onnxruntime
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nas.errors import ConfigError
from search_spaces.ops.counting import count_macs
from search_spaces.ops.sparse import (
    SparseConv2d,
    SparseLinear,
    count_nonzero_params,
    extract_sparse_ops,
    init_scores_from_weights,
    kept_count,
    set_keep_ratio,
    set_sparse_trainable,
    sparse_layers,
)
from search_spaces.ops.sparse_exec import (
    SparseExecConv2d,
    SparseExecLinear,
    choose_execution,
)

RATIOS = [1.0, 0.5, 0.1, 0.07, 0.05, 0.01, 0.003]


def ceil_kn(k: float, n: int) -> int:
    return math.ceil(Fraction(str(k)) * n)


def random_scores(layer: SparseConv2d | SparseLinear, seed: int = 0) -> None:
    """Scores unrelated to the weights, of both signs, so the mask is not magnitude pruning."""
    with torch.no_grad():
        layer.scores.copy_(torch.randn(layer.scores.shape, generator=torch.Generator().manual_seed(seed)))


def small_net(keep_ratio: float) -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(SparseConv2d(3, 16, 3, padding=1, keep_ratio=keep_ratio), nn.BatchNorm2d(16), nn.ReLU(),
                        SparseConv2d(16, 16, 3, stride=2, padding=1, groups=16, bias=False, keep_ratio=keep_ratio),
                        SparseConv2d(16, 24, 1, keep_ratio=keep_ratio), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), SparseLinear(24, 10, keep_ratio=keep_ratio))
    for i, layer in enumerate(sparse_layers(net)):
        random_scores(layer, i)
    return net.eval()


@pytest.mark.parametrize("k", RATIOS)
def test_mask_keeps_exactly_ceil_kn_largest_scores_per_layer(k):
    for layer in sparse_layers(small_net(k)):
        n = layer.weight.numel()
        mask = layer.mask()
        assert int(mask.sum()) == ceil_kn(k, n)
        magnitudes = layer.scores.detach().abs()
        if k < 1:
            assert magnitudes[mask].min() >= magnitudes[~mask].max()
        assert torch.equal(layer.effective_weight() != 0, mask & (layer.weight != 0))


def test_kept_count_and_ties_are_exact():
    assert kept_count(100, 0.07) == 7 and kept_count(10, 0.01) == 1 and kept_count(1000, 0.05) == 50
    layer = SparseLinear(10, 10, keep_ratio=0.25)
    with torch.no_grad():
        layer.scores.fill_(0.5)
    assert torch.equal(layer.mask().reshape(-1).nonzero().reshape(-1), torch.arange(25))


def test_straight_through_gradient_reaches_scores():
    torch.manual_seed(1)
    layer = SparseConv2d(4, 6, 3, padding=1, keep_ratio=0.3)
    random_scores(layer)
    x, g = torch.randn(2, 4, 5, 5), torch.randn(2, 6, 5, 5)
    (layer(x) * g).sum().backward()

    mask = layer.mask().float()
    w_eff = (layer.weight * mask).detach().requires_grad_()
    (F.conv2d(x, w_eff, layer.bias, padding=1) * g).sum().backward()
    expected_scores = w_eff.grad * layer.weight.detach() * layer.scores.detach().sign()
    assert layer.scores.grad is not None and layer.scores.grad.abs().sum() > 0
    torch.testing.assert_close(layer.scores.grad, expected_scores)
    torch.testing.assert_close(layer.weight.grad, w_eff.grad * mask)
    assert torch.count_nonzero(layer.scores.grad * (1 - mask)) > 0  # pruned entries get gradient too


def test_keep_ratio_one_is_dense_and_skips_the_mask():
    layer = SparseConv2d(3, 5, 3, keep_ratio=1.0)
    random_scores(layer)
    assert layer.effective_weight() is layer.weight
    x = torch.randn(1, 3, 6, 6)
    torch.testing.assert_close(layer(x), F.conv2d(x, layer.weight, layer.bias))


def test_scaled_score_init():
    conv, linear = SparseConv2d(4, 6, 3, groups=2), SparseLinear(12, 5)
    for layer, fan_in in ((conv, 2 * 3 * 3), (linear, 12)):
        random_scores(layer)
        with torch.no_grad():
            layer.weight.mul_(3.0)
        init_scores_from_weights(nn.Sequential(layer))
        w = layer.weight.detach()
        torch.testing.assert_close(layer.scores.detach(), math.sqrt(6 / fan_in) * w / w.abs().max())
        random_scores(layer)
        layer.reset_parameters()
        w = layer.weight.detach()
        torch.testing.assert_close(layer.scores.detach(), math.sqrt(6 / fan_in) * w / w.abs().max())
    with torch.no_grad():
        linear.weight.zero_()
    linear.init_scores_from_weights()
    assert torch.equal(linear.scores.detach(), torch.zeros_like(linear.scores))


def test_frozen_weights_get_no_grad_while_training_scores():
    net = small_net(0.5).train()
    set_sparse_trainable(net, weights=False, scores=True)
    net(torch.randn(2, 3, 8, 8)).sum().backward()
    for layer in sparse_layers(net):
        assert layer.weight.grad is None and (layer.bias is None or layer.bias.grad is None)
        assert layer.scores.grad is not None and layer.scores.grad.abs().sum() > 0
    net.zero_grad(set_to_none=True)
    set_sparse_trainable(net, weights=True, scores=False)
    net(torch.randn(2, 3, 8, 8)).sum().backward()
    for layer in sparse_layers(net):
        assert layer.scores.grad is None and layer.weight.grad is not None


def test_mask_follows_scores_and_keep_ratio_without_grad():
    layer = SparseLinear(8, 8, keep_ratio=0.5)
    x = torch.randn(3, 8)
    with torch.no_grad():
        before = layer(x)
        layer.scores.neg_().add_(torch.linspace(-1, 1, 64).view(8, 8))
        after = layer(x)
        layer.keep_ratio = 0.1
        sparser = layer(x)
    assert not torch.allclose(before, after) and not torch.allclose(after, sparser)
    torch.testing.assert_close(sparser, x @ (layer.weight * layer.mask()).T + layer.bias)


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.5, float("nan"), True, "0.5", None])
def test_keep_ratio_outside_unit_interval_is_refused(bad):
    message = "keep ratio must be a number in (0, 1]"
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("]", r"\]")):
        SparseConv2d(3, 3, 1, keep_ratio=bad)
    net = small_net(0.5)
    with pytest.raises(ConfigError, match="keep ratio"):
        set_keep_ratio(net, bad)
    with pytest.raises(ConfigError, match="keep ratio"):
        net[0].keep_ratio = bad
    assert all(layer.keep_ratio == 0.5 for layer in sparse_layers(net))


def test_set_keep_ratio_reaches_every_sparse_op():
    net = small_net(1.0)
    set_keep_ratio(net, 0.05)
    assert [layer.keep_ratio for layer in sparse_layers(net)] == [0.05] * 4


@pytest.mark.parametrize("k", [1.0, 0.1, 0.01])
def test_nonzero_macs_and_params_count_the_formula(k):
    net = small_net(k)
    # (weights, output positions, bias) of: conv 3->16 3x3 @8x8, depthwise 3x3 s2 @4x4, 1x1 16->24 @4x4, linear 24->10
    layers = [(16 * 3 * 9, 64, 16), (16 * 9, 16, 0), (24 * 16, 16, 24), (24 * 10, 1, 10)]
    x = torch.randn(1, 3, 8, 8)
    assert count_macs(net, x) == sum(ceil_kn(k, n) * positions for n, positions, _ in layers)
    bn = 2 * 16
    assert count_nonzero_params(net) == sum(ceil_kn(k, n) + b for n, _, b in layers) + bn
    executed = extract_sparse_ops(net)
    for i in (0, 3, 4):
        executed[i] = SparseExecConv2d(net[i])
    executed[8] = SparseExecLinear(net[8])
    assert count_macs(executed, x) == count_macs(net, x) and count_nonzero_params(executed) == count_nonzero_params(net)
    with torch.no_grad():
        net[0].weight.view(-1)[net[0].mask().view(-1).nonzero()[0]] = 0.0  # a kept weight that is exactly zero
    assert count_macs(net, x) == sum(ceil_kn(k, n) * p for n, p, _ in layers) - 64


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # jit.trace and the TorchScript ONNX exporter
def test_extract_equals_masked_forward_and_exports(tmp_path):
    net = small_net(0.1)
    plain = extract_sparse_ops(net)
    assert not list(sparse_layers(plain)) and list(sparse_layers(net))
    assert {type(m) for m in plain.modules()} >= {nn.Conv2d, nn.Linear}
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = net(x)
        torch.testing.assert_close(plain(x), expected, atol=1e-5, rtol=0)
        traced = torch.jit.trace(plain, x)
        torch.testing.assert_close(traced(x), expected, atol=1e-5, rtol=0)
    torch.onnx.export(plain, (x,), str(tmp_path / "m.onnx"), dynamo=False, input_names=["x"])
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"x": x.numpy()})[0], expected.numpy(), atol=1e-5)


CONVS = [  # (in, out, kernel, stride, padding, dilation, groups, bias, input size)
    (8, 12, 3, 1, 1, 1, 1, True, (9, 7)),
    (8, 12, 3, 2, 1, 1, 1, False, (9, 8)),
    (16, 16, 1, 1, 0, 1, 1, True, (5, 5)),
    (10, 10, 5, 2, 2, 1, 10, False, (11, 12)),            # depthwise, stride 2
    (6, 9, (3, 2), (2, 1), (1, 2), (2, 1), 3, True, (10, 9)),  # grouped, dilated, non-square
]


@pytest.mark.parametrize("spec", CONVS)
@pytest.mark.parametrize("k", [1.0, 0.3, 0.05])
def test_sparse_execution_equals_dense_conv(spec, k):
    c_in, c_out, kernel, stride, padding, dilation, groups, bias, (h, w) = spec
    torch.manual_seed(2)
    layer = SparseConv2d(c_in, c_out, kernel, stride, padding, dilation, groups, bias, keep_ratio=k)
    random_scores(layer)
    fast = SparseExecConv2d(layer)
    assert fast.values.numel() == ceil_kn(k, layer.weight.numel())
    with torch.no_grad():
        for x in (torch.randn(1, c_in, h, w), torch.randn(3, c_in, h + 1, w + 2)):
            torch.testing.assert_close(fast(x), layer(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("k", [1.0, 0.3, 0.05])
@pytest.mark.parametrize("bias", [True, False])
def test_sparse_execution_equals_dense_linear(k, bias):
    torch.manual_seed(3)
    layer = SparseLinear(40, 24, bias=bias, keep_ratio=k)
    random_scores(layer)
    fast = SparseExecLinear(layer.extract())
    with torch.no_grad():
        for x in (torch.randn(1, 40), torch.randn(2, 5, 40)):
            torch.testing.assert_close(fast(x), layer(x), atol=1e-5, rtol=0)


def test_sparse_execution_follows_conversion_and_state_dict():
    layer = SparseLinear(16, 8, keep_ratio=0.5)
    fast = SparseExecLinear(layer)
    x = torch.randn(2, 16, dtype=torch.float64)
    with torch.no_grad():
        fast(x.float())
        fast.double().values.mul_(2)
        torch.testing.assert_close(fast(x), 2 * (x @ layer.extract().weight.double().T) + layer.bias.double())
        fast.load_state_dict(SparseExecLinear(layer).double().state_dict())
        torch.testing.assert_close(fast(x), x @ layer.extract().weight.double().T + layer.bias.double())


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_sparse_execution_refuses_grad_and_tracing():
    fast = SparseExecConv2d(SparseConv2d(3, 4, 3, keep_ratio=0.5))
    x = torch.randn(1, 3, 6, 6)
    with pytest.raises(RuntimeError, match="inference-only"):
        fast(x.requires_grad_())
    with pytest.raises(RuntimeError, match="extract_sparse_ops"), torch.no_grad():
        torch.jit.trace(fast, x.detach())


def test_choose_execution_keeps_outputs_and_the_original():
    net = small_net(0.05)
    x = torch.randn(1, 3, 8, 8)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        fast, choices = choose_execution(net, x, rounds=1, runs=2, warmup=1)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    assert [c.name for c in choices] == ["0", "3", "4", "8"] and len(list(sparse_layers(net))) == 4
    for choice in choices:
        n = net.get_submodule(choice.name).weight.numel()
        assert choice.density == ceil_kn(0.05, n) / n
        expected = (SparseExecConv2d, SparseExecLinear) if choice.sparse else (nn.Conv2d, nn.Linear)
        assert type(fast.get_submodule(choice.name)) in expected
    with torch.no_grad():
        torch.testing.assert_close(fast(x), net(x), atol=1e-5, rtol=0)
