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
concurrent runs do not share cores). A folder is served only if its ``meta.json`` (at most 1 MiB) is an
object whose key is the folder's name and follows from its own config, data checksums, versions and
thread count, whose checksum of itself (``meta_sha256``) matches, whose config is the one asked for and
whose files match their sha256; anything else is recomputed. Bitwise: same key on the same CPU model and
library versions gives the same numbers; another CPU model or BLAS build may differ in the last bits.

Before training, a run that cannot fit is refused in one line: its weights, gradients and momentum
larger than the memory available, or its files larger than the free space of the results folder.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import hashlib
import io
import json
import math
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
from .models import make_model
from .train import (
    RunConfig,
    TrainingDivergedError,
    TrainingState,
    fit,
    initial_model,
    lr_scheduler,
    measurement_epochs,
    sgd,
)

__all__ = ["SCHEMA_VERSION", "DiskFullError", "InvalidRunError", "OutOfMemoryError", "ResultsFolderError", "Run",
           "check_run", "collect", "config_key", "default_threads", "load_run", "meta_checksum", "read_meta",
           "results_dir", "run_or_load", "sealed", "verified_meta"]

SCHEMA_VERSION = 2
# Bump when a change to ncpaper.metrics or ncpaper.train.measure changes the numbers or adds columns.
# 4: gradient norms and sum_l ||W_l||^2 at every measured epoch (grad_norm, data_grad_norm, weight_norm_sq).
# 5: settled rows record NC1's bounds by the spread of the outputs and the centred NC3's two sources (ncpaper.bounds:
#    nc1_lower, nc1_upper, nc1_outputs, nc3_centred_ridge, nc3_centred_within, nc3_centred_asymmetry,
#    output_asymmetry, sigma_w_max, sigma_w_means).
# 6: settled rows record nc1_lower_condition, the condition number of what the lower bound pseudo-inverts.
# 7: settled rows record the lower bound by the stable route (nc1_lower, nc1_lower_condition = cond(M A^1/2)) and the
#    outputs formula beside it (nc1_lower_pinv, nc1_lower_pinv_condition = cond(M A M^T)).
METRICS_VERSION = 7
RUN_COLUMNS = ("run_id", "dataset", "model", "weight_decay", "seed")
RUN_FILES = ("metrics.csv", "model.pt", "meta.json", "checkpoint.pt", "failed.json")
RESULT_FILES = ("metrics.csv", "model.pt")  # the files meta.json covers with their sha256
# A checkpoint at least this often (seconds of wall time), besides every tenth of the epochs;
# $NCPAPER_CHECKPOINT_SECONDS overrides it (read when a run trains: checkpoint_seconds()).
CHECKPOINT_SECONDS = 300.0
# A meta.json is a few KB; a larger one is not read (a 1 GB one took 26 s and 4.7 GB to reject).
MAX_META_BYTES = 1 << 20
# A metrics.csv up to this size is hashed and parsed from one read; a larger one is hashed block by block.
MAX_TABLE_BYTES_KEPT = 64 << 20
# torch threads a run may ask for: far more than any CPU has (100,000 threads made imports fail).
MAX_THREADS = 1024
# Runs expected to take longer than this say so (and how long) after their first epoch.
ANNOUNCE_SECONDS = 3600
REPRODUCIBILITY = ("bitwise identical measurements for the same key (thread count included) on the same CPU "
                   "model or GPU with the same library versions (both in this file); another CPU model or BLAS "
                   "build may differ in the last bits")


class ResultsFolderError(ValueError):
    """The results folder cannot hold a run: a file where a folder belongs, read-only, or full."""


class DiskFullError(ResultsFolderError):
    """No space left for a file of a run."""


class InvalidRunError(ValueError):
    """A folder that is not a valid run; ``file`` names the file at fault (``meta.json``, ``metrics.csv`` ...)."""

    def __init__(self, file: str, why: str):
        super().__init__(f"{file} {why}")
        self.file, self.why = file, why


def _disk_full(path: Path, need: int) -> DiskFullError:
    free = _free_bytes(path.parent)
    return DiskFullError(f"no space left on {path.parent}: need ~{_megabytes(need)} for {path.name}"
                         + (f" ({_megabytes(free)} free)" if free is not None else ""))


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.3g} MB"


def _gigabytes(n: float) -> str:
    return f"{n / 1e9:.3g} GB"


