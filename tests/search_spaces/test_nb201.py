"""nb201 specifics: the vendored benchmark table, its index mapping, the FLOPs convention, the supernet."""

import csv
import gzip
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

import search_spaces
from nas.errors import ConfigError
from search_spaces.nb201 import DATA, EDGES, OPS, arch_str, pareto_fronts
from search_spaces.ops.counting import count_macs, count_params

SHARED_CSV = Path(__file__).resolve().parents[3] / "shared" / "benchmarks" / "nb201_hw" / "nb201_hw.csv.gz"
ALL = np.arange(15625)


@pytest.fixture(scope="module")
def nb201():
    """The benchmark's own network: CIFAR-10, C=16, N=5."""
    return search_spaces.get("nb201")


@pytest.fixture
def small(small_space):
    return small_space("nb201")


def _ops(*names: str) -> dict:
    return {"ops": list(names)}


# ----------------------------------------------------------------------------- the table
@pytest.mark.skipif(not SHARED_CSV.exists(), reason="shared benchmark CSV not present")
def test_table_lookup_equals_the_shared_csv(nb201):
    with gzip.open(SHARED_CSV, "rt", newline="") as fh:
        rows = list(csv.DictReader(fh))
    picked = np.random.default_rng(0).choice(len(rows), 400, replace=False)
    vectors = nb201.encode([_ops(*(rows[i][f"op{e}"] for e in range(6))) for i in picked])
    assert np.array_equal(nb201.table_index(vectors), [int(rows[i]["index"]) for i in picked])
    assert [arch_str(c["ops"]) for c in nb201.decode(vectors)] == [rows[i]["arch_str"] for i in picked]
    numeric = [c for c in rows[0] if c not in ("index", "arch_str") and not (c.startswith("op") and len(c) == 3)]
    assert list(nb201.table_columns) == numeric
    for column in numeric:
        expected = [float(rows[i][column]) if rows[i][column] != "" else np.nan for i in picked]
        np.testing.assert_array_equal(nb201.table_value(vectors, column), expected, err_msg=column)


def test_best_architectures_per_dataset():
    for dataset, index, best in (("cifar10", 6111, 94.3733), ("cifar100", 9930, 73.5133), ("imagenet16", 857, 47.3111)):
        space = search_spaces.get("nb201", dataset=dataset)
        acc = space.accuracy(space.table_vectors(ALL))
        assert int(np.argmax(acc)) == index and acc[index] == pytest.approx(best, abs=1e-4), dataset
    space = search_spaces.get("nb201")
    assert space.decode(space.table_vectors([6111]))[0] == _ops(
        "nor_conv_3x3", "nor_conv_3x3", "nor_conv_3x3", "skip_connect", "nor_conv_3x3", "nor_conv_1x1")


def test_index_mapping_round_trip(small):
    every = np.array(list(itertools.product(range(len(OPS)), repeat=len(EDGES))))
    index = small.table_index(every)
    assert np.array_equal(np.sort(index), ALL)                            # a bijection onto the table
    assert np.array_equal(small.table_vectors(index), every)
    assert np.array_equal(small.table_index(small.table_vectors(ALL)), ALL)
    assert arch_str(small.decode(small.table_vectors([0]))[0]["ops"]) == (
        "|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|skip_connect~1|skip_connect~2|")
    with pytest.raises(ConfigError, match="0..15624"):
        small.table_vectors([15625])


def test_missing_values_are_nan_and_unknown_columns_raise(nb201):
    vectors = nb201.table_vectors(ALL)
    edgegpu = nb201.table_value(vectors, "hw_cifar10_edgegpu_latency_ms")
    assert np.isnan(edgegpu[[0, 6111]]).all() and np.isnan(edgegpu).sum() == 3071
    assert np.isfinite(nb201.table_value(vectors, "hw_cifar10_edgetpu_latency_ms")).sum() == 8786
    assert not np.isnan(nb201.table_value(vectors, "hw_cifar10_pixel3_latency_ms")).any()
    with pytest.raises(ConfigError, match="no column"):
        nb201.table_value(vectors[:2], "hw_cifar10_pixel4_latency_ms")


