"""Elastic sparsity: one ``dass_darts`` supernet trained under sampled keep ratios, then searched."""

import json

import pytest
import torch

from evaluators.accuracy import SubnetAccuracy
from nas.errors import ConfigError
from nas.train import prepare
from search_spaces.training import ChoiceSampler, TrainConfig, Trainer, build_phases

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
    (phase,) = phases
    assert phase.include_max and phase.include_min                  # the sandwich rule over the keep ratios
    assert phase.sandwich_keys == ("keep", "keep_stem", "keep_classifier")
    _, kd = build_phases(small_space("dass_darts"), TrainConfig(method="elastic_sparsity", kd="inplace"))
    assert kd == "inplace"


def test_fair_training_trains_every_op_once_per_step_in_one_optimiser_step(tiny_digits, tmp_path, monkeypatch):
    config = TrainConfig(space="dass_darts", space_options=dict(TINY), data=tiny_digits, method="elastic_sparsity",
                         epochs=1, subnets=3, fair=True, **FAST)
    space, data = prepare(config)
    events, drawn = [], []
    activate, sgd_step, step_configs = space.activate, torch.optim.SGD.step, ChoiceSampler.step_configs
    space.activate = lambda c: (events.append("pass"), activate(c))[1]
    monkeypatch.setattr(torch.optim.SGD, "step", lambda self, *a: (events.append("step"), sgd_step(self, *a))[1])
    monkeypatch.setattr(ChoiceSampler, "step_configs", lambda self, phase, rng: drawn.append(
        step_configs(self, phase, rng)) or drawn[-1])
    Trainer.start(space, data, config, tmp_path / "run").run()
    steps = len(data.train) // 16
    passes = [len(chunk.split()) for chunk in " ".join(events).split("step")[:-1]]
    assert len(passes) == len(drawn) == steps and passes == [len(d) for d in drawn]  # all passes, then one step
    keys = ("keep", "keep_stem", "keep_classifier")
    for step in drawn:
        architectures = {json.dumps({k: v for k, v in c.items() if k not in keys}) for c, _ in step}
        ops = [json.loads(a)["normal_ops"] + json.loads(a)["reduce_ops"] for a in architectures]
        assert len(ops) == 3 and all(sorted(gene) == sorted(space.discrete_ops) for gene in zip(*ops))
    stored = json.loads((tmp_path / "run" / "train.json").read_text())
    assert stored["config"]["fair"] is True and "normal_ops" in stored["phases"][0]["fair_keys"]


def test_each_sandwiched_architecture_distills_from_its_own_dense_pass(tiny_digits, tmp_path, monkeypatch):
    config = TrainConfig(space="dass_darts", space_options=dict(TINY, keep_ratios=[1.0, 0.3, 0.1]), data=tiny_digits,
                         method="elastic_sparsity", epochs=1, subnets=2, sandwich_each=True, kd="inplace", **FAST)
    space, data = prepare(config)
    passes = []
    loss = Trainer._loss
    monkeypatch.setattr(Trainer, "_loss", lambda self, logits, y, teacher, phase: passes.append(
        (logits.detach(), teacher)) or loss(self, logits, y, teacher, phase))
    Trainer.start(space, data, config, tmp_path / "run").run()
    assert len(passes) == 6 * (len(data.train) // 16)               # two architectures at three ratios per step
    for i in range(0, len(passes), 3):
        (dense, none), (middle, teacher_1), (sparsest, teacher_2) = passes[i:i + 3]
        assert none is None and torch.equal(teacher_1, dense) and torch.equal(teacher_2, dense)
    assert not torch.equal(passes[0][0], passes[3][0])               # the second architecture's own teacher


class LearningRates:
    """A progress receiver recording, after every step, the learning rate of each optimiser group."""

    def __init__(self):
        self.trainer, self.rates = None, []

    def epoch(self, *args):
        pass

    def step(self, loss, images_per_second):
        self.rates.append([(g["lr"], g["weight_decay"], len(g["params"])) for g in self.trainer.optimizer.param_groups])

    def phase_done(self, record):
        pass


def test_scores_train_at_a_fraction_of_the_learning_rate_without_weight_decay(tiny_digits, tmp_path):
    config = TrainConfig(space="dass_darts", space_options=dict(TINY), data=tiny_digits, method="elastic_sparsity",
                         epochs=1, score_lr=0.25, weight_decay=1e-3, **FAST)
    space, data = prepare(config)
    progress = LearningRates()
    progress.trainer = Trainer.start(space, data, config, tmp_path / "run", progress=progress)
    progress.trainer.run()
    n_scores = sum(1 for name, _ in space.supernet.named_parameters() if name.endswith("scores"))
    assert progress.rates
    for (w_lr, w_decay, _), (_, bn_decay, _), (s_lr, s_decay, n) in progress.rates:
        assert s_lr == pytest.approx(0.25 * w_lr) and (w_decay, bn_decay, s_decay) == (1e-3, 0.0, 0.0)
        assert n == n_scores
    with pytest.raises(ConfigError, match="score_lr"):
        TrainConfig(score_lr=-1).validate()


def test_train_then_search_accuracy_latency_and_nonzero_macs_through_the_cli(tiny_digits, tmp_path, cli):
    options = [arg for k, v in TINY.items() for arg in ("-o", f"{k}={json.dumps(v)}")]
    settings = [arg for k, v in FAST.items() for arg in ("--set", f"{k}={v}")]
    code, out, err = cli(["train", "dass_darts", "--data", tiny_digits, "--method", "elastic_sparsity", "--epochs",
                           "1", "--out", str(tmp_path / "train"), "--threads", "0", *options, *settings])
    assert code == 2 and "--threads must be >= 1" in out + err and not (tmp_path / "train").exists()
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        code, out, err = cli(["train", "dass_darts", "--data", tiny_digits, "--method", "elastic_sparsity", "--epochs",
                               "1", "--out", str(tmp_path / "train"), "--threads", "1", *options, *settings])
        assert code == 0, err
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
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


@pytest.mark.parametrize("value, message", [("maybe", "fair must be true or false; got 'maybe'"),
                                            ("true", "draws at most 1 per step")])
def test_bad_fair_settings_exit_2_through_the_cli(value, message, tiny_digits, tmp_path, cli):
    options = [arg for k, v in TINY.items() for arg in ("-o", f"{k}={json.dumps(v)}")]
    code, out, err = cli(["train", "dass_darts", "--data", tiny_digits, "--method", "elastic_sparsity", "--epochs",
                          "1", "--out", str(tmp_path / "run"), "--set", f"fair={value}", "--set", "subnets=1", *options])
    assert code == 2 and message in out + err and not (tmp_path / "run").exists()
