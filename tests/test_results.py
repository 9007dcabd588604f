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


def assert_same_numbers(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Equal tables, wall-clock columns (``*_seconds``) aside: they time a run, they are not its numbers."""
    def numbers(t):
        return t.drop(columns=[c for c in t.columns if c.endswith("_seconds")])
    pd.testing.assert_frame_equal(numbers(a), numbers(b))


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
    assert_same_numbers(first.table, second.table)
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
    assert_same_numbers(good.table, again.table)


def _cli(tmp_path, *extra):
    args = [sys.executable, "-m", "ncpaper.cli", "--results", str(tmp_path), "train", "--widths", "64", "64",
            "--n-per-class", "10", "--n-test-per-class", "2", "--batch-size", "8", "--lr", "0.05",
            "--n-measurements", "12", "--weight-decay", "1e-3", *extra]
    return args


def test_killed_run_resumes_to_the_same_numbers(tmp_path):
    resumed_dir, straight_dir = tmp_path / "resumed", tmp_path / "straight"
    args = _cli(resumed_dir, "--epochs", "1500")
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600  # a loaded 2-core machine
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
    assert_same_numbers(resumed.table, straight.table)


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


# Issue 18: the cache never lies, runs finish, leftovers are cleaned.


def test_last_is_the_last_training_row_and_settled_the_extra_one(tmp_path):
    table = pd.DataFrame({"epoch": [1, 10, 10], "phase": ["train", "train", "settled"], "nc1": [3.0, 2.0, 1.0]})
    run = results.Run(tmp_path, table, {})
    assert run.last["nc1"] == 2.0 and run.settled["nc1"] == 1.0
    plain = results.Run(tmp_path, table.drop(columns="phase"), {})
    assert plain.last["nc1"] == 1.0 and plain.settled is None
    unsettled = results.Run(tmp_path, table.iloc[:2], {})
    assert unsettled.last["nc1"] == 2.0 and unsettled.settled is None


def test_thread_count_is_in_the_key_and_the_metadata(tmp_path, monkeypatch):
    calls = count_fits(monkeypatch)
    config = RunConfig.from_dict(TINY)
    one = results.run_or_load(config, tmp_path, threads=1)
    two = results.run_or_load(config, tmp_path, threads=2)
    assert one.path != two.path and len(calls) == 2
    assert (one.meta["threads"], two.meta["threads"]) == (1, 2)
    assert "same CPU model" in one.meta["reproducibility"] and one.meta["device"].endswith(", 1 thread")
    again = results.run_or_load(config, tmp_path, threads=1)
    assert again.path == one.path and len(calls) == 2
    assert_same_numbers(again.table, one.table)


def test_runs_use_one_thread_unless_asked(tmp_path, monkeypatch):
    config = RunConfig.from_dict(TINY)
    assert results.run_or_load(config, tmp_path).meta["threads"] == 1
    monkeypatch.setenv("NCPAPER_THREADS", "2")
    assert results.run_or_load(config, tmp_path).meta["threads"] == 2
    monkeypatch.setenv("NCPAPER_THREADS", "all")
    with pytest.raises(ValueError, match=r"^NCPAPER_THREADS must be a positive integer \(at most 1024\), got 'all'$"):
        results.run_or_load(config, tmp_path)


def test_a_folder_holding_another_configs_run_is_recomputed(tmp_path, monkeypatch):
    calls = count_fits(monkeypatch)
    a, b = RunConfig.from_dict(TINY), RunConfig.from_dict({**TINY, "weight_decay": 1e-3})
    run_a, run_b = results.run_or_load(a, tmp_path), results.run_or_load(b, tmp_path)
    swap = tmp_path / "swap"
    run_a.path.rename(swap)
    run_b.path.rename(run_a.path)
    swap.rename(run_b.path)
    assert results.load_run(run_a.path) is None
    again = results.run_or_load(a, tmp_path)
    assert len(calls) == 3 and again.meta["config"]["weight_decay"] == 0.0
    assert_same_numbers(again.table, run_a.table)


def test_a_meta_whose_config_was_edited_is_not_served(tmp_path, monkeypatch):
    calls = count_fits(monkeypatch)
    config = RunConfig.from_dict(TINY)
    good = results.run_or_load(config, tmp_path)
    meta = json.loads((good.path / "meta.json").read_text())
    meta["config"]["weight_decay"] = 0.5
    (good.path / "meta.json").write_text(json.dumps(meta))
    again = results.run_or_load(config, tmp_path)
    assert len(calls) == 2 and again.meta["config"] == config.to_dict()
    assert_same_numbers(again.table, good.table)


@pytest.mark.parametrize("meta", ["null", "[1, 2]", '"hello"', "42", "FILES-LIST"])
def test_a_meta_that_is_json_but_not_a_run_is_recomputed(tmp_path, monkeypatch, meta):
    calls = count_fits(monkeypatch)
    config = RunConfig.from_dict(TINY)
    good = results.run_or_load(config, tmp_path)
    if meta == "FILES-LIST":
        meta = json.dumps({**json.loads((good.path / "meta.json").read_text()), "files": []})
    (good.path / "meta.json").write_text(meta)
    assert results.load_run(good.path) is None
    again = results.run_or_load(config, tmp_path)
    assert len(calls) == 2
    assert_same_numbers(again.table, good.table)


class _Payload:
    """Unpickling this runs code: it creates the file ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (__import__("pathlib").Path.touch, (self.marker,))


def test_a_crafted_checkpoint_is_refused_without_running_its_code(tmp_path, monkeypatch, capsys):
    import torch

    config = RunConfig.from_dict(TINY)
    good = results.run_or_load(config, tmp_path)
    marker = tmp_path / "owned"
    torch.save({"key": good.path.name, "state": _Payload(marker)}, good.path / "checkpoint.pt")
    (good.path / "meta.json").unlink()
    again = results.run_or_load(config, tmp_path)
    assert not marker.exists()
    err = capsys.readouterr().err
    assert f"ncpaper: ignoring unreadable checkpoint {good.path / 'checkpoint.pt'} (UnpicklingError" in err
    assert again.meta["timings"]["resumed_from_epoch"] is None
    assert_same_numbers(again.table, good.table)


def test_a_full_disk_stops_the_checkpoints_not_the_run(tmp_path, monkeypatch, capsys):
    import errno

    config = RunConfig.from_dict(TINY)
    reference = results.run_or_load(config, tmp_path / "reference", checkpoint_every=2)
    saved = []
    real_write = results._write_file

    def disk_fills_after_one_checkpoint(path, data):
        if path.name.startswith(".checkpoint.pt"):
            saved.append(len(data))
            if len(saved) > 1:
                raise OSError(errno.ENOSPC, "No space left on device")
        real_write(path, data)

    monkeypatch.setattr(results, "_write_file", disk_fills_after_one_checkpoint)
    run = results.run_or_load(config, tmp_path / "full", checkpoint_every=2)
    err = capsys.readouterr().err.strip()
    assert len(saved) == 2 and "\n" not in err
    assert err.startswith(f"ncpaper: no space left on {run.path}: need ~{saved[1] / 1e6:.3g} MB for checkpoint.pt")
    assert err.endswith("training goes on without new checkpoints (the checkpoint of epoch 2 stays)")
    assert_same_numbers(run.table.drop(columns="run_id"), reference.table.drop(columns="run_id"))
    assert not list(run.path.glob(".*.tmp*")) and not (run.path / "checkpoint.pt").exists()


def test_no_room_for_the_result_is_one_clear_error_before_training(tmp_path, monkeypatch):
    calls = count_fits(monkeypatch)
    monkeypatch.setattr(results, "_free_bytes", lambda folder: 1000)
    with pytest.raises(results.DiskFullError, match=rf"^no space for the run in {tmp_path}: its model\.pt, "
                                                     r"metrics\.csv and meta\.json take ~[0-9.]+ MB and 0\.001 MB is "
                                                     r"free; nothing was trained: free some space or give another"):
        results.run_or_load(RunConfig.from_dict(TINY), tmp_path)
    assert calls == [] and list(tmp_path.iterdir()) == []  # no folder, no lock


class _Stop(Exception):
    pass


def test_huge_runs_announce_their_duration_and_checkpoint_by_wall_time(tmp_path, monkeypatch, capsys):
    import torch

    config = RunConfig.from_dict({**TINY, "epochs": 100_000_000})
    real_save = results._save_checkpoint

    def save_then_stop(path, key, state):
        real_save(path, key, state)
        raise _Stop

    monkeypatch.setattr(results, "CHECKPOINT_SECONDS", 0.0)  # wall-time checkpoint due after every epoch
    monkeypatch.setattr(results, "_save_checkpoint", save_then_stop)
    with pytest.raises(_Stop):
        results.run_or_load(config, tmp_path)
    (checkpoint,) = tmp_path.glob("*/checkpoint.pt")
    assert torch.load(checkpoint, weights_only=True)["state"]["epoch"] == 1  # not at 10% of the epochs
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"ncpaper: {config.describe()} is expected to take ~") and " h more" in err
    assert err.endswith(f"checkpoints every 10000000 epochs and every ~0 s into {checkpoint}")


