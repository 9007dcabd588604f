"""Figures from the tidy results table (pure: table in, figure out), and saving with provenance."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

__all__ = ["NC_PANELS", "PHASE_PANELS", "figure_nc", "figure_phase", "runs_provenance", "save_figure",
           "weight_decay_label", "weight_decay_palette"]

# (column(s), panel title, log y-axis): the slides' panels, with means and classifier side by side.
NC_PANELS = [
    (["train_error"], "Training error", False),
    (["train_loss"], "Training loss (square loss term)", True),
    (["nc1"], r"NC1: $\mathrm{Tr}(\Sigma_W \Sigma_B^+)/C$", True),
    (["nc2_equinorm_means", "nc2_equinorm_weights"], "NC2: equinorm (std/mean of norms)", True),
    (["nc2_equiangular_means", "nc2_equiangular_weights"], "NC2: equiangularity (std of cosines)", True),
    (["nc2_maxangle_means", "nc2_maxangle_weights"], r"NC2: mean $|\cos + 1/(C-1)|$", True),
    (["nc3"], r"NC3: $\|W/\|W\| - M/\|M\|\|_F^2$", True),
    (["nc4"], "NC4: mismatch with nearest class mean", False),
]


def weight_decay_label(value: float) -> str:
    return "no weight decay" if value == 0 else f"λ = {value:g}"


def weight_decay_palette(values) -> dict[str, str]:
    """The slides' colours: green without weight decay, then orange and blue (more: a colormap)."""
    colours = iter(["tab:orange", "tab:blue", "tab:purple", "tab:red", "tab:brown"])
    return {weight_decay_label(v): ("tab:green" if v == 0 else next(colours)) for v in sorted(set(values))}


def figure_nc(table: pd.DataFrame, title: str = "") -> plt.Figure:
    """NC measurements against epoch (log axis), one colour per weight decay; mean and spread over seeds."""
    data = table[table["epoch"] > 0].copy()
    data["weight decay"] = data["weight_decay"].map(weight_decay_label)
    palette = weight_decay_palette(data["weight_decay"])
    fig, axes = plt.subplots(2, 4, figsize=(16, 7.2), constrained_layout=True)
    for ax, (columns, panel_title, log_y) in zip(axes.flat, NC_PANELS, strict=True):
        for column in columns:
            style = {"linestyle": "--"} if column.endswith("_weights") else {}
            sns.lineplot(data=data, x="epoch", y=column, hue="weight decay", palette=palette, ax=ax,
                         legend=False, errorbar=("pi", 100), **style)
        ax.set(xscale="log", title=panel_title, xlabel="epoch", ylabel="")
        if log_y:
            ax.set_yscale("log")
        ax.grid(True, which="major", alpha=0.3)
    handles = [plt.Line2D([], [], color=c, label=k) for k, c in palette.items()]
    handles += [plt.Line2D([], [], color="grey", label="class means"),
                plt.Line2D([], [], color="grey", linestyle="--", label="classifier rows")]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), frameon=False)
    if title:
        fig.suptitle(title)
    return fig


def runs_provenance(runs, profile: str, figure) -> dict:
    """What a saved figure records: figure, profile, data source, git state, run keys, date."""
    return {"figure": figure, "profile": profile, "data_source": runs[0].meta["data_source"],
            "git": runs[0].meta["git"], "runs": [r.meta["key"] for r in runs],
            "date": datetime.date.today().isoformat()}


def save_figure(fig: plt.Figure, stem: str | Path, provenance: dict) -> list[Path]:
    """Write ``stem.png`` and ``stem.pdf`` with the provenance embedded in their metadata."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(provenance, sort_keys=True, default=str)
    png, pdf = stem.with_suffix(".png"), stem.with_suffix(".pdf")
    fig.savefig(png, dpi=150, metadata={"Title": stem.name, "Description": text, "Software": "ncpaper"})
    fig.savefig(pdf, metadata={"Title": stem.name, "Subject": text, "Creator": "ncpaper"})
    return [png, pdf]


PHASE_PANELS = [
    ("train_error", "Training error", False),
    ("eps", r"$\epsilon = 1 - \mathrm{mean}\, f_{y}(x)$", True),
    ("nc1", "NC1", True),
    ("nc2_equinorm_means", "NC2 equinorm (means)", True),
    ("nc2_equiangular_means", "NC2 equiangularity (means)", True),
    ("nc3", "NC3", True),
    ("nc4", "NC4", False),
    ("balance_ratio", r"$\lambda\|W_l\|^2 \,/\, \frac{1}{NC}\sum\langle y-f,f\rangle$ (every layer)", True),
]


def figure_phase(last: pd.DataFrame, title: str = "") -> plt.Figure:
    """End-of-training metrics against lambda (log axis; lambda = 0 drawn apart at the left).

    ``last`` has one row per run (its last epoch) with ``weight_decay`` and ``seed``; lines are the
    mean over seeds, bands the min-max spread. The last panel shows every layer's Lemma 2 ratio.
    """
    positive = sorted(w for w in last["weight_decay"].unique() if w > 0)
    zero_at = positive[0] / 10 if positive else 1e-6
    data = last.assign(x=last["weight_decay"].where(last["weight_decay"] > 0, zero_at))
    layers = sorted((c for c in data.columns if c.startswith("layer_norm_sq_")), key=lambda c: int(c[14:]))
    fig, axes = plt.subplots(2, 4, figsize=(16, 7.2), constrained_layout=True)
    for ax, (column, panel_title, log_y) in zip(axes.flat, PHASE_PANELS, strict=True):
        if column == "balance_ratio":
            pos = data[(data["weight_decay"] > 0) & (data["fit_term"] > 0)]  # f = 0 networks have no ratio
            for k, layer in enumerate(layers, start=1):
                ratio = pos["weight_decay"] * pos[layer] / pos["fit_term"]
                label = "classifier" if k == len(layers) else f"layer {k}"
                sns.lineplot(x=pos["x"], y=ratio, ax=ax, errorbar=("pi", 100), label=label, marker="o", markersize=3)
            ax.axhline(1, color="black", linewidth=0.8, linestyle=":")
            ax.legend(fontsize=8)
        else:
            sns.lineplot(data=data[data["weight_decay"] > 0], x="x", y=column, ax=ax, errorbar=("pi", 100),
                         marker="o", markersize=3, color="tab:blue")
            zero = data[data["weight_decay"] == 0][column]
            ax.errorbar([zero_at], [zero.mean()], yerr=[[zero.mean() - zero.min()], [zero.max() - zero.mean()]],
                        fmt="s", color="tab:green", capsize=3)
        ax.axvline(zero_at * 3, color="grey", linewidth=0.6)
        ax.set(xscale="log", title=panel_title, xlabel="λ  (green square: λ = 0)", ylabel="")
        if log_y:
            ax.set_yscale("log")
        ax.grid(True, which="major", alpha=0.3)
    if title:
        fig.suptitle(title)
    return fig
