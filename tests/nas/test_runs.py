"""The run store: creation, locking, torn and corrupt logs, checkpoints."""

import json
import subprocess
import sys

import pytest

from nas.runs import CONFIG, LOG, RunError, RunStore

CONFIG_DICT = {"space": "nb201", "objectives": ["accuracy"], "evaluations": 5}


def _new(tmp_path, name="run"):
    store = RunStore.create(tmp_path / name, CONFIG_DICT)
    for n in (1, 2):
        store.append({"type": "result", "n": n, "vector": [n], "values": {}, "status": "ok"})
    return store


def test_create_refuses_existing_runs_and_non_empty_folders(tmp_path):
    _new(tmp_path).close()
    with pytest.raises(RunError, match="already holds a run; continue it with `nas resume"):
        RunStore.create(tmp_path / "run", CONFIG_DICT)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(RunError, match="not empty"):
        RunStore.create(tmp_path / "other", CONFIG_DICT)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_second_writer_is_refused_by_another_process(tmp_path):
    store = _new(tmp_path)
    code = ("import sys\nfrom nas.runs import RunStore, RunError\n"
            f"try:\n    RunStore.open({str(tmp_path / 'run')!r})\nexcept RunError as e:\n    print(e); sys.exit(3)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 3 and "is open for writing by pid" in proc.stdout
    store.close()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0
    reader = RunStore.open(tmp_path / "run", write=False)         # readers never need the lock
    assert len(reader.results()) == 2


def test_torn_last_record_is_dropped_and_earlier_ones_kept(tmp_path):
    _new(tmp_path).close()
    log = tmp_path / "run" / LOG
    intact = log.read_bytes()
    log.write_bytes(intact + b'{"type": "result", "n": 3, "vec')
    reader = RunStore.open(tmp_path / "run", write=False)
    assert [e["n"] for e in reader.results()] == [1, 2] and log.read_bytes().endswith(b'"vec')
    store = RunStore.open(tmp_path / "run")                     # opening to write truncates the torn tail
    assert log.read_bytes() == intact
    store.append({"type": "result", "n": 3, "vector": [3], "values": {}, "status": "ok"})
    store.close()
    assert [e["n"] for e in RunStore.open(tmp_path / "run", write=False).results()] == [1, 2, 3]


def test_record_without_newline_counts_as_torn(tmp_path):
    _new(tmp_path).close()
    log = tmp_path / "run" / LOG
    log.write_bytes(log.read_bytes() + b'{"type": "result", "n": 3}')
    assert len(RunStore.open(tmp_path / "run", write=False).results()) == 2


def test_corruption_before_the_last_record_is_refused_untouched(tmp_path):
    _new(tmp_path).close()
    log = tmp_path / "run" / LOG
    lines = log.read_bytes().split(b"\n")
    lines[1] = b"garbage"
    damaged = b"\n".join(lines)
    log.write_bytes(damaged)
    with pytest.raises(RunError, match="corrupt at line 2, before its last record"):
        RunStore.open(tmp_path / "run")
    assert log.read_bytes() == damaged


def test_edited_config_is_refused_naming_the_change(tmp_path):
    _new(tmp_path).close()
    path = tmp_path / "run" / CONFIG
    path.write_text(json.dumps({**CONFIG_DICT, "space": "ofa_mbv3"}))
    with pytest.raises(RunError, match="changed: space"):
        RunStore.open(tmp_path / "run")


def test_not_a_run_folder(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(RunError, match="not a run folder"):
        RunStore.open(tmp_path / "x")
    with pytest.raises(RunError, match="does not exist"):
        RunStore.open(tmp_path / "y")


def test_checkpoint_round_trip_and_damaged_checkpoint(tmp_path):
    store = _new(tmp_path)
    store.save_checkpoint({"blob": b"\x00\x01", "n": 2})
    assert store.load_checkpoint() == (3, {"blob": b"\x00\x01", "n": 2})
    (tmp_path / "run" / "searcher" / "state.pkl").write_bytes(b"junk")
    assert store.load_checkpoint() is None
    store.close()
