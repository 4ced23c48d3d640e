"""The ``dass`` and ``darts`` recipes: three-phase search, exact resume, the second-order α step,
retraining a derived genotype, and bad input at the command line."""

import json
from pathlib import Path

import pytest
import torch
from torch.func import functional_call

import search_spaces
from evaluators.tasks import space_and_task
from search_spaces.ops.sparse import kept_count, replace_modules, sparse_layers
from search_spaces.training.bilevel import BilevelSearch, config_for, stored_bilevel_config

OPS = ["none", "max_pool_3x3", "skip_connect", "sep_conv_3x3"]
SPACE = {"C": 4, "layers": 3, "resolution": 8, "ops": OPS}
CLI_SPACE = ["-o", "C=4", "-o", "layers=3", "-o", "resolution=8", "-o", f"ops=[{','.join(OPS)}]"]
TINY = ["--data", "digits", "--epochs", "3", "--set", "steps_per_epoch=1", "--set", "batch_size=8"]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_search(out, method="dass", epochs=5, options=None, space=None, **settings):
    config = config_for({"method": method, "space": "dass_darts", "space_options": dict(space or SPACE),
                         "data": "digits", "epochs": epochs, "steps_per_epoch": 1, "batch_size": 8,
                         "options": {"keep_ratio": 0.1} if options is None else options, **settings})
    space, task = space_and_task(config)
    return BilevelSearch.start(space, task, config, out)


class Snapshots:
    """Progress that copies the supernet's parameters at the end of every phase (and can interrupt)."""

    def __init__(self, net, stop_at_epoch_call=None):
        self.net, self.stop, self.calls, self.after = net, stop_at_epoch_call, 0, {}

    def epoch(self, phase, epoch, epochs, steps):
        self.calls += 1
        if self.calls == self.stop:
            raise KeyboardInterrupt

    def step(self, loss, images_per_second):
        pass

    def phase_done(self, record):
        self.after[record["phase"]] = {k: p.detach().clone() for k, p in self.net.named_parameters()}


def changed(before, after, select):
    return {k for k in before if select(k) and not torch.equal(before[k], after[k])}


def is_score(name):
    return name.endswith("scores")


def is_weight(name):
    return not is_score(name) and not name.startswith("alphas")


def test_three_phase_search_trains_the_right_groups(tmp_path):
    search = make_search(tmp_path / "run", epochs=5)
    net = search.net
    start = {k: p.detach().clone() for k, p in net.named_parameters()}
    search.progress = snaps = Snapshots(net)
    history = search.run()
    assert [h["phase"] for h in history] == ["pretrain", "pretrain", "prune", "finetune", "finetune"]
    pre, prune, fine = snaps.after["pretrain"], snaps.after["prune"], snaps.after["finetune"]
    assert changed(start, pre, is_weight) and not changed(start, pre, is_score)        # dense: scores unused
    assert not changed(pre, prune, is_weight) and changed(pre, prune, is_score)         # weights frozen
    assert changed(prune, fine, is_weight) and not changed(prune, fine, is_score)       # scores frozen
    for a, b in ((start, pre), (pre, prune), (prune, fine)):                             # α moves in every phase
        assert changed(a, b, lambda k: k.startswith("alphas"))
    for layer in sparse_layers(net):
        assert layer.keep_ratio == 0.1
        assert int(layer.mask().sum()) == kept_count(layer.weight.numel(), 0.1)
    assert set(history[-1]["alphas"]) == {"normal", "reduce"}
    assert len(history[-1]["genotype"]["normal"]) == 8
    derived = json.loads((tmp_path / "run" / "derived.json").read_text())
    assert derived["config"]["keep"] == [0.1] * 3
    space = search_spaces.get("dass_darts", **derived["options"])
    assert space.load_genotype(tmp_path / "run" / "genotype.json") == derived["config"]


def test_prune_starts_from_scaled_score_init(tmp_path):
    search = make_search(tmp_path / "run", epochs=3, phase_epochs={"finetune": 0}, lr=1e-12, lr_min=0.0)
    with torch.no_grad():
        for layer in sparse_layers(search.net):
            layer.scores.normal_()
    search.run()
    for layer in sparse_layers(search.net):   # scores barely trained: still the scaled init of the weights
        expected = layer.weight * (6 / layer.weight[0].numel()) ** 0.5 / layer.weight.abs().max()
        torch.testing.assert_close(layer.scores, expected)


