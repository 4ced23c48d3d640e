"""OFA-MBv3 specifics: reference compatibility, kernel transforms, re-ordering, BN re-calibration."""

import itertools

import numpy as np
import pytest
import torch

import search_spaces
from nas.errors import CheckpointError, ConfigError
from search_spaces.checkpoint import load_supernet, save_supernet
from search_spaces.ofa_import import import_ofa_checkpoint, infer_ofa_options
from search_spaces.ops.batchnorm import recalibrate_batchnorm
from search_spaces.ops.counting import count_macs, count_params


@pytest.fixture
def ofa(small_space):
    return small_space("ofa_mbv3")


def _max_config(space, r=None):
    return {"ks": [7] * 20, "e": [6] * 20, "d": [4] * 5, "r": r or space.resolutions[-1]}


# ----------------------------------------------------------------------------- encoding
def test_size_counts_canonical_subnets(ofa):
    assert ofa.size() == (9 ** 2 + 9 ** 3 + 9 ** 4) ** 5 * len(ofa.resolutions)
    tiny = search_spaces.get("ofa_mbv3", **{**ofa.options, "ks_list": [3, 5], "expand_ratio_list": [3],
                                            "depth_list": [1, 2], "resolutions": [32]})
    every = np.array(list(itertools.product(*[range(c) for c in tiny.cardinalities])))
    assert len(every) == 2 ** 10 * 2 ** 5
    assert len({tuple(v) for v in tiny.canonical(every)}) == tiny.size() == (2 + 4) ** 5


def test_canonical_zeroes_only_blocks_beyond_depth(ofa):
    config = {"ks": [7] * 20, "e": [6] * 20, "d": [2, 4, 3, 2, 4], "r": 32}
    canon = ofa.decode(ofa.canonical(ofa.encode(config)))
    expected_active = [i < d for d in config["d"] for i in range(4)]
    assert canon["ks"] == [7 if a else 3 for a in expected_active]
    assert canon["e"] == [6 if a else 3 for a in expected_active]
    assert canon["d"] == config["d"] and canon["r"] == 32


@pytest.mark.parametrize("options", [{}, {"sparsity_list": [0.5, 1.0], "bits_list": [4, 8]}])
def test_mac_features_add_up_to_the_subnet_macs(small_space, options):
    space = small_space("ofa_mbv3", **options)
    vectors = space.random_vectors(30, np.random.default_rng(0))
    features = space.extra_features(vectors)
    stages, blocks = features[:, 16:21], features[:, 22:]          # after depth, mean k, mean e (5 each), r
    assert blocks.shape[1] == space.n_blocks
    np.testing.assert_allclose(stages.sum(axis=1) + features[:, 21], space.macs(vectors) / 1e6, rtol=1e-5)
    np.testing.assert_allclose(blocks.reshape(30, 5, 4).sum(axis=2), stages, rtol=1e-5)
    assert np.all(blocks[~space.active_blocks(vectors)] == 0)


def test_resolution_outside_choices_is_rejected(ofa):
    with pytest.raises(ConfigError, match="gene 'r'"):
        ofa.validate({**_max_config(ofa), "r": 33})


def test_full_size_costs_equal_counts():
    space = search_spaces.get("ofa_mbv3")
    configs = [_max_config(space, 224), {"ks": [3] * 20, "e": [3] * 20, "d": [2] * 5, "r": 128}]
    vectors = space.encode(configs)
    for config, macs, params in zip(configs, space.macs(vectors), space.params(vectors)):
        net = space.extract(config)
        assert macs == count_macs(net, space.example_input(config))
        assert params == count_params(net)


