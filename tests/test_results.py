"""The cache: hits, corrupted and old files, the lock, and kill-and-resume with a real SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from ncpaper import results, train
from ncpaper.train import RunConfig

TINY = {"dataset": "mnist", "sizes": {"widths": [16, 16]}, "n_per_class": 4, "n_test_per_class": 2,
        "epochs": 10, "lr": 0.1, "batch_size": 16, "n_measurements": 4}


def count_fits(monkeypatch):
    calls = []
    real = train.fit

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(results, "fit", counting)
    return calls


def test_second_call_reads_the_cache(tmp_path, monkeypatch):
    calls = count_fits(monkeypatch)
    config = RunConfig.from_dict(TINY)
    first = results.run_or_load(config, tmp_path)
    second = results.run_or_load(config, tmp_path)
    assert len(calls) == 1
    pd.testing.assert_frame_equal(first.table, second.table)
    meta = second.meta
    assert meta["config"] == config.to_dict() and meta["data_source"].startswith("MNIST")
    assert meta["data"]["train"]["pixels_sha256"] and meta["versions"]["torch"]
    assert {"commit", "dirty"} <= set(meta["git"]) and meta["timings"]["train_seconds"] > 0
    assert list(first.table.columns[:5]) == ["run_id", "dataset", "model", "weight_decay", "seed"]
    other = results.run_or_load(RunConfig.from_dict({**TINY, "weight_decay": 1e-3}), tmp_path)
    assert other.path != first.path and len(calls) == 2


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: (p / "metrics.csv").write_text((p / "metrics.csv").read_text()[:-40]),  # truncated
        lambda p: (p / "meta.json").write_text((p / "meta.json").read_text()[:50]),  # partial JSON
        lambda p: (p / "meta.json").unlink(),  # killed before the marker
        lambda p: (p / "model.pt").write_bytes(b"garbage"),
        lambda p: (p / "meta.json").write_text(
            json.dumps({**json.loads((p / "meta.json").read_text()), "schema": 0})),  # old schema
    ],
    ids=["truncated-table", "partial-meta", "no-meta", "corrupt-model", "old-schema"],
)
def test_damaged_results_are_recomputed_never_read(tmp_path, monkeypatch, damage):
    calls = count_fits(monkeypatch)
    config = RunConfig.from_dict(TINY)
    good = results.run_or_load(config, tmp_path)
    damage(good.path)
    assert results.load_run(good.path) is None
    again = results.run_or_load(config, tmp_path)
    assert len(calls) == 2
    pd.testing.assert_frame_equal(good.table, again.table)


def _cli(tmp_path, *extra):
    args = [sys.executable, "-m", "ncpaper.cli", "--results", str(tmp_path), "train", "--widths", "64", "64",
            "--n-per-class", "10", "--n-test-per-class", "2", "--batch-size", "8", "--lr", "0.05",
            "--n-measurements", "12", "--weight-decay", "1e-3", *extra]
    return args


def test_killed_run_resumes_to_the_same_numbers(tmp_path):
    resumed_dir, straight_dir = tmp_path / "resumed", tmp_path / "straight"
    args = _cli(resumed_dir, "--epochs", "1500")
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list(resumed_dir.glob("*/checkpoint.pt")):
        assert proc.poll() is None, "the run finished before a checkpoint was written: make it longer"
        assert time.time() < deadline
        time.sleep(0.05)
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    (folder,) = [p for p in resumed_dir.iterdir() if p.is_dir()]
    assert not (folder / "meta.json").exists()  # killed midway: no result yet
    saved = __import__("torch").load(folder / "checkpoint.pt", weights_only=False)
    assert 0 < saved["state"]["epoch"] < 1500
    subprocess.run(args, check=True, capture_output=True)
    subprocess.run(_cli(straight_dir, "--epochs", "1500"), check=True, capture_output=True)
    resumed = results.load_run(folder)
    (straight_folder,) = [p for p in straight_dir.iterdir() if p.is_dir()]
    straight = results.load_run(straight_folder)
    assert resumed.meta["timings"]["resumed_from_epoch"] == saved["state"]["epoch"]
    assert not (folder / "checkpoint.pt").exists()
    pd.testing.assert_frame_equal(resumed.table, straight.table)


def test_two_processes_train_the_same_run_once(tmp_path):
    args = _cli(tmp_path, "--epochs", "150")
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    trained = sum("epochs=150" in err for _, err in outputs)  # the progress bar appears only when training
    assert trained == 1
    paths = {out.splitlines()[1].split()[0] for out, _ in outputs}
    assert len(paths) == 1
    assert results.load_run(__import__("pathlib").Path(paths.pop())) is not None


def test_divergence_leaves_a_record_and_no_result(tmp_path):
    config = RunConfig.from_dict({**TINY, "n_per_class": 4, "n_test_per_class": None})
    corrupt = results.data_module.load("mnist", "train", n_per_class=4, seed=0)
    corrupt.x[0, 0, 0, 0] = float("nan")
    real_load = results.data_module.load
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(results.data_module, "load", lambda *a, **k: corrupt if a[1] == "train" else real_load(*a, **k))
        with pytest.raises(train.TrainingDivergedError, match="diverged at epoch"):
            results.run_or_load(config, tmp_path)
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    record = json.loads((folder / "failed.json").read_text())
    assert "diverged at epoch" in record["error"] and record["config"]["n_per_class"] == 4
    assert results.load_run(folder) is None