def notice(message: str) -> None:
    """One line on stderr, ``ncpaper: <message>`` (seen in the terminal and in Dask worker logs)."""
    print(f"ncpaper: {message}", file=sys.stderr, flush=True)


def results_dir(root: str | os.PathLike | None = None) -> Path:
    return Path(root or os.environ.get("NCPAPER_RESULTS") or "results").expanduser()


def default_threads() -> int:
    """torch threads a run trains with unless asked: $NCPAPER_THREADS, else 1."""
    value = os.environ.get("NCPAPER_THREADS") or "1"
    if not value.isdigit() or not 1 <= int(value) <= MAX_THREADS:
        raise ValueError(f"NCPAPER_THREADS must be a positive integer (at most {MAX_THREADS}), got {value!r}")
    return int(value)


def check_threads(threads) -> None:
    """``threads`` must be an integer from 1 to :data:`MAX_THREADS`."""
    if isinstance(threads, bool) or not isinstance(threads, int | float) or int(threads) != threads or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    if threads > MAX_THREADS:
        raise ValueError(f"threads must be at most {MAX_THREADS} (this machine has {_usable_cpus()} cores), "
                         f"got {threads!r}")


def checkpoint_seconds() -> float:
    """Seconds of wall time between checkpoints: $NCPAPER_CHECKPOINT_SECONDS, else :data:`CHECKPOINT_SECONDS`."""
    value = os.environ.get("NCPAPER_CHECKPOINT_SECONDS")
    if not value:
        return CHECKPOINT_SECONDS
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds >= 0):
        raise ValueError(f"NCPAPER_CHECKPOINT_SECONDS must be a number of seconds (0 or more), got {value!r}")
    return seconds


def _hash_key(config: dict, checksums: dict, schema, metrics_version, threads) -> str:
    payload = {"config": config, "data": checksums, "schema": schema, "metrics_version": metrics_version,
               "threads": threads}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def config_key(config: RunConfig, data_checksums: dict, threads: int | None = None) -> str:
    """sha256 of the config, the exact pixels, the format and metrics versions and the thread count.

    ``threads``: torch's intra-op threads during training (default: :func:`default_threads`); they
    change the order of float reductions, so 1 and 2 threads are two different runs.
    """
    return _hash_key(config.to_dict(), data_checksums, SCHEMA_VERSION, METRICS_VERSION,
                     int(threads or default_threads()))


def _key_of(meta: dict) -> str:
    """The key that ``meta``'s own config, data checksums, versions and thread count give."""
    data = meta["data"]
    checksums = {"train": data["train"]["pixels_sha256"],
                 "test": data["test"]["pixels_sha256"] if data["test"] is not None else None}
    return _hash_key(meta["config"], checksums, meta["schema"], meta["metrics_version"], meta["threads"])


