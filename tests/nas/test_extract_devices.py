"""Device lists: one search for every device (``nas search --devices``), one subnet per (device, budget)
(``nas extract``), on the nb201 table (card and architecture only) and a tiny trained OFA-MBv3."""

import hashlib
import json
import warnings
from pathlib import Path

import pytest

from evaluators.devices import load_devices, read_device_list
from nas import searchers
from nas.cli import main
from nas.errors import ConfigError, NasError
from nas.runs import RunStore

ROOT = Path(__file__).resolve().parents[2]
NB201_LIST = """devices:
  - name: pixel3
    budgets_ms: [0.001, 3, 10]
  - name: raspi4
    budgets_ms: [6]
"""
OFA_LIST = """devices:
  - name: cpu
    budgets_ms: [1000]
  - name: ort
    kind: measured
    backend: onnxruntime
    budgets_ms: [0.0001, 1000]
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def folder_hash(path: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*")):
        digest.update(str(file.relative_to(path)).encode())
        if file.is_file():
            digest.update(file.read_bytes())
    return digest.hexdigest()


def results(run_dir: Path) -> list[dict]:
    events = [json.loads(line) for line in (run_dir / "evaluations.jsonl").read_text().splitlines()]
    return [e for e in events if e["type"] == "result" and e["status"] == "ok"]


# ---------------------------------------------------------------------- the device list format
def test_device_list_targets_builtins_and_devices_it_defines(tmp_path):
    path = write(tmp_path / "d.yaml", OFA_LIST + "  - name: defined-only\n    kind: measured\n    backend: torch\n"
                 "  - name: cpu-2t\n    kind: measured\n    backend: torch\n    threads: 2\n    budgets_ms: 4\n")
    targets = read_device_list(path)
    assert [(t.name, t.budgets_ms) for t in targets] == [("cpu", (1000.0,)), ("ort", (0.0001, 1000.0)),
                                                         ("cpu-2t", (4.0,))]
    assert targets[1].device.backend == "onnxruntime" and targets[2].device.threads == 2
    assert {"cpu-2t", "ort", "defined-only", "note10"} <= set(load_devices(path))   # still a registry file


@pytest.mark.parametrize("text, message", [
    ("devices: [", "not valid YAML"),
    ("devices:\n  - name: cpu\n", "needs a 'kind' (to define it) or 'budgets_ms'"),
    ("devices:\n  - name: cpu\n    budgets_ms: [5, 0]\n", "must be positive numbers"),
    ("devices:\n  - name: cpu\n    budgets_ms: [-3]\n", "must be positive numbers"),
    ("devices:\n  - name: cpu\n    budgets_ms: ['5ms']\n", "must be positive numbers"),
    ("devices:\n  - name: cpu\n    budgets_ms: []\n", "must be positive numbers"),
    ("devices:\n  - name: cpu\n    budgets_ms: [5, 5]\n", "lists a budget twice"),
    ("devices:\n  - name: cpu\n    budgets_ms: [5]\n  - name: cpu\n    budgets_ms: [6]\n", "listed with budgets twice"),
    ("devices:\n  - name: phone9\n    budgets_ms: [5]\n", "unknown device 'phone9'"),
])
def test_device_list_errors(text, message, tmp_path):
    with pytest.raises(NasError, match=None) as info:
        read_device_list(write(tmp_path / "d.yaml", text))
    assert message in str(info.value)


def test_many_objective_default_is_registered_and_named_searchers_are_kept():
    assert searchers.choose(None, 2) == "nsga2"
    assert searchers.choose(None, 4) == "nsga3"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert searchers.choose("nsga2", 4) == "nsga2"
        assert searchers.choose("agemoea", 4) == "agemoea"
    assert len(caught) == 1 and "not built for 4 objectives" in str(caught[0].message)
    assert "nsga3" in str(caught[0].message) and "agemoea" in str(caught[0].message)


# ---------------------------------------------------------------------- nb201: card and architecture only
@pytest.fixture(scope="module")
def nb201_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("nb201")
    devices = write(folder / "devices.yaml", NB201_LIST)
    with pytest.raises(SystemExit) as exit_info:
        main(["search", "--space", "nb201", "--objectives", "accuracy", "--devices", str(devices),
              "--evaluations", "24", "--batch", "12", "--run", str(folder / "run")])
    assert exit_info.value.code in (0, None)
    return folder / "run", devices


def test_search_adds_one_latency_objective_per_listed_device(nb201_run):
    run_dir, devices = nb201_run
    config = json.loads((run_dir / "config.json").read_text())
    assert config["objectives"] == ["accuracy", "latency@pixel3", "latency@raspi4"]
    assert config["searcher"] == "nsga3"                       # three objectives: the many-objective default
    assert config["device_budgets"] == {"pixel3": [0.001, 3.0, 10.0], "raspi4": [6.0]}
    assert all({"latency@pixel3", "latency@raspi4"} <= set(e["values"]) for e in results(run_dir))


def test_a_device_file_without_budgets_only_defines_devices(tmp_path, cli):
    code, _, err = cli(["search", "--space", "nb201", "--objectives", "accuracy,latency@pixel3", "--devices",
                        str(ROOT / "devices.yaml"), "--evaluations", "4", "--batch", "4", "--run", str(tmp_path / "r")])
    assert code == 0, err
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["objectives"] == ["accuracy", "latency@pixel3"] and config["device_budgets"] == {}
    assert config["searcher"] == "nsga2" and config["devices_file"].endswith("devices.yaml")
    code, _, err = cli(["extract", str(tmp_path / "r")])
    assert code == 2 and "was not searched for a device list; pass --devices FILE" in err


def test_nb201_extract_writes_card_and_architecture_per_budget(nb201_run, tmp_path, cli):
    run_dir, devices = nb201_run
    code, out, err = cli(["extract", str(run_dir)])       # budgets stored in the run
    assert code == 0, err
    assert "warning: 1 of 4 budgets got no subnet (pixel3 0.001 ms)" in err
    assert "smallest latency found" in out and "card and architecture only" in out
    assert not (run_dir / "subnets" / "pixel3" / "0.001ms").exists()
    evaluated = results(run_dir)
    for device, budget in (("pixel3", 3), ("pixel3", 10), ("raspi4", 6)):
        folder = run_dir / "subnets" / device / f"{budget}ms"
        assert sorted(p.name for p in folder.iterdir()) == ["card.json", "config.json"]
        card = json.loads((folder / "card.json").read_text())
        meeting = [e for e in evaluated if e["values"][f"latency@{device}"] <= budget]
        best = max(e["values"]["accuracy"] for e in meeting)
        assert card["search_values"]["accuracy"] == best
        assert card["latency"]["predicted_ms"] <= budget and card["target"] == {"device": device, "kind": "table",
                                                                                 "budget_ms": float(budget)}
        assert json.loads((folder / "config.json").read_text()) == card["config"]
        assert card["search"]["searcher"] == "nsga3" and "card and architecture only" in card["note"]
    code, _, err = cli(["extract", str(run_dir), "--strict", "--devices", str(write(tmp_path / "d.yaml",
                        "devices:\n  - name: fpga\n    budgets_ms: [0.000001]\n"))])
    assert code == 2 and "1 of 1 budgets got no subnet" in err      # fpga: predicted now, never searched


@pytest.mark.parametrize("text, message", [
    ("devices:\n  - name: pixel3\n    budgets_ms: [abc]\n", "must be positive numbers"),
    ("devices:\n  - name: nope\n    budgets_ms: [3]\n", "unknown device 'nope'"),
    ("devices: {pixel3: 3}\n", "non-empty list under 'devices:'"),
    ("devices:\n  - name: note10\n    budgets_ms: [3]\n", "lookup tables for the 'ofa_mbv3' space"),
    ("devices:\n  - name: cpu\n    budgets_ms: [3]\n", "did not record latency@cpu"),
    ("devices:\n  - name: raspi4\n    budgets_ms: [6]\n", "exists; remove it"),
    ("devices:\n  - name: x\n    kind: measured\n    backend: torch\n", "lists no budgets"),
])
def test_bad_input_exits_2_and_leaves_the_run_untouched(nb201_run, text, message, tmp_path, cli):
    run_dir, _ = nb201_run
    (run_dir / "subnets" / "raspi4" / "6ms").mkdir(parents=True, exist_ok=True)
    before = folder_hash(run_dir)
    code, _, err = cli(["extract", str(run_dir), "--devices", str(write(tmp_path / "d.yaml", text))])
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert folder_hash(run_dir) == before


def test_a_run_without_evaluations_is_refused(tmp_path, cli):
    RunStore.create(tmp_path / "empty", {"space": "nb201", "objectives": ["accuracy", "latency@pixel3"],
                                         "evaluations": 5, "searcher": "random"}).close()
    before = folder_hash(tmp_path / "empty")
    devices = write(tmp_path / "d.yaml", NB201_LIST)
    code, _, err = cli(["extract", str(tmp_path / "empty"), "--devices", str(devices)])
    assert code == 2 and "holds no evaluations" in err and folder_hash(tmp_path / "empty") == before
    code, _, err = cli(["extract", str(tmp_path / "nowhere"), "--devices", str(devices)])
    assert code == 2 and "does not exist" in err and not (tmp_path / "nowhere").exists()


# ---------------------------------------------------------------------- a tiny trained OFA-MBv3, measured devices
@pytest.fixture(scope="module")
def ofa_run(tiny_digits, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ofa")
    options = {"n_classes": 10, "width_mult": 0.25, "ks_list": "[3,5]", "expand_ratio_list": "[3,4]",
               "depth_list": "[1,2]", "resolutions": "[32,36]"}
    argv = ["train", "ofa_mbv3", "--data", tiny_digits, "--out", str(folder / "train"), "--method", "full", "--epochs", "1",
            "--set", "batch_size=16", "--set", "calib_images=40",
            *[a for k, v in options.items() if k != "n_classes" for a in ("-o", f"{k}={v}")]]
    for args in (argv, ["search", "--space", "ofa_mbv3", "--supernet", str(folder / "train" / "supernet.pt"),
                        "--objectives", "accuracy", "--devices", str(write(folder / "devices.yaml", OFA_LIST)),
                        "--searcher", "random", "--evaluations", "5", "--batch", "5", "--run", str(folder / "run")]):
        with pytest.raises(SystemExit) as exit_info:
            main(args)
        assert exit_info.value.code in (0, None)
    return folder / "run"


def test_ofa_extract_exports_measures_and_tests_each_budget(ofa_run, cli):
    config = json.loads((ofa_run / "config.json").read_text())
    assert config["objectives"] == ["accuracy", "latency@cpu", "latency@ort"]
    code, out, err = cli(["extract", str(ofa_run), "--formats", "onnx,state_dict"])
    assert code == 0 and "1 of 3 budgets got no subnet (ort 0.0001 ms)" in err, err
    for device, threads in (("cpu", 1), ("ort", 1)):
        name = f"latency@{device}"
        best = max(results(ofa_run), key=lambda e: (e["values"]["accuracy"], -e["values"][name], -e["n"]))
        folder = ofa_run / "subnets" / device / "1000ms"
        assert {"card.json", "config.json", "model.onnx", "state_dict.pt"} == {p.name for p in folder.iterdir()}
        card = json.loads((folder / "card.json").read_text())
        assert card["evaluation"] == best["n"] and 0 <= card["test_accuracy"] <= 100
        latency = card["latency"]
        assert latency["threads"] == threads and 0 < latency["measured_ms"] <= 1000
        assert len(latency["round_medians_ms"]) == 3 and latency["spread"] >= 0
        assert latency["predicted_ms"] == best["values"][name]
        assert card["macs"] > 0 and card["params"] > 0 and card["supernet_sha256"] == config["supernet_sha256"]
    assert "smallest latency found" in out


def test_a_measurement_over_budget_falls_back_to_the_next_candidate(ofa_run, tmp_path, monkeypatch):
    from nas.extract import ExportOptions, ExtractedSubnet
    from nas.extract_devices import extract_for_devices

    ranked = sorted(results(ofa_run), key=lambda e: (-e["values"]["accuracy"], e["values"]["latency@cpu"], e["n"]))
    measured = []

    def fake_measure(self, device, options):          # the most accurate candidate misses the budget
        measured.append(self.card["evaluation"])
        return {"device": device.name, "measured_ms": 5000.0 if len(measured) == 1 else 1.0}

    monkeypatch.setattr(ExtractedSubnet, "measure", fake_measure)
    devices = write(tmp_path / "d.yaml", "devices:\n  - name: cpu\n    budgets_ms: [999]\n")
    (row,) = extract_for_devices(ofa_run, devices, ExportOptions(formats=("state_dict",)))
    assert measured == [ranked[0]["n"], ranked[1]["n"]] and row.evaluation == ranked[1]["n"]
    assert "measured 5000.000 ms > 999 ms" in row.notes[0] and "took the next candidate" in row.notes[0]
    card = json.loads((ofa_run / "subnets" / "cpu" / "999ms" / "card.json").read_text())
    assert card["selection"] == {"rank": 2, "notes": row.notes}

    monkeypatch.setattr(ExtractedSubnet, "measure", lambda self, device, options: {"measured_ms": 5000.0})
    devices = write(tmp_path / "d.yaml", "devices:\n  - name: cpu\n    budgets_ms: [998]\n")
    (row,) = extract_for_devices(ofa_run, devices, ExportOptions(formats=("state_dict",)), tries=2)
    assert not row.met and "gave up after 2 candidates" in row.notes[-1]
    assert not (ofa_run / "subnets" / "cpu" / "998ms").exists()
    with pytest.raises(ConfigError, match="--tries must be a positive number"):
        extract_for_devices(ofa_run, devices, tries=0)
