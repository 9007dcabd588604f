"""Is weight decay necessary, or only at the default knobs? The horizon answer tested against what a referee moves.

The ``horizon`` runs answer the paper's title claim at one point of every knob but lambda. The ``alternatives``
profile moves one knob at a time, at the horizon runs' constant rate, on the same data and seeds (0, 1, 2), and
each comparison below is judged after interpolation by the necessity page's rule
(:func:`ncpaper.necessity.verdict`):

- **A. implicit bias at lambda = 0**: every layer's initialisation times s in {1, 0.3, 0.1} (smaller: the "rich"
  regime) and the learning rate eta in {the horizon rate, 4x it}; lambda = 0 against lambda > 0 under the same
  knobs (the default pair is the horizon runs themselves);
- **B. small lambda** (1e-4, 3e-4, 1e-3) against lambda = 0, with the time weight decay needs
  (:func:`ncpaper.analysis.collapse_time`) against 1/(eta lambda);
- **C. the loss**: the mean cross-entropy plus the same penalty, lambda = 0 against lambda > 0;
- **D. a convolutional network**: a bias-free ConvNet, lambda = 0 against lambda > 0.

A knob *family* is everything but lambda and the seed (network, loss, initialisation scale, learning rate,
epochs aside); a comparison sets a family's lambda = 0 runs against its lambda > 0 runs. Only arms A, C and D can
show that weight decay is not necessary (a knob at lambda = 0 reaching the weight-decay value); arm B says how
small lambda may be. This module is pure analysis: tables in, tables and numbers out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .analysis import after_interpolation, collapse_time, training_rows
from .necessity import COLLAPSE_FACTOR, FLOORS, REACH, Verdict, verdict

__all__ = [
    "ARMS",
    "COLLAPSE_WITHIN",
    "MEASURES",
    "Comparison",
    "baseline_value",
    "collapse_slope",
    "collapse_times",
    "comparisons",
    "fit_power_law",
    "knob_frame",
    "measure_answer",
    "outcome",
    "small_lambda_frame",
]

# The measures judged: NC1, NC3 against the centred and the raw classifier, NC4 (a fraction of training examples).
MEASURES = {"nc1": "NC1", "nc3_centred": "NC3 (W centred)", "nc3": "NC3 (raw W)", "nc4": "NC4"}
ARMS = {"implicit": "A. implicit bias", "small_lambda": "B. small λ", "cross_entropy": "C. cross-entropy",
        "convnet": "D. ConvNet"}
# Arm B's small weight decays: below the horizon runs' smallest (0.0028).
SMALL_LAMBDA_BELOW = 0.0028
# The horizon runs' knobs (PyTorch's initialisation, the horizon rate), as arm A names its settings.
DEFAULT_SETTING = "init ×1, η ×1"
# Every comparison "yes" but those where weight decay does not collapse the measure either.
NECESSARY_WHERE_COLLAPSED = "necessary wherever weight decay collapses it"
# A run's collapse time: the first epoch after which NC1 stays within this factor of its final value.
COLLAPSE_WITHIN = 2.0
# A collapse time is censored (the run may not have settled) unless at least this many measured epochs, the last
# included, lie at or after it: on the profile's log-spaced grid (48 points), the last third of the run or more.
SETTLED_POINTS = 3


def _family(row) -> tuple[str, str]:
    """(arm, setting) of a run from its knobs; ``row`` carries model, loss, init_scale, lr_factor, sizes."""
    if row["model"] == "convnet":
        return "convnet", f"ConvNet {row['sizes']}"
    if row["loss"] == "cross_entropy":
        return "cross_entropy", "cross-entropy"
    return "implicit", f"init ×{row['init_scale']:g}, η ×{row['lr_factor']:g}"


def knob_frame(runs, base_lr: dict) -> pd.DataFrame:
    """One row per run: its run_id, dataset, knobs (model, loss, init_scale, lr, lr_factor = lr over ``base_lr``
    of its dataset, the horizon rate), weight_decay, seed, epochs, the training images n and its (arm, setting)."""
    rows = []
    for run in runs:
        c = run.config
        if c.dataset not in base_lr:
            raise ValueError(f"no horizon rate for dataset {c.dataset!r}: base_lr has {sorted(base_lr)}")
        sizes = "-".join(str(v) for v in c.sizes.get("channels", c.sizes.get("widths", [])))
        if "fc_width" in c.sizes:
            sizes += f", fc {c.sizes['fc_width']}"
        rows.append({"run_id": run.meta["key"], "dataset": c.dataset, "model": c.model, "loss": c.loss,
                     "init_scale": c.init_scale, "lr": c.lr, "lr_factor": round(c.lr / base_lr[c.dataset], 6),
                     "sizes": sizes, "weight_decay": c.weight_decay, "seed": c.seed, "epochs": c.epochs,
                     "batch_size": c.batch_size, "constant_rate": not c.lr_milestones,
                     "n_train": int(sum(run.meta["data"]["train"]["class_counts"]))})
    frame = pd.DataFrame(rows)
    arms = frame.apply(_family, axis=1, result_type="expand")
    return frame.assign(arm=arms[0], setting=arms[1])


@dataclass(frozen=True)
class Comparison:
    """One row of the answer table: a family's lambda = 0 runs against its lambda > 0 runs, on one dataset."""

    arm: str
    setting: str
    dataset: str
    after: pd.DataFrame  # after_interpolation's rows of both, with the knob columns

    def verdict(self, measure: str) -> Verdict:
        return verdict(self.after, measure, COLLAPSE_FACTOR, REACH, FLOORS.get(measure, 0.0))

    @property
    def zero(self) -> pd.DataFrame:
        return self.after[self.after["weight_decay"] == 0]

    def at(self, weight_decay: float) -> pd.DataFrame:
        return self.after[self.after["weight_decay"] == weight_decay]

    @property
    def seeds(self) -> list[int]:
        return sorted(int(s) for s in self.after["seed"].unique())

    @property
    def epochs(self) -> list[int]:
        return sorted(int(e) for e in self.after["last_epoch"].unique())