def meta_checksum(meta: dict) -> str:
    """sha256 of ``meta``'s canonical JSON (sorted keys, no spaces), its own ``meta_sha256`` left out."""
    rest = {k: v for k, v in meta.items() if k != "meta_sha256"}
    return hashlib.sha256(json.dumps(rest, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def sealed(meta: dict) -> dict:
    """``meta`` as it reads back from JSON, with its ``meta_sha256``: the record to write as meta.json."""
    meta = json.loads(json.dumps({k: v for k, v in meta.items() if k != "meta_sha256"}))
    return {**meta, "meta_sha256": meta_checksum(meta)}


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
    """Free bytes on the file system that holds ``folder`` (or would: its nearest existing parent)."""
    for place in (folder, *folder.parents):
        try:
            return shutil.disk_usage(place).free
        except FileNotFoundError:
            continue
        except OSError:
            return None
    return None


def _write_file(path: Path, data: bytes) -> None:
    """Write a new file; a link or file already at ``path`` is replaced, never written through."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``.<name>.tmp<pid>`` then rename it; a full disk raises :class:`DiskFullError`."""
    free = _free_bytes(path.parent)
    if free is not None and free < len(data):
        raise _disk_full(path, len(data))
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        _write_file(tmp, data)
        os.replace(tmp, path)
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _disk_full(path, len(data)) from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


def _torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def load_run(path: Path, key: str | None = None, older_metrics: bool = False) -> Run | None:
    """Read a cached run; None if it is missing, partial, corrupted, edited, of an older schema or another key.

    The checks are :func:`check_run`'s. ``older_metrics`` (published runs, a record of what an earlier
    version measured) also accepts a run measured with an older ``METRICS_VERSION``: its table lacks the
    columns added since, never holds other numbers.
    """
    try:
        return check_run(path, key, older_metrics)
    except InvalidRunError:
        return None


def check_run(path: Path, key: str | None = None, older_metrics: bool = False) -> Run:
    """The run in ``path``, or :class:`InvalidRunError` naming the file at fault and why.

    Its ``meta.json`` passes :func:`verified_meta`, and ``metrics.csv`` has the rows it says. The table
    is parsed from the bytes that were checksummed, in one pass (``low_memory=False``: the same values
    as pandas' default chunked parse, a sixth faster on a run's table).
    """
    meta, table_bytes = _verified(path, key, older_metrics)
    try:
        table = pd.read_csv(io.BytesIO(table_bytes) if table_bytes is not None else path / "metrics.csv",
                            low_memory=False)
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise InvalidRunError("metrics.csv", f"cannot be read as a table ({type(err).__name__})") from None
    if len(table) != meta["n_rows"]:
        raise InvalidRunError("metrics.csv", f"has {len(table)} rows where meta.json says {meta['n_rows']!r}")
    return Run(path, table, meta)


def verified_meta(path: Path, key: str | None = None, older_metrics: bool = False) -> dict:
    """``path``'s ``meta.json``, checked with the files it covers; else :class:`InvalidRunError`.

    It (at most :data:`MAX_META_BYTES`) must be a JSON object whose ``key`` is ``key`` (default: the
    folder's name) and is the hash of its own config, data checksums, versions and thread count; whose
    ``meta_sha256``, where it has one (runs written before it was added have none), is the checksum of
    the rest; and whose ``files`` sha256 match ``metrics.csv`` and ``model.pt``: a result file in the folder
    that it does not list is refused too.
    """
    return _verified(path, key, older_metrics)[0]


def _verified(path: Path, key: str | None, older_metrics: bool) -> tuple[dict, bytes | None]:
    """:func:`verified_meta`'s record, and the bytes of ``metrics.csv`` it checked."""
    meta = read_meta(path)
    try:
        _check_versions(meta, older_metrics)
        if meta.get("key") != (key or path.name):
            raise InvalidRunError("meta.json", f"is the record of run {meta.get('key')!r}, not of {key or path.name}")
        if _key_of(meta) != meta["key"]:
            raise InvalidRunError("meta.json", "was edited: its config, data checksums, versions and thread count "
                                               "do not give its key")
        if "meta_sha256" in meta and meta["meta_sha256"] != meta_checksum(meta):
            raise InvalidRunError("meta.json", "was edited: it does not match its own checksum (meta_sha256)")
        table_bytes = _check_files(path, meta["files"])
        RunConfig.from_dict(meta["config"])
    except InvalidRunError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as err:
        raise InvalidRunError("meta.json", f"does not describe a run ({type(err).__name__}: {err})") from None
    return meta, table_bytes


def read_meta(path: Path) -> dict:
    """``path/meta.json`` as a dict with its ``config`` and ``files``: read at most :data:`MAX_META_BYTES`."""
    try:
        with data_module.open_regular(path / "meta.json") as f:
            raw = f.read(MAX_META_BYTES + 1)
    except OSError as err:
        raise InvalidRunError("meta.json", f"cannot be read ({err.strerror or err})") from None
    if len(raw) > MAX_META_BYTES:
        raise InvalidRunError("meta.json", f"is larger than {MAX_META_BYTES >> 20} MiB: no run's record is")
    try:
        meta = json.loads(raw)
    except (ValueError, RecursionError):
        raise InvalidRunError("meta.json", "is not JSON (or nested too deeply)") from None
    if not (isinstance(meta, dict) and isinstance(meta.get("files"), dict) and isinstance(meta.get("config"), dict)
            and "metrics.csv" in meta["files"]):
        raise InvalidRunError("meta.json", "is not a run's record (an object with its config and files)")
    return meta


def _check_versions(meta: dict, older_metrics: bool) -> None:
    version = meta.get("metrics_version")
    if meta.get("schema") != SCHEMA_VERSION or not isinstance(version, int) or not (
            version == METRICS_VERSION or (older_metrics and 1 <= version < METRICS_VERSION)):
        raise InvalidRunError("meta.json", f"is of schema {meta.get('schema')!r}, metrics version {version!r}; "
                                           f"this ncpaper reads {SCHEMA_VERSION}, {METRICS_VERSION}")


def _digest(path: Path, keep: bool) -> tuple[str, bytes | None]:
    """sha256 of a regular file, and its bytes if ``keep`` and it is small (a table, not a large hostile file)."""
    with data_module.open_regular(path) as f:
        if keep and os.fstat(f.fileno()).st_size <= MAX_TABLE_BYTES_KEPT:
            data = f.read()
            return hashlib.sha256(data).hexdigest(), data
    return data_module.sha256_of(path), None


def _check_files(path: Path, files: dict) -> bytes | None:
    """Every file ``files`` lists matches its sha256, and every result file in ``path`` is listed; returns
    the bytes of ``metrics.csv`` if it is small (None: read it again)."""
    table = None
    for name, digest in files.items():
        if name not in RESULT_FILES:
            raise InvalidRunError(name, "is listed in meta.json, but it is not a result file of a run")
        try:
            actual, data = _digest(path / name, keep=name == "metrics.csv")
            table = data if name == "metrics.csv" else table
        except OSError as err:
            raise InvalidRunError(name, f"cannot be read ({err.strerror or err})") from None
        if actual != digest:
            raise InvalidRunError(name, "does not match its sha256 in meta.json")
    for name in RESULT_FILES:
        if name not in files and os.path.lexists(path / name):
            raise InvalidRunError(name, "is in the folder, but meta.json does not cover it")
    return table


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


def _load_checkpoint(path: Path, key: str, config: RunConfig, train) -> TrainingState | None:
    """The checkpoint's state if it is of this key and ``fit`` can resume from it; tensors and plain containers
    only (no code runs)."""
    if not path.exists():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved.get("key") != key:
            return None
        state = TrainingState(**saved["state"])
    except Exception as err:  # a damaged, foreign or malicious file: train from the start
        notice(f"ignoring unreadable checkpoint {path} ({_one_line(err)})")
        return None
    try:
        _check_resumable(state, config, train)
    except Exception as err:  # the right key, but not this run's state: train from the start
        notice(f"ignoring checkpoint {path}, which does not fit this run ({_one_line(err)}); training from the start")
        return None
    return state


def _one_line(err: Exception) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split())[:150]}"


