"""The result cache: one folder per run, keyed by a hash of everything that changes its numbers.

``results/<key>/`` holds ``metrics.csv`` (one row per measured epoch), ``model.pt`` (the final
weights) and ``meta.json`` (config, data provenance, versions, git commit, device, timings, and
the sha256 of the other two files). ``meta.json`` is written last, each file to a temporary
name then renamed, so a folder without a valid ``meta.json`` is never read as a result: it is
recomputed. A file lock keeps two processes from training the same run at once; a checkpoint
(every tenth of the epochs and every few minutes) lets a killed run continue where it stopped.

The cache never lies: a run's numbers are a function of its key, which covers the config, the
pixels, the format versions and the intra-op thread count it trains with (threads change float
reduction orders; 1 unless asked, so the CLI, Dask workers and notebooks find the same runs and
concurrent runs do not share cores). A folder is served only if its ``meta.json`` is an object whose key is the
folder's name, whose config is the one asked for and whose files match their sha256; anything
else is recomputed. Bitwise: same key on the same CPU model and library versions gives the same
numbers; another CPU model or BLAS build may differ in the last bits.
"""

from __future__ import annotations

import datetime as _dt
import errno
import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from filelock import FileLock

from . import __version__
from . import data as data_module
from .train import RunConfig, TrainingDivergedError, TrainingState, fit, measurement_epochs

__all__ = ["SCHEMA_VERSION", "DiskFullError", "ResultsFolderError", "Run", "collect", "config_key",
           "default_threads", "load_run", "results_dir", "run_or_load"]

SCHEMA_VERSION = 2
# Bump when a change to ncpaper.metrics or ncpaper.train.measure changes the numbers or adds columns.
# 4: gradient norms and sum_l ||W_l||^2 at every measured epoch (grad_norm, data_grad_norm, weight_norm_sq).
# 5: settled rows record NC1's bounds by the spread of the outputs and the centred NC3's two sources (ncpaper.bounds:
#    nc1_lower, nc1_upper, nc1_outputs, nc3_centred_ridge, nc3_centred_within, nc3_centred_asymmetry,
#    output_asymmetry, sigma_w_max, sigma_w_means).
METRICS_VERSION = 5
RUN_COLUMNS = ("run_id", "dataset", "model", "weight_decay", "seed")
RUN_FILES = ("metrics.csv", "model.pt", "meta.json", "checkpoint.pt", "failed.json")
# A checkpoint at least this often (seconds of wall time), besides every tenth of the epochs.
CHECKPOINT_SECONDS = float(os.environ.get("NCPAPER_CHECKPOINT_SECONDS") or 300)
# Runs expected to take longer than this say so (and how long) after their first epoch.
ANNOUNCE_SECONDS = 3600
REPRODUCIBILITY = ("bitwise identical measurements for the same key (thread count included) on the same CPU "
                   "model or GPU with the same library versions (both in this file); another CPU model or BLAS "
                   "build may differ in the last bits")


class ResultsFolderError(ValueError):
    """The results folder cannot hold a run: a file where a folder belongs, read-only, or full."""


class DiskFullError(ResultsFolderError):
    """No space left for a file of a run."""

    def __init__(self, path: Path, need: int):
        free = _free_bytes(path.parent)
        super().__init__(f"no space left on {path.parent}: need ~{_megabytes(need)} for {path.name}"
                         + (f" ({_megabytes(free)} free)" if free is not None else ""))


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.3g} MB"


def notice(message: str) -> None:
    """One line on stderr, ``ncpaper: <message>`` (seen in the terminal and in Dask worker logs)."""
    print(f"ncpaper: {message}", file=sys.stderr, flush=True)


def results_dir(root: str | os.PathLike | None = None) -> Path:
    return Path(root or os.environ.get("NCPAPER_RESULTS") or "results").expanduser()


def default_threads() -> int:
    """torch threads a run trains with unless asked: $NCPAPER_THREADS, else 1."""
    value = os.environ.get("NCPAPER_THREADS") or "1"
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"NCPAPER_THREADS must be a positive integer, got {value!r}")
    return int(value)


