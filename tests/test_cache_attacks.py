"""Issue 27: the cache keeps its promises under attack (full disks, links, hostile files), one line per failure.

Each test reproduces one promise that a red-team pass broke on commit 071df70 (numbered as in the issue), on tiny
MNIST runs.
"""

import copy
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from urllib.error import URLError

import pandas as pd
import pytest

from ncpaper import data, results, train
from ncpaper.cli import main
from ncpaper.published import TamperedResultError, load_published, publish, split_published, write_manifest
from ncpaper.train import RunConfig

TINY = {"dataset": "mnist", "sizes": {"widths": [16, 16]}, "n_per_class": 4, "n_test_per_class": 2,
        "epochs": 10, "lr": 0.1, "batch_size": 16, "n_measurements": 4}
# The reproduction: `ncpaper train` of a tiny MNIST run.
TRAIN = ["train", "--dataset", "mnist", "--widths", "32", "32", "--n-per-class", "10", "--n-test-per-class", "5",
         "--epochs", "40", "--n-measurements", "3", "--quiet"]


def numbers(table: pd.DataFrame) -> pd.DataFrame:
    """A run's table without its wall-clock columns (``*_seconds``)."""
    return table.drop(columns=[c for c in table.columns if c.endswith("_seconds")])


def count_fits(monkeypatch) -> list:
    calls, real = [], train.fit

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(results, "fit", counting)
    return calls


def run_cli(argv, capsys):
    """(exit code, stdout, stderr) of ``ncpaper argv``; argparse's own exits included."""
    try:
        code = main(argv)
    except SystemExit as stop:
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err.strip()


def one_line_error(code, err, message):
    assert code == 2 and err.startswith("ncpaper: error:") and "\n" not in err and message in err, err


class DeadlineExceeded(BaseException):
    """Not an OSError (TimeoutError is one): no ``except OSError`` of the code under test may swallow it."""


@contextmanager
def deadline(seconds: int):
    """Fail (instead of hanging the suite) if the block takes longer than ``seconds``: SIGALRM sent to the main
    thread itself, so that a blocking open() of a FIFO is interrupted too (torch's threads could take it)."""
    def expire(*_):
        raise DeadlineExceeded(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    timer = threading.Timer(seconds, signal.pthread_kill, (threading.main_thread().ident, signal.SIGALRM))
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        signal.signal(signal.SIGALRM, previous)


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


@pytest.fixture
def good(tmp_path):
    """The tiny run, trained once into ``tmp_path``."""
    return results.run_or_load(RunConfig.from_dict(TINY), tmp_path)


# 1. A full disk loses the whole run.


def _tmpfs_works(folder: Path) -> bool:
    """Whether this machine lets the test mount a small tmpfs in a private mount namespace (unshare -rm)."""
    if shutil.which("unshare") is None:
        return False
    probe = ["unshare", "-rm", "sh", "-c", 'mount -t tmpfs -o size=4k tmpfs "$0"', str(folder)]
    return subprocess.run(probe, capture_output=True).returncode == 0


def _train_on_tmpfs(folder: Path, size_kb: int, fill_kb: int) -> tuple[int, str, list[str]]:
    """`ncpaper train` into ``folder/results`` on a ``size_kb`` tmpfs with ``fill_kb`` taken: (exit code,
    stderr, what the tmpfs holds afterwards besides the filler)."""
    script = ('mount -t tmpfs -o size="$1"k tmpfs "$0" || exit 99; head -c "$2"k /dev/zero > "$0/fill"; '
              f'"$3" -m ncpaper.cli --results "$0/results" {" ".join(TRAIN)}; echo "rc=$?"; '
              'find "$0" -mindepth 1 ! -name fill')
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script, str(folder), str(size_kb), str(fill_kb),
                           sys.executable], capture_output=True, text=True, cwd=folder, timeout=600)
    out = done.stdout.splitlines()
    code = int(next(line for line in out if line.startswith("rc="))[3:])
    return code, done.stderr.strip(), [line for line in out if not line.startswith("rc=")]