def _check_resumable(state: TrainingState, config: RunConfig, train) -> None:
    """Raise unless ``fit`` can continue from ``state``: its epoch and rows are this run's, and its model,
    optimiser, schedule and generator states load into fresh ones as ``fit`` loads them."""
    if isinstance(state.epoch, bool) or not isinstance(state.epoch, int) or not 0 < state.epoch < config.epochs:
        raise ValueError(f"epoch {state.epoch!r} is not within this run's 1..{config.epochs - 1}")
    measured = [e for e in measurement_epochs(config.epochs, config.n_measurements) if e <= state.epoch]
    epochs = [row.get("epoch") if isinstance(row, dict) else row for row in state.rows] \
        if isinstance(state.rows, list) else None
    if epochs != measured:
        raise ValueError(f"its rows are not the measurements of epochs {measured}")
    model = initial_model(config, train)
    model.load_state_dict(state.model)
    optimizer = sgd(model.parameters(), config)
    optimizer.load_state_dict(state.optimizer)
    for parameter in model.parameters():
        buffer = optimizer.state.get(parameter, {}).get("momentum_buffer")
        if buffer is not None and buffer.shape != parameter.shape:
            raise ValueError(f"a momentum buffer of shape {tuple(buffer.shape)} for a weight of shape "
                             f"{tuple(parameter.shape)}")
    lr_scheduler(optimizer, config).load_state_dict(state.scheduler)
    torch.Generator().set_state(state.generator)
    float(state.train_seconds) + float(state.measure_seconds)


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
        try:
            self.file.unlink(missing_ok=True)
        except OSError:  # the registry could not be written in the first place
            pass


def _check_device(device: str) -> None:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but this torch {torch.__version__} sees no CUDA GPU: "
                         "use --device cpu (or install a CUDA build of torch on a machine with a GPU)")
    if device.startswith("mps") and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r} asked for, but MPS is not available here: use --device cpu")


class OutOfMemoryError(ValueError):
    """A run whose weights, gradients and momentum alone are larger than the memory available."""