def test_a_concurrent_training_is_told_about_the_others(tmp_path, capsys):
    sleeper = subprocess.Popen(["sleep", "60"])
    dead = subprocess.Popen(["true"])
    dead.wait()
    try:
        registry = results.data_module.cache_dir() / "training"
        registry.mkdir(parents=True, exist_ok=True)
        cores = results._usable_cpus()
        (registry / f"{sleeper.pid}.json").write_text(json.dumps({"threads": cores, "run": "another run"}))
        (registry / f"{dead.pid}.json").write_text(json.dumps({"threads": cores, "run": "a killed run"}))
        results.run_or_load(RunConfig.from_dict(TINY), tmp_path, threads=1)
    finally:
        sleeper.kill()
        sleeper.wait()
    err = capsys.readouterr().err.strip()
    assert err == (f"ncpaper: 1 other ncpaper training(s) (pid {sleeper.pid}) already use {cores} thread(s) of "
                   f"this machine's {cores} cores, and this run asks for 1: each will run many times slower. Give "
                   f"concurrent runs --threads {max(1, cores // 2)} (the thread count is part of the cache key), "
                   "or use `ncpaper sweep --workers`")
    assert not (registry / f"{dead.pid}.json").exists() and not (registry / f"{os.getpid()}.json").exists()


def test_leftover_temporary_files_are_removed_on_the_next_start(tmp_path):
    config = RunConfig.from_dict(TINY)
    good = results.run_or_load(config, tmp_path)
    leftovers = [good.path / ".metrics.csv.tmp4194301", good.path / ".checkpoint.pt.tmp12"]
    for leftover in leftovers:
        leftover.write_bytes(b"partial")
    (good.path / "meta.json").unlink()
    again = results.run_or_load(config, tmp_path)
    assert not any(p.exists() for p in leftovers)
    assert sorted(p.name for p in again.path.iterdir()) == ["meta.json", "metrics.csv", "model.pt"]
