"""``dass_darts``: genes, canonical form, derivation from alphas, sparse counts, genotype files, checkpoints."""

import json
import math

import numpy as np
import pytest
import torch

import search_spaces
from nas.errors import CheckpointError, ConfigError
from search_spaces.checkpoint import load_supernet, save_supernet
from search_spaces.dass_darts import GENOTYPE_FORMAT
from search_spaces.ops.counting import count_macs, count_params
from search_spaces.ops.sparse import count_nonzero_params, sparse_layers

NORMAL = [("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("skip_connect", 0), ("sep_conv_3x3", 1),
          ("skip_connect", 0), ("dil_conv_3x3", 2), ("avg_pool_3x3", 1), ("max_pool_3x3", 4)]
REDUCE = [("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
          ("sep_conv_5x5", 0), ("skip_connect", 2), ("dil_conv_5x5", 3), ("skip_connect", 2)]


@pytest.fixture(scope="module")
def space():
    torch.manual_seed(0)
    return search_spaces.get("dass_darts", C=4, layers=3, resolution=8)


def genotype_config(space, keep=(1.0, 0.1, 0.05), stem=1.0, classifier=0.1):
    return space.config_of({"normal": NORMAL, "reduce": REDUCE}, list(keep), stem, classifier)


def test_config_of_genotype_orders_node_inputs_and_round_trips(space):
    config = genotype_config(space)
    assert config["normal_inputs"] == ["0,1", "0,1", "0,2", "1,4"]
    assert config["normal_ops"][4:8] == ["skip_connect", "dil_conv_3x3", "avg_pool_3x3", "max_pool_3x3"]
    assert config["reduce_inputs"] == ["0,1", "1,2", "0,2", "2,3"]
    assert config["reduce_ops"][2:4] == ["max_pool_3x3", "skip_connect"]   # (skip, 2), (max, 1) sorted by input
    vector = space.encode(config)
    assert space.decode(vector) == config
    assert space.genotypes(config)["normal"] == NORMAL
    assert space.n_genes == 2 * (4 + 8) + 3 + 2
    assert space.cardinalities[:4].tolist() == [1, 3, 6, 10]


def test_canonical_zeroes_normal_genes_only_without_normal_cells(space):
    vectors = space.random_vectors(20, np.random.default_rng(0))
    assert np.array_equal(space.canonical(vectors), vectors)          # layers=3 has both kinds
    reductions_only = search_spaces.get("dass_darts", C=4, layers=2, resolution=8)
    vectors = reductions_only.random_vectors(20, np.random.default_rng(0))
    canon = reductions_only.canonical(vectors)
    assert (canon[:, :12] == 0).all() and np.array_equal(canon[:, 12:], vectors[:, 12:])
    assert (vectors[:, :12] != 0).any()
    assert reductions_only.size() * 180 * 7 ** 8 == space.size() // 4      # one cell kind less, one keep gene less


def test_derive_takes_top2_edges_by_softmax_weight_ignoring_none(space):
    ops = space.ops
    alphas = {kind: np.zeros((14, len(ops))) for kind in ("normal", "reduce")}
    a = alphas["normal"]
    a[0, ops.index("sep_conv_5x5")] = 3.0                  # node 0: both edges kept regardless
    a[1, ops.index("none")] = 9.0                          # none dominates, then max_pool is the best real op
    a[1, ops.index("max_pool_3x3")] = 0.5
    a[2, 1:] = 5.0                                         # node 1: raw max 5, but softmax max only 1/7.x
    a[3, ops.index("dil_conv_3x3")] = 2.0                  # softmax max e^2/(e^2+7) ~ 0.51: strongest
    a[4, ops.index("skip_connect")] = 1.0                  # second
    a[7, ops.index("avg_pool_3x3")] = 4.0                  # node 2: inputs 2 and 3 (edges 7, 8)
    a[8, ops.index("sep_conv_3x3")] = 4.0
    a[5, ops.index("none")] = 20.0                         # edge 5 (state 0) dominated by none: weakest
    a[13, ops.index("dil_conv_5x5")] = 1.0                 # node 3: edge 13 (state 4), then a tie -> state 0
    config = space.derive(alphas, keep_ratio=0.05)
    normal = space.genotypes(config)["normal"]
    assert normal[:2] == [("sep_conv_5x5", 0), ("max_pool_3x3", 1)]
    assert normal[2:4] == [("dil_conv_3x3", 1), ("skip_connect", 2)]
    assert normal[4:6] == [("avg_pool_3x3", 2), ("sep_conv_3x3", 3)]
    assert normal[6:] == [("max_pool_3x3", 0), ("dil_conv_5x5", 4)]
    assert config["keep"] == [0.05] * 3 and config["keep_stem"] == 0.05
    assert space.derive({k: torch.tensor(v) for k, v in alphas.items()}, 0.05) == config
    with pytest.raises(ConfigError, match="shape"):
        space.derive({"normal": a[:5], "reduce": a})


def test_extract_equals_active_supernet_and_mixed_mode_trains_alphas(space):
    supernet = space.supernet.eval()
    config = genotype_config(space)
    x = space.example_input(config, 2)
    space.activate(config)
    with torch.no_grad():
        y = supernet(x)
        assert (space.extract(config).eval()(x) - y).abs().max() <= 1e-5
        assert (space.extract(config, keep_sparse=True).eval()(x) - y).abs().max() <= 1e-5
    supernet.set_mode("mixed")
    supernet.zero_grad()
    mixed = supernet(x)
    assert not torch.allclose(mixed, y)
    mixed.square().sum().backward()
    assert all(a.grad is not None and a.grad.abs().sum() > 0 for a in supernet.arch_parameters())
    assert not {id(p) for p in supernet.arch_parameters()} & {id(p) for p in supernet.weight_parameters()}
    with pytest.raises(ConfigError, match="mode"):
        supernet.set_mode("soft")


def test_nonzero_costs_equal_counts_on_the_sparse_network(space):
    configs = space.sample(6, seed=3)
    vectors = space.encode(configs)
    costs = {name: space.cost(name, vectors) for name in space.costs}
    for i, config in enumerate(configs):
        x = space.example_input(config)
        sparse, plain = space.extract(config, keep_sparse=True), space.extract(config)
        assert costs["nonzero_macs"][i] == count_macs(sparse, x) == count_macs(space.supernet, x)
        assert costs["nonzero_params"][i] == count_nonzero_params(sparse)
        assert costs["macs"][i] == count_macs(plain, x) and costs["params"][i] == count_params(plain)
        weights = sum(int(torch.count_nonzero(m.weight)) for m in plain.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
        assert costs["nonzero_params"][i] == count_params(plain) - sum(
            m.weight.numel() for m in plain.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))) + weights


def test_keep_gene_changes_nonzero_counts_as_expected(space):
    dense = genotype_config(space, keep=(1.0, 1.0, 1.0), stem=1.0, classifier=1.0)
    sparse_cell = genotype_config(space, keep=(0.1, 1.0, 1.0), stem=1.0, classifier=1.0)
    v = space.encode([dense, sparse_cell])
    cell0 = list(sparse_layers(space.extract(dense, keep_sparse=True).cells[0]))
    removed = sum(m.weight.numel() - math.ceil(0.1 * m.weight.numel()) for m in cell0)
    assert removed > 0
    assert space.nonzero_params(v)[0] == space.params(v)[0]
    assert space.nonzero_params(v)[0] - space.nonzero_params(v)[1] == removed
    assert space.macs(v)[0] == space.macs(v)[1] and space.nonzero_macs(v)[1] < space.nonzero_macs(v)[0]
    net = space.extract(genotype_config(space, stem=0.01, classifier=0.01), keep_sparse=True)
    assert int(torch.count_nonzero(net.stem[0].effective_weight())) == math.ceil(0.01 * net.stem[0].weight.numel())
    assert all(m.keep_ratio == 0.05 for m in sparse_layers(net.cells[2]))


def test_genotype_file_round_trip_and_keep_override(space, tmp_path):
    config = genotype_config(space)
    path = tmp_path / "genotype.json"
    space.save_genotype(config, path)
    assert json.loads(path.read_text())["normal"][0] == ["sep_conv_3x3", 0]
    assert space.load_genotype(path) == config
    overridden = space.load_genotype(path, keep_ratio=0.01)
    assert overridden["keep"] == [0.01] * 3 and overridden["normal_ops"] == config["normal_ops"]


@pytest.mark.parametrize("content, message", [
    ("{not json", "cannot read"),
    (json.dumps({"normal": NORMAL, "reduce": REDUCE}), "not a genotype file"),
    (json.dumps({"format": GENOTYPE_FORMAT, "normal": NORMAL[:6], "reduce": REDUCE}), "8 \\[op, input\\] pairs"),
    (json.dumps({"format": GENOTYPE_FORMAT, "normal": [("conv_7x7", 0)] + NORMAL[1:], "reduce": REDUCE,
                 "keep": [1.0] * 3, "keep_stem": 1.0, "keep_classifier": 1.0}), "unknown op.*conv_7x7"),
    (json.dumps({"format": GENOTYPE_FORMAT, "normal": NORMAL, "reduce": [("none", 0)] + REDUCE[1:],
                 "keep": [1.0] * 3, "keep_stem": 1.0, "keep_classifier": 1.0}), "unknown op.*none"),
    (json.dumps({"format": GENOTYPE_FORMAT, "normal": NORMAL[:2] + [("skip_connect", 1), ("sep_conv_3x3", 1)]
                 + NORMAL[4:], "reduce": REDUCE}), "node 1: inputs must be two different"),
    (json.dumps({"format": GENOTYPE_FORMAT, "normal": NORMAL, "reduce": REDUCE, "keep": [1.0] * 8,
                 "keep_stem": 1.0, "keep_classifier": 1.0}), "8 cells, but this space has 3"),
    (json.dumps({"format": GENOTYPE_FORMAT, "normal": NORMAL, "reduce": REDUCE}), "no keep ratios"),
])
def test_bad_genotype_files_raise_one_clear_error(space, tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        space.load_genotype(path)


@pytest.mark.parametrize("keep_ratios", [[1.0, 0.0], [1.5], [-0.1], ["half"], [], [0.1, 0.1]])
def test_bad_keep_ratios_raise_config_error(keep_ratios):
    with pytest.raises(ConfigError, match="keep"):
        search_spaces.get("dass_darts", C=4, layers=3, keep_ratios=keep_ratios)


def test_bad_options_and_keep_override_raise_config_error(space, tmp_path):
    with pytest.raises(ConfigError, match="ops"):
        search_spaces.get("dass_darts", ops=["none", "conv_9x9"])
    with pytest.raises(ConfigError, match="ops"):
        search_spaces.get("dass_darts", ops=["none"])
    with pytest.raises(ConfigError, match="layers"):
        search_spaces.get("dass_darts", layers=0)
    path = tmp_path / "genotype.json"
    space.save_genotype(genotype_config(space), path)
    with pytest.raises(ConfigError, match="keep ratio"):
        space.load_genotype(path, keep_ratio=2.0)
    with pytest.raises(ConfigError, match="not one of the choices"):
        space.load_genotype(path, keep_ratio=0.5)


def test_checkpoint_round_trip_and_mismatch(space, tmp_path):
    config = genotype_config(space)
    path = tmp_path / "supernet.pt"
    save_supernet(space, path)
    loaded = load_supernet(path, expect_space="dass_darts")
    for s in (space, loaded):
        s.supernet.eval()
        s.activate(config)
    x = space.example_input(config, 2)
    with torch.no_grad():
        assert torch.equal(loaded.supernet(x), space.supernet(x))
    assert torch.equal(loaded.supernet.alphas["normal"], space.supernet.alphas["normal"])
    with pytest.raises(CheckpointError, match="nb201"):
        load_supernet(path, expect_space="nb201")
    wider = search_spaces.get("dass_darts", C=6, layers=3, resolution=8)
    data = torch.load(path, weights_only=True)
    torch.save({**data, "state_dict": wider.supernet.state_dict()}, tmp_path / "mismatch.pt")
    fit = r"mismatch\.pt does not fit the dass_darts supernet its options build: \d+ shape mismatches: stem"
    with pytest.raises(CheckpointError, match=fit):
        load_supernet(tmp_path / "mismatch.pt")


def test_keep_genes_run_from_the_sparsest_to_the_dense_network():
    """Every space orders choices from the smallest network to the largest: the largest subnet is dense."""
    space = search_spaces.get("dass_darts", C=4, layers=3, keep_ratios=[1.0, 0.05, 0.3])
    keep_genes = [gene for gene in space.genes if gene.name.startswith("keep")]
    assert len(keep_genes) == 5 and all(gene.choices == (0.05, 0.3, 1.0) for gene in keep_genes)
    assert space.options["keep_ratios"] == [0.05, 0.3, 1.0]


def test_classifier_sees_zero_mean_features_whatever_the_genotype(space):
    """A shared classifier must not see per-genotype offsets: the last cell of an all-max-pool genotype
    outputs features with a positive mean, a sep-conv one zero-mean features (each op ends in a
    BatchNorm); without the head BatchNorm a supernet over sampled genotypes diverged. The linear
    layer gets zero-mean features for both."""
    cell_outputs, features = [], []
    classifier = space.supernet.classifier
    hooks = [classifier.register_forward_pre_hook(lambda m, args: cell_outputs.append(args[0].mean((0, 2, 3)))),
             classifier.linear.register_forward_pre_hook(lambda m, args: features.append(args[0].mean(0)))]
    x = torch.randn(32, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    try:
        for op in ("max_pool_3x3", "sep_conv_3x3"):
            cell = [(op, 0), (op, 1)] * 4
            space.activate(space.config_of({"normal": cell, "reduce": cell}, [1.0] * 3, 1.0, 1.0))
            with torch.no_grad():
                space.supernet.train()(x)
    finally:
        for hook in hooks:
            hook.remove()
    assert cell_outputs[0].mean() > 1 and cell_outputs[1].abs().max() < 1e-4
    assert all(f.abs().max() < 1e-4 for f in features)


def test_a_checkpoint_from_before_the_classifier_batchnorm_names_what_does_not_fit(space, tmp_path):
    save_supernet(space, tmp_path / "old.pt")
    data = torch.load(tmp_path / "old.pt", weights_only=True)
    data["state_dict"] = {k.replace("classifier.linear.", "classifier."): v for k, v in data["state_dict"].items()
                          if not k.startswith("classifier.bn.")}
    torch.save(data, tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match=r"old\.pt does not fit the dass_darts supernet") as info:
        load_supernet(tmp_path / "old.pt")
    message = str(info.value)
    assert "missing keys: classifier.bn.running_mean" in message and "unexpected keys: classifier.weight" in message
    assert "\n" not in message
