"""Phases, learning-rate and ε schedules, choice sampling, and the methods that build phases."""

import math

import numpy as np
import pytest

import search_spaces
from nas.errors import ConfigError
from search_spaces.training import ChoiceSampler, EpsilonSchedule, Phase, TrainConfig, build_phases


def test_epsilon_rises_linearly_over_the_window():
    eps = EpsilonSchedule(start=0.5, eps0=0.1, window=0.2)
    assert eps(0.3) == pytest.approx(0.1) and eps(0.5) == pytest.approx(0.1)
    assert eps(0.6) == pytest.approx(0.55) and eps(0.7) == pytest.approx(1.0) and eps(0.95) == 1.0


def test_learning_rate_follows_its_span_of_the_cosine_and_warms_up():
    phase = Phase("p", epochs=10, lr=0.2, lr_span=(0.5, 1.0), warmup_epochs=2)
    assert phase.lr_at(0.0, 5.0) == pytest.approx(0.1)                # cos at the middle of the curve
    assert phase.lr_at(1.0, 10.0) == pytest.approx(0.0, abs=1e-12)
    assert phase.lr_at(0.0, 1.0) == pytest.approx(0.05)               # half-way through the warm-up
    assert Phase("q", 1, 0.3).lr_at(0.5, 0.5) == pytest.approx(0.3 * 0.5 * (1 + math.cos(math.pi / 2)))


def test_choice_sampler_keeps_to_the_allowed_values(small_space):
    space = small_space("ofa_mbv3", ks_list=[3, 5, 7], resolutions=[32, 36, 40])
    sampler = ChoiceSampler(space, {"ks": [5, 7], "d": [4]})
    configs = sampler.random(50, np.random.default_rng(0))
    assert all(set(c["ks"]) <= {5, 7} and c["d"] == [4] * 5 for c in configs)
    assert {k for c in configs for k in c["ks"]} == {5, 7} and {c["r"] for c in configs} == {32, 36, 40}
    largest, smallest = sampler.largest(), sampler.smallest()
    assert largest["ks"] == [7] * 20 and largest["e"] == [6] * 20 and largest["r"] == 40
    assert smallest["ks"] == [5] * 20 and smallest["e"] == [3] * 20 and smallest["r"] == 32
    tags = [tag for _, tag in sampler.step_configs(Phase("s", 1, 0.1, subnets=2, include_max=True,
                                                          include_min=True), np.random.default_rng(0))]
    assert tags == ["max", "random", "random", "min"]
    with pytest.raises(ConfigError, match="unknown config keys"):
        ChoiceSampler(space, {"width": [1]})
    with pytest.raises(ConfigError, match="not one of the choices"):
        ChoiceSampler(space, {"ks": [9]})


def test_progressive_shrinking_phases(small_space):
    space = small_space("ofa_mbv3")
    phases, kd = build_phases(space, TrainConfig(epochs=40, lr=0.1))
    assert [p.name for p in phases] == ["full", "kernel", "depth_1", "depth_2", "expand_1", "expand_2"]
    assert sum(p.epochs for p in phases) == 40 and kd == "frozen"
    by_name = {p.name: p for p in phases}
    assert by_name["full"].include_max and by_name["full"].subnets == 0 and by_name["full"].lr == 0.1
    assert by_name["kernel"].choices == {"e": [6], "d": [4]}
    assert by_name["depth_1"].choices == {"e": [6], "d": [3, 4]} and by_name["depth_1"].subnets == 2
    assert by_name["expand_1"].choices == {"e": [4, 6]} and by_name["expand_2"].subnets == 4
    assert by_name["expand_1"].on_start is not None and by_name["kernel"].on_start is None


def test_phase_overrides_and_their_errors(small_space):
    space = small_space("ofa_mbv3")
    phases, _ = build_phases(space, TrainConfig(epochs=20, phase_epochs={"depth_1": 0, "full": 7},
                                                phase_lr={"kernel": 0.5}, phase_subnets={"expand_2": 1}))
    by_name = {p.name: p for p in phases}
    assert "depth_1" not in by_name and by_name["full"].epochs == 7
    assert by_name["kernel"].lr == 0.5 and by_name["expand_2"].subnets == 1
    with pytest.raises(ConfigError, match="does not have"):
        build_phases(space, TrainConfig(phase_epochs={"warmup": 3}))
    with pytest.raises(ConfigError, match="unknown training method"):
        build_phases(space, TrainConfig(method="bignas"))
    with pytest.raises(ConfigError, match="supports kd"):
        build_phases(space, TrainConfig(method="full", kd="frozen"))