def comparisons(table: pd.DataFrame, knobs: pd.DataFrame) -> list[Comparison]:
    """Every comparison of arms A-D, in the table's order (arm, then setting), for every dataset.

    ``table``: every measured row of the runs (``collect``); ``knobs``: :func:`knob_frame` of the same runs. Only
    constant-rate runs count. Arm A, C, D: a family's lambda = 0 against its lambda >= 0.0028 (the small lambdas
    are arm B's); arm B: the default family's lambda = 0 against each small lambda alone.
    """
    knobs = knobs[knobs["constant_rate"]]
    table = table[table["run_id"].isin(set(knobs["run_id"]))]
    after = after_interpolation(table, columns=tuple(MEASURES))
    after = after.drop(columns=[c for c in ("weight_decay", "seed") if c in after.columns]).merge(knobs, on="run_id")
    out = []
    order = {arm: k for k, arm in enumerate(ARMS)}
    families = after.groupby(["arm", "setting", "dataset"], sort=False)
    knob_order = after.groupby(["arm", "setting"])[["init_scale", "lr_factor"]].first()
    datasets = {d: k for k, d in enumerate(dict.fromkeys(after["dataset"]))}

    def position(key):
        arm, setting, dataset = key
        init, rate = knob_order.loc[(arm, setting)]
        return order[arm], -init, rate, setting, datasets[dataset]

    keys = sorted(families.groups, key=position)
    for arm, setting, dataset in keys:
        runs = families.get_group((arm, setting, dataset))
        small = runs["weight_decay"].between(0, SMALL_LAMBDA_BELOW, inclusive="neither")
        if (runs["weight_decay"] == 0).any() and (~small & (runs["weight_decay"] > 0)).any():
            out.append(Comparison(arm, setting, dataset, runs[~small]))
        if arm == "implicit" and setting == DEFAULT_SETTING:
            for wd in sorted(runs.loc[small, "weight_decay"].unique()):
                chosen = runs[(runs["weight_decay"] == 0) | (runs["weight_decay"] == wd)]
                out.append(Comparison("small_lambda", f"λ = {wd:g}", dataset, chosen))
    return out


def outcome(comparison: Comparison, measure: str, baseline: float) -> str:
    """The verdict of one comparison, with its "no" split in two: "yes", "not decided", "no" (lambda = 0 collapses
    too: its seed mean is at most 1/COLLAPSE_FACTOR of ``baseline``, lambda = 0's value at the horizon runs' knobs, or
    at the measure's floor) or "neither collapses" (lambda = 0 is within COLLAPSE_FACTOR of weight decay, but neither
    is collapsed: weight decay does not help in that setting either, which says nothing about necessity)."""
    v = comparison.verdict(measure)
    if v.answer != "no":
        return v.answer
    zero = float(comparison.zero[f"{measure}_end"].mean())
    collapsed = zero <= max(FLOORS.get(measure, 0.0), baseline / COLLAPSE_FACTOR)
    return "no" if collapsed else "neither collapses"


def baseline_value(rows: list[Comparison], measure: str) -> float:
    """lambda = 0's seed-mean end value at the horizon runs' knobs (the default setting of arm A) among ``rows``."""
    default = [c for c in rows if c.arm == "implicit" and c.setting == DEFAULT_SETTING]
    if not default:
        raise ValueError(f"no comparison at the default knobs ({DEFAULT_SETTING}) to take lambda = 0's value from")
    return float(default[0].zero[f"{measure}_end"].mean())


