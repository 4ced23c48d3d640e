"""The weight-sharing trainer on real (tiny) data: it learns, checkpoints, and resumes exactly."""

import json

import pytest
import torch

import search_spaces
from evaluators.accuracy import SubnetAccuracy
from evaluators.data import load_data
from nas.errors import CheckpointError, ConfigError
from search_spaces.checkpoint import atomic_torch_save, load_supernet, read_checkpoint
from search_spaces.training import TrainConfig, Trainer

FAST = {"batch_size": 16, "lr": 0.1, "calib_images": 40}


class Interrupt:
    """Progress that records steps and raises ``KeyboardInterrupt`` at step ``at`` (never if ``None``)."""

    def __init__(self, at=None):
        self.at, self.steps, self.phases = at, 0, []

    def epoch(self, phase, epoch, epochs, steps):
        pass

    def step(self, loss, images_per_second):
        assert loss == loss and images_per_second > 0
        self.steps += 1
        if self.steps == self.at:
            raise KeyboardInterrupt

    def phase_done(self, record):
        self.phases.append(record)


@pytest.fixture(autouse=True)
def _tiny(tiny_ofa):
    global TINY_OFA
    TINY_OFA = tiny_ofa


def _setup(data_spec, method="ps", epochs=6, **extra):
    config = TrainConfig(space_options=dict(TINY_OFA), data=data_spec, method=method, epochs=epochs,
                         **FAST, **extra)
    space = search_spaces.get("ofa_mbv3", **config.space_options)
    data = load_data(data_spec)
    return config, space, data


