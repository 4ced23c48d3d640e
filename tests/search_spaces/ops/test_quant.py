"""Quantisation building blocks: noise, LSQ, HWGQ, QuantConv2d, BitOps, QDQ ONNX export.

Expected numbers are worked out by hand in the comments, not produced by the code under test.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from evaluators.backends import export_onnx, ort_session
from search_spaces.ops.counting import count_macs
from search_spaces.ops.quant import HWGQ, LSQWeightQuantizer, QuantConv2d, count_bitops
from search_spaces.ops.quant_noise import mix_quant_noise, noise_steps

S4, S8 = 0.21305606790772952, 0.020300567823662602  # the reference's HWGQ steps at 4 and 8 bits


# ---------------------------------------------------------------------------------------------- noise


def test_noise_step_is_range_over_levels_per_bitwidth():
    t = torch.tensor([[-1.0, 0.5], [3.0, 2.0]], requires_grad=True)  # range 4
    steps = noise_steps(t, (2, 4, 8))
    torch.testing.assert_close(steps, torch.tensor([4 / 3, 4 / 15, 4 / 255]))
    assert not steps.requires_grad


def _noise_of(mixed, t, pi):
    """The random part of a mixture: T̃ − (1/(B+1) + Σπ̂)·T."""
    beta = 1 / (len(pi) + 1)
    return mixed.detach() - (beta + (pi / (pi.sum() + beta)).sum()) * t.detach()


@pytest.mark.parametrize("kind, std, bound", [("gaussian", 0.5, None), ("uniform", 1 / math.sqrt(12), 0.5)])
def test_noise_distribution_of_one_bitwidth(kind, std, bound):
    t = torch.linspace(-1.0, 3.0, 200_000, requires_grad=True)    # Δ_4 = 4/15
    pi = torch.tensor([1.0, 0.0])                                  # B = 2: π̂ = (3/4, 0)
    mixed = mix_quant_noise(t, pi, (4, 8), kind, generator=torch.Generator().manual_seed(0))
    xi = _noise_of(mixed, t, pi) / (0.75 * 4 / 15)
    assert xi.std().item() == pytest.approx(std, rel=0.01)
    assert abs(xi.mean().item()) < 0.01
    if bound is not None:
        assert xi.abs().max().item() <= bound + 1e-5
    with pytest.raises(ValueError, match="unknown quantisation noise"):
        mix_quant_noise(t, pi, (4, 8), "laplace")


@pytest.mark.parametrize("kind, std", [("gaussian", 0.5), ("uniform", 1 / math.sqrt(12))])
def test_noise_of_several_bitwidths_adds_like_independent_draws(kind, std):
    # the reference draws ξ_b per bit-width: Var Σ π̂_b Δ_b ξ_b = std² · Σ (π̂_b Δ_b)²; π = (0.2, 0.6) over
    # bits (2, 4): π̂ = (3/17, 9/17), Δ = (4/3, 4/15): sqrt((4/17)² + (36/255)²) = 0.2744
    t = torch.linspace(-1.0, 3.0, 200_000)
    pi = torch.tensor([0.2, 0.6])
    noise = _noise_of(mix_quant_noise(t, pi, (2, 4), kind, generator=torch.Generator().manual_seed(1)), t, pi)
    assert noise.std().item() == pytest.approx(std * 0.27440, rel=0.01)


@pytest.mark.parametrize("bits", [(4,), (2, 4, 8)])
def test_gaussian_mixture_draws_one_random_tensor_whatever_the_bitwidths(bits):
    # what makes noise search cheaper than direct quantisation: not one draw (and range) per bit-width
    t = torch.randn(6, 5)
    generator = torch.Generator().manual_seed(2)
    mix_quant_noise(t, torch.full((len(bits),), 0.2), bits, generator=generator)
    after_one = torch.Generator().manual_seed(2)
    torch.randn(t.shape, generator=after_one)
    assert torch.equal(torch.rand(3, generator=generator), torch.rand(3, generator=after_one))


def test_mixed_tensor_on_a_hand_made_example():
    t = torch.tensor([1.0, -2.0])                               # range 3: Δ = (3/15, 3/255) at bits (4, 8)
    pi = torch.tensor([0.2, 0.6], requires_grad=True)
    mixed = mix_quant_noise(t, pi, (4, 8), generator=torch.Generator().manual_seed(0))
    # B = 2: T/3; Σπ + 1/3 = 17/15, so π̂ = (3/17, 9/17) and T's factor 1/3 + 12/17 = 53/51
    # noise: ξ/2 · sqrt((3/17 · 0.2)² + (9/17 · 3/255)²) = ξ · 0.0179200 with ξ the seeded standard draw
    xi = torch.randn(2, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(mixed, torch.tensor([53 / 51, -106 / 51]) + 0.0179200 * xi)
    # d Σ T̃ / dπ_b: ΣT · d(Σπ̂)/dπ_b = −1 · (1/3)/(17/15)² = −0.2595156 for both, plus Σξ · dσ/dπ_b with
    # σ = ‖π̂ ⊙ Δ‖/2: dσ/dπ̂ = π̂ ⊙ Δ² / (2‖π̂ ⊙ Δ‖) = (0.0984784, 0.0010223);
    # dπ̂_c/dπ_b = (δ_cb − π̂_c)/(17/15)
    dsigma = torch.tensor([0.0984784, 0.0010223])
    jacobian = (torch.eye(2) - torch.tensor([3 / 17, 9 / 17])[:, None]) / (17 / 15)   # [c, b]
    mixed.sum().backward()
    torch.testing.assert_close(pi.grad, -0.2595156 + xi.sum() * (dsigma @ jacobian), rtol=1e-3, atol=1e-5)
    with pytest.raises(ValueError, match="bit choices"):
        mix_quant_noise(t, torch.tensor([1.0]), (4, 8))


def test_mixed_tensor_gradient_reaches_the_tensor_only_through_the_full_precision_term():
    t = torch.randn(3, 4, requires_grad=True)
    mix_quant_noise(t, torch.tensor([0.1, 0.2, 0.3]), (2, 4, 8)).sum().backward()
    torch.testing.assert_close(t.grad, torch.full((3, 4), 0.25))  # 1/(B+1), B = 3


def test_mixture_of_a_constant_tensor_or_a_zero_slice_has_finite_gradients():
    # no noise at all (range 0, or π = 0): the noise scale is 0, where a norm's gradient must not be NaN
    for t, pi in ((torch.ones(5), torch.tensor([0.3, 0.2])), (torch.randn(5), torch.zeros(2))):
        pi.requires_grad_(True)
        mix_quant_noise(t, pi, (4, 8)).sum().backward()
        assert torch.isfinite(pi.grad).all()


# ------------------------------------------------------------------------------------------------ LSQ


def test_lsq_forward_and_gradients_by_hand():
    w = torch.tensor([[0.6, -5.0, 3.4], [0.3, 2.0, -0.1]], requires_grad=True)
    quant = LSQWeightQuantizer(4, w)  # Q_n = 8, Q_p = 7
    with torch.no_grad():
        quant.step.copy_(torch.tensor([0.5, 0.25]))
    # w/s = [[1.2, −10 (below −8), 6.8], [1.2, 8 (above 7), −0.4]]
    q = quant(w)
    torch.testing.assert_close(q, torch.tensor([[0.5, -4.0, 3.5], [0.25, 1.75, 0.0]]))
    upstream = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    (q * upstream).sum().backward()
    # straight-through inside the range, zero where clamped
    torch.testing.assert_close(w.grad, torch.tensor([[1.0, 0.0, 3.0], [4.0, 0.0, 6.0]]))
    # per element: round(w/s) − w/s inside, −Q_n below, Q_p above, times the upstream gradient:
    # row 0: (1 − 1.2)·1 − 8·2 + (7 − 6.8)·3 = −15.6;  row 1: (1 − 1.2)·4 + 7·5 + (0 + 0.4)·6 = 36.6
    # scaled by g = 1/sqrt(N·Q_p) = 1/sqrt(6·7)
    torch.testing.assert_close(quant.step.grad, torch.tensor([-15.6, 36.6]) / math.sqrt(42))


def test_lsq_step_initialisation_per_channel():
    w = torch.randn(4, 3, 3, 3)
    w[2] = 0.0
    for bits in (4, 8):
        quant = LSQWeightQuantizer(bits, w)
        expected = 2 * w.abs().mean((1, 2, 3)) / math.sqrt(2 ** (bits - 1) - 1)
        torch.testing.assert_close(quant.step[[0, 1, 3]], expected[[0, 1, 3]])
        assert quant.step[2] > 0  # an all-zero channel still quantises (to zeros), without NaN
        assert torch.equal(quant(w)[2], torch.zeros(3, 3, 3))
    with pytest.raises(ValueError, match="at least 2 bits"):
        LSQWeightQuantizer(1, w)


# ----------------------------------------------------------------------------------------------- HWGQ


def test_hwgq_values_and_straight_through_gradient():
    x = torch.tensor([-1.0, 0.0, 0.1, 0.11, 0.3, 1.0, 10.0], requires_grad=True)
    y = HWGQ(4)(x)
    # x/Δ = 0.47 → 0, 0.52 → 1, 1.41 → 1, 4.69 → 5; 10 is clamped to 15·Δ
    expected = torch.tensor([0.0, 0.0, 0.0, S4, S4, 1.0652803, 3.1958410])
    torch.testing.assert_close(y, expected)
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]))
    # 8 bits: 1.0/Δ = 49.26 → 49·Δ; 6.0 clamped to 255·Δ
    torch.testing.assert_close(HWGQ(8)(torch.tensor([1.0, 6.0])), torch.tensor([0.9947278, 5.1766448]))
    with pytest.raises(ValueError, match="no HWGQ step for 5-bit"):
        HWGQ(5)


# ---------------------------------------------------------------------------------------- QuantConv2d


def _direct(layer: QuantConv2d, i: int, x: torch.Tensor) -> torch.Tensor:
    """What direct mode at ``layer.bits[i]`` must compute, assembled from the parts."""
    w = layer.weight_quant[i](layer.weight)
    return F.conv2d(layer.act_quant[i](F.relu(x)), w, None, layer.stride, layer.padding, 1, layer.groups)


def test_quantconv_shares_one_weight_across_bitwidths():
    torch.manual_seed(0)
    layer = QuantConv2d(4, 6, 3, bits=(4, 8))
    assert [name for name, _ in layer.named_parameters()] == ["weight", "weight_quant.0.step", "weight_quant.1.step"]
    x = torch.randn(2, 4, 8, 8) * 2
    outputs = {}
    for i, bits in enumerate(layer.bits):
        layer.zero_grad(set_to_none=True)
        layer.set_mode("direct", bits=bits)
        outputs[bits] = layer(x)
        torch.testing.assert_close(outputs[bits], _direct(layer, i, x))
        outputs[bits].square().sum().backward()
        assert layer.weight.grad.abs().sum() > 0  # one tensor trained by every bit-width
        assert layer.weight_quant[i].step.grad is not None and layer.weight_quant[1 - i].step.grad is None
    assert not torch.allclose(outputs[4], outputs[8], atol=1e-3)
    with torch.no_grad():
        layer.weight.mul_(-1)
    for bits in layer.bits:
        layer.set_mode("direct", bits=bits)
        assert not torch.allclose(layer(x), outputs[bits])


def test_quantconv_float_mixed_direct_and_fixed_copy():
    torch.manual_seed(1)
    layer = QuantConv2d(4, 4, 3, bits=(4, 8), groups=2)
    x = torch.randn(2, 4, 8, 8)
    layer.set_mode("float")
    torch.testing.assert_close(layer(x), F.conv2d(F.relu(x), layer.weight, None, 1, 1, 1, 2))
    layer.set_mode("direct", pi=torch.tensor([0.1, 0.3]))  # shares 1/4, 3/4 of quantised weights/activations
    w = 0.25 * layer.weight_quant[0](layer.weight) + 0.75 * layer.weight_quant[1](layer.weight)
    a = 0.25 * layer.act_quant[0](F.relu(x)) + 0.75 * layer.act_quant[1](F.relu(x))
    torch.testing.assert_close(layer(x), F.conv2d(a, w, None, 1, 1, 1, 2))
    fixed = layer.to_fixed(4)
    assert fixed.bits == (4,) and fixed.active_bits == 4
    torch.testing.assert_close(fixed(x), _direct(layer, 0, x))
    with torch.no_grad():
        layer.weight.zero_()
    assert fixed.weight.abs().sum() > 0  # a copy, not a view


def test_quantconv_noise_mode_scales_and_routes_gradients_as_specified():
    # At 16 bits the noise is ~1e-5 of the range, so T̃ ≈ c·T with c = 1/(B+1) + Σπ/(Σπ + 1/(B+1)):
    # B = 1, π = (1): c = 1/2 + 2/3 = 7/6 for weights and activations alike.
    torch.manual_seed(2)
    layer = QuantConv2d(4, 4, 3, bits=(16,))
    x = torch.randn(2, 4, 8, 8)
    layer.set_mode("float")
    reference = layer(x)
    reference.sum().backward()
    float_grad, layer.weight.grad = layer.weight.grad.clone(), None
    pi = torch.tensor([1.0], requires_grad=True)
    layer.set_mode("noise", pi=pi)
    out = layer(x)
    torch.testing.assert_close(out, (7 / 6) ** 2 * reference.detach(), rtol=1e-3, atol=1e-3)
    out.sum().backward()
    # W reaches the output only through W/(B+1) (the noisy term is detached), times the activations' 7/6
    torch.testing.assert_close(layer.weight.grad, 0.5 * 7 / 6 * float_grad, rtol=1e-3, atol=1e-3)
    # dπ̂/dπ = (1/2)/(π + 1/2)² = 2/9, so d Σ out / dπ = 2·(7/6)·(2/9)·Σ conv(relu x, W) = (14/27)·Σ reference
    assert pi.grad.item() == pytest.approx(14 / 27 * reference.sum().item(), rel=1e-3)


def test_quantconv_rejects_bad_bits_and_modes():
    with pytest.raises(ValueError, match=r"unsupported bit-width\(s\) \[6\]"):
        QuantConv2d(4, 4, 3, bits=(4, 6))
    with pytest.raises(ValueError, match="distinct"):
        QuantConv2d(4, 4, 3, bits=(8, 8))
    layer = QuantConv2d(4, 4, 3, bits=(4, 8))
    with pytest.raises(ValueError, match="not among"):
        layer.set_mode("direct", bits=2)
    with pytest.raises(ValueError, match="2 bit choices"):
        layer.set_mode("noise", pi=torch.ones(3))
    with pytest.raises(ValueError, match="takes pi and no bits"):
        layer.set_mode("noise", bits=4)
    with pytest.raises(ValueError, match="exactly one of bits and pi"):
        layer.set_mode("direct")
    with pytest.raises(ValueError, match="unknown quantisation mode"):
        layer.set_mode("int8")


# --------------------------------------------------------------------------------------------- BitOps


class _Twice(nn.Module):
    """One quantised layer applied twice: its MACs, and so its BitOps, count twice."""

    def __init__(self):
        super().__init__()
        self.conv = QuantConv2d(4, 4, 1, bits=(2,))

    def forward(self, x):
        return self.conv(self.conv(x))


def test_bitops_counted_on_a_built_module_equal_macs_times_bits():
    net = nn.Sequential(
        QuantConv2d(3, 8, 3, bits=(4, 8)),                    # 8·10·10 outputs × 3·9 = 21600 MACs
        QuantConv2d(8, 8, 3, bits=(8,), stride=2, groups=2),  # 8·5·5 × (8/2)·9 = 7200 MACs
        nn.Conv2d(8, 4, 1),                                   # 4·5·5 × 8 = 800 MACs, float
        QuantConv2d(4, 4, 3, bits=(4, 8)),                    # 4·5·5 × 4·9 = 3600 MACs
        _Twice(),                                             # 2 × 4·5·5 × 4 = 800 MACs
    )
    x = torch.randn(2, 3, 10, 10)
    net[0].set_mode("direct", bits=4)
    net[3].set_mode("float")
    assert count_macs(net, x) == 21600 + 7200 + 800 + 3600 + 800
    expected = 21600 * 4 * 4 + 7200 * 8 * 8 + (800 + 3600) * 32 * 32 + 800 * 2 * 2
    assert count_bitops(net, x) == expected
    net[0].set_mode("direct", bits=8)
    assert count_bitops(net, x) == expected + 21600 * (64 - 16)
    assert count_bitops(net, x, float_bits=16) == expected + 21600 * (64 - 16) - (800 + 3600) * (1024 - 256)
    net[0].set_mode("noise", pi=torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match="expectation"):
        count_bitops(net, x)


# ------------------------------------------------------------------------------------------ ONNX (QDQ)


def _quantised_net(bits: int, step_scale: float) -> nn.Sequential:
    torch.manual_seed(bits)
    net = nn.Sequential(QuantConv2d(3, 16, 3, (bits,)), QuantConv2d(16, 16, 3, (bits,), groups=2),
                        QuantConv2d(16, 3, 1, (bits,)))
    with torch.no_grad():
        for layer in net:
            layer.weight_quant[0].step.mul_(step_scale)  # smaller steps: some weights are clamped
    return net.eval()


def _zero_point_types(model: onnx.ModelProto) -> list[int]:
    constants = {n.output[0]: n.attribute[0].t.data_type for n in model.graph.node if n.op_type == "Constant"}
    return [constants[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"]


@pytest.mark.parametrize("bits, n_qdq, atol", [(8, 6, 1e-5), (4, 6, 1e-5), (16, 0, 1e-4)])
def test_onnx_export_is_qdq_and_matches_torch_in_onnxruntime(tmp_path, bits, n_qdq, atol):
    net = _quantised_net(bits, step_scale=0.3)
    if bits < 8:  # the export's clamp to the b-bit range inside the int8 container has work to do
        first = net[0]
        assert (first.weight.abs() > 2 ** (bits - 1) * first.weight_quant[0].step.view(-1, 1, 1, 1)).any()
    x = torch.randn(2, 3, 12, 12) * 8  # some activations beyond the HWGQ clip at every bit-width
    with torch.no_grad():
        expected = net(x).numpy()
    path = str(tmp_path / "net.onnx")
    export_onnx(net, x, path)
    model = onnx.load(path)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") == ops.count("DequantizeLinear") == n_qdq
    if n_qdq:
        int8, uint8 = onnx.TensorProto.INT8, onnx.TensorProto.UINT8
        assert sorted(_zero_point_types(model)) == sorted([int8] * 3 + [uint8] * 3)  # weights, activations
        assert "Round" not in ops  # every quantiser became a QuantizeLinear
    got = ort_session(path).run(None, {"x": x.numpy()})[0]
    # Both sides compute the same grid values; they can differ only where float rounding (summation
    # order, ONNX Runtime's integer QLinearConv requantisation for 8-bit QDQ) pushes a value across a
    # rounding boundary, moving it one step. On the 4/8-bit grids that is rare but a step is large
    # (Δ_8 ≈ 0.02 on activations, so an output moves by about Δ·|w|, outputs being ~0.5); on the 16-bit
    # grid it is frequent but a step is ~1e-4. So: at most 1 % of elements beyond float precision
    # (``atol``: 1e-5, or one 16-bit step), and none beyond what a few flipped steps explain.
    diff = np.abs(got - expected)
    assert np.mean(diff > atol) <= 0.01
    assert diff.max() <= 0.02
    assert np.abs(expected).max() > 0.1  # not a trivially small output