# ----------------------------------------------------------------------------- reference compatibility
def _reference_w10_shapes(n_classes=1000):
    """Keys and shapes of the reference OFAMobileNetV3 (w1.0, k357, e346, d234), written out by hand."""
    s = {}

    def bn(prefix, c):
        s.update({f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
                  f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()})

    s["first_conv.conv.weight"] = (16, 3, 3, 3); bn("first_conv.bn", 16)
    s["blocks.0.conv.depth_conv.conv.weight"] = (16, 1, 3, 3); bn("blocks.0.conv.depth_conv.bn", 16)
    s["blocks.0.conv.point_linear.conv.weight"] = (16, 16, 1, 1); bn("blocks.0.conv.point_linear.bn", 16)
    # (width, se, [(in, mid, se_mid) per block])
    stages = [(24, False, [(16, 96, 0), (24, 144, 0), (24, 144, 0), (24, 144, 0)]),
              (40, True, [(24, 144, 40), (40, 240, 64), (40, 240, 64), (40, 240, 64)]),
              (80, False, [(40, 240, 0), (80, 480, 0), (80, 480, 0), (80, 480, 0)]),
              (112, True, [(80, 480, 120), (112, 672, 168), (112, 672, 168), (112, 672, 168)]),
              (160, True, [(112, 672, 168), (160, 960, 240), (160, 960, 240), (160, 960, 240)])]
    b = 1
    for width, se, blocks in stages:
        for cin, mid, se_mid in blocks:
            p = f"blocks.{b}.conv"
            s[f"{p}.inverted_bottleneck.conv.conv.weight"] = (mid, cin, 1, 1); bn(f"{p}.inverted_bottleneck.bn.bn", mid)
            s[f"{p}.depth_conv.conv.conv.weight"] = (mid, 1, 7, 7)
            s[f"{p}.depth_conv.conv.5to3_matrix"] = (9, 9)
            s[f"{p}.depth_conv.conv.7to5_matrix"] = (25, 25)
            bn(f"{p}.depth_conv.bn.bn", mid)
            if se:
                s[f"{p}.depth_conv.se.fc.reduce.weight"] = (se_mid, mid, 1, 1)
                s[f"{p}.depth_conv.se.fc.reduce.bias"] = (se_mid,)
                s[f"{p}.depth_conv.se.fc.expand.weight"] = (mid, se_mid, 1, 1)
                s[f"{p}.depth_conv.se.fc.expand.bias"] = (mid,)
            s[f"{p}.point_linear.conv.conv.weight"] = (width, mid, 1, 1); bn(f"{p}.point_linear.bn.bn", width)
            b += 1
    s["final_expand_layer.conv.weight"] = (960, 160, 1, 1); bn("final_expand_layer.bn", 960)
    s["feature_mix_layer.conv.weight"] = (1280, 960, 1, 1)
    s["classifier.linear.weight"] = (n_classes, 1280); s["classifier.linear.bias"] = (n_classes,)
    return s


def test_state_dict_keys_and_shapes_equal_the_reference():
    net = search_spaces.get("ofa_mbv3", n_classes=1000, width_mult=1.0).supernet
    ours = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert ours == _reference_w10_shapes()


def test_width_1_2_channels_match_the_note10_table_shapes():
    space = search_spaces.get("ofa_mbv3", width_mult=1.2)
    # ofa_note10_lut keys: stem 24 channels, first block 24, stage widths 32/48/96/136/192, 1152/1536 head.
    w = space.widths
    assert (w.stem, w.first_block, w.stages, w.final_expand, w.feature_mix) == (24, 24, (32, 48, 96, 136, 192), 1152, 1536)


def _legacy(state):
    """The published checkpoints' naming: ``blocks.N.mobile_inverted_conv.*``."""
    return {k.replace(".conv.", ".mobile_inverted_conv.", 1) if k.startswith("blocks.") else k: v
            for k, v in state.items()}


def _randomise(net):
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=gen) * 0.1 + (1.0 if "running_var" in name else 0.0)).abs_() \
                    if "running_var" in name else t.copy_(torch.randn(t.shape, generator=gen) * 0.1)


def test_legacy_checkpoint_loads_strictly_and_reproduces_outputs(ofa, tmp_path):
    _randomise(ofa.supernet)
    path = tmp_path / "ofa.pth"
    torch.save({"state_dict": _legacy(ofa.supernet.state_dict()), "epoch": 3}, path)
    fresh = search_spaces.get("ofa_mbv3", **ofa.options)
    fresh.supernet.load_state_dict(torch.load(path, weights_only=True)["state_dict"])
    ofa.supernet.eval(); fresh.supernet.eval()
    for config in ofa.sample(5, seed=0):
        ofa.activate(config); fresh.activate(config)
        x = ofa.example_input(config, 2)
        with torch.no_grad():
            assert torch.equal(ofa.supernet(x), fresh.supernet(x))