def test_progressive_shrinking_runs_every_phase_and_writes_a_usable_supernet(tiny_digits, tmp_path):
    config, space, data = _setup(tiny_digits)
    progress = Interrupt()
    trainer = Trainer.start(space, data, config, tmp_path / "run", SubnetAccuracy(space, data, calib_images=40),
                            progress)
    history = trainer.run()
    assert [h["phase"] for h in history] == ["full", "kernel", "depth_1", "depth_2", "expand_1", "expand_2"]
    assert progress.phases == history and all(0 <= h["val_acc_min"] <= 100 for h in history)
    assert progress.steps == 6 * (len(data.train) // 16)
    loaded = load_supernet(tmp_path / "run" / "supernet.pt")
    assert loaded.options == space.options
    for (k, a), b in zip(space.supernet.state_dict().items(), loaded.supernet.state_dict().values()):
        assert torch.equal(a, b), k
    meta = torch.load(tmp_path / "run" / "supernet.pt", weights_only=True)["meta"]["trained"]
    assert meta["finished"] and meta["data"]["spec"] == tiny_digits and meta["kd"] == "frozen"
    assert json.loads((tmp_path / "run" / "train.json").read_text())["config"]["method"] == "ps"


def test_training_learns_the_digits(tiny_digits, tmp_path):
    config, space, data = _setup(tiny_digits, method="full", epochs=12)
    evaluate = SubnetAccuracy(space, data, "train", calib_images=100)
    before = evaluate([space.sample(1, seed=0)[0]])[0]
    Trainer.start(space, data, config, tmp_path / "run").run()
    largest = {"ks": [5] * 10, "e": [4] * 10, "d": [2] * 5, "r": 36}
    after = evaluate([largest])[0]
    assert after > 80 and after > before + 40


@pytest.mark.parametrize("method, at", [("ps", 13), ("deps", 9)])
def test_resume_after_an_interruption_equals_an_uninterrupted_run(tiny_digits, tmp_path, method, at):
    config, space, data = _setup(tiny_digits, method=method)
    Trainer.start(space, data, config, tmp_path / "a").run()
    expected = {k: v.clone() for k, v in space.supernet.state_dict().items()}

    config, space, data = _setup(tiny_digits, method=method)
    with pytest.raises(KeyboardInterrupt):
        Trainer.start(space, data, config, tmp_path / "b", progress=Interrupt(at)).run()
    config, space, data = _setup(tiny_digits, method=method)
    trainer = Trainer.resume(space, data, tmp_path / "b")
    assert trainer.position["step"] > 0 and not trainer.finished
    trainer.run()
    for k, v in space.supernet.state_dict().items():
        assert torch.equal(v, expected[k]), k


def test_a_run_from_before_a_setting_existed_still_resumes(tiny_digits, tmp_path):
    """A state written before ``fair`` and ``sandwich_each`` existed lacks their keys; resuming takes the
    values that reproduce what the run did."""
    config, space, data = _setup(tiny_digits, method="full", epochs=2)
    with pytest.raises(KeyboardInterrupt):
        Trainer.start(space, data, config, tmp_path / "run", progress=Interrupt(len(data.train) // 16 + 1)).run()
    state = read_checkpoint(tmp_path / "run" / "state.pt")
    del state["config"]["fair"], state["config"]["sandwich_each"]
    atomic_torch_save(state, tmp_path / "run" / "state.pt")
    stored = json.loads((tmp_path / "run" / "train.json").read_text())
    del stored["config"]["fair"], stored["config"]["sandwich_each"]
    (tmp_path / "run" / "train.json").write_text(json.dumps(stored))
    config, space, data = _setup(tiny_digits, method="full", epochs=2)
    trainer = Trainer.resume(space, data, tmp_path / "run")
    assert trainer.position["epoch"] == 1 and not trainer.config.fair
    assert trainer.config.sandwich_each is False                 # as runs did before the setting existed
    trainer.run()
    assert trainer.finished


def test_refuses_to_overwrite_or_change_a_run(tiny_digits, tmp_path):
    config, space, data = _setup(tiny_digits, epochs=1, method="full")
    Trainer.start(space, data, config, tmp_path / "run").run()
    state = (tmp_path / "run" / "state.pt").read_bytes()
    with pytest.raises(ConfigError, match="already holds a training run"):
        Trainer.start(space, data, config, tmp_path / "run")
    changed = TrainConfig(**{**config.to_dict(), "lr": 0.5})
    with pytest.raises(ConfigError, match=r"lr 0\.1 \(asked: 0\.5\)"):
        Trainer.resume(space, data, tmp_path / "run", changed)
    with pytest.raises(ConfigError, match="holds no training run"):
        Trainer.resume(space, data, tmp_path / "elsewhere")
    assert (tmp_path / "run" / "state.pt").read_bytes() == state


def test_corrupt_or_foreign_state_is_refused_untouched(tiny_digits, tmp_path):
    config, space, data = _setup(tiny_digits, epochs=1, method="full")
    Trainer.start(space, data, config, tmp_path / "run").run()
    (tmp_path / "run" / "state.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        Trainer.resume(space, data, tmp_path / "run")
    assert (tmp_path / "run" / "state.pt").read_bytes() == b"garbage"
    other = search_spaces.get("ofa_mbv3", **{**TINY_OFA, "width_mult": 0.5})
    Trainer.start(other, data, TrainConfig(**{**config.to_dict(), "space_options": other.options}),
                  tmp_path / "wide").run()
    (tmp_path / "run" / "state.pt").write_bytes((tmp_path / "wide" / "state.pt").read_bytes())
    with pytest.raises(CheckpointError, match="another training config"):
        Trainer.resume(space, data, tmp_path / "run")


def test_frozen_teacher_is_the_full_network_at_the_end_of_its_phase(tiny_digits, tmp_path):
    config, space, data = _setup(tiny_digits, phase_epochs={"full": 1, "kernel": 1, "depth_1": 0, "depth_2": 0,
                                                            "expand_1": 0, "expand_2": 0})
    trainer = Trainer.start(space, data, config, tmp_path / "run")
    trainer.phases = trainer.phases[:1]
    trainer.run()
    assert trainer.teacher is None                                   # no shrinking yet: no teacher needed
    teacher = trainer._frozen_teacher()
    x = torch.randn(2, 3, 36, 36)
    space.activate(trainer.largest)
    space.supernet.eval()
    with torch.no_grad():
        assert torch.equal(teacher(x), space.supernet(x))
    assert not any(p.requires_grad for p in teacher.parameters())