def test_table_devices_name_latency_columns():
    devices = search_spaces.get("nb201", C=4, N=1).table_devices()
    assert {"pixel3", "raspi4", "fpga", "eyeriss", "edgegpu", "edgetpu", "gold_6226", "titan_rtx_1", "pixel2"} <= set(devices)
    assert len(devices) == 6 + 23 and devices["pixel3"] == "hw_cifar10_pixel3_latency_ms"
    assert devices["titan_rtx_1"] == "help_lat_ms_titan_rtx_1"
    assert set(devices.values()) <= set(search_spaces.get("nb201").table_columns)
    cifar100 = search_spaces.get("nb201", dataset="cifar100", C=4, N=1)
    assert cifar100.table_devices() == {} and cifar100.table_devices(cifar10_proxy=True) == devices


def test_vendored_data_is_small_and_installed_as_package_data():
    assert (DATA / "nb201.npz").stat().st_size < 4_000_000
    assert (DATA / "pareto.json").read_bytes()[:1] == b"{"
    pyproject = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert '"data/nb201/nb201.npz"' in pyproject and '"data/nb201/pareto.json"' in pyproject


# ----------------------------------------------------------------------------- hypervolume
def _hv_fraction(acc: np.ndarray, cost: np.ndarray, objective: dict, variant: str) -> float:
    """The shared README's ``hv_fraction`` recipe."""
    h = objective["hv"][variant]
    a0, amax = h["acc_floor"], objective["acc_max"]
    cmin, cmax = objective["cost_min"], objective["cost_max"]
    f1 = 1 - (acc - a0) / (amax - a0)
    f2 = (cost - cmin) / (cmax - cmin)
    keep = (f1 < 1) & (f2 < 1)
    f1, f2 = f1[keep], f2[keep]
    hv, prev = 0.0, 1.0
    for k in np.lexsort((f1, f2)):
        if f1[k] < prev:
            hv += (prev - f1[k]) * (1 - f2[k])
            prev = f1[k]
    return hv / h["hypervolume"]


def test_pareto_fronts_have_full_hypervolume_from_the_lookups(nb201):
    fronts = pareto_fronts()["objectives"]
    devices = nb201.table_devices()
    checked = 0
    for device, column in devices.items():
        objective = fronts[f"{device}_latency_ms"]
        front = nb201.table_vectors(objective["front_indices"])
        acc, cost = nb201.accuracy(front), nb201.table_value(front, column)
        np.testing.assert_array_equal(acc, objective["front_acc"])
        np.testing.assert_array_equal(cost, objective["front_cost"])
        for variant in objective["hv"]:
            assert _hv_fraction(acc, cost, objective, variant) == pytest.approx(1.0, abs=1e-12), (device, variant)
        checked += 1
    assert checked == 29
    pixel3 = fronts["pixel3_latency_ms"]
    everything = nb201.table_vectors(ALL)
    whole = _hv_fraction(nb201.accuracy(everything), nb201.table_value(everything, devices["pixel3"]), pixel3, "floor_p90")
    assert whole == pytest.approx(1.0, abs=1e-12)
    random_100 = everything[np.random.default_rng(0).choice(15625, 100, replace=False)]
    assert _hv_fraction(nb201.accuracy(random_100), nb201.table_value(random_100, devices["pixel3"]),
                        pixel3, "floor_p90") < 0.95


# ----------------------------------------------------------------------------- costs vs the table
@pytest.mark.parametrize("dataset,n_classes", [("cifar10", 10), ("cifar100", 100), ("imagenet16", 120)])
def test_macs_relate_exactly_to_the_table_flops(dataset, n_classes):
    """NB201 FLOPs = conv MACs + classifier MACs + classifier bias adds; params equal, BN affine included."""
    space = search_spaces.get("nb201", dataset=dataset)
    vectors = space.table_vectors(np.random.default_rng(1).choice(15625, 300, replace=False))
    table_flops = np.round(space.table_value(vectors, f"flops_M_{dataset}") * 1e6).astype(np.int64)
    table_params = np.round(space.table_value(vectors, f"params_M_{dataset}") * 1e6).astype(np.int64)
    assert np.array_equal(space.macs(vectors) + n_classes, table_flops)
    assert np.array_equal(space.flops(vectors), table_flops)
    assert np.array_equal(space.params(vectors), table_params)
    for config, flops, params in zip(space.decode(vectors[:2]), table_flops, table_params):
        net = space.extract(config)
        assert count_macs(net, space.example_input(config)) + n_classes == flops
        assert count_params(net) == params


def test_dead_convolutions_are_counted_like_nb201(nb201):
    """An edge out of a node with no inputs still runs (on zeros) in NB201's network and its FLOPs."""
    dead = nb201.encode(_ops("none", "none", "nor_conv_3x3", "none", "nor_conv_3x3", "nor_conv_3x3"))
    cut = nb201.encode(_ops("none", "none", "none", "none", "none", "nor_conv_3x3"))
    assert nb201.macs(dead) > nb201.macs(cut)
    assert nb201.flops(dead)[0] == round(nb201.table_value(dead, "flops_M_cifar10")[0] * 1e6)