def test_deps_trains_the_full_network_first_then_shrinks_on_one_curve(small_space):
    space = small_space("ofa_mbv3")
    phases, kd = build_phases(space, TrainConfig(method="deps", epochs=10, rho=0.4, eps0=0.2, eps_window=0.3))
    full, shrink = phases
    assert (full.epochs, shrink.epochs) == (4, 6) and kd == "inplace"
    assert full.lr_span == (0.0, 0.4) and shrink.lr_span == (0.4, 1.0)
    assert shrink.include_max and shrink.include_min and shrink.distill_only
    assert shrink.epsilon(0.4) == pytest.approx(0.2) and shrink.epsilon(0.7) == pytest.approx(1.0)


def test_progressive_shrinking_needs_an_ofa_style_space(small_space):
    with pytest.raises(ConfigError, match="OFA-style"):
        build_phases(small_space("nb201"), TrainConfig())


@pytest.mark.parametrize("field, value", [("epochs", 0), ("lr", 0), ("kd", "teacher"), ("rho", 1.0),
                                          ("batch_size", 0), ("eps0", 2), ("fair", "yes"),
                                          ("sandwich_each", 1)])
def test_bad_training_settings(field, value):
    with pytest.raises(ConfigError, match=field):
        TrainConfig(**{field: value}).validate()
    with pytest.raises(ConfigError, match="unknown keys"):
        TrainConfig.from_dict({"learning_rate": 1})


def test_every_registered_space_with_choices_can_be_sampled(small_space):
    for name in search_spaces.names():
        space = small_space(name)
        sampler = ChoiceSampler(space, {})
        space.validate(sampler.largest())
        space.validate(sampler.smallest())


def test_sorted_training_samples_the_grid_with_the_full_model(small_space):
    phases, kd = build_phases(small_space("sortednet_cnn"), TrainConfig(method="sorted", epochs=5, subnets=3))
    (phase,) = phases
    assert phase.epochs == 5 and phase.subnets == 3 and phase.include_max and kd == "none"
    phases, kd = build_phases(small_space("sortednet_cnn"), TrainConfig(method="sorted", kd="inplace",
                                                                         sorted_include_max=False))
    assert not phases[0].include_max and kd == "inplace"


def test_the_full_phase_trains_each_spaces_own_largest_subnet(small_space):
    """``full``/``deps``/``ps`` pin every gene to its last choice, also where the genes of one config key
    choose from different lists (each node of a ``dass_darts`` cell from its own input pairs)."""
    for name in search_spaces.names():
        space = small_space(name)
        if space.training_method is None:
            continue
        (phase,), _ = build_phases(space, TrainConfig(method="full", epochs=1))
        pinned = ChoiceSampler(space, phase.choices)
        largest = ChoiceSampler(space, {}).largest()
        assert pinned.largest() == pinned.smallest() == largest, name
        assert pinned.random(3, np.random.default_rng(0)) == [largest] * 3, name


def test_choices_can_name_single_genes(small_space):
    space = small_space("dass_darts")
    sampler = ChoiceSampler(space, {"normal_inputs.2": ["1,3"], "normal_inputs": ["0,1"]})
    for config in sampler.random(5, np.random.default_rng(0)):
        assert config["normal_inputs"] == ["0,1", "0,1", "1,3", "0,1"]
    with pytest.raises(ConfigError, match="unknown config keys or genes"):
        ChoiceSampler(space, {"normal_inputs.9": ["0,1"]})


