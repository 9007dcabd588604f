"""Run many configurations: in this process, or one Dask task per run on a local or remote cluster.

Each run goes through :func:`ncpaper.results.run_or_load`, so finished runs are read from the
cache, a restarted sweep only trains what is missing, and the file lock keeps two overlapping
sweeps from training the same run twice at once. Dask supplies the scheduling and the retries.
A run's thread count is part of its key: every run uses ``threads`` (default 1, or $NCPAPER_THREADS)
wherever it runs, so the CLI, the Dask workers and the notebooks all find the same runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from .results import Run, default_threads, results_dir, run_or_load
from .train import RunConfig

__all__ = ["SweepError", "check_scheduler", "local_cluster", "run_sweep"]

SCHEDULER_SECONDS = 10.0  # how long a --scheduler address has to answer as a Dask scheduler


class SweepError(RuntimeError):
    """A sweep could not finish (a run kept killing its Dask worker)."""


def _run_in_worker(config: RunConfig, results: str, data_root: str | None, threads: int) -> str:
    import torch

    torch.set_num_threads(threads)
    return str(run_or_load(config, results, data_root=data_root, threads=threads).path)


def run_sweep(configs: list[RunConfig], workers: int = 1, scheduler: str | None = None,
              results: str | os.PathLike | None = None, data_root: str | os.PathLike | None = None,
              progress: bool = True, threads: int | None = None) -> list[Run]:
    """Run (or read) every config; return the runs in the order given.

    ``workers=1`` and no ``scheduler``: one after another in this process. ``workers>1``: a Dask
    ``LocalCluster`` of that many single-threaded processes. ``scheduler``: the address of a
    running Dask scheduler (a SLURM cluster through dask-jobqueue, for instance). ``threads``:
    torch threads per run, part of each run's key (default: :func:`~ncpaper.results.default_threads`).
    """
    configs = [c.validated() for c in configs]
    if not configs:
        raise ValueError("the sweep is empty: give at least one weight decay and one seed")
    root = str(results_dir(results).resolve())
    data = str(Path(data_root).resolve()) if data_root else os.environ.get("NCPAPER_DATA")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    threads = default_threads() if threads is None else threads
    if int(threads) != threads or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    if workers == 1 and scheduler is None:
        from tqdm import tqdm

        return [run_or_load(c, root, data_root=data, progress=progress, threads=threads)
                for c in tqdm(configs, desc="runs", disable=not progress or len(configs) == 1)]
    return _run_on_dask(configs, workers, scheduler, root, data, progress, threads)


def _worker_environment() -> dict:
    """Dask's worker environment without ``MALLOC_TRIM_THRESHOLD_``.

    Dask sets it to return memory to the OS sooner; but setting it switches off glibc's dynamic
    mmap threshold, so every activation tensor over 128 KiB is mmapped and unmapped at each step:
    measured 7,100 images/s in a worker against 11,400 in a plain process (CIFAR-10 MLP 512x3,
    one thread), 9,900 without it (benchmarks/README.md).
    """
    import dask

    env = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
    env.pop("MALLOC_TRIM_THRESHOLD_", None)
    return env


def local_cluster(workers: int, environment: dict | None = None):
    """The Dask ``LocalCluster`` of a sweep: ``workers`` single-threaded processes, any free dashboard port."""
    import dask
    from distributed import LocalCluster

    env = _worker_environment() if environment is None else environment
    with dask.config.set({"distributed.nanny.pre-spawn-environ": env}):
        return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0")


async def _identity(address: str, seconds: float):
    """What answers Dask's ``identity`` request at ``address`` (each step within ``seconds``)."""
    import asyncio

    from distributed.comm import connect

    comm = await asyncio.wait_for(connect(address, timeout=seconds), seconds)
    try:
        await asyncio.wait_for(comm.write({"op": "identity", "reply": True}), seconds)
        return await asyncio.wait_for(comm.read(), seconds)
    finally:
        comm.abort()


def check_scheduler(address: str, seconds: float = SCHEDULER_SECONDS) -> None:
    """A ConnectionError (one line) unless a Dask scheduler answers at ``address`` within about ``seconds``: a port
    that listens but speaks something else (the dashboard's 8787) would keep Dask's client waiting for ever."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(1)  # its own event loop, also where one runs already (Jupyter)
    try:
        reply = pool.submit(asyncio.run, _identity(address, seconds)).result(timeout=3 * seconds)
    except Exception as err:  # a timeout, a refusal, or bytes that Dask cannot read (MemoryError)
        reply = f"{type(err).__name__}: {' '.join(str(err).split())[:100]}".rstrip(": ")
    finally:
        pool.shutdown(wait=False)
    if not (isinstance(reply, dict) and reply.get("type") == "Scheduler"):
        what = f"a Dask {reply['type']}" if isinstance(reply, dict) and "type" in reply else reply
        raise ConnectionError(f"cannot reach a Dask scheduler at {address!r} within {seconds:g} s ({what}); start one "
                              "with `dask scheduler` (port 8786; the dashboard's 8787 is not it) or leave "
                              "--scheduler out for a local cluster")


def _run_on_dask(configs, workers, scheduler, root, data, progress, threads) -> list[Run]:
    from distributed import Client, KilledWorker, as_completed
    from tqdm import tqdm

    from .results import load_run

    cluster = None
    try:
        if scheduler is None:
            cluster = local_cluster(workers)
            client = Client(cluster)
            client.run(_ignore_interrupts)
        else:
            check_scheduler(scheduler)
            try:
                client = Client(scheduler, timeout=f"{SCHEDULER_SECONDS:g}s")
            except (OSError, TimeoutError) as err:
                raise ConnectionError(f"cannot reach a Dask scheduler at {scheduler!r} ({err}); start one "
                                      "with `dask scheduler` or leave --scheduler out for a local cluster") from None
        with client:
            futures = client.map(_run_in_worker, configs, results=root, data_root=data, threads=threads,
                                 pure=False)  # a lost worker's task is rescheduled by Dask itself
            try:
                for _ in tqdm(as_completed(futures), total=len(futures), desc="runs", disable=not progress):
                    pass
                paths = client.gather(futures)
            except KilledWorker as err:
                config = next((c for c, f in zip(configs, futures, strict=True) if f.key == err.task), None)
                what = config.describe() if config else str(err.task)
                raise SweepError(f"a Dask worker died each time it ran {what} (out of memory? see the worker's "
                                 "log); the runs that finished are cached: rerun the sweep to continue") from None
    except KeyboardInterrupt:  # Ctrl-C: the cluster is closed without Dask's log lines of lost tasks and workers
        logging.getLogger("distributed").setLevel(logging.CRITICAL)
        raise
    finally:
        if cluster is not None:
            cluster.close()
    return [load_run(Path(p)) for p in paths]


def _ignore_interrupts() -> None:
    """In a local cluster's worker: Ctrl-C in the terminal reaches it too, and the sweep's own process closes the
    cluster; the worker ignores it rather than print a traceback of its own."""
    import signal

    with contextlib.suppress(ValueError):  # not the worker's main thread: nothing to do
        signal.signal(signal.SIGINT, signal.SIG_IGN)
