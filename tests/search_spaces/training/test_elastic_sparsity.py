"""Elastic sparsity: one ``dass_darts`` supernet trained under sampled keep ratios, then searched."""

import json

import pytest
import torch

from evaluators.accuracy import SubnetAccuracy
from nas.errors import ConfigError
from nas.train import prepare
from search_spaces.training import TrainConfig, Trainer, build_phases

TINY = {"C": 4, "layers": 3, "resolution": 8, "keep_ratios": [1.0, 0.3],
        "ops": ["none", "skip_connect", "max_pool_3x3", "sep_conv_3x3"]}
FAST = {"batch_size": 16, "lr": 0.1, "calib_images": 40}


def test_one_supernet_trains_weights_and_scores_under_sampled_keep_ratios(tiny_digits, tmp_path):
    config = TrainConfig(space="dass_darts", space_options=dict(TINY), data=tiny_digits, method="elastic_sparsity",
                         epochs=2, subnets=2, **FAST)
    space, data = prepare(config)
    net = space.supernet
    stem = net.stem[0]
    weights, scores = stem.weight.detach().clone(), stem.scores.detach().clone()
    seen = []
    activate = space.activate
    space.activate = lambda c: (seen.append((c["keep_stem"], *c["keep"])), activate(c))[1]
    history = Trainer.start(space, data, config, tmp_path / "run", SubnetAccuracy(space, data, calib_images=40)).run()
    assert [h["phase"] for h in history] == ["elastic"] and 0 <= history[0]["val_acc_max"] <= 100
    steps = 2 * (len(data.train) // 16)
    assert len(seen) >= 2 * steps                                 # two sampled subnets per step
    assert {k for keeps in seen for k in keeps} == {1.0, 0.3}
    assert {keeps for keeps in seen[:2 * steps]} != {seen[0]}     # the ratios change from subnet to subnet
    assert not torch.equal(stem.weight, weights) and not torch.equal(stem.scores, scores)
    assert (tmp_path / "run" / "supernet.pt").exists()


def test_elastic_sparsity_needs_keep_ratio_genes(small_space):
    with pytest.raises(ConfigError, match="keep-ratio genes"):
        build_phases(small_space("ofa_mbv3"), TrainConfig(method="elastic_sparsity"))
    phases, kd = build_phases(small_space("dass_darts"), TrainConfig(method="elastic_sparsity", epochs=3))
    assert [(p.name, p.epochs, p.choices, p.subnets) for p in phases] == [("elastic", 3, {}, 2)] and kd == "none"


def test_train_then_search_accuracy_latency_and_nonzero_macs_through_the_cli(tiny_digits, tmp_path, cli):
    options = [arg for k, v in TINY.items() for arg in ("-o", f"{k}={json.dumps(v)}")]
    settings = [arg for k, v in FAST.items() for arg in ("--set", f"{k}={v}")]
    code, out, err = cli(["train", "dass_darts", "--data", tiny_digits, "--method", "elastic_sparsity", "--epochs",
                           "1", "--out", str(tmp_path / "train"), *options, *settings])
    assert code == 0, err
    assert "phase elastic done" in out
    run_dir = tmp_path / "search"
    code, out, err = cli(["search", "--space", "dass_darts", "--supernet", str(tmp_path / "train" / "supernet.pt"),
                           "--objectives", "accuracy,latency@cpu,nonzero_macs", "--evaluations", "3", "--batch", "3",
                           "--searcher", "random", "--run", str(run_dir)])
    assert code == 0, err
    events = [json.loads(line) for line in (run_dir / "evaluations.jsonl").read_text().splitlines()]
    results = [e["values"] for e in events if e["type"] == "result"]
    assert len(results) == 3
    for values in results:
        assert 0 <= values["accuracy"] <= 100 and values["latency@cpu"] > 0 and values["nonzero_macs"] > 0