def config_key(config: RunConfig, data_checksums: dict, threads: int | None = None) -> str:
    """sha256 of the config, the exact pixels, the format and metrics versions and the thread count.

    ``threads``: torch's intra-op threads during training (default: :func:`default_threads`); they
    change the order of float reductions, so 1 and 2 threads are two different runs.
    """
    payload = {"config": config.to_dict(), "data": data_checksums, "schema": SCHEMA_VERSION,
               "metrics_version": METRICS_VERSION, "threads": int(threads or default_threads())}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Run:
    """A finished run read from the cache."""

    path: Path
    table: pd.DataFrame
    meta: dict

    @property
    def config(self) -> RunConfig:
        return RunConfig.from_dict(self.meta["config"])

    @property
    def last(self) -> pd.Series:
        """The last row measured during training (the "settled" row, if any, is :attr:`settled`)."""
        if "phase" in self.table.columns:
            return self.table[self.table["phase"] != "settled"].iloc[-1]
        return self.table.iloc[-1]

    @property
    def settled(self) -> pd.Series | None:
        """The row measured after the post-training settling phase, or None if the run has none."""
        if "phase" not in self.table.columns:
            return None
        rows = self.table[self.table["phase"] == "settled"]
        return rows.iloc[-1] if len(rows) else None

    def model(self):
        from .models import make_model

        if not (self.path / "model.pt").exists():
            raise FileNotFoundError(f"{self.path} holds no weights (published runs keep only their tables and "
                                    f"metadata); retrain it with `ncpaper sweep` to get the model")
        cfg, shape = self.config, self.meta["input_shape"]
        model = make_model(cfg.model, shape, self.meta["num_classes"], **cfg.sizes)
        model.load_state_dict(torch.load(self.path / "model.pt", map_location="cpu", weights_only=True))
        return model


