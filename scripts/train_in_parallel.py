"""Train a profile's runs as parallel processes on one machine, publishing each run as it finishes.

For one GPU shared by all of a profile's runs (the ``paper`` profile: eight bias-free MLPs 2048x3 on
the full training sets), on a machine without Dask (``ncpaper sweep --workers N`` uses Dask). Every
run goes through :func:`ncpaper.results.run_or_load`, so it has the same cache key as
``ncpaper sweep`` gives it, resumes from its checkpoints and is found again by ``ncpaper publish``
and the book.

    python scripts/train_in_parallel.py --profile paper --results ~/ncpaper-results --publish
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="paper")
    parser.add_argument("--figure", help="only this figure's runs")
    parser.add_argument("--results", help="result cache (unset: $NCPAPER_RESULTS or ./results)")
    parser.add_argument("--data", help="data root (unset: $NCPAPER_DATA or ./data)")
    parser.add_argument("--publish", action="store_true", help="publish each run as it finishes")
    parser.add_argument("--publish-to", help="published folder (unset: the repository's published/)")
    parser.add_argument("--deadline", type=float, default=float("inf"),
                        help="seconds; then stop waiting (finished runs are cached and published, the others "
                             "resume from their last checkpoint next time)")
    args = parser.parse_args(argv)

    from ncpaper import data
    from ncpaper.profiles import all_configs, figure_configs
    from ncpaper.published import publish
    from ncpaper.results import load_run, results_dir
    from ncpaper.sweep import _run_in_worker  # what a Dask worker runs: one thread, run_or_load

    configs = figure_configs(args.profile, args.figure) if args.figure else all_configs(args.profile)
    results = str(results_dir(args.results).resolve())
    for config in configs:  # unpack and checksum the data once, before the workers start
        data.load(config.dataset, "train", config.n_per_class, config.seed, root=args.data)
        data.load(config.dataset, "test", config.n_test_per_class, config.seed, root=args.data)
    tic = time.perf_counter()
    failed = 0
    pool = ProcessPoolExecutor(max_workers=len(configs), mp_context=get_context("spawn"))
    jobs = {pool.submit(_run_in_worker, config, results, args.data, 1): config for config in configs}
    pending = set(jobs)
    while pending:
        left = args.deadline - (time.perf_counter() - tic)
        if left <= 0:
            print(f"deadline: {len(pending)} run(s) unfinished; they resume from their checkpoints", flush=True)
            break
        done, pending = wait(pending, timeout=min(left, 60), return_when=FIRST_COMPLETED)
        for job in done:
            config = jobs[job]
            try:
                run = load_run(Path(job.result()))
            except Exception as err:  # one failed run is reported; the others go on
                failed += 1
                print(f"FAILED {config.describe()}: {type(err).__name__}: {err}", flush=True)
                continue
            last = run.last
            print(f"{time.perf_counter() - tic:6.0f} s  done {config.describe()} train_error={last['train_error']:.4g} "
                  f"nc1={last['nc1']:.4g} nc3={last['nc3']:.4g}", flush=True)
            if args.publish:
                publish([run], args.profile, args.publish_to)
        if not done:
            print(f"{time.perf_counter() - tic:6.0f} s  {len(pending)} run(s) training", flush=True)
    pool.shutdown(wait=not pending, cancel_futures=True)
    if pending:
        for process in list(getattr(pool, "_processes", {}).values()):
            process.terminate()
    return 1 if failed or pending else 0


if __name__ == "__main__":
    sys.exit(main())