@pytest.mark.parametrize(("size_kb", "fill_kb"), [(4, 4), (12, 0), (52, 0)], ids=["0KB", "12KB", "52KB"])
def test_a_disk_too_small_for_the_run_is_refused_before_training(size_kb, fill_kb, tmp_path, capsys, monkeypatch):
    """On a tmpfs with 0, 12 or 52 KB free (where the test can mount one; else a monkeypatched free-space figure):
    one error line before any training, and nothing left behind."""
    small, free_kb = tmp_path / "small", size_kb - fill_kb
    small.mkdir()
    if _tmpfs_works(small):
        code, err, left = _train_on_tmpfs(small, size_kb, fill_kb)
    else:
        trained = []
        monkeypatch.setattr(results, "fit", lambda *a, **k: trained.append(1))
        monkeypatch.setattr(results, "_free_bytes", lambda folder: free_kb * 1024)
        code, _, err = run_cli(["--results", str(small / "results"), *TRAIN], capsys)
        left = [str(p) for p in small.rglob("*")]
        assert trained == []
    one_line_error(code, err, f"no space for the run in {small / 'results'}: its model.pt, metrics.csv and "
                              "meta.json take ~0.1")
    assert "is free; nothing was trained: free some space or give another --results (or NCPAPER_RESULTS)" in err
    assert left == []  # no folder, no lock, no lone metrics.csv