def test_static_teacher_naming_loads_into_the_supernet(ofa):
    _randomise(ofa.supernet)
    config = _max_config(ofa)
    teacher = ofa.extract(config).eval()                  # static naming: .conv.weight, .bn.*, .linear.*
    fresh = search_spaces.get("ofa_mbv3", **ofa.options)
    fresh.supernet.load_state_dict(teacher.state_dict())
    fresh.supernet.eval(); fresh.activate(config)
    x = ofa.example_input(config, 2)
    with torch.no_grad():
        assert (fresh.supernet(x) - teacher(x)).abs().max() <= 1e-5
    matrix = fresh.supernet.blocks[1].conv.depth_conv.conv.get_parameter("7to5_matrix")
    assert torch.equal(matrix, torch.eye(25))             # absent in a static net: kept at identity


def test_mismatched_checkpoint_names_the_offending_keys(ofa):
    state = ofa.supernet.state_dict()
    del state["classifier.linear.bias"]
    state["blocks.1.conv.extra.weight"] = torch.zeros(1)
    state["first_conv.conv.weight"] = torch.zeros(1, 3, 3, 3)
    with pytest.raises(CheckpointError) as err:
        ofa.supernet.load_state_dict(state)
    msg = str(err.value)
    assert "classifier.linear.bias" in msg and "blocks.1.conv.extra.weight" in msg and "first_conv.conv.weight" in msg


