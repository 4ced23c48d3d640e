"""The ``nas`` command line: listings, errors as one line with exit code 2, checkpoint import."""

import json
import subprocess
import sys

import pytest
import torch

import search_spaces
from search_spaces.checkpoint import load_supernet


def test_help_lists_the_command_groups(cli):
    code, out, _ = cli(["--help"])
    assert code == 0 and "spaces" in out and "supernet" in out


def test_spaces_list_and_show(cli):
    code, out, _ = cli(["spaces", "list"])
    assert code == 0 and "ofa_mbv3" in out
    code, out, _ = cli(["spaces", "show", "ofa_mbv3", "-o", "width_mult=0.5"])
    assert code == 0 and "46 genes" in out and "'width_mult': 0.5" in out


def test_spaces_profile_prints_measured_latency(cli):
    code, out, _ = cli(["spaces", "profile", "ofa_mbv3", "--samples", "2", "--runs", "3",
                        "-o", "width_mult=0.25", "-o", "resolutions=[32]", "-o", "n_classes=10"])
    assert code == 0 and "latency ms" in out and out.count("r=32") == 2


@pytest.mark.parametrize("argv, message", [
    (["spaces", "show", "nope"], "unknown search space 'nope'"),
    (["spaces", "show", "ofa_mbv3", "-o", "width_mult"], "is not KEY=VALUE"),
    (["spaces", "show", "ofa_mbv3", "-o", "colour=3"], "bad options"),
    (["spaces", "show", "ofa_mbv3", "-o", "ks_list=[2,4]"], "kernel sizes must be odd"),
    (["spaces", "profile", "ofa_mbv3", "--samples", "0"], "must be positive"),
])
def test_user_errors_exit_2_with_one_line(argv, message, cli):
    code, _, err = cli(argv)
    assert code == 2 and message in err and err.count("\n") == 1


def test_console_script_prints_no_traceback():
    proc = subprocess.run([sys.executable, "-m", "nas", "spaces", "show", "nope"], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and proc.stderr.startswith("error:")


def _reference_style_checkpoint(path, space):
    state = {k.replace(".conv.", ".mobile_inverted_conv.", 1) if k.startswith("blocks.") else k: v
             for k, v in space.supernet.state_dict().items()}
    torch.save({"state_dict": state}, path)


def test_import_ofa_checkpoint(tmp_path, cli):
    space = search_spaces.get("ofa_mbv3", n_classes=10, width_mult=0.25)
    _reference_style_checkpoint(tmp_path / "ofa.pth", space)
    out = tmp_path / "supernet.pt"
    code, stdout, _ = cli(["supernet", "import", "ofa", str(tmp_path / "ofa.pth"), "--out", str(out)])
    assert code == 0 and out.exists()
    loaded = load_supernet(out)
    assert loaded.options["width_mult"] == 0.25 and loaded.options["n_classes"] == 10
    code, stdout, _ = cli(["supernet", "show", str(out)])
    assert code == 0 and "ofa_mbv3" in stdout


def test_import_refuses_to_overwrite_and_reports_mismatches(tmp_path, cli):
    space = search_spaces.get("ofa_mbv3", n_classes=10, width_mult=0.25)
    _reference_style_checkpoint(tmp_path / "ofa.pth", space)
    out = tmp_path / "supernet.pt"
    out.write_bytes(b"precious")
    code, _, err = cli(["supernet", "import", "ofa", str(tmp_path / "ofa.pth"), "--out", str(out)])
    assert code == 2 and "exists" in err and out.read_bytes() == b"precious"
    # a checkpoint with fewer blocks than the options say: named keys, nothing written
    target = tmp_path / "new.pt"
    code, _, err = cli(["supernet", "import", "ofa", str(tmp_path / "ofa.pth"), "--out", str(target),
                        "-o", "depth_list=[2,3,4,5]"])
    assert code == 2 and "missing keys" in err and "blocks." in err and not target.exists()
    (tmp_path / "junk.pth").write_text("junk")
    code, _, err = cli(["supernet", "import", "ofa", str(tmp_path / "junk.pth"), "--out", str(target)])
    assert code == 2 and "cannot read checkpoint" in err and not target.exists()


def test_devices_list_and_show(cli, tmp_path):
    code, out, _ = cli(["devices", "list"])
    assert code == 0 and all(name in out for name in ("cpu-ort", "note10", "pixel3", "raspi4"))
    code, out, _ = cli(["devices", "list", "--devices", "devices.yaml"])
    assert code == 0 and "cpu-2t" in out
    code, out, _ = cli(["devices", "show", "note10"])
    assert code == 0 and '"lut_format": "ofa"' in out
    code, _, err = cli(["devices", "show", "nope"])
    assert code == 2 and "unknown device 'nope'; known devices:" in err and "cpu" in err
    bad = tmp_path / "bad.yaml"
    for text, message in (("devices: [", "not valid YAML"), ("devices: []", "non-empty list"),
                          ("devices:\n  - name: x\n    kind: magic\n", "kind must be one of"),
                          ("devices:\n  - name: x\n    kind: measured\n", "needs backend"),
                          ("devices:\n  - name: x\n    kind: measured\n    backend: torch\n    colour: red\n",
                           "unknown keys ['colour']")):
        bad.write_text(text)
        code, _, err = cli(["devices", "list", "--devices", str(bad)])
        assert code == 2 and message in err, (text, err)


def test_predictors_build_and_report(tmp_path, cli):
    out = tmp_path / "raspi4.npz"
    code, stdout, _ = cli(["predictors", "build", "--device", "raspi4", "--kind", "ridge", "--samples", "60",
                           "--out", str(out)])
    assert code == 0 and "held-out quality: MAPE" in stdout
    assert json.loads((tmp_path / "raspi4.report.json").read_text())["report"]["n"] == 12
    code, stdout, _ = cli(["predictors", "report", str(out)])
    assert code == 0 and "ridge predictor of latency_ms on device raspi4" in stdout and "Kendall tau" in stdout
    before = out.read_bytes()
    code, _, err = cli(["predictors", "build", "--device", "raspi4", "--kind", "ridge", "--out", str(out)])
    assert code == 2 and "exists" in err and out.read_bytes() == before


@pytest.mark.parametrize("argv, message", [
    (["--device", "raspi4", "--kind", "lut"], "has no per-layer latencies"),
    (["--device", "note10", "--kind", "gbdt"], "use --kind lut"),
    (["--device", "pixel3", "--kind", "gbdt", "--samples", "5"], "needs 11"),
    (["--device", "pixel3", "--kind", "magic"], "unknown predictor kind 'magic'"),
    (["--device", "pixel3", "--space", "ofa_mbv3"], "describes the 'nb201' space"),
    (["--device", "cpu"], "pass --space"),
])
def test_predictors_build_bad_input(argv, message, tmp_path, cli):
    code, _, err = cli(["predictors", "build", *argv, "--out", str(tmp_path / "p.npz")])
    assert code == 2 and message in err and not (tmp_path / "p.npz").exists()


def test_predictors_report_of_a_foreign_file(tmp_path, cli):
    (tmp_path / "x.npz").write_bytes(b"junk")
    code, _, err = cli(["predictors", "report", str(tmp_path / "x.npz")])
    assert code == 2 and "is not a readable predictor file" in err
