"""Pilot runs for the full-scale figures (issue: terminal phase at full scale), on a GPU if there is one.

Which width, lambda and schedule reach the terminal phase with weight decay (training error <= 0.2%,
NC1 and NC3 >= 5x below lambda = 0)? Each run is ``ncpaper.train.fit`` (the slides' loss, settling at
the end), run in parallel worker processes; every run writes ``<name>.csv`` (its rows) and the
summary ``pilots.csv`` (one row per run: end of training and settled point) goes to ``--out``.

    python benchmarks/pilot_terminal_phase.py --out pilots --device cuda --deadline 480
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd

BASE = {"momentum": 0.9, "batch_size": 128, "lr_milestones": [0.8], "n_measurements": 10}


def grid(scale: str) -> list[tuple[str, dict]]:
    """(name, RunConfig fields) of the pilots: 10,000 images, widths 512 and 2048, four lambdas."""
    runs = []
    if scale in ("pilot", "all"):
        for dataset, lr in (("cifar10", 0.005), ("mnist", 0.01)):
            for width in (512, 2048):
                for wd in (0.0, 1e-3, 3e-3, 1e-2):
                    runs.append((f"pilot-{dataset}-w{width}-l{wd:g}",
                                 {**BASE, "dataset": dataset, "sizes": {"widths": [width] * 3}, "n_per_class": 1000,
                                  "n_test_per_class": 500, "weight_decay": wd, "lr": lr, "epochs": 200}))
        fp32 = dict(runs)["pilot-cifar10-w2048-l0.003"]
        runs.append(("pilot-cifar10-w2048-l0.003-bf16", {**fp32, "precision": "bfloat16"}))
    if scale in ("full", "all"):
        for dataset, lr, n, n_test in (("cifar10", 0.005, 5000, 1000), ("mnist", 0.01, 5421, 892)):
            for wd in (0.0, 1e-3, 3e-3):
                runs.append((f"full-{dataset}-w2048-l{wd:g}",
                             {**BASE, "dataset": dataset, "sizes": {"widths": [2048] * 3}, "n_per_class": n,
                              "n_test_per_class": n_test, "weight_decay": wd, "lr": lr, "epochs": 200}))
    return runs


def _one(args):
    name, fields, device, out = args
    import torch

    from ncpaper.results import _device_name
    from ncpaper.train import RunConfig, fit

    torch.set_num_threads(1)
    config = replace(RunConfig.from_dict(fields), device=device)
    tic = time.perf_counter()
    rows, _, timings = fit(config)
    table = pd.DataFrame(rows)
    table.insert(0, "run", name)
    table.to_csv(Path(out) / f"{name}.csv", index=False)
    meta = {"name": name, "config": config.to_dict(), "timings": timings, "wall_seconds": time.perf_counter() - tic,
            "device": _device_name(device), "torch": torch.__version__}
    (Path(out) / f"{name}.json").write_text(json.dumps(meta, indent=1))
    return name


def summary(out: Path) -> pd.DataFrame:
    rows = []
    for csv in sorted(out.glob("*.csv")):
        if csv.name == "pilots.csv":
            continue
        table = pd.read_csv(csv)
        meta = json.loads(csv.with_suffix(".json").read_text())
        last = table[table["phase"] == "train"].iloc[-1]
        settled = table[table["phase"] == "settled"]
        row = {"run": meta["name"], "dataset": meta["config"]["dataset"],
               "width": meta["config"]["sizes"]["widths"][0], "n_train": meta["config"]["n_per_class"] * 10,
               "lambda": meta["config"]["weight_decay"], "precision": meta["config"].get("precision", "float32"),
               "epochs": meta["config"]["epochs"], "train_error": last["train_error"], "test_error": last["test_error"],
               "nc1": last["nc1"], "nc3_centred": last["nc3_centred"], "cdnv": last["cdnv"],
               "max_balance_error_trained": max(abs(last[k] - 1) for k in last.index if k.startswith("balance_"))
               if meta["config"]["weight_decay"] > 0 else float("nan"),
               "images_per_second": meta["timings"]["images_per_second"], "wall_seconds": meta["wall_seconds"],
               "device": meta["device"]}
        if len(settled):
            s = settled.iloc[-1]
            row.update({"settled_train_error": s["train_error"], "settled_nc1": s["nc1"],
                        "settled_nc3_centred": s["nc3_centred"], "settled_critical_residual": s["critical_residual"]})
        rows.append(row)
    table = pd.DataFrame(rows)
    table.to_csv(out / "pilots.csv", index=False)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="pilots")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--scale", choices=["pilot", "full", "all"], default="all")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--deadline", type=float, default=480, help="seconds; unfinished runs are abandoned")
    parser.add_argument("--smoke", action="store_true", help="2 epochs on 20 images a class: checks the script")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from ncpaper import data

    runs = grid(args.scale)
    if args.smoke:
        runs = [(name, {**fields, "epochs": 2, "n_per_class": 20, "n_test_per_class": 10, "n_measurements": 2})
                for name, fields in runs[:3]]
    for _, fields in runs:  # unpack and cache the data once, before the workers start
        data.load(fields["dataset"], "train", fields["n_per_class"], 0)
        data.load(fields["dataset"], "test", fields["n_test_per_class"], 0)
    tic = time.perf_counter()
    pool = mp.get_context("spawn").Pool(args.workers)
    pending = [pool.apply_async(_one, ((name, fields, args.device, str(out)),)) for name, fields in runs]
    for job in pending:
        left = args.deadline - (time.perf_counter() - tic)
        try:
            print("done", job.get(timeout=max(left, 1)), f"{time.perf_counter() - tic:.0f}s", flush=True)
        except mp.TimeoutError:
            print("deadline reached; abandoning the unfinished runs", flush=True)
            break
        except Exception as err:  # a failed run is reported, the others go on
            print("failed:", err, flush=True)
    pool.terminate()
    with pd.option_context("display.width", 250, "display.max_columns", 30):
        print(summary(out).to_string())
    print(f"total {time.perf_counter() - tic:.0f}s", os.cpu_count(), "CPUs")


if __name__ == "__main__":
    main()
