"""Summaries of many runs: end-of-training rows, and where collapse sets in along lambda."""

from __future__ import annotations

import math

import pandas as pd

__all__ = ["collapse_onset", "fit_breakdown", "last_rows", "provenance_table", "seed_summary", "settled_rows",
           "training_rows"]


def training_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The rows measured during training (``phase == "train"``; a table without a phase column is all training)."""
    return table if "phase" not in table.columns else table[table["phase"] == "train"]


def last_rows(table: pd.DataFrame) -> pd.DataFrame:
    """One row per run: its last epoch measured during training (never the post-training "settled" row)."""
    rows = training_rows(table)
    return rows.sort_values("epoch", kind="stable").groupby("run_id", sort=False).tail(1).reset_index(drop=True)


def settled_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The "settled" rows (at most one per run, measured after settling at a critical point); empty if none."""
    if "phase" not in table.columns:
        return table.iloc[0:0].reset_index(drop=True)
    return table[table["phase"] == "settled"].reset_index(drop=True)


def seed_summary(last: pd.DataFrame, column: str) -> pd.DataFrame:
    """Mean, min and max of ``column`` over seeds, per weight decay."""
    return last.groupby("weight_decay")[column].agg(["mean", "min", "max"]).sort_index()


def collapse_onset(last: pd.DataFrame, column: str = "nc1", factor: float = 10.0) -> float:
    """The smallest lambda > 0 whose seed-mean ``column`` is below 1/factor of its lambda = 0 mean (nan: none)."""
    means = seed_summary(last, column)["mean"]
    if 0.0 not in means.index:
        raise ValueError("the sweep has no lambda = 0 run to compare with")
    below = [w for w, v in means.items() if w > 0 and v < means[0.0] / factor]
    return min(below) if below else math.nan


def fit_breakdown(last: pd.DataFrame, max_error: float = 0.01) -> float:
    """The smallest lambda whose seed-mean training error exceeds ``max_error`` (nan: all fit)."""
    means = seed_summary(last, "train_error")["mean"]
    above = [w for w, v in means.items() if v > max_error]
    return min(above) if above else math.nan


def provenance_table(runs) -> pd.DataFrame:
    """One row per run: where, when and by which code it was trained, how long it took, on which data."""
    rows = []
    for run in runs:
        meta, config = run.meta, run.config
        git = meta.get("git") or {}
        commit = (git.get("commit") or "unknown")[:10] + (" (modified)" if git.get("dirty") else "")
        timings = meta.get("timings", {})
        rows.append({
            "λ": config.weight_decay, "seed": config.seed, "data": meta["data_source"],
            "training images": int(sum(meta["data"]["train"]["class_counts"])),
            "device": meta.get("device", "unknown"), "precision": config.precision,
            "finished (UTC)": meta["created"].replace("T", " ")[:16],
            "commit": commit, "wall min": timings.get("wall_seconds", math.nan) / 60,
            "images/s": timings.get("images_per_second", math.nan), "run": meta["key"],
        })
    return pd.DataFrame(rows)
