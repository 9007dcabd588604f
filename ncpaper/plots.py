"""Figures from the tidy results table (pure: table in, figure out), and saving with provenance."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

__all__ = ["NC_PANELS", "figure_nc", "save_figure", "weight_decay_label", "weight_decay_palette"]

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


def save_figure(fig: plt.Figure, stem: str | Path, provenance: dict) -> list[Path]:
    """Write ``stem.png`` and ``stem.pdf`` with the provenance embedded in their metadata."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(provenance, sort_keys=True, default=str)
    png, pdf = stem.with_suffix(".png"), stem.with_suffix(".pdf")
    fig.savefig(png, dpi=150, metadata={"Title": stem.name, "Description": text, "Software": "ncpaper"})
    fig.savefig(pdf, metadata={"Title": stem.name, "Subject": text, "Creator": "ncpaper"})
    return [png, pdf]