def test_a_disk_that_fills_during_training_leaves_no_partial_result(tmp_path, monkeypatch):
    """Space that vanishes while the run trains: the result's files written so far are removed, the error stays."""
    real_write = results._write_file

    def model_does_not_fit(path, data_bytes):
        if path.name.startswith(".model.pt.tmp"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(path, data_bytes)

    monkeypatch.setattr(results, "_write_file", model_does_not_fit)
    with pytest.raises(results.DiskFullError, match=r"no space left on .*: need ~[0-9.]+ MB for model\.pt"):
        results.run_or_load(RunConfig.from_dict(TINY), tmp_path)
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert [p.name for p in folder.iterdir()] == ["checkpoint.pt"]  # the work done stays; no lone metrics.csv


# 2. A run folder that is a symbolic link to another run.


def test_a_run_folder_linked_to_another_run_is_replaced_not_written_through(tmp_path, capsys):
    a, b = RunConfig.from_dict(TINY), RunConfig.from_dict({**TINY, "weight_decay": 1e-3})
    run_a, run_b = results.run_or_load(a, tmp_path), results.run_or_load(b, tmp_path)
    before = {f.name: f.read_bytes() for f in run_a.path.iterdir()}
    shutil.rmtree(run_b.path)
    run_b.path.symlink_to(run_a.path)
    capsys.readouterr()
    again = results.run_or_load(b, tmp_path)
    assert again.path == run_b.path and not run_b.path.is_symlink() and run_b.path.is_dir()
    assert {f.name: f.read_bytes() for f in run_a.path.iterdir()} == before  # a's folder untouched
    assert results.run_or_load(a, tmp_path).meta["created"] == run_a.meta["created"]  # a is still served
    pd.testing.assert_frame_equal(numbers(again.table), numbers(run_b.table))
    assert capsys.readouterr().err.strip() == (f"ncpaper: {run_b.path} was a symbolic link to {run_a.path}, not to "
                                               "this run's folder: removed (the link only); the run gets a folder of "
                                               "its own")


def test_a_lock_linked_to_another_file_is_not_followed(tmp_path):
    """The lock is opened with O_TRUNC: followed, a link would empty the file it points to."""
    a, b = RunConfig.from_dict(TINY), RunConfig.from_dict({**TINY, "weight_decay": 1e-3})
    run_a, run_b = results.run_or_load(a, tmp_path), results.run_or_load(b, tmp_path)
    table = (run_a.path / "metrics.csv").read_bytes()
    (run_b.path / "meta.json").unlink()
    lock = Path(f"{run_b.path}.lock")
    lock.unlink(missing_ok=True)
    lock.symlink_to(run_a.path / "metrics.csv")
    results.run_or_load(b, tmp_path)
    assert (run_a.path / "metrics.csv").read_bytes() == table and not lock.is_symlink()


# 3. A deeply nested or huge meta.json, and other files no reader should trust.


@pytest.mark.parametrize("content", ["[" * 200_000, '{"a":' * 200_000, "HUGE"], ids=["nested-list", "nested-object",
                                                                                     "over-1-MiB"])
def test_an_unreadable_or_huge_meta_means_recompute(good, tmp_path, monkeypatch, content):
    calls = count_fits(monkeypatch)
    if content == "HUGE":  # a valid record, padded past the cap: never parsed
        content = json.dumps({**good.meta, "notes": "x" * (2 << 20)})
    (good.path / "meta.json").write_text(content)
    assert results.load_run(good.path) is None
    again = results.run_or_load(RunConfig.from_dict(TINY), tmp_path)
    assert len(calls) == 1 and again.path == good.path
    pd.testing.assert_frame_equal(numbers(again.table), numbers(good.table))


@pytest.mark.parametrize("hostile", ["fifo-meta", "metrics-to-dev-zero"])
def test_files_that_never_end_are_refused_without_hanging(good, tmp_path, monkeypatch, hostile):
    calls = count_fits(monkeypatch)
    if hostile == "fifo-meta":
        (good.path / "meta.json").unlink()
        os.mkfifo(good.path / "meta.json")
    else:
        (good.path / "metrics.csv").unlink()
        (good.path / "metrics.csv").symlink_to("/dev/zero")
    with deadline(60):
        assert results.load_run(good.path) is None
        results.run_or_load(RunConfig.from_dict(TINY), tmp_path)
    assert len(calls) == 1 and results.load_run(good.path) is not None


# 4. A checkpoint with the right key but a wrong state.


def _states(config: RunConfig) -> list:
    """Every epoch's training state of ``config`` (deep copies: the live ones keep changing)."""
    states = []
    train.fit(config, on_checkpoint=lambda state: states.append(copy.deepcopy(state)), checkpoint_every=1)
    return states


@pytest.mark.parametrize("wrong", ["another-network", "another-momentum"])
def test_a_checkpoint_of_this_key_that_does_not_fit_is_discarded_with_one_line(tmp_path, capsys, wrong):
    import torch

    config = RunConfig.from_dict(TINY)
    reference = results.run_or_load(config, tmp_path / "reference")
    mine = _states(config)[3]
    other = _states(RunConfig.from_dict({**TINY, "sizes": {"widths": [8, 8]}}))[3]
    state = other if wrong == "another-network" else train.TrainingState(**{**mine.__dict__,
                                                                            "optimizer": other.optimizer})
    folder = tmp_path / "results" / reference.path.name
    folder.mkdir(parents=True)
    torch.save({"key": folder.name, "state": state.__dict__}, folder / "checkpoint.pt")
    capsys.readouterr()
    run = results.run_or_load(config, tmp_path / "results")
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"ncpaper: ignoring checkpoint {folder / 'checkpoint.pt'}, which does "
                                              "not fit this run (")
    assert err.endswith("); training from the start")
    assert run.meta["timings"]["resumed_from_epoch"] is None
    pd.testing.assert_frame_equal(numbers(run.table), numbers(reference.table))


# 5. A tampered published run reads as a missing one.


@pytest.fixture
def finished(tmp_path):
    configs = [RunConfig.from_dict({**TINY, "weight_decay": wd}) for wd in (0.0, 1e-3)]
    return configs, [results.run_or_load(c, tmp_path / "results") for c in configs]


def _edit_number(table: Path) -> None:
    table.write_text(table.read_text().replace("0.", "1.", 1))


