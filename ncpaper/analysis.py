"""Summaries of many runs: end-of-training rows, where collapse sets in along lambda, and what happens after
the network interpolates its training set (t*, the fall after it, the late slope)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

__all__ = ["TERMINAL_TRAIN_ERROR", "after_interpolation", "collapse_onset", "collapse_time", "first_error_free_epoch",
           "fit_breakdown", "interpolation_epoch", "last_rows", "late_slope", "provenance_table", "seed_summary",
           "settled_rows", "training_rows"]

# "Fits its training set" everywhere in the book: training error at most 0.2% (the terminal phase of Papyan,
# Han & Donoho; one image in 500 on the phase diagrams' runs, 100 of the 50,000 CIFAR-10 images at full scale).
TERMINAL_TRAIN_ERROR = 0.002


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


def fit_breakdown(last: pd.DataFrame, max_error: float = TERMINAL_TRAIN_ERROR) -> float:
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


def _one_run(run: pd.DataFrame) -> pd.DataFrame:
    rows = training_rows(run).sort_values("epoch", kind="stable")
    if "run_id" in rows.columns and rows["run_id"].nunique() > 1:
        raise ValueError(f"expected the rows of one run, got {rows['run_id'].nunique()} runs: group by run_id first "
                         "(or call after_interpolation on the whole table)")
    if rows.empty:
        raise ValueError("the run has no rows measured during training")
    return rows


def interpolation_epoch(run: pd.DataFrame, max_error: float = TERMINAL_TRAIN_ERROR) -> float:
    """t*: the first measured epoch from which the training error stays at most ``max_error`` at every later
    measured epoch (nan: the last measurement is above it). Rows of one run; "settled" rows are ignored."""
    rows = _one_run(run)
    above = (rows["train_error"] > max_error).to_numpy()
    if above[-1]:
        return math.nan
    start = int(np.flatnonzero(above)[-1]) + 1 if above.any() else 0
    return float(rows["epoch"].iloc[start])


def collapse_time(run: pd.DataFrame, column: str = "nc1", within: float = 2.0) -> float:
    """The first measured epoch from which ``column`` stays within ``within`` times its final value (above and
    below) at every later measured epoch: when it has (nearly) stopped moving. Rows of one run; "settled" rows
    are ignored; nan if the final value is not positive and finite."""
    if not within > 1:
        raise ValueError(f"within must be > 1, got {within!r}")
    rows = _one_run(run)
    values = rows[column].to_numpy(float)
    final = values[-1]
    if not (math.isfinite(final) and final > 0):
        return math.nan
    outside = ~((values <= within * final) & (values >= final / within))  # NaN counts as outside
    start = int(np.flatnonzero(outside)[-1]) + 1 if outside.any() else 0
    return float(rows["epoch"].iloc[start])


def first_error_free_epoch(run: pd.DataFrame) -> float:
    """The first measured epoch at which no training example is misclassified (nan: none)."""
    rows = _one_run(run)
    free = rows[rows["train_error"] == 0]
    return float(free["epoch"].iloc[0]) if len(free) else math.nan


def late_slope(run: pd.DataFrame, column: str = "nc1", decades: float = 1.0) -> float:
    """d log(column) / d log(epoch) over the last ``decades`` of measured epochs (least squares).

    A power law column ~ epoch^s gives s: 0 for a quantity that has stopped moving, -1 for one still falling
    tenfold per decade. Uses the measured epochs in [last / 10^decades, last] with a positive finite value; nan
    with fewer than three such points.
    """
    rows = _one_run(run)
    last = rows["epoch"].iloc[-1]
    late = rows[(rows["epoch"] >= last / 10**decades) & np.isfinite(rows[column]) & (rows[column] > 0)]
    if len(late) < 3 or late["epoch"].nunique() < 2:
        return math.nan
    return float(np.polyfit(np.log10(late["epoch"].to_numpy(float)), np.log10(late[column].to_numpy(float)), 1)[0])


def _value_at(rows: pd.DataFrame, epoch: float, column: str) -> float:
    if not math.isfinite(epoch):
        return math.nan
    return float(rows.loc[rows["epoch"] == epoch, column].iloc[0])


def after_interpolation(table: pd.DataFrame, columns=("nc1", "nc3_centred"),
                        max_error: float = TERMINAL_TRAIN_ERROR, decades: float = 1.0) -> pd.DataFrame:
    """One row per run: what each ``column`` does after the network interpolates its training set.

    ``t_star`` (:func:`interpolation_epoch`), ``t_zero`` (:func:`first_error_free_epoch`), ``last_epoch``;
    per column: ``<c>_at_t_star``, ``<c>_end`` (last measured epoch), ``<c>_fall`` = at_t_star / end (how many
    times smaller it became after t*; 1: it stopped moving; nan: never interpolated) and ``<c>_slope``
    (:func:`late_slope`). Keeps ``weight_decay``, ``seed`` and any ``schedule`` column of the runs.
    """
    missing = [c for c in ("run_id", "epoch", "train_error", *columns) if c not in table.columns]
    if missing:
        raise ValueError(f"the table lacks column(s) {missing}; it has {sorted(table.columns)}")
    out = []
    for run_id, run in training_rows(table).groupby("run_id", sort=False):
        rows = _one_run(run)
        t_star = interpolation_epoch(rows, max_error)
        row = {"run_id": run_id, **{k: rows[k].iloc[0] for k in ("weight_decay", "seed", "schedule")
                                    if k in rows.columns},
               "t_star": t_star, "t_zero": first_error_free_epoch(rows), "last_epoch": float(rows["epoch"].iloc[-1])}
        for column in columns:
            at, end = _value_at(rows, t_star, column), float(rows[column].iloc[-1])
            row.update({f"{column}_at_t_star": at, f"{column}_end": end,
                        f"{column}_fall": at / end if end > 0 else math.nan,
                        f"{column}_slope": late_slope(rows, column, decades)})
        out.append(row)
    return pd.DataFrame(out)
