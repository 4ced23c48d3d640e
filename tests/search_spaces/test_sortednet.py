"""SortedNet spaces: nesting of sub-models, extraction, grids, costs, canonical form, heads, checkpoints."""

import itertools

import numpy as np
import pytest
import torch

import search_spaces
from nas.errors import CheckpointError, ConfigError
from search_spaces.checkpoint import FORMAT, load_supernet, save_supernet
from search_spaces.ops.counting import count_macs, count_params

NAMES = ["sortednet_cnn", "sortednet_transformer"]


@pytest.fixture(params=NAMES)
def space(request, small_space):
    return small_space(request.param)


@pytest.fixture
def cnn(small_space):
    return small_space("sortednet_cnn")


@pytest.fixture
def transformer(small_space):
    return small_space("sortednet_transformer")


def _randomise(module: torch.nn.Module, seed: int = 0) -> None:
    """Distinct values in every vector (biases, norm affines, BatchNorm statistics; the initialised weight
    matrices already differ per unit), so that slicing the wrong units cannot go unnoticed."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in module.state_dict().values():
            if tensor.is_floating_point() and tensor.dim() == 1:
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)


def _every_encoding(space) -> np.ndarray:
    return np.array(list(itertools.product(*[range(c) for c in space.cardinalities])), dtype=np.int64)


# ----------------------------------------------------------------------------- nesting and extraction
def test_a_smaller_sub_model_is_a_prefix_slice_of_a_larger_one(space):
    rng = np.random.default_rng(0)
    large = space.canonical(space.random_vectors(8, rng))
    small = space.canonical(np.minimum(large, space.random_vectors(8, rng)))   # element-wise <=: nested
    _randomise(space.supernet)
    for s, big in zip(space.decode(small), space.decode(large)):
        small_state, large_state = space.extract(s).state_dict(), space.extract(big).state_dict()
        assert set(small_state) <= set(large_state)
        for key, tensor in small_state.items():
            index = tuple(slice(0, n) for n in tensor.shape)
            assert torch.equal(tensor, large_state[key][index]), key


def test_sub_model_tensors_are_the_first_units_of_the_supernet(cnn, transformer):
    _randomise(cnn.supernet)
    config = {"depth": [1, 2], "width": [0.5, 0.25], "block_width": [0.25, 1.0, 0.5, 0.5]}
    net = cnn.extract(config)
    assert torch.equal(net.stem.weight, cnn.supernet.stem.weight[:4])                      # 0.5 of 8 channels
    assert torch.equal(net.stages[1][0].conv1.weight, cnn.supernet.stages[1][0].conv1.weight[:8, :4])
    assert torch.equal(net.classifier.weight, cnn.supernet.classifier.weight[:, :4])       # 0.25 of 16
    assert len(net.stages[0]) == 1 and len(net.stages[1]) == 2
    config = {"layers": 1, "embed": 0.5, "heads": [0.5, 1.0], "ffn": [1.0, 0.5]}
    net, full = transformer.extract(config), transformer.supernet
    assert torch.equal(net.blocks[0].attn.k.weight, full.blocks[0].attn.k.weight[:8, :8])   # 1 head of 8, 8 features
    assert torch.equal(net.blocks[0].fc1.weight, full.blocks[0].fc1.weight[:, :8])
    assert torch.equal(net.token_embedding.weight, full.token_embedding.weight[:, :8])
    assert len(net.blocks) == 1


@pytest.mark.parametrize("training", [False, True])
def test_extract_equals_the_active_supernet_with_trained_statistics(space, training):
    _randomise(space.supernet, seed=1)
    space.supernet.train(training)
    for config in [space.min_config(), space.max_config(), *space.sample(6, seed=2)]:
        space.activate(config)
        x = space.example_input(config, 4)
        with torch.no_grad():
            assert (space.extract(config)(x) - space.supernet(x)).abs().max().item() <= 1e-5, config


def test_training_a_sub_model_updates_only_its_own_statistics(cnn):
    config = {"depth": [1, 1], "width": [0.25, 0.5], "block_width": [0.5, 0.5, 0.5, 0.5]}
    bn = cnn.supernet.stages[1][0].bn2
    cnn.activate(config)
    cnn.supernet.train()
    cnn.supernet(torch.randn(4, 3, 8, 8))
    assert not torch.equal(bn.running_mean[:8], torch.zeros(8))
    assert torch.equal(bn.running_mean[8:], torch.zeros(8)) and torch.equal(bn.running_var[8:], torch.ones(8))


def test_bn_recalibration_keeps_the_sub_model_equal_to_its_extraction(cnn):
    config = cnn.sample(1, seed=3)[0]
    cnn.recalibrate_bn(config, [torch.randn(8, 3, 8, 8) for _ in range(2)])
    cnn.supernet.eval()
    x = cnn.example_input(config, 2)
    with torch.no_grad():
        assert torch.allclose(cnn.extract(config)(x), cnn.supernet(x), atol=1e-5)


def test_recalibration_activates_the_sub_model_it_is_given(space):
    """Validation re-calibrates each sub-model, then evaluates the supernet as it stands: re-calibration
    must leave that sub-model active (the encoder has no BatchNorm, but still must switch)."""
    _randomise(space.supernet, seed=7)
    small = space.min_config()
    space.activate(space.max_config())
    space.recalibrate_bn(small, [space.example_input(small, 8)])
    space.supernet.eval()
    x = space.example_input(small, 2)
    with torch.no_grad():
        assert torch.allclose(space.extract(small).eval()(x), space.supernet(x), atol=1e-5)


def test_images_are_resized_to_the_resolution_and_sequences_kept(cnn, transformer):
    assert cnn.input_size(cnn.min_config()) == 8 and transformer.input_size(transformer.min_config()) is None


def test_transformer_takes_sequences_shorter_than_max_len(transformer):
    config = transformer.sample(1, seed=4)[0]
    ids = transformer.example_input(config, 2)
    assert ids.dtype == torch.int64 and ids.shape == (2, 8) and 0 <= ids.min() and ids.max() < 50
    transformer.activate(config)
    with torch.no_grad():
        assert torch.allclose(transformer.extract(config)(ids[:, :5]), transformer.supernet(ids[:, :5]), atol=1e-6)


@pytest.mark.parametrize("strides, projections", [([1, 1], [False, True]), ([2, 1], [True, True])])
def test_projection_shortcuts_where_a_stage_starts(small_space, strides, projections):
    # equal full widths: the stage-1 shortcut still needs a projection, its sides being two width genes
    space = small_space("sortednet_cnn", widths=[8, 8], strides=strides)
    g = space.graph(space.max_config())
    assert [g.nodes[f"stages.{s}.{i}"]["projection"] for s in range(2) for i in range(2)] == [projections[0], False,
                                                                                               projections[1], False]
    config = {**space.max_config(), "width": [1.0, 0.25]}
    space.supernet.eval()
    space.activate(config)
    x = space.example_input(config, 2)
    with torch.no_grad():
        assert torch.allclose(space.extract(config)(x), space.supernet(x), atol=1e-5)
    assert space.macs(space.encode([config]))[0] == count_macs(space.extract(config), x)


# ----------------------------------------------------------------------------- heads at every depth
def test_every_depth_ends_in_the_shared_classifier(cnn):
    _randomise(cnn.supernet)
    cnn.supernet.eval()
    x = torch.randn(2, 3, 8, 8)
    for depth in itertools.product(*[cnn.depths] * 2):
        config = {**cnn.max_config(), "depth": list(depth)}
        cnn.activate(config)
        with torch.no_grad():
            assert cnn.supernet(x).shape == (2, 10)
        assert torch.equal(cnn.extract(config).classifier.weight, cnn.supernet.classifier.weight)


def test_dropped_blocks_and_layers_do_not_take_part(cnn, transformer):
    cases = [(cnn, {**cnn.max_config(), "depth": [1, 1]}, [cnn.supernet.stages[0][1], cnn.supernet.stages[1][1]]),
             (transformer, {**transformer.max_config(), "layers": 1}, [transformer.supernet.blocks[1]])]
    for space, config, dropped in cases:
        space.supernet.eval()
        space.activate(config)
        x = space.example_input(config, 2)
        with torch.no_grad():
            before = space.supernet(x)
            for module in dropped:
                for p in module.parameters():
                    p.fill_(float("nan"))
            assert torch.equal(space.supernet(x), before)


# ----------------------------------------------------------------------------- grids
@pytest.mark.parametrize("name, options, message", [
    ("sortednet_cnn", {"width_grid": [0.5, 0.25, 1.0]}, "strictly increasing"),
    ("sortednet_cnn", {"width_grid": [0.25, 0.25, 1.0]}, "strictly increasing"),
    ("sortednet_cnn", {"width_grid": [0.0, 0.5, 1.0]}, r"fractions in \(0, 1\]"),
    ("sortednet_cnn", {"width_grid": [0.5, 1.5]}, r"fractions in \(0, 1\]"),
    ("sortednet_cnn", {"width_grid": [0.25, 0.5]}, "must end at 1.0"),
    ("sortednet_cnn", {"width_grid": []}, "non-empty list"),
    ("sortednet_cnn", {"width_grid": [0.5, 0.55, 1.0]}, r"keeps \[4, 4, 8\] of the 8 channels of stage 0"),
    ("sortednet_cnn", {"width_grid": [0.05, 1.0]}, r"keeps \[0, 8\] of the 8 channels"),
    ("sortednet_cnn", {"depth_grid": [2, 1]}, "strictly increasing"),
    ("sortednet_cnn", {"depth_grid": [0, 1]}, "integers >= 1"),
    ("sortednet_cnn", {"widths": [8, 0]}, "widths must be a non-empty list of integers >= 1"),
    ("sortednet_cnn", {"strides": [1, 2, 2]}, "one stride per stage"),
    ("sortednet_transformer", {"depth_grid": [1, 2, 3]}, r"\[1, 2, 3\] goes beyond the network's 2 layers"),
    ("sortednet_transformer", {"depth_grid": [1]}, "must end at the network's 2 layers"),
    ("sortednet_transformer", {"heads_grid": [0.25, 0.5, 1.0]}, r"keeps \[1, 1, 2\] of the 2 heads"),
    ("sortednet_transformer", {"ffn_grid": [0.5, 1.1]}, r"fractions in \(0, 1\]"),
    ("sortednet_transformer", {"d_model": 15}, "multiple of n_heads"),
])
def test_bad_grids_and_options_raise_one_clear_error(small_space, name, options, message):
    with pytest.raises(ConfigError, match=message) as info:
        small_space(name, **options)
    assert "\n" not in str(info.value)


def test_truncation_outside_the_grid_is_rejected(cnn, transformer):
    with pytest.raises(ConfigError, match="gene 'depth.0': 3 is not one of the choices"):
        cnn.validate({**cnn.max_config(), "depth": [3, 1]})
    with pytest.raises(ConfigError, match="gene 'heads.1': 0.75 is not one of the choices"):
        transformer.validate({**transformer.max_config(), "heads": [1.0, 0.75]})


# ----------------------------------------------------------------------------- costs
@pytest.mark.parametrize("name", NAMES)
def test_full_size_costs_equal_counts_on_extracted_and_active_supernet(name):
    space = search_spaces.get(name)
    configs = [space.min_config(), space.max_config(), *space.sample(2, seed=0)]
    vectors = space.encode(configs)
    assert space.macs(vectors).dtype == space.params(vectors).dtype == np.int64   # exact counts stay integers
    for config, macs, params in zip(configs, space.macs(vectors), space.params(vectors)):
        x = space.example_input(config)
        assert macs == count_macs(space.extract(config), x) and params == count_params(space.extract(config))
        space.activate(config)
        assert macs == count_macs(space.supernet, x)   # nested layers count their active slices


def test_transformer_macs_count_the_attention_matmuls(transformer):
    # max config of the small space: L=8 tokens, e=16 features, 2 heads of 8, 32 FFN units, 2 layers, 3 classes
    L, e, inner, f = 8, 16, 16, 32
    per_layer = 4 * L * e * inner + 2 * L * L * inner + 2 * L * e * f
    assert transformer.macs(transformer.encode([transformer.max_config()]))[0] == 2 * per_layer + e * 3


def test_nested_order_is_a_chain_of_nested_sub_models(space):
    chain = space.nested_order()
    vectors = space.encode(chain)
    assert chain[0] == space.min_config() and chain[-1] == space.max_config()
    assert len(chain) == 1 + int((space.cardinalities - 1).sum())
    assert np.array_equal(space.canonical(vectors), vectors)
    steps = np.diff(vectors, axis=0)
    assert np.all(steps.sum(axis=1) == 1) and np.all(steps >= 0)        # one gene, one grid step up
    assert np.all(np.diff(space.macs(vectors)) > 0) and np.all(np.diff(space.params(vectors)) > 0)


def test_nested_order_grows_all_dimensions_together(transformer):
    order = transformer.nested_order()
    assert order[1] == {"layers": 2, "embed": 0.5, "heads": [0.5, 0.5], "ffn": [0.5, 0.5]}
    assert order[2] == {"layers": 2, "embed": 1.0, "heads": [0.5, 0.5], "ffn": [0.5, 0.5]}


def test_nested_order_moves_the_gene_least_far_along_its_grid(cnn):
    # 2 depth genes (2 choices) move first, then all 6 width genes (3 choices) half-way, before any goes on
    assert cnn.nested_order()[8] == {"depth": [2, 2], "width": [0.5, 0.5], "block_width": [0.5] * 4}


def test_min_and_max_configs_are_the_cheapest_and_dearest(space):
    every = space.canonical(_every_encoding(space))
    macs = space.macs(every)
    assert space.macs(space.encode(space.min_config())[None])[0] == macs.min()
    assert space.macs(space.encode(space.max_config())[None])[0] == macs.max()
    assert np.array_equal(space.encode(space.max_config()), space.cardinalities - 1)


# ----------------------------------------------------------------------------- canonical form and size
def test_canonical_resets_only_genes_beyond_the_depth(cnn, transformer):
    config = {"depth": [1, 2], "width": [1.0, 1.0], "block_width": [1.0, 1.0, 1.0, 1.0]}
    assert cnn.decode(cnn.canonical(cnn.encode(config)))["block_width"] == [1.0, 0.25, 1.0, 1.0]
    config = {"layers": 1, "embed": 1.0, "heads": [1.0, 1.0], "ffn": [1.0, 1.0]}
    assert transformer.decode(transformer.canonical(transformer.encode(config))) == {
        "layers": 1, "embed": 1.0, "heads": [1.0, 0.5], "ffn": [1.0, 0.5]}


def test_size_counts_canonical_sub_models(space):
    every = _every_encoding(space)
    assert len({tuple(v) for v in space.canonical(every)}) == space.size()


def test_default_sizes():
    assert search_spaces.get("sortednet_cnn").size() == (4 * (4 + 4 ** 2 + 4 ** 3)) ** 3
    assert search_spaces.get("sortednet_transformer").size() == 4 * sum(16 ** n for n in range(1, 5))


def test_extra_features_are_depths_widths_and_mean_kept_widths(cnn):
    config = {"depth": [1, 2], "width": [0.5, 1.0], "block_width": [0.25, 1.0, 0.5, 1.0]}
    features = cnn.extra_features(cnn.encode([config]))[0]
    assert features.tolist() == [1, 2, 0.5, 1.0, 0.25, 0.75]


def test_graph_lists_the_kept_layers(cnn, transformer):
    g = cnn.graph({"depth": [2, 1], "width": [0.5, 1.0], "block_width": [0.25, 1.0, 0.5, 1.0]})
    assert list(g.nodes) == ["stem", "stages.0.0", "stages.0.1", "stages.1.0", "pool", "classifier"]
    assert g.nodes["stages.1.0"].items() >= {"in_channels": 4, "mid_channels": 8, "out_channels": 16, "in_size": 8,
                                             "out_size": 4, "stride": 2, "projection": True}.items()
    g = transformer.graph({"layers": 1, "embed": 0.5, "heads": [0.5, 1.0], "ffn": [1.0, 1.0]})
    assert list(g.nodes) == ["embedding", "blocks.0.attn", "blocks.0.ffn", "norm", "pool", "classifier"]
    assert g.nodes["blocks.0.attn"]["heads"] == 1 and g.nodes["blocks.0.ffn"]["mid_channels"] == 32


# ----------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip(space, tmp_path):
    _randomise(space.supernet, seed=5)
    save_supernet(space, tmp_path / "sorted.pt")
    loaded = load_supernet(tmp_path / "sorted.pt", expect_space=space.name)
    assert loaded.options == space.options
    config = space.sample(1, seed=6)[0]
    x = space.example_input(config, 2)
    with torch.no_grad():
        assert torch.equal(loaded.extract(config).eval()(x), space.extract(config).eval()(x))


@pytest.mark.parametrize("name, other", [("sortednet_cnn", {"widths": [8, 24]}),
                                         ("sortednet_transformer", {"d_ff": 48}),
                                         ("sortednet_transformer", {"n_layers": 3, "depth_grid": [1, 3]})])
def test_checkpoint_of_another_shape_is_refused(small_space, tmp_path, name, other):
    space, wrong = small_space(name), small_space(name, **other)
    with pytest.raises(CheckpointError, match="does not fit this sorted supernet"):
        space.supernet.load_state_dict(wrong.supernet.state_dict())
    torch.save({"format": FORMAT, "space": name, "options": space.options,
                "state_dict": wrong.supernet.state_dict(), "meta": {}}, tmp_path / "wrong.pt")
    with pytest.raises(CheckpointError, match="wrong.pt: checkpoint does not fit") as info:
        load_supernet(tmp_path / "wrong.pt")
    assert "\n" not in str(info.value)