def test_a_published_table_edited_and_resealed_is_an_error_that_names_it(finished, tmp_path, capsys, monkeypatch):
    """Edit metrics.csv and regenerate only SHA256SUMS: its meta.json still holds the sha256 it was published with."""
    configs, runs = finished
    root = tmp_path / "published"
    folder = publish(runs, "smoke", root)[0]
    _edit_number(folder / "metrics.csv")
    write_manifest(folder.parent)
    message = (f"published file {folder / 'metrics.csv'} does not match its sha256 in meta.json (edited or damaged): "
               f"restore it with `git checkout HEAD -- {folder}`, or republish with `ncpaper publish --profile smoke`")
    with pytest.raises(TamperedResultError) as err:
        load_published(configs, "smoke", root)
    assert str(err.value) == message
    with pytest.raises(TamperedResultError):
        split_published(configs, "smoke", root)
    trained = []  # a profile sweep says so in one line, and retrains nothing
    monkeypatch.setattr(results, "fit", lambda *a, **k: trained.append(1))
    monkeypatch.setenv("NCPAPER_PUBLISHED", str(root))
    code, _, err_line = run_cli(["sweep", "--profile", "smoke", "--figure", "mnist", "--results",
                                 str(tmp_path / "other")], capsys)
    one_line_error(code, err_line, message)
    assert trained == []


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=test", "-c", "user.email=test@example.org", *args], cwd=repo,
                   check=True, capture_output=True)


def test_a_published_run_rewritten_with_all_its_checksums_is_caught_by_git(finished, tmp_path, monkeypatch):
    """In a git checkout, a published file must be the committed one: an edit that also rewrites meta.json's
    checksums and SHA256SUMS is caught there; a profile nothing of which is committed yet is read as before."""
    from ncpaper.data import sha256_of

    configs, runs = finished
    monkeypatch.delenv("NCPAPER_COMMIT", raising=False)
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    root = repo / "published"
    folder = publish(runs, "demo", root)[0]
    _git(repo, "add", "published")
    _git(repo, "commit", "-q", "-m", "publish")
    table = folder / "metrics.csv"
    _edit_number(table)
    meta = json.loads((folder / "meta.json").read_text())
    meta["files"]["metrics.csv"] = sha256_of(table)
    (folder / "meta.json").write_text(json.dumps(results.sealed(meta) if "meta_sha256" in meta else meta, indent=2))
    write_manifest(folder.parent)
    assert results.load_run(folder, older_metrics=True) is not None  # every checksum agrees
    with pytest.raises(TamperedResultError) as err:
        load_published(configs, "demo", root)
    assert str(err.value) == (f"published file {table} differs from the repository's last commit (edited or "
                              f"damaged): restore it with `git checkout HEAD -- {table}`, or commit it if you "
                              "republished it")
    _git(repo, "checkout", "HEAD", "--", "published")
    assert [r.path for r in load_published(configs, "demo", root)] == [folder.parent / r.meta["key"] for r in runs]
    extra = publish(runs[:1], "demo", tmp_path / "elsewhere")[0]  # a run not in the commit, sealed in SHA256SUMS
    shutil.copytree(extra, folder.parent / "0000000000000000")
    write_manifest(folder.parent)
    with pytest.raises(TamperedResultError, match=r"0000000000000000/metrics.csv is not in the repository's last "
                                                  r"commit: remove it, or commit it if you published it"):
        load_published(configs, "demo", root)
    fresh = publish(runs, "fresh", root)  # nothing of it committed yet: SHA256SUMS and meta.json only
    assert [r.path for r in load_published(configs, "fresh", root)] == fresh


# 6. Tracebacks instead of one `ncpaper: error:` line.