def test_darts_searches_dense_over_the_same_budget(tmp_path):
    search = make_search(tmp_path / "run", method="darts", epochs=3, options={})
    history = search.run()
    assert [h["phase"] for h in history] == ["search"] * 3
    assert all(layer.keep_ratio == 1.0 for layer in sparse_layers(search.net))
    assert json.loads((tmp_path / "run" / "derived.json").read_text())["config"]["keep"] == [1.0] * 3


def final_state(out):
    return torch.load(Path(out) / "state.pt", weights_only=False)


def test_interrupted_and_resumed_equals_uninterrupted(tmp_path):
    make_search(tmp_path / "straight").run()
    interrupted = tmp_path / "interrupted"
    search = make_search(interrupted)
    for stop in (2, 4):   # inside pretrain (optimiser state), then inside finetune (keep ratio replayed)
        search.progress = Snapshots(search.net, stop_at_epoch_call=stop)
        with pytest.raises(KeyboardInterrupt):
            search.run()
        space, task = space_and_task(stored_bilevel_config(interrupted))
        search = BilevelSearch.resume(space, task, interrupted)
    search.run()
    a, b = final_state(tmp_path / "straight"), final_state(interrupted)
    assert a["history"] == b["history"]
    assert a["supernet"].keys() == b["supernet"].keys()
    for key in a["supernet"]:
        assert torch.equal(a["supernet"][key], b["supernet"][key]), key
    assert (tmp_path / "straight" / "derived.json").read_text() == (interrupted / "derived.json").read_text()