# ----------------------------------------------------------------------------- canonical
def test_canonical_is_identity_because_the_table_separates_equivalent_cells(small):
    every = small.table_vectors(ALL)
    assert np.array_equal(small.canonical(every), every) and small.size() == 15625
    classes = small.isomorphism_class(every)
    assert classes.max() + 1 == 6466                                       # NB201's count of unique cells
    multi = [np.flatnonzero(classes == c) for c in np.flatnonzero(np.bincount(classes) > 1)]
    assert len(multi) == 1350

    def agreeing(columns):
        values = np.stack([small.table_value(every, c) for c in columns], axis=1)
        return sum(bool(np.all((values[m] == values[m[0]]) | np.isnan(values[m]) & np.isnan(values[m[0]])))
                   for m in multi)

    assert agreeing(["test_acc_cifar10"]) == 64      # same modules, same training: the 200-epoch CIFAR-10 runs tie
    assert agreeing(["test_acc_cifar10", "acc12_valid_cifar10"]) == 5    # the 5 classes of disconnected cells (10 %)
    assert agreeing([c for c in small.table_columns if "acc" in c]) == 0
    assert agreeing(["hw_cifar10_pixel3_latency_ms"]) == agreeing(["help_lat_ms_gold_6226"]) == 0
    # a dead avg-pool edge (0->2 when 2->3 is none) changes neither function nor FLOPs, yet the table differs
    a = small.encode(_ops("nor_conv_1x1", "none", "none", "nor_conv_1x1", "nor_conv_3x3", "none"))
    b = small.encode(_ops("nor_conv_1x1", "avg_pool_3x3", "none", "nor_conv_1x1", "nor_conv_3x3", "none"))
    assert small.isomorphism_class(a) == small.isomorphism_class(b)
    assert small.table_value(a, "flops_M_cifar10") == small.table_value(b, "flops_M_cifar10")
    assert small.accuracy(a) != small.accuracy(b)
    assert small.table_value(a, "hw_cifar10_pixel3_latency_ms") != small.table_value(b, "hw_cifar10_pixel3_latency_ms")


def test_connected_and_extra_features(small):
    vectors = small.encode([_ops("none", "none", "none", "none", "none", "skip_connect"),
                            _ops("skip_connect", "none", "none", "none", "nor_conv_1x1", "none"),
                            _ops("none", "none", "nor_conv_3x3", "none", "none", "avg_pool_3x3")])
    assert small.connected(vectors).tolist() == [False, True, False]
    assert small.table_value(vectors[[0, 2]], "test_acc_cifar10").tolist() == [10.0, 10.0]
    assert small.extra_features(vectors)[1, :6].tolist() == [4, 1, 1, 0, 0, 1]


def test_path_aggregates_count_only_what_the_image_flows_through(small):
    # 0->1 conv3x3, 1->3 conv3x3 (live path of two convs); 1->2 conv1x1 is dead (2->3 is none); 0->3 skip
    cells = small.encode([_ops("nor_conv_3x3", "none", "nor_conv_1x1", "skip_connect", "nor_conv_3x3", "none"),
                          # every path live: 0->1->2->3 has three convs, two of them conv3x3
                          _ops("nor_conv_3x3", "avg_pool_3x3", "nor_conv_1x1", "skip_connect", "skip_connect",
                               "nor_conv_3x3"),
                          _ops("none", "none", "nor_conv_3x3", "none", "nor_conv_3x3", "avg_pool_3x3")])
    # live counts of skip, conv1x1, conv3x3, avg-pool; most conv3x3 / convs on one path; live paths
    assert small.extra_features(cells)[:, 6:].tolist() == [[1, 0, 2, 0, 2, 2, 2],
                                                          [2, 1, 2, 1, 2, 3, 4],
                                                          [0, 0, 0, 0, 0, 0, 0]]


# ----------------------------------------------------------------------------- networks
EDGE_CASES = [
    _ops("none", "none", "none", "none", "none", "none"),                    # output is zeros
    _ops("none", "none", "nor_conv_3x3", "none", "nor_conv_1x1", "nor_conv_3x3"),   # convs on a zero node
    _ops("avg_pool_3x3", "skip_connect", "avg_pool_3x3", "skip_connect", "avg_pool_3x3", "skip_connect"),
    _ops("nor_conv_3x3", "nor_conv_3x3", "nor_conv_3x3", "skip_connect", "nor_conv_3x3", "nor_conv_1x1"),
]


