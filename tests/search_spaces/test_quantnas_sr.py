"""``quantnas_sr``: joint (op, bits) genes, costs, the supernet's modes, derive, ADQ, checkpoints.

The conformance suite (``test_conformance.py``) covers what every space shares; these tests cover what
is particular to this one. Expected numbers are worked out by hand in the comments.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F

import search_spaces
from evaluators.backends import export_onnx, ort_session
from nas.errors import CheckpointError, ConfigError
from search_spaces.checkpoint import load_supernet, save_supernet
from search_spaces.ops.counting import count_macs, count_params
from search_spaces.ops.quant import count_bitops
from search_spaces.ops.sr_blocks import ADQ


@pytest.fixture
def space(small_space):
    return small_space("quantnas_sr")


def open_residuals(space):
    """Give the HR residuals the nonzero gains of a trained network: a fresh one's are zero, so its
    output is bicubic up-scaling whatever its layers compute, and comparing outputs would test nothing."""
    with torch.no_grad():
        space.supernet.gains.copy_(torch.tensor([0.7, 0.4]))
    return space


def test_one_joint_op_bits_gene_per_layer_op_major(space):
    assert [g.name for g in space.genes] == ["body.0.0", "body.0.1", "skip.0.0", "upsample", "tail"]
    assert space.genes[0].choices == ("conv1x1@4", "conv1x1@8", "conv3x3@4", "conv3x3@8", "growth3x3@4",
                                      "growth3x3@8", "gconv3x3@4", "gconv3x3@8")
    # the tail works on 3 channels: grouped (2) convolutions do not fit it
    assert space.genes[-1].choices == space.genes[0].choices[:6]
    assert space.size() == 8 ** 4 * 6
    assert [len(a) for a in space.supernet.arch_parameters()] == [8, 8, 8, 8, 6]
    vectors = space.random_vectors(20, np.random.default_rng(0))
    assert np.array_equal(space.encode(space.decode(vectors)), vectors)
    assert np.array_equal(space.canonical(vectors), vectors)   # every gene changes the network
    config = space.decode(vectors[0])
    assert set(config) == {"body", "skip", "upsample", "tail"} and len(config["body"]) == 2


@pytest.mark.parametrize("adq", [True, False])
def test_bitops_macs_params_equal_counts_on_the_extracted_network(small_space, adq):
    space = small_space("quantnas_sr", adq=adq)
    configs = space.sample(6, seed=1)
    vectors = space.encode(configs)
    bitops, macs, params = space.bitops(vectors), space.macs(vectors), space.params(vectors)
    for i, config in enumerate(configs):
        net, x = space.extract(config), space.example_input(config)
        assert bitops[i] == count_bitops(net, x)
        assert macs[i] == count_macs(net, x)
        assert params[i] == count_params(net)
        assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.cells.modules()) == adq   # ADQ's


def test_bitops_of_one_layer_are_macs_times_bits_squared(space):
    config = {"body": ["conv3x3@4", "conv3x3@4"], "skip": ["conv3x3@4"], "upsample": "conv3x3@4", "tail": "conv3x3@4"}
    wider = {**config, "body": ["conv3x3@8", "conv3x3@4"]}
    # body.0.0 is a 3x3 conv 12 -> 12 at 16x16: 16²·12·12·9 = 331,776 MACs; 8x8 − 4x4 = 48 more per MAC
    diff = space.bitops(space.encode([wider, config]))
    assert diff[0] - diff[1] == 331_776 * 48
    assert space.macs(space.encode(wider)) == space.macs(space.encode(config))


def test_derive_takes_a_true_argmax_even_when_every_alpha_is_negative(space):
    alphas = [torch.linspace(-9.0, -1.0, len(g.choices)) for g in space.genes]   # largest: the last choice
    derived = space.derive(alphas)
    assert space.encode(derived).tolist() == [len(g.choices) - 1 for g in space.genes]
    alphas[2] = torch.tensor([-3.0, -0.5, -2.0, -1.0, -4.0, -5.0, -6.0, -7.0])
    assert space.derive(alphas)["skip"] == ["conv1x1@8"]
    assert space.encode(space.derive()).tolist() == [0] * space.n_genes   # fresh α: all zero, ties -> first
    with pytest.raises(ConfigError, match="α vectors"):
        space.derive(alphas[:-1])
    with pytest.raises(ConfigError, match="NaN"):
        space.derive(alphas[:-1] + [torch.full((6,), float("nan"))])


def test_extract_equals_the_supernet_with_one_hot_alphas(space):
    supernet = open_residuals(space).supernet.eval()
    for config in space.sample(4, seed=3):
        with torch.no_grad():
            for alpha, index in zip(supernet.arch_parameters(), space.encode(config), strict=True):
                alpha.fill_(-math.inf)
                alpha[index] = 0.0
        assert space.derive() == config
        supernet.set_search_mode("direct")
        x = space.example_input(config, 2)
        with torch.no_grad():
            mixed = supernet(x)
            space.activate(config)
            discrete = supernet(x)
            extracted = space.extract(config).eval()(x)
        assert (mixed - extracted).abs().max().item() <= 1e-5
        assert torch.equal(discrete, extracted)


def test_search_modes_train_alphas_and_weights(space):
    supernet = open_residuals(space).supernet.train()
    x = space.example_input(space.sample(1)[0], 2)
    for mode in ("noise", "direct"):
        supernet.zero_grad()
        supernet.set_search_mode(mode)
        out = supernet(x)
        assert out.shape == (2, 3, 32, 32)
        out.square().mean().backward()
        assert all(a.grad is not None and a.grad.abs().sum() > 0 for a in supernet.arch_parameters())
        assert all(p.grad is not None for p in supernet.weight_parameters() if p.dim() == 4)
    assert len(supernet.arch_parameters()) + len(supernet.weight_parameters()) == len(list(supernet.parameters()))
    with pytest.raises(ConfigError, match="search mode"):
        supernet.set_search_mode("float")


def test_a_fresh_network_is_bicubic_upscaling_and_learns_a_residual_on_it(space):
    """The bug this guards: without the bicubic base (and zero gains) a fresh network's output is its
    random layers' (about 15 dB below bicubic) and a short training ends 5-8 dB below bicubic."""
    x = space.example_input(space.sample(1)[0], 2)
    bicubic = F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False)
    for config in space.sample(3, seed=5):
        space.activate(config)
        with torch.no_grad():
            assert torch.equal(space.supernet(x), bicubic)
            assert torch.equal(space.extract(config)(x), bicubic)
    for mode in ("noise", "direct"):
        space.supernet.set_search_mode(mode)
        space.supernet.zero_grad()
        out = space.supernet(x)
        assert torch.equal(out.detach(), bicubic)
        (out - 2 * bicubic).abs().mean().backward()       # the gains are what learns first
        assert space.supernet.gains.grad.abs().min() > 0