@dataclass(frozen=True)
class _Footprint:
    """What a run holds in memory at the least and what it writes (estimates in bytes, from its weights)."""

    weights: tuple[int, ...]  # the entries of each weight matrix
    rows: int  # measured rows, the settled one included

    @classmethod
    def of(cls, config: RunConfig) -> _Footprint:
        """``config``'s network built on the meta device (no memory taken), and its measured rows."""
        shape = data_module.input_shape(config.dataset, config.input_pool)
        with torch.device("meta"):
            model = make_model(config.model, shape, data_module.NUM_CLASSES[config.dataset], **config.sizes)
        rows = len(measurement_epochs(config.epochs, config.n_measurements)) + 1
        return cls(tuple(p.numel() for p in model.parameters()), rows)

    @property
    def memory(self) -> int:
        """float32 weights, their gradients and SGD's momentum: what training holds at the very least."""
        return 12 * sum(self.weights)

    @property
    def result(self) -> int:
        """model.pt (float32 weights and torch.save's records), metrics.csv, meta.json, a block of each."""
        model = 4 * sum(self.weights) + 2048 + 512 * len(self.weights)
        metrics = self.rows * (1000 + 300 * len(self.weights))
        return model + metrics + 16_384 + 3 * 4096


def _available_memory(device: str) -> int | None:
    """Bytes of memory a run on ``device`` can take now (None: unknown): the GPU's free memory, or the
    machine's available memory and free swap within this process's cgroup limit."""
    if device.startswith("cuda"):
        return torch.cuda.mem_get_info(torch.device(device))[0]
    if device.startswith("mps"):
        return None
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f if len(line.split()) >= 2}
        available = info["MemAvailable"] + info.get("SwapFree", 0)
    except (OSError, KeyError, ValueError):
        return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        return min(available, int(limit) - used) if limit.isdigit() else available
    except (OSError, ValueError):
        return available


def _check_resources(config: RunConfig, path: Path) -> None:
    """Refuse, before any training, a run that cannot fit in memory or on the results folder's disk."""
    need = _Footprint.of(config)
    memory = _available_memory(config.device)
    if memory is not None and need.memory > memory:
        raise OutOfMemoryError(
            f"{config.describe()} ({config.architecture()}, {sum(need.weights):,} weights) needs at least "
            f"~{_gigabytes(need.memory)} of memory for its weights, gradients and momentum, and "
            f"~{_gigabytes(memory)} is available: make the network smaller (--widths, --channels, --fc-width)")
    free = _free_bytes(path)
    if free is None:
        return
    checkpoint = path / "checkpoint.pt"  # removed to make room for the result if need be
    free += checkpoint.stat().st_size if checkpoint.is_file() else 0
    if need.result > free:
        raise DiskFullError(f"no space for the run in {path.parent}: its model.pt, metrics.csv and meta.json take "
                            f"~{_megabytes(need.result)} and {_megabytes(free)} is free; nothing was trained: free "
                            "some space or give another --results (or NCPAPER_RESULTS)")


def _unlink_foreign_link(path: Path, folder: bool) -> None:
    """Remove a symbolic link at ``path`` (a run's folder or lock) unless it leads to this run's own folder
    (or lock) kept elsewhere: followed, it would let two keys write into one folder."""
    if not path.is_symlink():
        return
    target = Path(os.path.realpath(path))
    if target.name == path.name and (target.is_dir() if folder else target.is_file()):
        return
    what = "this run's folder" if folder else "this run's lock"
    notice(f"{path} was a symbolic link to {os.readlink(path)}, not to {what}: removed (the link only); the run "
           "gets a folder of its own")
    path.unlink(missing_ok=True)


def _prepare_folder(path: Path, config: RunConfig) -> bool:
    """Check before any training that ``path`` (``results/<key>``) can hold the run; create it.
    Returns whether it was created now."""
    root, lock = path.parent, Path(f"{path}.lock")
    data_module.cache_dir()  # the cache is a file: one line now, not after the training
    if root.exists() and not root.is_dir():
        raise ResultsFolderError(f"the results folder {root} is a file: point --results (or NCPAPER_RESULTS) "
                                 "at a folder")
    _unlink_foreign_link(path, folder=True)
    _unlink_foreign_link(lock, folder=False)
    if path.exists() and not path.is_dir():
        raise ResultsFolderError(f"{path} is a file where the run's folder should be: move or delete it")
    if lock.is_dir():
        raise ResultsFolderError(f"{lock} is a folder where the run's lock file should be: remove it")
    for name in RUN_FILES:
        if (path / name).is_dir():
            raise ResultsFolderError(f"{path / name} is a folder where the run's {name} file should be: remove it")
    _check_resources(config, path)
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-probe.tmp{os.getpid()}"
        _write_file(probe, b"")
        # outside the lock: a process holding it may already have removed the probe as a leftover (_remove_leftovers)
        probe.unlink(missing_ok=True)
    except OSError as err:
        raise ResultsFolderError(f"cannot write the run into {path} ({err.strerror or err}): the run is not "
                                 "cached there; give a writable --results (or NCPAPER_RESULTS)") from None
    return created