def test_second_order_arch_gradient_matches_autograd(tmp_path):
    """On a smooth network (ReLU -> tanh, no max pooling: the finite difference of DARTS' step moves the
    weights by a norm of 0.01, enough to cross ReLU kinks) the runner's step equals the exact one."""
    space = {"C": 2, "layers": 1, "resolution": 8, "ops": ["none", "skip_connect", "sep_conv_3x3", "avg_pool_3x3"]}
    search = make_search(tmp_path / "run", epochs=3, order="second", space=space, weight_decay=1e-2)
    net = replace_modules(search.net.double(), lambda _, m: torch.nn.Tanh() if isinstance(m, torch.nn.ReLU) else None)
    g = torch.Generator().manual_seed(0)
    xt, xv = torch.randn(6, 3, 8, 8, generator=g, dtype=torch.float64), torch.randn(6, 3, 8, 8, generator=g,
                                                                                  dtype=torch.float64)
    yt, yv = torch.randint(0, 10, (6,), generator=g), torch.randint(0, 10, (6,), generator=g)
    lr, wd = 0.5, search.config.weight_decay
    got = search._unrolled_arch_grads(xv, yv, xt, yt, lr, 0.0)

    arch, weights = search.groups["arch"], search.groups["weights"]
    names = {id(p): k for k, p in net.named_parameters()}
    loss = torch.nn.functional.cross_entropy
    train_grads = torch.autograd.grad(loss(net(xt), yt), weights, create_graph=True, allow_unused=True)
    unrolled = {names[id(w)]: w - lr * (gr + wd * w) for w, gr in zip(weights, train_grads) if gr is not None}
    exact = torch.autograd.grad(loss(functional_call(net, unrolled, (xv,)), yv), arch, allow_unused=True)
    plain = torch.autograd.grad(loss(functional_call(net, {k: v.detach() for k, v in unrolled.items()}, (xv,)), yv),
                                arch, allow_unused=True)
    for a, e, p in zip(got, exact, plain):
        if e is None:     # the normal alphas: a one-cell network has only a reduction cell
            assert a is None or not a.any()
            continue
        hessian_term = (e - p).norm()
        assert hessian_term > 1e-3 * e.norm()          # the test can tell first from second order
        assert (a - e).norm() <= 0.02 * hessian_term


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A tiny dass search run by the command line: (run folder, its exit code)."""
    from nas.cli import main

    out = tmp_path_factory.mktemp("dass") / "search"
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "dass_darts", *CLI_SPACE, *TINY, "--keep-ratio", "0.1", "--out", str(out)])
    return out, exit_info.value.code or 0


def test_cli_search_then_retrain_from_derived_json_and_genotype_file(searched, tmp_path, cli):
    run, code = searched
    assert code == 0 and (run / "derived.json").is_file() and (run / "genotype.json").is_file()
    bigger = ["-o", "C=6", "-o", "layers=4", "-o", "resolution=8", "-o", f"ops=[{','.join(OPS)}]"]
    for name, source in (("from_derived", run / "derived.json"), ("from_genotype", run / "genotype.json")):
        out = tmp_path / name
        code, stdout, err = cli(["train", "dass_darts", *bigger, *TINY, "--genotype", str(source),
                                 "--keep-ratio", "0.05", "--out", str(out)])
        assert code == 0, err
        derived = json.loads((out / "derived.json").read_text())
        stored = json.loads((run / "derived.json").read_text())
        assert derived["config"]["normal_ops"] == stored["config"]["normal_ops"]
        assert derived["config"]["keep"] == [0.05] * 4
        assert 0 <= derived["test_accuracy"] <= 100
        history = json.loads((out / "history.json").read_text())["history"]
        assert [h["phase"] for h in history] == ["pretrain", "prune", "finetune"]
        assert "alphas" not in history[-1]


def test_retrain_trains_only_the_genotype_and_prunes_it(tmp_path):
    space = search_spaces.get("dass_darts", **SPACE)
    config = space.sample(1, seed=3)[0]
    space.save_genotype(config, tmp_path / "g.json")
    search = make_search(tmp_path / "run", epochs=3, options={"keep_ratio": 0.05, "genotype": str(tmp_path / "g.json")})
    start = {k: p.detach().clone() for k, p in search.net.named_parameters()}
    search.run()
    used = {id(p) for p in search.recipe.network.parameters()}
    for name, p in search.net.named_parameters():
        if id(p) not in used:
            assert torch.equal(p, start[name]), name      # ops off the genotype and α are untouched
    layers = list(sparse_layers(search.recipe.network))
    assert layers and all(int(m.mask().sum()) == kept_count(m.weight.numel(), 0.05) for m in layers)


def folder_bytes(folder):
    return {p.name: p.read_bytes() for p in Path(folder).iterdir()}


@pytest.mark.parametrize("case", ["keep_zero", "keep_above_one", "keep_not_listed", "garbage", "unknown_op",
                                  "cell_count", "other_space"])
def test_bad_retrain_input_exits_2_and_stores_nothing(searched, tmp_path, cli, case):
    run, _ = searched
    before = folder_bytes(run)
    genotype = json.loads((run / "genotype.json").read_text())
    path, keep, options = run / "genotype.json", ["--keep-ratio", "0.1"], CLI_SPACE
    if case == "keep_zero":
        keep = ["--keep-ratio", "0"]
    elif case == "keep_above_one":
        keep = ["--keep-ratio", "1.5"]
    elif case == "keep_not_listed":
        keep = ["--keep-ratio", "0.3"]
    elif case == "garbage":
        path = tmp_path / "g.json"
        path.write_text("{not json")
    elif case == "unknown_op":
        genotype["normal"][0][0] = "conv_9x9"
        path = tmp_path / "g.json"
        path.write_text(json.dumps(genotype))
    elif case == "cell_count":        # per-cell keep ratios of 3 cells, 4 asked
        path, keep, options = run / "derived.json", [], [*CLI_SPACE, "-o", "layers=4"]
    elif case == "other_space":
        derived = json.loads((run / "derived.json").read_text())
        path = tmp_path / "d.json"
        path.write_text(json.dumps({**derived, "space": "ofa_mbv3"}))
    out = tmp_path / "retrain"
    code, _, err = cli(["train", "dass_darts", *options, *TINY, "--genotype", str(path), *keep, "--out", str(out)])
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()
    assert folder_bytes(run) == before


def test_resume_refuses_another_size_or_checkpoint(searched, tmp_path, cli):
    run, _ = searched
    before = folder_bytes(run)
    code, _, err = cli(["train", "dass_darts", "-o", "C=6", "--resume", "--out", str(run)])
    assert code == 2 and "other settings" in err
    assert folder_bytes(run) == before
    other = tmp_path / "other"          # a state of another size where this run's state should be
    make_search(other, epochs=3, space={**SPACE, "C": 6}).run()
    copy = tmp_path / "copy"
    copy.mkdir()
    for name, data in before.items():
        (copy / name).write_bytes(data)
    (copy / "state.pt").write_bytes((other / "state.pt").read_bytes())
    stored = folder_bytes(copy)
    code, _, err = cli(["train", "dass_darts", "--resume", "--out", str(copy)])
    assert code == 2, err
    assert folder_bytes(copy) == stored