def measure_answer(rows: list[Comparison], measure: str) -> tuple[str, list[str]]:
    """Is weight decay necessary for ``measure``, over the comparisons of arms A, C and D on one dataset?

    Returns (answer, settings): "not necessary" with the settings where lambda = 0 collapses as far as weight decay
    (:func:`outcome` "no"); else "necessary in every setting tried" when every comparison is "yes";
    :data:`NECESSARY_WHERE_COLLAPSED` with the other settings when each is "yes" or "neither collapses"; else
    "necessary in k of n settings" with the settings that are not, and why. Arm B (a small lambda
    against none) cannot show that weight decay is unneeded.
    """
    judged = [c for c in rows if c.arm != "small_lambda"]
    if not judged:
        raise ValueError("no comparison of arms A, C or D to judge")
    baseline = baseline_value(rows, measure)
    outcomes = [(c, outcome(c, measure, baseline)) for c in judged]
    noes = [_setting_name(c) for c, a in outcomes if a == "no"]
    if noes:
        return "not necessary", noes
    yes = sum(a == "yes" for _, a in outcomes)
    if yes == len(outcomes):
        return "necessary in every setting tried", []
    neither = [_setting_name(c) for c, a in outcomes if a == "neither collapses"]
    if yes and yes + len(neither) == len(outcomes):
        return NECESSARY_WHERE_COLLAPSED, neither
    return f"necessary in {yes} of {len(outcomes)} settings", [f"{_setting_name(c)}: {a}" for c, a in outcomes
                                                                if a != "yes"]


def _setting_name(comparison: Comparison) -> str:
    if comparison.arm == "implicit":
        return comparison.setting
    return ARMS[comparison.arm].split(". ", 1)[1]


def collapse_slope(times: pd.DataFrame) -> float:
    """The fitted slope of log(collapse steps) against log(1/(eta lambda)) over the runs that settled (not
    ``censored``), one intercept per dataset (a common slope): 1 when the time weight decay needs scales like
    1/(eta lambda)."""
    settled = times[~times["censored"] & (times["collapse_steps"] > 0)]
    if settled.empty:
        return math.nan
    x = np.log10(settled["relaxation_steps"].to_numpy(float))
    y = np.log10(settled["collapse_steps"].to_numpy(float))
    groups = settled["dataset"].to_numpy()
    for g in set(groups):  # remove each dataset's mean: the least-squares slope with one intercept per dataset
        x[groups == g] -= x[groups == g].mean()
        y[groups == g] -= y[groups == g].mean()
    return float((x * y).sum() / (x * x).sum()) if (x * x).sum() > 0 else math.nan


def collapse_times(table: pd.DataFrame, knobs: pd.DataFrame, within: float = COLLAPSE_WITHIN) -> pd.DataFrame:
    """Per weight-decay run of a square-loss MLP at PyTorch's initialisation and a constant rate: its collapse time
    (:func:`~ncpaper.analysis.collapse_time` of NC1, in epochs and in SGD steps), 1/(eta lambda) in steps, its last
    epoch and NC1 at the end. ``censored``: fewer than :data:`SETTLED_POINTS` measured epochs lie at or after the
    collapse time, so NC1 may still be moving: a lower bound, not a measurement."""
    chosen = knobs[(knobs["weight_decay"] > 0) & (knobs["model"] == "mlp") & (knobs["loss"] == "square")
                   & (knobs["init_scale"] == 1) & knobs["constant_rate"]]
    rows = []
    train = training_rows(table)
    for _, k in chosen.iterrows():
        run = train[train["run_id"] == k["run_id"]].sort_values("epoch")
        epoch = collapse_time(run, "nc1", within)
        steps_per_epoch = math.ceil(k["n_train"] / k["batch_size"])
        rows.append({"dataset": k["dataset"], "weight_decay": k["weight_decay"], "lr": k["lr"], "seed": k["seed"],
                     "epochs": int(run["epoch"].iloc[-1]), "collapse_epoch": epoch,
                     "collapse_steps": epoch * steps_per_epoch,
                     "relaxation_steps": 1 / (k["lr"] * k["weight_decay"]),
                     "nc1_end": float(run["nc1"].iloc[-1]),
                     "censored": bool((run["epoch"] >= epoch).sum() < SETTLED_POINTS)})
    return pd.DataFrame(rows)


def fit_power_law(x, y) -> tuple[float, float]:
    """Least-squares slope and intercept of log10 y against log10 x (y = 10^b x^s); nan with fewer than 2 points."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    if keep.sum() < 2 or np.unique(x[keep]).size < 2:
        return math.nan, math.nan
    slope, intercept = np.polyfit(np.log10(x[keep]), np.log10(y[keep]), 1)
    return float(slope), float(intercept)


def small_lambda_frame(comparisons_: list[Comparison], dataset: str) -> pd.DataFrame:
    """NC1 at the end against lambda for the default knobs on ``dataset`` (lambda = 0, arm B's small lambdas and the
    horizon runs' lambdas): mean, min and max over seeds, and the last epoch. Does NC1 return to lambda = 0's value
    continuously as lambda -> 0?"""
    frames = [c.after for c in comparisons_ if c.dataset == dataset
              and (c.setting == DEFAULT_SETTING or c.arm == "small_lambda")]
    if not frames:
        raise ValueError(f"no default-knob runs on {dataset!r}")
    runs = pd.concat(frames).drop_duplicates("run_id")
    return (runs.groupby("weight_decay").agg(mean=("nc1_end", "mean"), low=("nc1_end", "min"),
                                             high=("nc1_end", "max"), epochs=("last_epoch", "max"),
                                             seeds=("seed", "nunique")).sort_index())
