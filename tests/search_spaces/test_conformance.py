"""Every registered search space passes these tests (like timm's tests over its model registry)."""

import networkx as nx
import numpy as np
import pytest
import torch

import search_spaces
from nas.errors import ConfigError
from search_spaces.ops.counting import count_macs, count_params
from search_spaces.ops.quant import HWGQ, LSQWeightQuantizer

SPACES = search_spaces.names()
#: Options that add genes, modules or costs to a space: each set runs through every test below too.
OPTION_SETS = [
    ("ofa_mbv3", {"sparsity_list": [0.1, 0.5, 1.0]}),
    ("ofa_mbv3", {"bits_list": [4, 8]}),
    ("ofa_mbv3", {"sparsity_list": [0.2, 1.0], "bits_list": [2, 8]}),
]
CASES = [(name, {}) for name in SPACES] + OPTION_SETS


@pytest.fixture(params=CASES, ids=[name + "".join(f"-{k}" for k in options) for name, options in CASES])
def space(request, small_space):
    name, options = request.param
    return small_space(name, **options)


def test_encode_decode_round_trip(space):
    configs = space.sample(30, seed=1)
    vectors = space.encode(configs)
    assert vectors.shape == (30, space.n_genes) and vectors.dtype == np.int64
    assert space.decode(vectors) == configs
    assert np.array_equal(space.encode(space.decode(vectors[0])), vectors[0])


def test_sample_is_reproducible(space):
    assert space.sample(5, seed=3) == space.sample(5, seed=3)
    assert space.sample(5, seed=3) != space.sample(5, seed=4)


def test_canonical_is_idempotent_and_keeps_the_network(space):
    vectors = space.random_vectors(40, np.random.default_rng(0))
    canon = space.canonical(vectors)
    assert np.array_equal(space.canonical(canon), canon)
    assert np.array_equal(space.macs(canon), space.macs(vectors))
    assert np.array_equal(space.params(canon), space.params(vectors))
    for v, c in zip(vectors[:3], canon[:3]):
        a, b = space.decode(v), space.decode(c)
        x = space.example_input(a, 2)
        net_a, net_b = space.extract(a).eval(), space.extract(b).eval()
        with torch.no_grad():
            assert torch.equal(net_a(x), net_b(x))


def test_analytic_costs_equal_counts_on_the_built_module(space):
    configs = space.sample(50, seed=2)
    vectors = space.encode(configs)
    macs, params = space.macs(vectors), space.params(vectors)
    for i, config in enumerate(configs):
        net = space.extract(config)
        assert macs[i] == count_macs(net, space.example_input(config)), config
        assert params[i] == count_params(net), config


def test_extract_equals_active_supernet(space):
    with torch.no_grad():               # zero-initialised parameters (BN biases, quantnas_sr's residual
        for p in space.supernet.parameters():    # gains) would hide the layers behind them
            if p.is_floating_point() and not p.any():
                p.uniform_(0.5, 1.0)
    space.supernet.eval()
    for config in space.sample(20, seed=5):
        space.activate(config)
        x = space.example_input(config, 3)
        with torch.no_grad():
            y = space.supernet(x)
            sub = space.extract(config).eval()
            assert (sub(x) - y).abs().max().item() <= 1e-5


def test_extracted_network_has_no_elastic_machinery(space):
    allowed = (torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.Linear, torch.nn.Dropout, torch.nn.ReLU,
               torch.nn.ReLU6, torch.nn.Hardswish, torch.nn.Hardsigmoid, torch.nn.LayerNorm, torch.nn.Embedding,
               LSQWeightQuantizer, HWGQ)                 # fake-quantisers at one fixed bit-width
    net = space.extract(space.sample(1, seed=0)[0])
    leaves = [m for m in net.modules() if not list(m.children())]
    assert all(isinstance(m, allowed) for m in leaves), {type(m).__name__ for m in leaves}


def test_graph_names_layers_with_shapes(space):
    config = space.sample(1, seed=7)[0]
    g = space.graph(config)
    assert isinstance(g, nx.DiGraph) and nx.is_directed_acyclic_graph(g) and g.number_of_nodes() > 2
    for _, attrs in g.nodes(data=True):
        assert {"op", "in_channels", "out_channels", "in_size", "out_size"} <= set(attrs)
    assert sum(a["macs"] for _, a in g.nodes(data=True)) == space.macs(space.encode(config))


def test_cost_dispatch_and_unknown_cost(space):
    vectors = space.encode(space.sample(4, seed=0))
    for name in space.costs:
        assert space.cost(name, vectors).shape == (4,)
    with pytest.raises(ConfigError, match="no cost"):
        space.cost("energy", vectors)


def test_bad_configs_raise_one_clear_error(space):
    config = space.sample(1, seed=0)[0]
    key = next(iter(config))
    with pytest.raises(ConfigError, match="unknown keys"):
        space.validate({**config, "bogus": 1})
    with pytest.raises(ConfigError, match="missing keys"):
        space.validate({k: v for k, v in config.items() if k != key})
    list_key = next((k for k, v in config.items() if isinstance(v, list)), None)
    if list_key is not None:
        with pytest.raises(ConfigError, match="list of"):
            space.validate({**config, list_key: config[list_key][:-1]})
    scalar_key = next((k for k, v in config.items() if not isinstance(v, list)), list_key)
    bad_value = {**config, scalar_key: -12345} if scalar_key != list_key else {**config, list_key: [-12345] * len(config[list_key])}
    with pytest.raises(ConfigError, match="not one of the choices"):
        space.validate(bad_value)
    with pytest.raises(ConfigError, match="genes"):
        space.check_vectors(np.zeros((2, space.n_genes + 1), dtype=np.int64))
    with pytest.raises(ConfigError, match="outside"):
        space.check_vectors(np.full((1, space.n_genes), 99, dtype=np.int64))


def test_small_options_are_small(small_space):
    """``small_options`` keep tests and demos fast: bounded by size, not by a wall-clock time."""
    for name in SPACES:
        space = small_space(name)
        config = space.sample(1, seed=0)[0]
        space.activate(config)
        with torch.no_grad():
            space.supernet(space.example_input(config))
        assert sum(p.numel() for p in space.supernet.parameters()) < 1_000_000, name
        assert space.macs(space.random_vectors(20, np.random.default_rng(0))).max() < 5e6, name


def test_features_are_equal_for_equivalent_encodings(space):
    vectors = space.random_vectors(30, np.random.default_rng(4))
    feats = space.features(vectors)
    assert feats.shape[0] == 30 and feats.dtype == np.float32 and np.all(np.isfinite(feats))
    assert np.array_equal(feats, space.features(space.canonical(vectors)))


def test_additive_cost_over_layers_equals_the_analytic_costs(space):
    vectors = space.random_vectors(10, np.random.default_rng(6))
    assert np.array_equal(space.additive_cost(lambda layer: layer["macs"])(vectors), space.macs(vectors))
    generic = search_spaces.SearchSpace.additive_cost(space, lambda layer: layer["params"])  # per-graph path
    assert np.array_equal(generic(vectors), space.params(vectors))


def test_additive_cost_scorers_reject_out_of_range_genes(space):
    """The lookup-table predictor skips its own range check because every scorer checks."""
    score = space.additive_cost(lambda layer: layer["macs"])
    for gene in (0, space.n_genes - 1):
        for bad in (-1, int(space.cardinalities[gene])):
            vectors = space.random_vectors(4, np.random.default_rng(7))
            vectors[2, gene] = bad
            with pytest.raises(ConfigError):
                score(vectors)