def _free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``.<name>.tmp<pid>`` then rename it; a full disk raises :class:`DiskFullError`."""
    free = _free_bytes(path.parent)
    if free is not None and free < len(data):
        raise DiskFullError(path, len(data))
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        _write_file(tmp, data)
        os.replace(tmp, path)
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(path, len(data)) from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


def _torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def load_run(path: Path, key: str | None = None, older_metrics: bool = False) -> Run | None:
    """Read a cached run; None if it is missing, partial, corrupted, of an older schema or another key.

    ``meta.json`` must be a JSON object whose ``key`` is ``key`` (default: the folder's name) and
    whose ``files`` sha256 match ``metrics.csv`` (and ``model.pt`` where listed). ``older_metrics``
    (published runs, a record of what an earlier version measured) also accepts a run measured with an
    older ``METRICS_VERSION``: its table lacks the columns added since, never holds other numbers.
    """
    try:
        meta = json.loads((path / "meta.json").read_text())
        if not (isinstance(meta, dict) and isinstance(meta.get("files"), dict)
                and isinstance(meta.get("config"), dict) and "metrics.csv" in meta["files"]):
            return None
        version = meta.get("metrics_version")
        if meta.get("schema") != SCHEMA_VERSION or not isinstance(version, int) or not (
                version == METRICS_VERSION or (older_metrics and 1 <= version < METRICS_VERSION)):
            return None
        if meta.get("key") != (key or path.name):
            return None
        for name, digest in meta["files"].items():
            if name not in RUN_FILES or data_module.sha256_of(path / name) != digest:
                return None
        table = pd.read_csv(path / "metrics.csv")
        if len(table) != meta["n_rows"]:
            return None
        RunConfig.from_dict(meta["config"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError, pd.errors.ParserError):
        return None
    return Run(path, table, meta)


def _git_state() -> dict:
    """The checkout's commit and whether tracked files differ from it.

    ``$NCPAPER_COMMIT``, where set, is taken instead: for a copy of the tree on another machine,
    whose ``.git`` may be missing or stale (a rented GPU was seen to report an older commit).
    """
    if commit := os.environ.get("NCPAPER_COMMIT"):
        return {"commit": commit, "dirty": None, "source": "NCPAPER_COMMIT"}
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                    capture_output=True, text=True, check=True).stdout.strip())
        return {"commit": commit, "dirty": dirty}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    threads = torch.get_num_threads()
    return f"{_cpu_model()} ({platform.machine()}), {threads} thread{'s' if threads != 1 else ''}"


def _versions() -> dict:
    import numpy
    import torchvision

    return {"python": sys.version.split()[0], "torch": torch.__version__, "torchvision": torchvision.__version__,
            "numpy": numpy.__version__, "ncpaper": __version__}


def _save_checkpoint(path: Path, key: str, state: TrainingState) -> None:
    _atomic_write(path, _torch_bytes({"key": key, "state": state.__dict__}))


def _load_checkpoint(path: Path, key: str) -> TrainingState | None:
    """The checkpoint's state if it is of this key; tensors and plain containers only (no code runs)."""
    if not path.exists():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved.get("key") != key:
            return None
        return TrainingState(**saved["state"])
    except Exception as err:  # a damaged, foreign or malicious file: train from the start
        notice(f"ignoring unreadable checkpoint {path} ({type(err).__name__}: {str(err).splitlines()[0][:150]})")
        return None


class _Checkpointer:
    """``fit``'s ``on_checkpoint`` (called every epoch): saves every ``every`` epochs or ``seconds``.

    After the first epoch it says how long a run expected to last over an hour will take. A full
    disk stops the checkpoints (the older one stays) with one line; training goes on.
    """

    def __init__(self, path: Path, key: str, config: RunConfig, every: int, seconds: float,
                 resume: TrainingState | None):
        self.path, self.key, self.config, self.every, self.seconds = path, key, config, every, seconds
        self.start = (resume.epoch, resume.train_seconds, resume.measure_seconds, len(resume.rows)) if resume \
            else (0, 0.0, 0.0, 0)
        self.saved_at, self.saved_epoch = time.monotonic(), resume.epoch if resume else None
        self.announced, self.disabled = False, False

    def expected_seconds(self, state: TrainingState) -> float:
        """Seconds still to go, from the speed since this process started (train and measurements)."""
        epoch0, train0, measure0, rows0 = self.start
        per_epoch = (state.train_seconds - train0) / max(state.epoch - epoch0, 1)
        per_measure = (state.measure_seconds - measure0) / max(len(state.rows) - rows0, 1)
        left = len([e for e in measurement_epochs(self.config.epochs, self.config.n_measurements) if e > state.epoch])
        return per_epoch * (self.config.epochs - state.epoch) + per_measure * left

    def __call__(self, state: TrainingState) -> None:
        if not self.announced:
            self.announced = True
            if (left := self.expected_seconds(state)) > ANNOUNCE_SECONDS:
                notice(f"{self.config.describe()} is expected to take {_duration(left)} more; it checkpoints "
                       f"every {self.every} epochs and every {_duration(self.seconds)} into {self.path}")
        due = state.epoch % self.every == 0 or time.monotonic() - self.saved_at >= self.seconds
        if not due or self.disabled:
            return
        try:
            _save_checkpoint(self.path, self.key, state)
        except DiskFullError as err:
            self.disabled = True
            kept = f"the checkpoint of epoch {self.saved_epoch} stays" if self.saved_epoch else "no checkpoint"
            notice(f"{err}; training goes on without new checkpoints ({kept})")
            return
        self.saved_at, self.saved_epoch = time.monotonic(), state.epoch


def _duration(seconds: float) -> str:
    if seconds >= 5400:
        return f"~{seconds / 3600:.1f} h"
    return f"~{seconds / 60:.0f} min" if seconds >= 90 else f"~{seconds:.0f} s"


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class _Registered:
    """Marks this process as training with ``threads`` threads (``<cache>/training/<pid>.json``).

    On entry, says so if the trainings already running and this one ask for more threads than the
    machine has cores: they would share them and each run many times slower.
    """

    def __init__(self, threads: int, config: RunConfig):
        self.threads, self.config = threads, config
        self.file = data_module.cache_dir() / "training" / f"{os.getpid()}.json"

    def others(self) -> list[dict]:
        found = []
        for file in self.file.parent.glob("*.json"):
            try:
                pid = int(file.stem)
                if pid == os.getpid():
                    continue
                if not data_module.process_alive(pid):
                    file.unlink(missing_ok=True)
                    continue
                found.append({"pid": pid, **json.loads(file.read_text())})
            except (OSError, ValueError):
                continue
        return found

    def __enter__(self):
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            others = self.others()
            self.file.write_text(json.dumps({"threads": self.threads, "run": self.config.describe()}))
        except OSError:
            return self
        cpus, busy = _usable_cpus(), sum(int(o.get("threads", 1)) for o in others)
        if others and busy + self.threads > cpus:
            pids = ", ".join(str(o["pid"]) for o in others)
            notice(f"{len(others)} other ncpaper training(s) (pid {pids}) already use {busy} thread(s) of this "
                   f"machine's {cpus} cores, and this run asks for {self.threads}: each will run many times "
                   f"slower. Give concurrent runs --threads {max(1, cpus // (len(others) + 1))} (the thread "
                   f"count is part of the cache key), or use `ncpaper sweep --workers`")
        return self

    def __exit__(self, *exc):
        self.file.unlink(missing_ok=True)


def _check_device(device: str) -> None:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but this torch {torch.__version__} sees no CUDA GPU: "
                         "use --device cpu (or install a CUDA build of torch on a machine with a GPU)")
    if device.startswith("mps") and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r} asked for, but MPS is not available here: use --device cpu")