@pytest.mark.parametrize("dataset", ["cifar10", "imagenet16"])
def test_extract_equals_the_supernet_at_benchmark_size(dataset):
    space = search_spaces.get("nb201", dataset=dataset)
    space.supernet.eval()
    for config in EDGE_CASES + space.sample(4, seed=11):
        space.activate(config)
        x = space.example_input(config, 2)
        assert x.shape == (2, 3, space.resolution, space.resolution)
        with torch.no_grad():
            y = space.supernet(x)
            sub = space.extract(config).eval()
            assert y.shape == (2, space.n_classes)
            assert (sub(x) - y).abs().max().item() <= 1e-5, config


def test_extract_copies_only_the_chosen_ops_and_shares_weights(small):
    config = _ops("nor_conv_3x3", "none", "nor_conv_1x1", "skip_connect", "nor_conv_3x3", "avg_pool_3x3")
    net = small.extract(config)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 1 + 3 * 3 + 2 * 3                                 # stem, 3 cells x 3 convs, 2 reductions x 3
    chosen = small.supernet.cells[0].edges["1<-0"].ops["nor_conv_3x3"].op[1].weight
    assert torch.equal(net.cells[0].edges["1<-0"].op[1].weight, chosen)
    assert net.cells[0].edges["1<-0"].op[1].weight.data_ptr() != chosen.data_ptr()   # copied, not aliased
    other = small.extract(_ops("nor_conv_3x3", "nor_conv_3x3", "none", "none", "none", "none"))
    assert torch.equal(other.cells[0].edges["1<-0"].op[1].weight, chosen)         # one weight per edge and op


def test_recalibrate_bn_touches_only_the_active_candidates(small):
    config = _ops("nor_conv_3x3", "none", "none", "nor_conv_1x1", "none", "none")
    edges = small.supernet.cells[0].edges
    before_used = edges["1<-0"].ops["nor_conv_3x3"].op[2].running_mean.clone()
    before_unused = edges["1<-0"].ops["nor_conv_1x1"].op[2].running_mean.clone()
    small.recalibrate_bn(config, [small.example_input(config, 8) * 3 + 1])
    assert not torch.equal(edges["1<-0"].ops["nor_conv_3x3"].op[2].running_mean, before_used)
    assert torch.equal(edges["1<-0"].ops["nor_conv_1x1"].op[2].running_mean, before_unused)


def test_from_scratch_has_the_extracted_shape(small):
    config = small.sample(1, seed=3)[0]
    fresh, extracted = small.from_scratch(config), small.extract(config)
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {k: v.shape for k, v in extracted.state_dict().items()}


def test_graph_shows_the_cell_dag(small):
    config = _ops("nor_conv_3x3", "none", "avg_pool_3x3", "skip_connect", "nor_conv_1x1", "none")
    g = small.graph(config)
    assert sorted(g.predecessors("cells.0.node3")) == ["cells.0.edges.3<-0", "cells.0.edges.3<-1"]
    assert list(g.predecessors("cells.0.edges.1<-0")) == ["stem"]
    assert list(g.predecessors("cells.0.edges.3<-1")) == ["cells.0.node1"]
    assert list(g.predecessors("cells.0.node2")) == ["cells.0.edges.2<-1"]
    assert "cells.0.edges.2<-0" not in g                                      # none edges are no layers
    assert list(g.successors("cells.0.node3")) == ["cells.1"] and g.nodes["cells.1"]["op"] == "resblock"
    assert g.nodes["cells.0.edges.1<-0"]["nb201_op"] == "nor_conv_3x3" and g.nodes["cells.0.edges.1<-0"]["kernel"] == 3
    vector = small.encode(config)
    assert sum(a["params"] for _, a in g.nodes(data=True)) == small.params(vector)
    assert g.graph["arch_str"] == arch_str(config["ops"])


def test_options_are_checked():
    with pytest.raises(ConfigError, match="dataset"):
        search_spaces.get("nb201", dataset="imagenet")
    with pytest.raises(ConfigError, match="C and N"):
        search_spaces.get("nb201", N=0)
    space = search_spaces.get("nb201", dataset="imagenet16", C=8, N=2)
    assert space.options == {"dataset": "imagenet16", "C": 8, "N": 2} and not space.benchmark_network
    assert space.describe()["channels"]["stages"] == [8, 16, 32]
