"""The result cache: one folder per run, keyed by a hash of everything that changes its numbers.

``results/<key>/`` holds ``metrics.csv`` (one row per measured epoch), ``model.pt`` (the final
weights) and ``meta.json`` (config, data provenance, versions, git commit, device, timings, and
the sha256 of the other two files). ``meta.json`` is written last, each file to a temporary
name then renamed, so a folder without a valid ``meta.json`` is never read as a result: it is
recomputed. A file lock keeps two processes from training the same run at once; a checkpoint
lets a killed run continue where it stopped.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from filelock import FileLock

from . import __version__
from . import data as data_module
from .train import RunConfig, TrainingDivergedError, TrainingState, fit

__all__ = ["SCHEMA_VERSION", "Run", "collect", "config_key", "load_run", "results_dir", "run_or_load"]

SCHEMA_VERSION = 2
# Bump when a change to ncpaper.metrics or ncpaper.train.measure changes the numbers.
METRICS_VERSION = 2
RUN_COLUMNS = ("run_id", "dataset", "model", "weight_decay", "seed")


def results_dir(root: str | os.PathLike | None = None) -> Path:
    return Path(root or os.environ.get("NCPAPER_RESULTS") or "results").expanduser()


def config_key(config: RunConfig, data_checksums: dict) -> str:
    """sha256 of the config, the exact pixels used and the versions of the result format and metrics."""
    payload = {"config": config.to_dict(), "data": data_checksums, "schema": SCHEMA_VERSION,
               "metrics_version": METRICS_VERSION}
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
        return self.table.iloc[-1]

    def model(self):
        from .models import make_model

        if not (self.path / "model.pt").exists():
            raise FileNotFoundError(f"{self.path} holds no weights (published runs keep only their tables and "
                                    f"metadata); retrain it with `ncpaper sweep` to get the model")
        cfg, shape = self.config, self.meta["input_shape"]
        model = make_model(cfg.model, shape, self.meta["num_classes"], **cfg.sizes)
        model.load_state_dict(torch.load(self.path / "model.pt", map_location="cpu", weights_only=True))
        return model


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_run(path: Path) -> Run | None:
    """Read a cached run; None if it is missing, partial, corrupted or of an older schema."""
    try:
        meta = json.loads((path / "meta.json").read_text())
        if meta.get("schema") != SCHEMA_VERSION or meta.get("metrics_version") != METRICS_VERSION:
            return None
        for name, digest in meta["files"].items():
            if data_module.sha256_of(path / name) != digest:
                return None
        table = pd.read_csv(path / "metrics.csv")
        if len(table) != meta["n_rows"]:
            return None
    except (OSError, ValueError, KeyError, TypeError, pd.errors.ParserError):
        return None
    return Run(path, table, meta)


def _git_state() -> dict:
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
    return f"{_cpu_model()} ({platform.machine()}), {torch.get_num_threads()} threads"


def _versions() -> dict:
    import numpy
    import torchvision

    return {"python": sys.version.split()[0], "torch": torch.__version__, "torchvision": torchvision.__version__,
            "numpy": numpy.__version__, "ncpaper": __version__}


def _save_checkpoint(path: Path, key: str, state: TrainingState) -> None:
    _atomic_write(path, lambda tmp: torch.save({"key": key, "state": state.__dict__}, tmp))


def _load_checkpoint(path: Path, key: str) -> TrainingState | None:
    if not path.exists():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=False)
        if saved.get("key") != key:
            return None
        return TrainingState(**saved["state"])
    except Exception as err:
        warnings.warn(f"ignoring unreadable checkpoint {path}: {err}", stacklevel=2)
        return None


def run_or_load(config: RunConfig, results: str | os.PathLike | None = None, progress: bool = False,
                data_root: str | os.PathLike | None = None, checkpoint_every: int | None = None) -> Run:
    """Return the cached run for ``config``, training (or resuming) it first if needed."""
    config = config.validated()
    train = data_module.load(config.dataset, "train", config.n_per_class, config.seed, root=data_root)
    test = (data_module.load(config.dataset, "test", config.n_test_per_class, config.seed, root=data_root)
            if config.n_test_per_class is not None else None)
    checksums = {"train": train.provenance["pixels_sha256"],
                 "test": test.provenance["pixels_sha256"] if test else None}
    key = config_key(config, checksums)
    path = results_dir(results) / key
    if (run := load_run(path)) is not None:
        return run
    path.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if (run := load_run(path)) is not None:  # another process finished it while we waited
            return run
        checkpoint = path / "checkpoint.pt"
        resume = _load_checkpoint(checkpoint, key)
        code = {"versions": _versions(), "git": _git_state()}  # the code that trains, not the code at the end
        tic = time.perf_counter()
        try:
            rows, model, timings = fit(
                config, train, test, progress=progress, resume=resume,
                on_checkpoint=lambda state: _save_checkpoint(checkpoint, key, state),
                checkpoint_every=checkpoint_every if checkpoint_every is not None else max(1, config.epochs // 10))
        except TrainingDivergedError as err:  # leave a record of the failure, never a result
            record = {"config": config.to_dict(), "error": str(err), **code,
                      "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
            _atomic_write(path / "failed.json", lambda tmp: tmp.write_text(json.dumps(record, indent=2)))
            raise
        table = pd.DataFrame(rows)
        for i, column in enumerate(RUN_COLUMNS):
            value = key if column == "run_id" else getattr(config, column)
            table.insert(i, column, value)
        _atomic_write(path / "metrics.csv", lambda tmp: table.to_csv(tmp, index=False))
        _atomic_write(path / "model.pt", lambda tmp: torch.save(model.state_dict(), tmp))
        meta = {
            "schema": SCHEMA_VERSION, "metrics_version": METRICS_VERSION, "key": key,
            "config": config.to_dict(), "n_rows": len(table),
            "data": {"train": train.provenance, "test": test.provenance if test else None},
            "data_source": train.provenance["source"],
            "input_shape": list(train.input_shape), "num_classes": train.num_classes,
            **code, "device": _device_name(config.device),
            "timings": {**timings, "wall_seconds": time.perf_counter() - tic,
                        "resumed_from_epoch": resume.epoch if resume else None},
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "files": {name: data_module.sha256_of(path / name) for name in ("metrics.csv", "model.pt")},
        }
        _atomic_write(path / "meta.json", lambda tmp: tmp.write_text(json.dumps(meta, indent=2)))
        checkpoint.unlink(missing_ok=True)
    run = load_run(path)
    if run is None:
        raise RuntimeError(f"the result just written to {path} does not read back; is the disk full?")
    return run


def collect(runs: list[Run]) -> pd.DataFrame:
    """One tidy table (one row per run x measured epoch) from several runs."""
    return pd.concat([run.table for run in runs], ignore_index=True)