def _remove_leftovers(path: Path) -> None:
    """Temporary files of writers killed mid-write (``.<name>.tmp<pid>``); call holding the lock."""
    for tmp in path.glob(".*.tmp*"):
        if tmp.is_file() or tmp.is_symlink():
            tmp.unlink(missing_ok=True)


def _remove_dead_leftovers(path: Path) -> None:
    """Temporary files in a finished run's folder whose writer (the pid after ``.tmp``) is gone; where the folder
    is read-only they stay (the run is served all the same)."""
    for tmp in path.glob(".*.tmp*"):
        pid = tmp.name.rsplit(".tmp", 1)[1]
        if pid.isdigit() and not data_module.process_alive(int(pid)) and not tmp.is_dir():
            with contextlib.suppress(OSError):
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
    check_threads(threads)
    checkpoint_seconds()  # a bad $NCPAPER_CHECKPOINT_SECONDS: one line before any work
    _check_device(config.device)
    loaded: dict = {}
    checksums = data_checksums(config, data_root, loaded)
    key = config_key(config, checksums, threads)
    path = results_dir(results) / key

    def cached() -> Run | None:
        run = load_run(path, key)
        ok = run is not None and run.meta["config"] == config.to_dict() and "model.pt" in run.meta["files"]
        return run if ok else None

    if (run := cached()) is not None:
        _remove_dead_leftovers(path)
        return run
    created = _prepare_folder(path, config)
    try:
        with FileLock(str(path) + ".lock"):
            if (run := cached()) is not None:  # another process finished it while we waited
                return run
            path.mkdir(parents=True, exist_ok=True)
            _remove_leftovers(path)
            train, test = (loaded[s] if s in loaded else config.load_data(s, data_root) for s in ("train", "test"))
            previous_threads = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                with _Registered(threads, config):
                    _train_into(path, key, config, train, test, threads, progress, checkpoint_every)
            finally:
                torch.set_num_threads(previous_threads)
    except BaseException:
        if created:  # nothing of it may stay behind: an empty folder is removed
            with contextlib.suppress(OSError):
                path.rmdir()
        raise
    run = load_run(path, key)
    if run is None:
        raise ResultsFolderError(f"the result just written to {path} does not read back: check the disk")
    return run


def _train_into(path: Path, key: str, config: RunConfig, train, test, threads: int, progress: bool,
                checkpoint_every: int | None) -> None:
    """Train (or resume) the run and write its files, ``meta.json`` last. Call holding the lock."""
    checkpoint = path / "checkpoint.pt"
    resume = _load_checkpoint(checkpoint, key, config, train)
    code = {"versions": _versions(), "git": _git_state()}  # the code that trains, not the code at the end
    every = checkpoint_every if checkpoint_every is not None else max(1, config.epochs // 10)
    checkpointer = _Checkpointer(checkpoint, key, config, every, checkpoint_seconds(), resume)
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
    _write_result(path, {**files, "meta.json": json.dumps(sealed(meta), indent=2).encode()})
    checkpoint.unlink(missing_ok=True)


def _write_result(path: Path, files: dict[str, bytes]) -> None:
    """Write the result's files in order (``meta.json`` last); if one does not fit, those already written
    are removed again, so no partial result stays that looks like a run."""
    written = []
    try:
        for name, data in files.items():
            _atomic_write(path / name, data)
            written.append(name)
    except (OSError, DiskFullError):
        for name in written:
            (path / name).unlink(missing_ok=True)
        raise


def collect(runs: list[Run]) -> pd.DataFrame:
    """One tidy table (one row per run x measured epoch) from several runs."""
    return pd.concat([run.table for run in runs], ignore_index=True)