def test_a_bad_checkpoint_interval_breaks_no_command(tmp_path, capsys, monkeypatch):
    env = {**os.environ, "NCPAPER_CHECKPOINT_SECONDS": "abc"}
    done = subprocess.run([sys.executable, "-m", "ncpaper.cli", "--help"], env=env, capture_output=True, text=True,
                          cwd=tmp_path)
    assert done.returncode == 0 and "ncpaper train" in done.stdout and done.stderr == ""
    monkeypatch.setenv("NCPAPER_CHECKPOINT_SECONDS", "abc")
    code, _, err = run_cli(["--results", str(tmp_path / "r"), *TRAIN], capsys)
    one_line_error(code, err, "NCPAPER_CHECKPOINT_SECONDS must be a number of seconds (0 or more), got 'abc'")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("dataset", ["mnist", "cifar10"])
def test_a_cache_that_is_a_file_is_one_line_before_training(dataset, tmp_path, capsys, monkeypatch):
    (tmp_path / "cache").write_text("not a folder")
    monkeypatch.setenv("NCPAPER_CACHE", str(tmp_path / "cache"))
    code, _, err = run_cli(["--results", str(tmp_path / "r"), *TRAIN, "--dataset", dataset], capsys)
    one_line_error(code, err, f"the cache folder {tmp_path / 'cache'} cannot be made: {tmp_path / 'cache'} is a "
                              "file; point NCPAPER_CACHE at a folder")
    assert not (tmp_path / "r").exists()


def test_a_network_too_large_for_memory_is_refused_before_any_folder(tmp_path, capsys):
    code, _, err = run_cli(["--results", str(tmp_path / "r"), *TRAIN, "--widths", "100000000"], capsys)
    one_line_error(code, err, "(bias-free MLP (100000000), 79,400,000,000 weights) needs at least ~953 GB of memory "
                              "for its weights, gradients and momentum, and ~")
    assert err.endswith("is available: make the network smaller (--widths, --channels, --fc-width)")
    assert not (tmp_path / "r").exists()


def test_too_many_threads_is_one_line(tmp_path, capsys, monkeypatch):
    code, _, err = run_cli(["--results", str(tmp_path), *TRAIN, "--threads", "100000"], capsys)
    one_line_error(code, err, "argument --threads: must be a positive integer at most 1024, got '100000'")
    with pytest.raises(ValueError, match=r"^threads must be at most 1024 \(this machine has \d+ cores\), got 100000$"):
        results.run_or_load(RunConfig.from_dict(TINY), tmp_path, threads=100000)
    monkeypatch.setenv("NCPAPER_THREADS", "100000")
    code, _, err = run_cli(["--results", str(tmp_path), *TRAIN], capsys)
    one_line_error(code, err, "NCPAPER_THREADS must be a positive integer (at most 1024), got '100000'")
    assert list(tmp_path.iterdir()) == []


# 7. meta.json fields outside the checks were served as edited.


def _edit_threads(meta, folder):
    meta["threads"] = 2


def _edit_device(meta, folder):
    meta["device"] = "NVIDIA H100 80GB HBM3"


def _edit_data_checksum(meta, folder):
    meta["data"]["train"]["pixels_sha256"] = "0" * 64


def _unlist_model(meta, folder):
    del meta["files"]["model.pt"]
    (folder / "model.pt").write_bytes(b"garbage")


def _unlist_model_in_an_older_record(meta, folder):
    _unlist_model(meta, folder)
    del meta["meta_sha256"]  # a run written before meta.json carried its own checksum


@pytest.mark.parametrize("edit", [_edit_threads, _edit_device, _edit_data_checksum, _unlist_model,
                                  _unlist_model_in_an_older_record],
                         ids=["threads", "device", "data-checksum", "model-unlisted", "model-unlisted-older-record"])
def test_every_field_of_meta_is_covered(good, tmp_path, monkeypatch, edit):
    calls = count_fits(monkeypatch)
    meta = json.loads((good.path / "meta.json").read_text())
    edit(meta, good.path)
    (good.path / "meta.json").write_text(json.dumps(meta, indent=2))
    assert results.load_run(good.path) is None
    again = results.run_or_load(RunConfig.from_dict(TINY), tmp_path)
    assert len(calls) == 1 and again.meta["device"] == good.meta["device"] and again.meta["threads"] == 1
    pd.testing.assert_frame_equal(numbers(again.table), numbers(good.table))