def test_keep_sandwich_shares_the_random_architecture_and_each_subnet_trains_once(small_space):
    space = small_space("dass_darts", keep_ratios=[1.0, 0.05, 0.3])
    keys = ("keep", "keep_stem", "keep_classifier")
    phase = Phase("p", 1, 0.1, subnets=2, include_max=True, include_min=True, sandwich_keys=keys, tied_keys=keys)
    rng = np.random.default_rng(0)
    ratios = set()
    for _ in range(12):
        step = ChoiceSampler(space, {}).step_configs(phase, rng)
        (dense, tag), configs = step[0], [c for c, _ in step]
        assert tag == "max" and dense["keep"] == [1.0] * space.layers and dense["keep_classifier"] == 1.0
        sparsest = {**dense, "keep": [0.05] * space.layers, "keep_stem": 0.05, "keep_classifier": 0.05}
        assert sparsest in configs                       # the sandwich keeps the first random architecture
        assert len({str(c) for c in configs}) == len(configs)  # a random subnet equal to an end trains once
        for config in configs:                           # one keep ratio for the whole random subnet
            assert set(config["keep"]) == {config["keep_stem"]} == {config["keep_classifier"]}
            ratios.add(config["keep_stem"])
        assert all(c["keep_stem"] == 0.3 for c, tag in step if tag == "random")  # the ends train anyway
    assert ratios == {1.0, 0.05, 0.3}
    two = ChoiceSampler(small_space("dass_darts", keep_ratios=[1.0, 0.05]), {})
    assert {c["keep_stem"] for c, tag in two.step_configs(phase, rng) if tag == "random"} <= {1.0, 0.05}
    with pytest.raises(ConfigError, match="no value in common"):
        ChoiceSampler(space, {"keep_stem": [1.0], "keep_classifier": [0.05]}).step_configs(phase, rng)
    single = small_space("dass_darts", keep_ratios=[0.3])
    fixed = {"normal_ops": ["skip_connect"], "reduce_ops": ["skip_connect"], "normal_inputs": ["0,1"],
             "reduce_inputs": ["0,1"]}
    assert len(ChoiceSampler(single, fixed).step_configs(phase, rng)) == 1


def columns(space, configs, key):
    """``configs``' values of config key ``key``, one row per gene (a list key) across the configs."""
    values = [c[key] if isinstance(c[key], list) else [c[key]] for c in configs]
    return [list(row) for row in zip(*values)]


OPS = ("normal_ops", "reduce_ops")


def test_fair_genes_take_every_allowed_value_once_per_step_and_evenly_otherwise(small_space):
    space = small_space("dass_darts")
    ops = space.discrete_ops
    sampler = ChoiceSampler(space, {"normal_ops.3": ops[:2]})
    rng = np.random.default_rng(0)
    for m in (len(ops), 3, 2 * len(ops) + 2):
        phase = Phase("p", 1, 0.1, subnets=m, fair_keys=OPS)
        configs = [c for c, _ in sampler.step_configs(phase, rng)]
        assert len(configs) == m
        for key in OPS:
            for g, row in enumerate(columns(space, configs, key)):
                allowed = ops[:2] if (key, g) == ("normal_ops", 3) else ops
                counts = [row.count(op) for op in allowed]
                assert set(row) <= set(allowed) and max(counts) - min(counts) <= 1 and sum(counts) == m
                if m == len(ops) and len(allowed) == m:
                    assert sorted(row) == sorted(ops)              # every op exactly once in the step
    many = [c for c, _ in sampler.step_configs(Phase("p", 1, 0.1, subnets=100, fair_keys=OPS), rng)]
    inputs = [c["normal_inputs"][3] for c in many]
    assert max(map(inputs.count, set(inputs))) - min(map(inputs.count, set(inputs))) > 1  # others drawn freely
    with pytest.raises(ConfigError, match="fair_keys name unknown"):
        sampler.step_configs(Phase("p", 1, 0.1, subnets=2, fair_keys=("normal_op",)), rng)


def test_fair_draws_are_random_but_reproducible(small_space):
    space = small_space("dass_darts")
    phase = Phase("p", 1, 0.1, subnets=len(space.discrete_ops), fair_keys=OPS + ("normal_inputs",))

    def step(seed):
        return ChoiceSampler(space, {}).step_configs(phase, np.random.default_rng(seed))

    assert step(3) == step(3) and step(3) != step(4)
    first_ops = {tuple(row) for c, _ in step(3) for row in [c["normal_ops"]]}
    assert len(first_ops) == phase.subnets                       # permutations differ from gene to gene
    node_3 = [c["normal_inputs"][3] for c, _ in step(3)]
    assert len(set(node_3)) == len(node_3)                       # 7 subnets, 10 input pairs: no pair twice


