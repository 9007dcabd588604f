"""Sweeps: a real Dask LocalCluster gives the numbers of runs done one after another; restarts skip done runs."""

import pandas as pd
import pytest

from ncpaper import results
from ncpaper.sweep import run_sweep
from ncpaper.train import RunConfig

TINY = {"dataset": "mnist", "sizes": {"widths": [16]}, "n_per_class": 4, "n_test_per_class": 2,
        "epochs": 8, "lr": 0.1, "batch_size": 16, "n_measurements": 3}
GRID = [RunConfig.from_dict({**TINY, "weight_decay": wd, "seed": s}) for wd in (0.0, 1e-3) for s in (0, 1)]


def assert_same_numbers(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Equal tables, wall-clock columns (``*_seconds``) aside: they time a run, they are not its numbers."""
    def numbers(t):
        return t.drop(columns=[c for c in t.columns if c.endswith("_seconds")])
    pd.testing.assert_frame_equal(numbers(a), numbers(b))


def test_local_cluster_matches_sequential(tmp_path):
    sequential = run_sweep(GRID, workers=1, results=tmp_path / "a", progress=False)
    parallel = run_sweep(GRID, workers=2, results=tmp_path / "b", progress=False)
    assert [r.config for r in parallel] == GRID
    for a, b in zip(sequential, parallel, strict=True):
        assert_same_numbers(a.table, b.table)


def test_a_rerun_of_the_same_sweep_hits_the_cache(tmp_path, monkeypatch):
    """The book trains on Dask workers, its notebooks ask in-process: both mean the same runs (1 thread each)."""
    first = run_sweep(GRID[:2], workers=2, results=tmp_path, progress=False)
    assert [r.meta["threads"] for r in first] == [1, 1]
    trained = []
    monkeypatch.setattr(results, "fit", lambda *a, **k: trained.append(1))
    again = run_sweep(GRID[:2], results=tmp_path, progress=False)  # as a notebook asks
    assert trained == [] and [r.path for r in again] == [r.path for r in first]


def test_restarted_sweep_trains_only_the_missing_runs(tmp_path, monkeypatch):
    run_sweep(GRID[:2], results=tmp_path, progress=False)  # "interrupted" after two runs
    trained = []
    real = results.fit
    monkeypatch.setattr(results, "fit", lambda *a, **k: trained.append(1) or real(*a, **k))
    run_sweep(GRID, results=tmp_path, progress=False)
    assert len(trained) == 2


def test_bad_scheduler_and_empty_grid(tmp_path):
    with pytest.raises(ValueError, match="the sweep is empty"):
        run_sweep([], results=tmp_path)
    with pytest.raises(ConnectionError, match=r"cannot reach a Dask scheduler at 'tcp://127\.0\.0\.1:9'"):
        run_sweep(GRID[:1], scheduler="tcp://127.0.0.1:9", results=tmp_path, progress=False)


def test_a_worker_killed_mid_run_loses_nothing(tmp_path):
    """SIGKILL a Dask worker while it trains: the run is retried elsewhere, every result is whole."""
    import os
    import signal
    import threading
    import time

    from distributed import Client, LocalCluster

    configs = [RunConfig.from_dict({**TINY, "sizes": {"widths": [64, 64]}, "n_per_class": 20, "epochs": 300,
                                    "batch_size": 8, "weight_decay": wd}) for wd in (0.0, 1e-4, 1e-3, 1e-2)]
    done = {}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        sweep = threading.Thread(target=lambda: done.setdefault("runs", run_sweep(
            configs, scheduler=cluster.scheduler_address, results=tmp_path, progress=False)))
        sweep.start()
        deadline = time.time() + 120
        while not list(tmp_path.glob("*/checkpoint.pt")):
            assert time.time() < deadline and sweep.is_alive()
            time.sleep(0.05)
        victim = next(iter(client.run(os.getpid).values()))
        os.kill(victim, signal.SIGKILL)
        sweep.join(timeout=300)
    runs = done["runs"]
    assert [r.config for r in runs] == configs
    assert all(results.load_run(r.path) is not None for r in runs)
    assert not list(tmp_path.glob("*/.*.tmp*"))


def test_two_overlapping_sweeps_train_each_run_once(tmp_path):
    import subprocess
    import sys

    args = [sys.executable, "-m", "ncpaper.cli", "--results", str(tmp_path), "sweep", "--widths", "32",
            "--n-per-class", "10", "--n-test-per-class", "2", "--epochs", "150", "--batch-size", "8",
            "--weight-decays", "0", "1e-3", "1e-2", "--seeds", "0"]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    trained = [{line.split(":")[0].strip() for line in err.replace("\r", "\n").splitlines() if "epochs=150" in line}
               for _, err in outputs]  # one progress bar per run a process trained
    assert sum(len(t) for t in trained) == 3
    assert len({p for p in tmp_path.iterdir() if p.is_dir()}) == 3


def test_workers_keep_glibcs_dynamic_mmap_threshold():
    """Dask's MALLOC_TRIM_THRESHOLD_ would make every activation an mmap/munmap pair; the rest stays."""
    from ncpaper.sweep import _worker_environment

    env = _worker_environment()
    assert "MALLOC_TRIM_THRESHOLD_" not in env and str(env["OMP_NUM_THREADS"]) == "1"


def test_a_write_probe_removed_by_the_lock_holder_is_not_an_error(tmp_path, monkeypatch):
    """The race behind a flaky overlapping-sweeps failure: _prepare_folder writes its probe outside the lock, and
    the lock holder's _remove_leftovers deletes every temporary file, the probe included, before it is unlinked."""
    from ncpaper import results
    from ncpaper.train import RunConfig

    written = results._write_file

    def write_then_lose(path, data):
        written(path, data)
        results._remove_leftovers(path.parent)  # what the other process, holding the lock, does meanwhile

    monkeypatch.setattr(results, "_write_file", write_then_lose)
    config = RunConfig.from_dict({"dataset": "mnist", "sizes": {"widths": [4]}, "n_per_class": 2,
                                  "n_test_per_class": 1, "epochs": 1, "n_measurements": 1})
    assert results._prepare_folder(tmp_path / "results" / "run", config) is True