def test_a_run_written_before_meta_carried_its_checksum_is_still_served(good, tmp_path, monkeypatch):
    """Caches written by earlier versions stay valid: their key-bearing fields and files are checked."""
    calls = count_fits(monkeypatch)
    meta = json.loads((good.path / "meta.json").read_text())
    assert meta["meta_sha256"] == results.meta_checksum(meta)
    del meta["meta_sha256"]
    (good.path / "meta.json").write_text(json.dumps(meta, indent=2))
    assert results.run_or_load(RunConfig.from_dict(TINY), tmp_path).meta == meta and calls == []


# 8. Small ones.


@pytest.mark.parametrize(("args", "message"), [
    (["--seed", "-1"], "argument --seed: must be a non-negative integer, got '-1'"),
    (["--model", "convnet", "--fc-width", "0"], "argument --fc-width: must be a positive integer, got '0'"),
    (["--widths", "32", "0"], "argument --widths: must be a positive integer, got '0'"),
    (["--results", ""], "argument --results: an empty path: give a folder, or leave the option out for its default"),
], ids=["seed", "fc-width", "widths", "empty-results"])
def test_bad_options_are_named(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an empty --results must not write into ./results
    monkeypatch.setenv("NCPAPER_RESULTS", str(tmp_path / "env-results"))
    one_line_error(*run_cli([*TRAIN, *args], capsys)[::2], message)
    assert list(tmp_path.iterdir()) == []


def test_a_dangling_run_link_is_replaced(good, tmp_path, capsys):
    shutil.rmtree(good.path)
    good.path.symlink_to(tmp_path / "gone")
    capsys.readouterr()
    again = results.run_or_load(RunConfig.from_dict(TINY), tmp_path)
    assert again.path.is_dir() and not again.path.is_symlink()
    assert capsys.readouterr().err.strip() == (f"ncpaper: {good.path} was a symbolic link to {tmp_path / 'gone'}, not "
                                               "to this run's folder: removed (the link only); the run gets a folder "
                                               "of its own")


@pytest.mark.parametrize("dataset", ["mnist", "cifar10"])
def test_a_failed_download_leaves_no_data_root(dataset, tmp_path, monkeypatch):
    import torchvision.datasets.cifar
    import torchvision.datasets.mnist

    def offline(url, download_root, *args, **kwargs):  # as torchvision does: the folder first, then the network
        Path(download_root).mkdir(parents=True, exist_ok=True)
        raise URLError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", offline)
    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", offline)
    with pytest.raises(data.DataNotFoundError, match="downloading failed"):
        data.load(dataset, root=tmp_path / "nonexistent" / "data")
    assert list(tmp_path.iterdir()) == []


def test_temporary_files_in_a_finished_run_are_removed_when_it_is_read(good, tmp_path):
    stale = good.path / f".metrics.csv.tmp{dead_pid()}"
    live = good.path / f".model.pt.tmp{os.getpid()}"  # a writer still at work is left alone
    for tmp in (stale, live):
        tmp.write_bytes(b"partial")
    again = results.run_or_load(RunConfig.from_dict(TINY), tmp_path)
    assert again.meta == good.meta and not stale.exists() and live.exists()


def test_a_random_bytes_tarball_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NCPAPER_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cifar10-jpeg.tar.gz").write_bytes(os.urandom(300_000))
    with pytest.raises(data.DataCorruptError) as err:
        data.load("cifar10", "test", n_per_class=1, root=tmp_path)
    assert "\n" not in str(err.value)
    code, _, line = run_cli(["--data", str(tmp_path), "--results", str(tmp_path / "r"), *TRAIN, "--dataset",
                             "cifar10"], capsys)
    one_line_error(code, line, f"{tmp_path}/cifar10-jpeg.tar.gz is damaged (ReadError: file could not be opened "
                               "successfully:")