def _prepare_folder(path: Path) -> None:
    """Check before any training that ``path`` (``results/<key>``) can hold the run; create it."""
    root, lock = path.parent, Path(f"{path}.lock")
    if root.exists() and not root.is_dir():
        raise ResultsFolderError(f"the results folder {root} is a file: point --results (or NCPAPER_RESULTS) "
                                 "at a folder")
    if path.exists() and not path.is_dir():
        raise ResultsFolderError(f"{path} is a file where the run's folder should be: move or delete it")
    if lock.is_dir():
        raise ResultsFolderError(f"{lock} is a folder where the run's lock file should be: remove it")
    for name in RUN_FILES:
        if (path / name).is_dir():
            raise ResultsFolderError(f"{path / name} is a folder where the run's {name} file should be: remove it")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-probe.tmp{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ResultsFolderError(f"cannot write the run into {path} ({err.strerror or err}): the run is not "
                                 "cached there; give a writable --results (or NCPAPER_RESULTS)") from None


def _remove_leftovers(path: Path) -> None:
    """Temporary files of writers killed mid-write (``.<name>.tmp<pid>``); call holding the lock."""
    for tmp in path.glob(".*.tmp*"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)


def data_checksums(config: RunConfig, data_root=None, loaded: dict | None = None) -> dict:
    """The checksums of a run's training and test images, part of its key.

    A split this process has loaded before is not decoded again (reading a phase diagram's runs decodes
    each seed's subset once); one it has not is loaded into ``loaded`` (split -> data), for training.
    """
    loaded = {} if loaded is None else loaded

    def checksum(split: str, n):
        if n is None:
            return None
        known = data_module.known_checksum(config.dataset, split, n, config.seed, root=data_root)
        if known is None:
            loaded[split] = config.load_data(split, data_root)
            known = loaded[split].provenance["pixels_sha256"]
        return known

    return {"train": checksum("train", config.n_per_class), "test": checksum("test", config.n_test_per_class)}


def run_or_load(config: RunConfig, results: str | os.PathLike | None = None, progress: bool = False,
                data_root: str | os.PathLike | None = None, checkpoint_every: int | None = None,
                threads: int | None = None) -> Run:
    """Return the cached run for ``config``, training (or resuming) it first if needed.

    ``threads``: torch's intra-op threads for training (default: :func:`default_threads`); part
    of the key, and set for the training only.
    """
    config = config.validated()
    if threads is None:
        threads = default_threads()
    if int(threads) != threads or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    _check_device(config.device)
    loaded: dict = {}
    checksums = data_checksums(config, data_root, loaded)
    key = config_key(config, checksums, threads)
    path = results_dir(results) / key

    def cached() -> Run | None:
        run = load_run(path, key)
        return run if run is not None and run.meta["config"] == config.to_dict() else None

    if (run := cached()) is not None:
        return run
    _prepare_folder(path)
    with FileLock(str(path) + ".lock"):
        if (run := cached()) is not None:  # another process finished it while we waited
            return run
        _remove_leftovers(path)
        train, test = (loaded[s] if s in loaded else config.load_data(s, data_root) for s in ("train", "test"))
        previous_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            with _Registered(threads, config):
                _train_into(path, key, config, train, test, threads, progress, checkpoint_every)
        finally:
            torch.set_num_threads(previous_threads)
    run = load_run(path, key)
    if run is None:
        raise ResultsFolderError(f"the result just written to {path} does not read back: check the disk")
    return run


def _train_into(path: Path, key: str, config: RunConfig, train, test, threads: int, progress: bool,
                checkpoint_every: int | None) -> None:
    """Train (or resume) the run and write its files, ``meta.json`` last. Call holding the lock."""
    checkpoint = path / "checkpoint.pt"
    resume = _load_checkpoint(checkpoint, key)
    code = {"versions": _versions(), "git": _git_state()}  # the code that trains, not the code at the end
    every = checkpoint_every if checkpoint_every is not None else max(1, config.epochs // 10)
    checkpointer = _Checkpointer(checkpoint, key, config, every, CHECKPOINT_SECONDS, resume)
    tic = time.perf_counter()
    try:
        rows, model, timings = fit(config, train, test, progress=progress, resume=resume,
                                   on_checkpoint=checkpointer, checkpoint_every=1)
    except TrainingDivergedError as err:  # leave a record of the failure, never a result
        record = {"config": config.to_dict(), "error": str(err), **code,
                  "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        _atomic_write(path / "failed.json", json.dumps(record, indent=2).encode())
        raise
    table = pd.DataFrame(rows)
    for i, column in enumerate(RUN_COLUMNS):
        value = key if column == "run_id" else getattr(config, column)
        table.insert(i, column, value)
    files = {"metrics.csv": table.to_csv(index=False).encode(), "model.pt": _torch_bytes(model.state_dict())}
    need = sum(len(data) for data in files.values()) + 100_000
    free = _free_bytes(path)
    if checkpoint.exists() and free is not None and free < need:  # the result supersedes the checkpoint
        notice(f"low on space in {path}: removing the checkpoint to make room for the result")
        checkpoint.unlink()
    for name, data in files.items():
        _atomic_write(path / name, data)
    meta = {
        "schema": SCHEMA_VERSION, "metrics_version": METRICS_VERSION, "key": key,
        "config": config.to_dict(), "n_rows": len(table), "threads": threads,
        "reproducibility": REPRODUCIBILITY,
        "data": {"train": train.provenance, "test": test.provenance if test else None},
        "data_source": train.provenance["source"],
        "input_shape": list(train.input_shape), "num_classes": train.num_classes,
        **code, "device": _device_name(config.device), "cpu": _cpu_model(),
        "timings": {**timings, "wall_seconds": time.perf_counter() - tic,
                    "resumed_from_epoch": resume.epoch if resume else None},
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "files": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
    }
    _atomic_write(path / "meta.json", json.dumps(meta, indent=2).encode())
    checkpoint.unlink(missing_ok=True)


def collect(runs: list[Run]) -> pd.DataFrame:
    """One tidy table (one row per run x measured epoch) from several runs."""
    return pd.concat([run.table for run in runs], ignore_index=True)
