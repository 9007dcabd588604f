"""The figures of the knob tests (:mod:`ncpaper.alternatives`): end values per setting, and weight decay's time."""

from __future__ import annotations

import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import pandas as pd

from .alternatives import fit_power_law
from .necessity import DATASET_NAMES
from .palette import lambda_colour
from .plots import PAGE_FONTS, PAGE_WIDTH_IN

__all__ = ["alternatives_figure", "collapse_time_figure"]

ZERO_COLOUR = "black"
SHORT_ARMS = {"implicit": "", "cross_entropy": "cross-entropy", "convnet": "ConvNet"}


def _short(comparison) -> str:
    """A setting's tick label: "init ×0.3, η ×4" for arm A, the arm's name otherwise."""
    if comparison.arm == "implicit":
        init, rate = comparison.setting.split(", ")
        return f"{init}, {rate}"
    return SHORT_ARMS.get(comparison.arm, comparison.arm)


def _band(values: pd.Series, floor: float) -> tuple[float, float, float]:
    values = values.dropna().clip(lower=floor)
    return float(values.mean()), float(values.min()), float(values.max())


def alternatives_figure(rows: dict, measures: dict, n_train: dict) -> plt.Figure:
    """Rows: datasets (``rows``: dataset -> its comparisons of arms A, C, D); columns: ``measures`` (column ->
    title). Per setting, lambda = 0 (black circle) beside the best lambda > 0 of our rule (diamond in that lambda's
    colour): seed mean, min-max bars, log y. NC4 is floored at one image (drawn at 1/n or the 0.2% floor)."""
    with plt.rc_context(PAGE_FONTS):
        fig, axes = plt.subplots(len(rows), len(measures), squeeze=False, constrained_layout=True,
                                 figsize=(PAGE_WIDTH_IN, 2.8 * len(rows) + 0.5))
        for r, (dataset, comparisons) in enumerate(rows.items()):
            shown = [c for c in comparisons if c.arm != "small_lambda"]
            for k, (column, title) in enumerate(measures.items()):
                ax = axes[r, k]
                floor = 0.5 / n_train[dataset] if column == "nc4" else 0  # NC4 = 0 drawn at half an image
                for x, c in enumerate(shown):
                    v = c.verdict(column)
                    mean, lo, hi = _band(c.zero[f"{column}_end"], floor)
                    ax.errorbar([x - 0.15], [mean], yerr=[[mean - lo], [hi - mean]], fmt="o", color=ZERO_COLOUR,
                                markersize=4, capsize=2, linewidth=0.9)
                    if not np.isnan(v.best_lambda):
                        mean, lo, hi = _band(c.at(v.best_lambda)[f"{column}_end"], floor)
                        ax.errorbar([x + 0.15], [mean], yerr=[[mean - lo], [hi - mean]], fmt="D",
                                    color=lambda_colour(v.best_lambda), markersize=4, capsize=2, linewidth=0.9)
                ax.set_yscale("log")
                ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
                ax.set_xticks(range(len(shown)), [_short(c) for c in shown], rotation=90, fontsize=7.5)
                ax.grid(True, axis="y", which="major", alpha=0.3)
                if r == 0:
                    ax.set_title(title)
                if k == 0:
                    ax.set_ylabel(DATASET_NAMES.get(dataset, dataset), fontsize=8)
        handles = [plt.Line2D([], [], marker="o", color=ZERO_COLOUR, linestyle="", label="λ = 0"),
                   plt.Line2D([], [], marker="D", color="grey", linestyle="",
                              label="best λ > 0 (its colour: that λ)")]
        fig.legend(handles=handles, loc="outside lower center", ncol=2, frameon=False)
    return fig


def collapse_time_figure(times: pd.DataFrame, small: dict, names: dict) -> plt.Figure:
    """Left: collapse time (SGD steps) against 1/(eta lambda) (steps), log-log, a fitted line per dataset and a slope-1
    guide; open markers for censored runs (NC1 may still be moving). Right: NC1 at the end against lambda
    (``small``: dataset -> :func:`~ncpaper.alternatives.small_lambda_frame`), lambda = 0 as a dashed line and band."""


    colours = {d: c for d, c in zip(names, ("#1b6ca8", "#c2571a"), strict=False)}
    markers = {d: m for d, m in zip(names, "os", strict=False)}
    with plt.rc_context(PAGE_FONTS):
        fig, (left, right) = plt.subplots(1, 2, constrained_layout=True, figsize=(PAGE_WIDTH_IN, 3.0))
        for dataset, g in times.groupby("dataset", sort=False):
            colour, marker = colours.get(dataset, "grey"), markers.get(dataset, "o")
            for censored, h in g.groupby("censored"):
                left.plot(h["relaxation_steps"], h["collapse_steps"], marker, color=colour, markersize=4.5,
                          markerfacecolor="white" if censored else colour, linestyle="")
            settled = g[~g["censored"]]
            slope, intercept = fit_power_law(settled["relaxation_steps"], settled["collapse_steps"])
            xs = np.geomspace(g["relaxation_steps"].min(), g["relaxation_steps"].max(), 20)
            if np.isfinite(slope):
                left.plot(xs, 10 ** intercept * xs ** slope, color=colour, linewidth=1.1,
                          label=f"{names.get(dataset, dataset)}: slope {slope:.2f}")
        xs = np.geomspace(times["relaxation_steps"].min(), times["relaxation_steps"].max(), 20)
        centre = np.exp(np.mean(np.log(times["collapse_steps"].clip(lower=1)))) / np.exp(
            np.mean(np.log(times["relaxation_steps"])))
        left.plot(xs, centre * xs, ":", color="grey", linewidth=1, label="slope 1 (∝ 1/(ηλ))")
        left.set(xscale="log", yscale="log", xlabel="1/(ηλ) (SGD steps)", ylabel="collapse time (SGD steps)")
        for axis in (left.xaxis, left.yaxis):
            axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        left.grid(True, which="major", alpha=0.3)
        left.legend(frameon=False, fontsize=7.5)
        for dataset, frame in small.items():
            colour, marker = colours.get(dataset, "grey"), markers.get(dataset, "o")
            positive = frame[frame.index > 0]
            right.errorbar(positive.index, positive["mean"], yerr=[positive["mean"] - positive["low"],
                                                                   positive["high"] - positive["mean"]],
                           fmt=marker + "-", color=colour, markersize=4, capsize=2, linewidth=1,
                           label=names.get(dataset, dataset))
            if 0.0 in frame.index:
                zero = frame.loc[0.0]
                right.axhline(zero["mean"], color=colour, linestyle="--", linewidth=0.9)
                right.axhspan(zero["low"], zero["high"], color=colour, alpha=0.12, linewidth=0)
        right.set(xscale="log", yscale="log", xlabel="λ", ylabel="NC1 at the last epoch")
        right.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        right.grid(True, which="major", alpha=0.3)
        right.legend(frameon=False, fontsize=7.5, title="dashed: λ = 0", title_fontsize=7.5)
    return fig
