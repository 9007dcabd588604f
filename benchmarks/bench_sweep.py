"""Sweep scaling: wall time of a fixed sweep in this process and on Dask with 1 and 2 workers.

The sweep is 8 runs of the phase diagram's default setting shortened to 100 epochs (a few seconds
each). Each mode starts from an empty results folder. Dask's per-run overhead is
(Dask with 1 worker - in this process) / runs. A last row runs 1 worker with Dask's stock worker
environment (MALLOC_TRIM_THRESHOLD_ set), which ncpaper's clusters leave out.

    NCPAPER_DATA=../shared/data python benchmarks/bench_sweep.py
"""

from __future__ import annotations

import tempfile
import time

import dask
import torch

from ncpaper.profiles import phase_configs
from ncpaper.sweep import local_cluster, run_sweep


def timed_sweep(configs, **kwargs) -> float:
    with tempfile.TemporaryDirectory() as results:
        tic = time.perf_counter()
        run_sweep(configs, results=results, progress=False, **kwargs)
        return time.perf_counter() - tic


def main():
    from dataclasses import replace

    from distributed import Client

    configs = [replace(c, epochs=100) for c in phase_configs("default", "mnist") if c.seed == 0][:8]
    torch.set_num_threads(1)
    in_process = timed_sweep(configs)
    modes = {}
    stock = dict(dask.config.get("distributed.nanny.pre-spawn-environ"))
    for label, workers, environment in (("1 worker", 1, None), ("2 workers", 2, None),
                                        ("1 worker, Dask's stock worker environment", 1, stock)):
        tic = time.perf_counter()
        with local_cluster(workers, environment) as cluster, Client(cluster) as client:
            client.run(lambda: __import__("ncpaper.results"))  # warm workers: imports are not per-run cost
            startup = time.perf_counter() - tic
            modes[label] = (timed_sweep(configs, scheduler=cluster.scheduler_address), startup)
    n = len(configs)
    print(f"{n} runs of {configs[0].describe()}-like settings, one thread per run")
    print("| mode | wall s | per run s | speed-up vs 1 worker |")
    print("| --- | --- | --- | --- |")
    print(f"| in this process (no Dask) | {in_process:.1f} | {in_process / n:.2f} | |")
    for label, (wall, startup) in modes.items():
        print(f"| Dask LocalCluster, {label} (+{startup:.1f} s cluster start) | {wall:.1f} | "
              f"{wall / n:.2f} | {modes['1 worker'][0] / wall:.2f}x |")
    overhead = (modes["1 worker"][0] - in_process) / n
    print(f"\nDask overhead per run: {overhead:.2f} s ({overhead / (in_process / n):.1%} of a run here)")


if __name__ == "__main__":
    main()
