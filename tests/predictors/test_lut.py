"""Lookup-table latency predictors: OFA's Note10 tables, measured tables, persistence, bad tables."""

import numpy as np
import pytest
import yaml

import predictors
import search_spaces
from evaluators.devices import get_device
from predictors import PredictorError
from predictors.lut import LookupTablePredictor, nas_layer_key


@pytest.fixture(scope="module")
def note10():
    device = get_device("note10")
    space = search_spaces.get(device.space, **device.space_options)
    return device, space, LookupTablePredictor.from_ofa_tables(space, device.lut, device="note10")


def _reference_note10_latency(tables: dict, config: dict) -> float:
    """OFA's table lookup for a w1.2 MobileNetV3 subnet, re-derived from its tutorial (latency_table.py):
    stem, fixed first block (mid 24, idskip 1), active blocks (mid = round(in * e), idskip only for
    non-first blocks of a stage), Conv_1, AvgPool2D, Conv_2, Logits; spatial size (s - 1) // stride + 1."""
    r = config["r"]
    lut = tables[r]
    size = (r + 1) // 2
    total = lut[f"Conv-input:{r}x{r}x3-output:{size}x{size}x24"]["mean"]
    total += lut[f"expanded_conv-input:{size}x{size}x24-output:{size}x{size}x24-expand:24-kernel:3-stride:1"
                 f"-idskip:1-se:0-hs:0"]["mean"]
    channels = 24
    for i in range(20):
        stage, pos = divmod(i, 4)
        if pos >= config["d"][stage]:
            continue
        stride = [2, 2, 2, 1, 2][stage] if pos == 0 else 1
        out = [32, 48, 96, 136, 192][stage]
        out_size = (size - 1) // stride + 1
        key = (f"expanded_conv-input:{size}x{size}x{channels}-output:{out_size}x{out_size}x{out}"
               f"-expand:{round(channels * config['e'][i])}-kernel:{config['ks'][i]}-stride:{stride}"
               f"-idskip:{0 if pos == 0 else 1}-se:{int(stage in (1, 3, 4))}-hs:{int(stage >= 2)}")
        total += lut[key]["mean"]
        size, channels = out_size, out
    total += lut[f"Conv_1-input:{size}x{size}x192-output:{size}x{size}x1152"]["mean"]
    total += lut[f"AvgPool2D-input:{size}x{size}x1152-output:1x1x1152"]["mean"]
    total += lut["Conv_2-input:1x1x1152-output:1x1x1536"]["mean"]
    return total + lut["Logits-input:1x1x1536-output:1000"]["mean"]


def test_note10_predictions_equal_the_reference_lookup(note10):
    device, space, predictor = note10
    tables = {r: yaml.safe_load(open(f"{device.lut}/{r}_lookup_table.yaml")) for r in space.resolutions}
    configs = space.sample(200, seed=0)
    predicted = predictor.predict(space.encode(configs))
    expected = np.array([_reference_note10_latency(tables, c) for c in configs])
    np.testing.assert_allclose(predicted, expected, rtol=1e-12)


def test_vectorised_tables_equal_the_per_graph_sum(note10):
    _, space, predictor = note10
    vectors = space.random_vectors(20, np.random.default_rng(1))
    generic = search_spaces.SearchSpace.additive_cost(space, predictor.layer_latency)
    np.testing.assert_allclose(predictor.predict(vectors), generic(vectors), rtol=1e-12)


def test_tables_for_another_width_name_the_first_missing_layer(note10):
    device = note10[0]
    space = search_spaces.get("ofa_mbv3", width_mult=1.0, resolutions=[160, 224])
    with pytest.raises(PredictorError, match=r"no entry for layer '160:Conv-input:160x160x3-output:80x80x16'"):
        LookupTablePredictor.from_ofa_tables(space, device.lut)


def test_bad_encodings_are_rejected_by_the_compiled_scorer(note10):
    _, space, predictor = note10
    vectors = space.random_vectors(5, np.random.default_rng(2))
    vectors[3, space.r_col] = 99
    with pytest.raises(search_spaces.base.ConfigError, match="row 3: gene 'r'"):
        predictor.predict(vectors)


def test_measured_table_on_this_cpu(small_space, tmp_path):
    space = small_space("ofa_mbv3", resolutions=[32, 40])
    device = get_device("cpu")
    measured = []
    predictor = LookupTablePredictor(space, "latency_ms", "cpu").measure_entries(device, warmup=1, runs=3,
                                                                               on_layer=measured.append)
    assert len(measured) == len(set(measured)) == len(predictor.entries)   # each distinct layer once
    configs = space.sample(6, seed=0)
    vectors = space.encode(configs)
    layer_sums = predictor.layer_sum(vectors)
    for config, total in zip(configs, layer_sums):
        keys = [nas_layer_key(a) for _, a in space.graph(config).nodes(data=True)]
        assert total == pytest.approx(sum(predictor.entries[k][0] for k in keys))
    latencies = np.array([device.measure(space.extract(c), space.example_input(c), warmup=2, runs=5).median_ms
                          for c in configs])
    predictor.fit(vectors, latencies)
    assert predictor.overhead == pytest.approx(np.median(latencies - layer_sums))
    path = tmp_path / "lut.npz"
    predictor.save(path)
    loaded = predictors.load(path, space=space, device="cpu")
    np.testing.assert_array_equal(loaded.predict(vectors), predictor.predict(vectors))
    with pytest.raises(PredictorError, match="not 'cpu-ort'"):
        predictors.load(path, space=space, device="cpu-ort")