def test_import_infers_options_and_round_trips_the_project_format(ofa, tmp_path):
    _randomise(ofa.supernet)
    src = tmp_path / "raw.pth"
    torch.save(_legacy(ofa.supernet.state_dict()), src)
    state = torch.load(src, weights_only=True)
    assert infer_ofa_options(state) == {"n_classes": 10, "width_mult": 0.25}
    imported = import_ofa_checkpoint(src, resolutions=ofa.resolutions)
    out = tmp_path / "nas.pt"
    save_supernet(imported, out)
    loaded = load_supernet(out, expect_space="ofa_mbv3")
    for a, b in zip(loaded.supernet.state_dict().values(), ofa.supernet.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(CheckpointError, match="not 'nb'"):
        load_supernet(out, expect_space="nb")


def test_corrupt_and_foreign_files_get_a_clear_error(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_supernet(bad)
    raw = tmp_path / "raw.pth"
    torch.save({"x": torch.zeros(1)}, raw)
    with pytest.raises(CheckpointError, match="not a nas supernet checkpoint"):
        load_supernet(raw)


# ----------------------------------------------------------------------------- elastic kernel
def test_kernel_transform_is_centre_crop_then_matrices(ofa):
    conv = ofa.supernet.blocks[1].conv.depth_conv.conv
    with torch.no_grad():
        conv.get_parameter("7to5_matrix").copy_(torch.randn(25, 25))
        conv.get_parameter("5to3_matrix").copy_(torch.randn(9, 9))
    w = conv.conv.weight.detach()
    five = (w[:, :, 1:6, 1:6].reshape(-1, 25) @ conv.get_parameter("7to5_matrix").T).reshape(-1, 1, 5, 5)
    three = (five[:, :, 1:4, 1:4].reshape(-1, 9) @ conv.get_parameter("5to3_matrix").T).reshape(-1, 1, 3, 3)
    assert torch.allclose(conv.active_weight(w.shape[0], 5), five, atol=1e-6)
    assert torch.allclose(conv.active_weight(w.shape[0], 3), three, atol=1e-6)


# ----------------------------------------------------------------------------- re-ordering
def test_reorder_channels_preserves_the_full_network(ofa):
    _randomise(ofa.supernet)
    net = ofa.supernet.eval()
    config = _max_config(ofa)
    ofa.activate(config)
    x = ofa.example_input(config, 4)
    with torch.no_grad():
        before = net(x)
        net.reorder_channels()
        after = net(x)
    assert (before - after).abs().max() <= 1e-5
    block = net.blocks[5].conv                             # an SE block
    importance = block.point_linear.conv.conv.weight.abs().sum(dim=(0, 2, 3))
    assert torch.all(importance[:-1] >= importance[1:])
    se_importance = block.depth_conv.se.fc.expand.weight.abs().sum(dim=(0, 2, 3))
    assert torch.all(se_importance[:-1] >= se_importance[1:])


def test_reorder_with_expand_stage_keeps_trained_prefixes_as_sets(ofa):
    _randomise(ofa.supernet)
    block = ofa.supernet.blocks[2].conv
    w4 = block.mid_channels(4)
    prefix_before = set(block.point_linear.conv.conv.weight[:, :w4].abs().sum(dim=(0, 2, 3)).tolist())
    ofa.supernet.reorder_channels(expand_stage=1)
    prefix_after = set(block.point_linear.conv.conv.weight[:, :w4].abs().sum(dim=(0, 2, 3)).tolist())
    assert prefix_before == prefix_after


# ----------------------------------------------------------------------------- BatchNorm re-calibration
def test_recalibration_uses_batch_weighted_biased_statistics(ofa):
    config = _max_config(ofa, 32)
    batches = [torch.randn(n, 3, 32, 32) * s + m for n, s, m in ((5, 1.0, 0.0), (3, 2.0, 1.0))]
    ofa.recalibrate_bn(config, batches)
    bn = ofa.supernet.first_conv.bn
    with torch.no_grad():
        feats = [ofa.supernet.first_conv.conv(b) for b in batches]
    mean = sum(f.mean((0, 2, 3)) * f.shape[0] for f in feats) / 8
    var = sum(f.var((0, 2, 3), unbiased=False) * f.shape[0] for f in feats) / 8
    assert torch.allclose(bn.running_mean, mean, atol=1e-5)
    assert torch.allclose(bn.running_var, var, atol=1e-5)


def test_each_subnet_gets_its_own_statistics(ofa):
    _randomise(ofa.supernet)
    data = [torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    small = {"ks": [3] * 20, "e": [3] * 20, "d": [2] * 5, "r": 32}
    big = _max_config(ofa, 32)
    ofa.recalibrate_bn(small, data)
    first = ofa.extract(small).eval()(data[0]).detach()
    ofa.recalibrate_bn(big, data)
    ofa.recalibrate_bn(small, data)
    again = ofa.extract(small).eval()(data[0]).detach()
    assert torch.allclose(first, again, atol=1e-5)
    # extracted copy calibrated on its own equals the supernet-calibrated one
    copy = ofa.extract(small)
    recalibrate_batchnorm(copy, data)
    assert torch.allclose(copy.eval()(data[0]), first, atol=1e-4)


def test_recalibration_leaves_unreached_layers_alone(ofa):
    net = ofa.supernet
    deep_bn = net.blocks[4].conv.depth_conv.bn.bn               # block 4 of stage 1: off at depth 2
    before = deep_bn.running_mean.clone()
    ofa.recalibrate_bn({"ks": [3] * 20, "e": [3] * 20, "d": [2] * 5, "r": 32}, [torch.randn(4, 3, 32, 32)])
    assert torch.equal(deep_bn.running_mean, before)
    assert not any(hasattr(m, "forward") and "forward" in vars(m) for m in net.modules())


def test_from_scratch_network_has_the_extracted_shape(ofa):
    for config in ofa.sample(5, seed=11):
        extracted, scratch = ofa.extract(config), ofa.from_scratch(config)
        assert {k: v.shape for k, v in extracted.state_dict().items()} == \
               {k: v.shape for k, v in scratch.state_dict().items()}


def test_inference_cache_follows_in_place_weight_changes(ofa):
    net = ofa.supernet.eval()
    config = {"ks": [3] * 20, "e": [4] * 20, "d": [3] * 5, "r": 36}
    ofa.activate(config)
    x = ofa.example_input(config, 2)
    with torch.inference_mode():
        before = net(x)
    _randomise(net)                                     # in-place writes to every weight
    with torch.inference_mode():
        after = net(x)
    assert not torch.allclose(before, after)
    with torch.no_grad():
        assert (ofa.extract(config).eval()(x) - after).abs().max() <= 1e-5


# ----------------------------------------------------------------------------- options: sparsity_list, bits_list
SPARSE = {"sparsity_list": [1.0, 0.5, 0.1]}
BITS = {"bits_list": [8, 4]}


def _both(small_space):
    return small_space("ofa_mbv3", sparsity_list=[0.3, 1.0], bits_list=[4, 8])


def test_without_the_options_the_supernet_is_unchanged(ofa, small_space):
    """Same options, keys and initial weights as before the options existed; with them, the dense weights
    under a seed are the same and the only new keys are scores, LSQ steps and the score-init flag."""
    assert "sparsity_list" not in ofa.options and "bits_list" not in ofa.options and ofa.costs == ("macs", "params")
    torch.manual_seed(0)
    plain = ofa.supernet.state_dict()
    torch.manual_seed(0)
    both = _both(small_space).supernet.state_dict()
    added = set(both) - set(plain)
    assert set(plain) <= set(both) and all(torch.equal(plain[k], both[k]) for k in plain if "step" not in k)
    assert {k.rsplit(".", 1)[-1] for k in added} == {"scores", "step", "scores_initialised"}
    assert all(".inverted_bottleneck.conv.conv.scores" in k or ".point_linear.conv.conv.scores" in k
               for k in added if k.endswith("scores"))


def test_option_genes_come_after_r_and_sort_ascending(small_space):
    space = _both(small_space)
    names = [g.name for g in space.genes]
    assert names[space.r_col] == "r" and names[space.r_col + 1:] == [f"keep.{i}" for i in range(20)] + [
        f"bits.{i}" for i in range(20)]
    assert space.genes[-1].choices == (4, 8) and space.genes[space.r_col + 1].choices == (0.3, 1.0)
    per_block = 3 * 3 * 2 * 2                                      # kernel x expand x keep x bits
    assert space.size() == sum(per_block ** d for d in space.depth_list) ** 5 * len(space.resolutions)


@pytest.mark.parametrize("options", [{"sparsity_list": [0.0]}, {"sparsity_list": [1.5]}, {"sparsity_list": []},
                                     {"bits_list": [5]}, {"bits_list": [8, 8]}, {"bits_list": [1]}])
def test_bad_option_values_raise_one_clear_error(small_space, options):
    with pytest.raises(ConfigError, match="sparsity_list|bits_list|keep ratio"):
        small_space("ofa_mbv3", **options)


def _nonzero_counts(net, x):
    """(MACs, params) of ``net`` counting only non-zero entries of convolution and linear weights."""
    macs = []

    def hook(module, inputs, output):          # each non-zero weight once per output position of its unit
        macs.append(int(torch.count_nonzero(module.weight)) * (output[0].numel() // module.weight.shape[0]))

    layers = [m for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    handles = [m.register_forward_hook(hook) for m in layers]
    with torch.no_grad():
        net.eval()(x[:1])
    for h in handles:
        h.remove()
    weights = {id(m.weight) for m in layers}
    params = sum(int(torch.count_nonzero(p)) if id(p) in weights else p.numel() for p in net.parameters())
    return sum(macs), params


def test_nonzero_costs_equal_counts_on_the_extracted_network(small_space):
    space = small_space("ofa_mbv3", **SPARSE)
    configs = space.sample(8, seed=3) + [{**space.sample(1, seed=4)[0], "keep": [0.1] * 20}]
    vectors = space.encode(configs)
    macs, params = space.nonzero_macs(vectors), space.nonzero_params(vectors)
    for i, config in enumerate(configs):
        assert (macs[i], params[i]) == _nonzero_counts(space.extract(config), space.example_input(config)), config
    dense = {**configs[-1], "keep": [1.0] * 20}
    assert space.nonzero_macs(space.encode(dense))[0] == space.macs(space.encode(dense))[0] > macs[-1]


def test_bitops_equal_count_bitops_on_the_extracted_network(small_space):
    from search_spaces.ops.quant import QuantConv2d, count_bitops

    space = small_space("ofa_mbv3", **BITS)
    configs = space.sample(6, seed=5)
    bitops = space.bitops(space.encode(configs))
    for config, value in zip(configs, bitops):
        net = space.extract(config)
        assert value == count_bitops(net, space.example_input(config)), config
        quantised = [m for m in net.modules() if isinstance(m, QuantConv2d)]
        active = sum(1 for i, d in enumerate(config["d"]) for _ in range(d))
        assert len(quantised) == 3 * active
    low, high = ({**configs[0], "bits": [b] * 20} for b in (4, 8))
    assert space.bitops(space.encode(low))[0] < space.bitops(space.encode(high))[0]
    with pytest.raises(ConfigError, match="bits_list"):
        small_space("ofa_mbv3").bitops(space.encode(configs)[:, :66])


def test_extract_equals_the_supernet_with_both_options(small_space):
    space = _both(small_space)
    net = space.supernet.eval()
    config = {**space.sample(1, seed=8)[0], "keep": [0.3] * 20, "bits": [4] * 20}
    x = space.example_input(config, 16)
    space.recalibrate_bn(config, [x])           # normalised activations: not all below the 4-bit step
    with torch.no_grad():
        y = net(x)
        assert (space.extract(config).eval()(x) - y).abs().max() <= 1e-5
        assert (y[0] - y[1]).abs().max() > 1e-3                 # the inputs still reach the output
        other = {**config, "keep": [1.0] * 20, "bits": [8] * 20}
        space.recalibrate_bn(other, [x])
        assert (net(x) - y).abs().max() > 1e-3                  # the genes change the function


def test_graph_layers_carry_keep_ratio_and_bits(small_space):
    space = _both(small_space)
    config = {**space.sample(1, seed=2)[0], "keep": [0.3] * 20, "bits": [4] * 20}
    g = space.graph(config)
    blocks = [a for n, a in g.nodes(data=True) if a["op"] == "mbconv" and n != "blocks.0"]
    assert blocks and all(a["keep_ratio"] == 0.3 and a["bits"] == 4 for a in blocks)
    assert g.nodes["first_conv"]["keep_ratio"] == 1.0 and g.nodes["first_conv"]["bits"] == 32
    v = space.encode(config)
    for cost in ("nonzero_macs", "nonzero_params", "bitops"):
        assert sum(a[cost] for _, a in g.nodes(data=True)) == space.cost(cost, v[None])[0]
    layer = next(iter(blocks))
    built = space.build_layer(layer)
    assert sum(isinstance(m, torch.nn.Conv2d) and hasattr(m, "weight_quant") for m in built.modules()) == 3


def test_scores_start_from_the_weights_when_pruning_first_trains(small_space):
    space = small_space("ofa_mbv3", **SPARSE)
    net = space.supernet.train()
    layer = net.blocks[1].conv.point_linear.conv.conv
    largest = {"ks": [7] * 20, "e": [6] * 20, "d": [4] * 5, "r": 32, "keep": [1.0] * 20}
    space.activate(largest)
    x = torch.randn(4, 3, 32, 32)
    net(x).sum().backward()
    with torch.no_grad():
        layer.weight.mul_(-1)                                     # "training" moved the weights
        space.activate({**largest, "keep": [0.5] * 20})
        net.eval()(x)                                             # evaluation does not initialise
    assert not bool(net.scores_initialised)
    net.train()(x).sum().backward()
    assert bool(net.scores_initialised)
    scale = (6 / layer.weight[0].numel()) ** 0.5 / layer.weight.abs().max()
    assert torch.allclose(layer.scores, layer.weight * scale)     # from the weights as they are now
    assert layer.scores.grad is not None and layer.scores.grad.abs().sum() > 0   # and trained from this step


def test_reorder_channels_keeps_the_function_with_both_options(small_space):
    space = _both(small_space)
    net = space.supernet.eval()
    config = {**space.sample(1, seed=1)[0], "e": [4] * 20, "keep": [0.3] * 20, "bits": [4] * 20}
    space.activate(config)
    x = space.example_input(config, 2)
    with torch.no_grad():
        before = net(x)
        net.reorder_channels()
        assert (net(x) - before).abs().max() <= 1e-4


def test_training_samplers_draw_the_new_genes(small_space):
    from search_spaces.training import ChoiceSampler, TrainConfig, build_phases

    space = _both(small_space)
    configs = ChoiceSampler(space, {}).random(40, np.random.default_rng(0))
    assert {k for c in configs for k in c["keep"]} == {0.3, 1.0} and {b for c in configs for b in c["bits"]} == {4, 8}
    phases, _ = build_phases(space, TrainConfig(epochs=6))
    assert phases[0].choices["keep"] == [1.0] and phases[0].choices["bits"] == [8]   # "full": dense, widest
    later = ChoiceSampler(space, phases[-1].choices).random(40, np.random.default_rng(1))
    assert {k for c in later for k in c["keep"]} == {0.3, 1.0}


def test_eight_bit_network_runs_in_onnx_runtime(small_space, tmp_path):
    import onnx

    from evaluators.backends import export_onnx, ort_session

    space = small_space("ofa_mbv3", **BITS)
    config = {**space.sample(1, seed=0)[0], "bits": [8] * 20}
    net, x = space.extract(config).eval(), space.example_input(config, 2)
    export_onnx(net, x, str(tmp_path / "q.onnx"))
    y = ort_session(str(tmp_path / "q.onnx")).run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        assert np.abs(y - net(x).numpy()).max() <= 1e-4
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in onnx.load(tmp_path / "q.onnx").graph.node}


def test_compiled_scorer_checks_the_option_genes(small_space):
    space = _both(small_space)
    v = space.encode(space.sample(3, seed=0))
    for col in (space.extra_cols("keep").start + 3, space.extra_cols("bits").start + 5):
        bad = v.copy()
        bad[1, col] = 2
        with pytest.raises(ConfigError, match=f"row 1: gene '{space.genes[col].name}'"):
            space.bitops(bad)