def test_hr_layers_see_normalised_inputs_whatever_the_image_scale(space):
    """The bug this guards: image-scale inputs to 4-bit ``upsample``/``tail`` fell on a few HWGQ levels and
    training switched the residual off (features pushed below zero), leaving 4-bit networks at bicubic."""
    net = open_residuals(space).supernet.train()
    seen = {}
    hooks = [getattr(net, name).register_forward_pre_hook(lambda m, args, name=name: seen.setdefault(name, args[0]))
             for name in ("upsample", "tail")]
    config = space.sample(1, seed=2)[0]
    space.activate(config)
    with torch.no_grad():
        net(0.3 * space.example_input(config, 4))
    for hook in hooks:
        hook.remove()
    for name, t in seen.items():
        torch.testing.assert_close(t.mean((0, 2, 3)), torch.zeros(t.shape[1]), atol=1e-4, rtol=0, msg=name)
        torch.testing.assert_close(t.var((0, 2, 3), unbiased=False), torch.ones(t.shape[1]), atol=5e-2, rtol=0,
                                   msg=name)


def test_expected_cost_of_one_hot_probabilities_is_the_subnet_cost(space):
    config = space.sample(1, seed=4)[0]
    one_hot = [torch.eye(len(g.choices))[i] for g, i in zip(space.genes, space.encode(config), strict=True)]
    vector = space.encode(config)
    assert space.expected_cost("bitops", one_hot).item() == pytest.approx(space.bitops(vector[None])[0], rel=1e-6)
    assert space.expected_cost("macs", one_hot).item() == pytest.approx(space.macs(vector[None])[0], rel=1e-6)
    with pytest.raises(ConfigError, match="no cost"):
        space.expected_cost("energy", one_hot)
    # all α zero: uniform π, so the fixed layers plus the mean over each gene's choices. Varying one gene j
    # from the all-zero encoding, the mean over its choices is fixed + Σ_{g≠j} cost_g(0) + mean_j; summing
    # over j and removing (genes − 1) all-zero networks leaves fixed + Σ_j mean_j.
    uniform = space.supernet.probabilities()
    zeros = space.bitops(np.zeros((1, space.n_genes), dtype=np.int64))[0]
    expected = sum(space.bitops(_column(space, j)).mean() for j in range(space.n_genes)) - (space.n_genes - 1) * zeros
    assert space.expected_cost("bitops", uniform).item() == pytest.approx(expected, rel=1e-6)
    assert (space.expected_cost("bitops", uniform, fixed=False) < space.expected_cost("bitops", uniform)).item()


