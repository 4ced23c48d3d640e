"""The whole story through the CLI on tiny real data: train, search by measured accuracy, export."""

import hashlib
import json

import pytest


SETTINGS = ["--set", "batch_size=16", "--set", "lr=0.1", "--set", "calib_images=40"]


def _options(tiny_ofa):
    return [arg for k, v in tiny_ofa.items() if k != "n_classes" for arg in ("-o", f"{k}={v}")]


@pytest.fixture
def trained(tiny_digits, tiny_ofa, tmp_path, cli):
    out = tmp_path / "train"
    code, stdout, err = cli(["train", "ofa_mbv3", "--data", tiny_digits, "--out", str(out), "--epochs", "6",
                             *_options(tiny_ofa), *SETTINGS])
    assert code == 0, err
    assert "phase expand_2 done" in stdout and (out / "supernet.pt").exists()
    return out


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_train_resume_is_a_no_op_when_finished_and_refuses_changes(trained, cli):
    before = _sha(trained / "state.pt")
    code, out, err = cli(["train", "ofa_mbv3", "--out", str(trained), "--resume"])
    assert code == 0 and "supernet:" in out and _sha(trained / "state.pt") == before
    code, _, err = cli(["train", "ofa_mbv3", "--out", str(trained), "--resume", "--epochs", "9"])
    assert code == 2 and "epochs 6 (asked: 9)" in err and err.count("\n") == 1
    code, _, err = cli(["train", "ofa_mbv3", "--out", str(trained), "--data", "digits"])
    assert code == 2 and "already holds a training run" in err
    assert _sha(trained / "state.pt") == before


@pytest.mark.parametrize("args, message", [
    (["--data", "folder:/nonexistent/images"], "does not exist"),
    (["--data", "digits", "--resolutions", "16,24"], "resolutions must be >= 32"),
    (["--data", "digits", "--method", "bignas"], "unknown training method"),
    (["--data", "digits", "--set", "lr=-1"], "lr must be > 0"),
    (["--data", "digits", "-o", "n_classes=5"], "which has n_classes=10"),
])
def test_train_user_errors(args, message, tmp_path, cli):
    code, _, err = cli(["train", "ofa_mbv3", "--out", str(tmp_path / "t"), *args])
    assert code == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "t" / "state.pt").exists()


def test_search_by_measured_accuracy_then_export(trained, tmp_path, cli):
    run_dir = tmp_path / "search"
    code, out, err = cli(["search", "--space", "ofa_mbv3", "--supernet", str(trained / "supernet.pt"),
                          "--objectives", "accuracy,macs", "--evaluations", "6", "--batch", "3",
                          "--searcher", "random", "--run", str(run_dir)])
    assert code == 0, err
    config = json.loads((run_dir / "config.json").read_text())
    assert config["data"].startswith("npz:") and config["space_options"]["n_classes"] == 10
    events = [json.loads(line) for line in (run_dir / "evaluations.jsonl").read_text().splitlines()]
    accuracies = [e["values"]["accuracy"] for e in events if e["type"] == "result"]
    assert len(accuracies) == 6 and all(0 <= a <= 100 for a in accuracies)

    code, out, err = cli(["export", str(run_dir), "--formats", "onnx,torchscript,state_dict"])
    assert code == 0, err
    folder = next((run_dir / "subnets").iterdir())
    card = json.loads((folder / "card.json").read_text())
    assert {"onnx", "torchscript", "state_dict"} <= set(card["files"])
    assert 0 <= card["test_accuracy"] <= 100 and card["latency"]["measured_ms"] > 0
    assert card["supernet_sha256"] == config["supernet_sha256"]
    assert "test accuracy" in out and "measured" in out
    code, _, err = cli(["export", str(run_dir)])            # the same folder again: refused
    assert code == 2 and "not empty" in err


def test_search_accuracy_needs_a_matching_unchanged_supernet(trained, tmp_path, cli):
    code, _, err = cli(["search", "--space", "ofa_mbv3", "--objectives", "accuracy,macs", "--evaluations", "2",
                        "--run", str(tmp_path / "a")])
    assert code == 2 and "--supernet FILE" in err and not (tmp_path / "a").exists()
    code, _, err = cli(["search", "--space", "nb201", "--supernet", str(trained / "supernet.pt"), "--objectives",
                        "accuracy", "--evaluations", "2", "--run", str(tmp_path / "b")])
    assert code == 2 and "not 'nb201'" in err
    code, _, err = cli(["search", "--space", "ofa_mbv3", "--supernet", str(trained / "supernet.pt"), "-o",
                        "width_mult=0.5", "--objectives", "accuracy", "--evaluations", "2",
                        "--run", str(tmp_path / "c")])
    assert code == 2 and "differ from those of the supernet" in err
    code, _, err = cli(["search", "--space", "ofa_mbv3", "--supernet", str(trained / "supernet.pt"), "--objectives",
                        "accuracy", "--evaluations", "2", "--batch", "1", "--run", str(tmp_path / "d")])
    assert code == 0, err
    with open(trained / "supernet.pt", "ab") as fh:
        fh.write(b"\0")                                              # the checkpoint changes under the run
    code, _, err = cli(["resume", str(tmp_path / "d"), "--evaluations", "3"])
    assert code == 2 and "changed since this search started" in err


def test_sorted_training_and_search_free_selection(tiny_digits, tmp_path, cli):
    out = tmp_path / "sorted"
    code, stdout, err = cli(["train", "sortednet_cnn", "--data", tiny_digits, "--method", "sorted", "--epochs", "2",
                             "--out", str(out), "-o", "resolution=8", "-o", "widths=[8,16]", "-o",
                             "depth_grid=[1,2]", "-o", "width_grid=[0.5,1.0]", *SETTINGS])
    assert code == 0, err
    code, stdout, err = cli(["select", "--space", "sortednet_cnn", "--supernet", str(out / "supernet.pt"),
                             "--constraint", "macs<=100K"])
    assert code == 0, err
    assert "in the nested order" in stdout and "accuracy" in stdout
    code, _, err = cli(["select", "--space", "sortednet_cnn", "--supernet", str(out / "supernet.pt"),
                        "--constraint", "macs<=1K"])
    assert code == 2 and "the smallest sub-model has" in err
    code, _, err = cli(["select", "--space", "ofa_mbv3", "--constraint", "macs<=1M"])
    assert code == 2 and "no nested order" in err