def test_fairness_composes_with_tied_keys_and_the_sandwich(small_space):
    space = small_space("dass_darts", keep_ratios=[1.0, 0.3, 0.1, 0.05])
    keys = ("keep", "keep_stem", "keep_classifier")
    every = tuple(entry.key for entry in space.config_layout)
    rng = np.random.default_rng(0)
    sampler = ChoiceSampler(space, {})
    tied = Phase("p", 1, 0.1, subnets=8, tied_keys=keys, fair_keys=every)
    configs = [c for c, _ in sampler.step_configs(tied, rng)]
    ratios = [c["keep_stem"] for c in configs]
    assert all(set(c["keep"]) == {c["keep_stem"]} == {c["keep_classifier"]} for c in configs)
    assert sorted(ratios) == [0.05, 0.05, 0.1, 0.1, 0.3, 0.3, 1.0, 1.0]   # the tied ratio drawn fairly
    for key in OPS:
        assert all(sorted(set(row)) == sorted(space.discrete_ops) for row in columns(space, configs, key))
    sandwich = Phase("p", 1, 0.1, subnets=len(space.discrete_ops), include_max=True, include_min=True,
                     sandwich_keys=keys, tied_keys=keys, fair_keys=every)
    step = sampler.step_configs(sandwich, rng)
    randoms = [c for c, tag in step if tag == "random"]
    assert [tag for _, tag in step][::len(step) - 1] == ["max", "min"] and len(randoms) == sandwich.subnets
    assert sorted(c["keep_stem"] for c in randoms) in ([0.1] * 3 + [0.3] * 4, [0.1] * 4 + [0.3] * 3)  # inner ratios
    for key in OPS:
        assert all(sorted(row) == sorted(space.discrete_ops) for row in columns(space, randoms, key))
    assert {k: v for k, v in step[0][0].items() if k not in keys} == {k: v for k, v in randoms[0].items()
                                                                       if k not in keys}
    with pytest.raises(ConfigError, match="cover only some"):
        sampler.step_configs(Phase("p", 1, 0.1, subnets=2, tied_keys=keys, fair_keys=("keep",)), rng)


def test_fair_setting_makes_every_phase_fair_and_needs_several_subnets(small_space):
    space = small_space("dass_darts")
    every = tuple(entry.key for entry in space.config_layout)
    (phase,), _ = build_phases(space, TrainConfig(method="elastic_sparsity", fair=True, subnets=7))
    assert phase.fair_keys == every and phase.subnets == 7
    (phase,), _ = build_phases(space, TrainConfig(method="elastic_sparsity", subnets=7))
    assert phase.fair_keys == ()
    phases, _ = build_phases(small_space("ofa_mbv3"), TrainConfig(epochs=12, fair=True))
    assert all(p.fair_keys == ("ks", "e", "d", "r") for p in phases)
    with pytest.raises(ConfigError, match="at most 1 per step"):
        build_phases(space, TrainConfig(method="elastic_sparsity", fair=True, subnets=1))


def test_sandwich_each_puts_every_random_architecture_between_its_own_ends(small_space):
    space = small_space("dass_darts", keep_ratios=[1.0, 0.3, 0.1])
    keys = ("keep", "keep_stem", "keep_classifier")
    rng = np.random.default_rng(0)
    each = Phase("p", 1, 0.1, subnets=3, include_max=True, include_min=True, sandwich_keys=keys, tied_keys=keys,
                 sandwich_each=True)
    step = ChoiceSampler(space, {}).step_configs(each, rng)
    assert [tag for _, tag in step] == ["max", "random", "min"] * 3
    for i in range(3):
        (dense, _), (middle, _), (sparsest, _) = step[3 * i:3 * i + 3]
        assert {dense["keep_stem"], middle["keep_stem"], sparsest["keep_stem"]} == {1.0, 0.3, 0.1}
        assert all({k: v for k, v in c.items() if k not in keys} == {k: v for k, v in middle.items() if k not in keys}
                   for c in (dense, sparsest))                   # one architecture at three ratios
    assert len({str({k: v for k, v in c.items() if k not in keys}) for c, _ in step}) == 3
    first = ChoiceSampler(space, {}).step_configs(Phase("p", 1, 0.1, subnets=3, include_max=True, include_min=True,
                                                        sandwich_keys=keys, tied_keys=keys), rng)
    assert [tag for _, tag in first] == ["max", "random", "random", "random", "min"]
    (phase,), _ = build_phases(space, TrainConfig(method="elastic_sparsity"))
    assert phase.sandwich_each                                   # the method's choice
    (phase,), _ = build_phases(space, TrainConfig(method="elastic_sparsity", sandwich_each=False))
    assert not phase.sandwich_each
    with pytest.raises(ConfigError, match="no phase of method 'ps' sandwiches some keys only"):
        build_phases(small_space("ofa_mbv3"), TrainConfig(epochs=12, sandwich_each=True))