def _column(space, j):
    """Encodings that are 0 everywhere but gene ``j``, which runs over its choices."""
    rows = np.zeros((len(space.genes[j].choices), space.n_genes), dtype=np.int64)
    rows[:, j] = np.arange(len(rows))
    return rows


def test_adq_on_a_hand_example():
    x = torch.tensor([1.0, 3.0]).view(1, 1, 1, 2)
    adq = ADQ(1).eval()      # fresh BN in eval: x / sqrt(1 + 1e-5); σ(x) = sqrt(2) (unbiased); φ = 1.5·σ
    # y = 2·BN(x)·φ(σ) + x = 2·x·1.5·sqrt(2)/sqrt(1.00001) + x
    torch.testing.assert_close(adq(x, lambda t: 2 * t).flatten(), torch.tensor([5.2426195, 15.7278584]))
    assert count_params(adq) == 4                                # BN affine (2) + φ (2)
    torch.testing.assert_close(ADQ(1, enabled=False)(x, lambda t: 2 * t).flatten(), torch.tensor([3.0, 9.0]))
    assert count_params(ADQ(1, enabled=False)) == 0


def test_scale_four_upsamples_four_times(small_space):
    space = small_space("quantnas_sr", scale=4)
    config = space.sample(1, seed=0)[0]
    space.activate(config)
    assert space.supernet(space.example_input(config)).shape == (1, 3, 64, 64)
    assert space.graph(config).nodes["upsample"]["out_channels"] == 48


@pytest.mark.parametrize("options, match", [
    ({"bits": [4, 5]}, "bits"), ({"bits": [8, 8]}, "bits"), ({"scale": 3}, "scale"), ({"ops": ["conv7x7"]}, "ops"),
    ({"channels": 10}, "multiple of 6"), ({"channels": 18}, "do not fit"), ({"lr_size": 8}, "lr_size"),
    ({"ops": ["gconv3x3"]}, "do not fit"), ({"noise": "laplace"}, "noise"), ({"adq": "yes"}, "adq"),
])
def test_bad_options_raise_one_clear_error(small_space, options, match):
    with pytest.raises(ConfigError, match=match):
        small_space("quantnas_sr", **options)


def test_checkpoint_round_trip_and_mismatch(space, tmp_path):
    open_residuals(space)
    with torch.no_grad():
        for alpha in space.supernet.arch_parameters():
            alpha.normal_(generator=torch.Generator().manual_seed(0))
    path = tmp_path / "sr.pt"
    save_supernet(space, path)
    loaded = load_supernet(path, expect_space="quantnas_sr")
    assert loaded.options == space.options and loaded.derive() == space.derive()
    config = space.sample(1, seed=2)[0]
    x = space.example_input(config, 2)
    with torch.no_grad():
        outputs = [s.extract(config).eval()(x) for s in (space, loaded)]
    assert torch.equal(*outputs)
    with pytest.raises(CheckpointError, match="not 'nb201'"):
        load_supernet(path, expect_space="nb201")
    data = torch.load(path, weights_only=True)
    data["options"]["channels"] = 24                     # weights of a 12-channel supernet
    torch.save(data, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError):
        load_supernet(tmp_path / "bad.pt")


def test_extracted_network_exports_to_onnx_with_qdq_nodes(space, tmp_path):
    config = space.sample(1, seed=6)[0]
    net, x = open_residuals(space).extract(config).eval(), space.example_input(config, 1)
    export_onnx(net, x, str(tmp_path / "sr.onnx"))
    session = ort_session(str(tmp_path / "sr.onnx"))
    y = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        assert np.abs(y - net(x).numpy()).max() <= 1e-4
    ops = {node.op_type for node in onnx.load(tmp_path / "sr.onnx").graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "DepthToSpace"} <= ops


def test_registered_with_psnr_and_bitops():
    cls = search_spaces.space_class("quantnas_sr")
    assert (cls.metric.name, cls.metric.direction, cls.metric.unit) == ("psnr", "max", "dB")
    assert cls.costs == ("macs", "params", "bitops")
    assert cls.input_size(search_spaces.get("quantnas_sr", **cls.small_options), {}) is None
