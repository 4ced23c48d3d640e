"""Latency measurement: both CPU backends, thread control, robust multi-round measurement."""

import time

import numpy as np
import onnxruntime  # noqa: F401  (the backend needs it)
import pytest
import torch

from evaluators.backends import export_onnx, ort_session
from evaluators.devices import Device, get_device
from evaluators.latency import measure_latency, resolve_clock, time_runs, torch_threads
from evaluators.measure import measure_models, measure_subnets, robust_latency
from nas.errors import ConfigError


@pytest.fixture
def subnet(small_space):
    space = small_space("ofa_mbv3")
    config = space.sample(1, seed=0)[0]
    return space, space.extract(config).eval(), space.example_input(config)


def test_measure_latency_reports_stated_conditions(subnet):
    _, model, x = subnet
    before = torch.get_num_threads()
    stats = measure_latency(model, x, warmup=2, runs=7, threads=1)
    assert torch.get_num_threads() == before and model.training is False
    assert stats.runs == 7 and stats.warmup == 2 and stats.batch == 1 and stats.threads == 1
    assert 0 < stats.p10_ms <= stats.median_ms <= stats.p90_ms and stats.spread >= 0


def test_single_threaded_cpu_runs_are_timed_by_the_thread_clock_by_default(subnet):
    _, model, x = subnet
    assert measure_latency(model, x, warmup=1, runs=3, threads=1).clock == "thread"
    assert measure_latency(model, x, warmup=1, runs=3, threads=2).clock == "wall"
    assert get_device("cpu").measure(model, x, warmup=1, runs=3).clock == "thread"
    assert get_device("cpu-ort").measure(model, x, warmup=1, runs=3).clock == "thread"


def test_thread_clock_leaves_out_time_the_thread_does_not_run():
    sleeping = lambda: time.sleep(0.01)  # noqa: E731  (descheduled: wall time passes, no CPU time)
    assert time_runs(sleeping, 3, "wall").min() >= 10
    assert time_runs(sleeping, 3, "thread").max() < 5


def test_clock_choice_is_checked():
    assert resolve_clock("auto", threads=1) == "thread"
    assert resolve_clock("auto", threads=1, on_cpu=False) == "wall"
    assert resolve_clock("wall", threads=1) == "wall"
    with pytest.raises(ConfigError, match="single-threaded CPU runs only"):
        resolve_clock("thread", threads=2)
    with pytest.raises(ConfigError, match="unknown latency clock 'cycles'"):
        resolve_clock("cycles", threads=1)
    with pytest.raises(ConfigError, match="device 'cpu-2t'.*single-threaded"):
        Device("cpu-2t", "measured", backend="torch", threads=2, clock="thread")


def test_torch_threads_restores_the_previous_count():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_onnx_export_matches_torch_and_ort_backend_measures(subnet, tmp_path):
    _, model, x = subnet
    export_onnx(model, x, str(tmp_path / "m.onnx"))
    session = ort_session(str(tmp_path / "m.onnx"))
    with torch.no_grad():
        np.testing.assert_allclose(session.run(None, {"x": x.numpy()})[0], model(x).numpy(), atol=1e-4)
    stats = get_device("cpu-ort").measure(model, x, warmup=2, runs=5)
    assert stats.device == "cpu-ort" and stats.median_ms > 0


def test_device_batch_size_is_applied(subnet):
    _, model, x = subnet
    device = Device("cpu-b4", "measured", backend="torch", batch=4)
    assert device.measure(model, x, warmup=1, runs=3).batch == 4


def test_table_and_lut_devices_cannot_be_measured(subnet):
    _, model, x = subnet
    with pytest.raises(ConfigError, match="cannot be measured here"):
        get_device("pixel3").measure(model, x)


def test_robust_latency_is_the_smallest_round_median(subnet):
    space, model, x = subnet
    medians = measure_models([(model, x), (model, x)], get_device("cpu"), warmup=1, runs=3, rounds=3)
    assert medians.shape == (2, 3)
    np.testing.assert_array_equal(robust_latency(medians), medians.min(axis=1))
    vectors = space.encode(space.sample(3, seed=1))
    assert np.all(measure_subnets(space, get_device("cpu"), vectors, warmup=1, runs=2, rounds=2) > 0)
