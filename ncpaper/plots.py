"""Figures from the tidy results table (pure: table in, figure out), and saving with provenance."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from .palette import lambda_label, lambda_styles

__all__ = ["NARROW_WIDTH_IN", "NC_PANELS", "PAGE_WIDTH_IN", "PHASE_PANELS", "classifier_column", "figure_nc",
           "figure_phase", "narrow_copy", "narrow_path", "pdf_fonts", "runs_provenance", "save_figure",
           "smallest_text_pt", "weight_decay_dashes", "weight_decay_label", "weight_decay_palette",
           "weight_decay_styles"]

# Figures are drawn for the page they appear on: 7.2 in wide, shown about 750 px wide on a desktop, so 8 pt
# text is about 11.6 px there. A phone shows the page 342 px wide: there the site shows a narrow copy of each
# figure (save_figure's ``<stem>-narrow.png``), its panels stacked in one column NARROW_WIDTH_IN wide, so that the
# same 8 pt text is about 11 px there too.
PAGE_WIDTH_IN = 7.2
NARROW_WIDTH_IN = 3.3  # one column of a two-column paper
NARROW_PANEL_IN = 2.35  # the height of one stacked panel
# TrueType (Type 42) fonts in the PDFs, not Type 3: selectable, searchable text that every viewer renders crisply
PDF_FONTS = {"pdf.fonttype": 42, "ps.fonttype": 42}
PAGE_FONTS = {"font.size": 9, "axes.titlesize": 9, "axes.labelsize": 8.5, "xtick.labelsize": 8, "ytick.labelsize": 8,
              "legend.fontsize": 8.5, "figure.titlesize": 10, "legend.handlelength": 3.2, **PDF_FONTS}

# (means column, classifier column or None, panel title, log y-axis). The classifier side is plotted centred
# (W - 1 mean_c W_c) when the table has it: at a weight-decay critical point W_L = k M + beta 1 mu_G^T has a
# common component, so the raw rows' cosines cannot reach -1/(C-1).
NC_PANELS = [
    ("train_error", None, "Training error (log scale above 0.1%)", "symlog"),
    ("train_loss", None, r"Training loss $\frac{1}{2NC}\sum\Vert y-f\Vert^2$", True),
    ("nc1", None, r"NC1: $\mathrm{Tr}(\Sigma_W \Sigma_B^+)/C$", True),
    ("nc2_equinorm_means", "nc2_equinorm_weights", "NC2: equinorm (std/mean of norms)", True),
    ("nc2_equiangular_means", "nc2_equiangular_weights", "NC2: equiangularity (std of cosines)", True),
    ("nc2_maxangle_means", "nc2_maxangle_weights", r"NC2: mean $|\cos + 1/(C-1)|$", True),
    (None, "nc3", r"NC3: $\Vert W/\Vert W\Vert - M/\Vert M\Vert\Vert_F^2$", True),
    ("nc4", None, "NC4: mismatch with nearest class mean", False),
]

# How the two kinds of curve in one panel differ, now that line styles belong to the weight decays: class means
# (and training-set values) with filled markers, classifier rows (and test-set values) with open markers.
FILLED = {"markersize": 4.2, "markeredgewidth": 0, "linewidth": 1.3}
OPEN = {"markersize": 4.2, "markeredgewidth": 0.9, "markerfacecolor": "white", "linewidth": 0.9}
PLAIN = {"marker": "", "linewidth": 0.9}  # a third kind (the nearest-class-centre test error): no markers
# Curves of another variable than lambda (the layers of a network): a blue ramp, apart from the lambdas' colours
LAYER_MARKERS = "osD^vP"


def classifier_column(table: pd.DataFrame, column: str) -> tuple[str, bool]:
    """The centred version of a classifier-side column when the table has it, else the column itself."""
    centred = f"{column}_centred"
    return (centred, True) if centred in table.columns else (column, False)


def weight_decay_label(value: float) -> str:
    return lambda_label(value)


def weight_decay_palette(values) -> dict[str, str]:
    """Label -> colour of each weight decay (``ncpaper.palette``: keyed to lambda, black without weight decay)."""
    return {style.label: style.colour for style in lambda_styles(values).values()}


def weight_decay_styles(values) -> dict[str, str]:
    """Label -> marker of each weight decay (keyed to lambda; no two alike in one figure)."""
    return {style.label: style.marker for style in lambda_styles(values).values()}


def weight_decay_dashes(values) -> dict[str, tuple]:
    """Label -> dash pattern of each weight decay for seaborn's ``dashes`` ("" is solid: lambda = 0 only)."""
    return {style.label: (style.dashes or "") for style in lambda_styles(values).values()}


def _lambda_kwargs(values) -> dict:
    """seaborn.lineplot's arguments that draw each weight decay in its colour, marker and dash pattern."""
    return {"hue": "weight decay", "style": "weight decay", "palette": weight_decay_palette(values),
            "markers": weight_decay_styles(values), "dashes": weight_decay_dashes(values),
            "hue_order": list(weight_decay_palette(values)), "style_order": list(weight_decay_palette(values))}


def _lambda_handles(values, **extra) -> list:
    """Legend entries, one per weight decay, as drawn: colour, marker and dash pattern."""
    return [plt.Line2D([], [], color=s.colour, marker=s.marker, linestyle=s.linestyle, label=s.label, **extra)
            for s in lambda_styles(values).values()]


def _lineplot(ax, kind: dict, **kwargs) -> None:
    """seaborn.lineplot with ``kind`` (FILLED, OPEN or PLAIN) applied; open markers get their line's colour as their
    edge (seaborn would draw them white on white)."""
    before = len(ax.lines)
    kind = dict(kind)
    if kind.pop("marker", None) == "":
        kwargs["markers"] = False
    sns.lineplot(ax=ax, **kwargs, **kind)
    if "markerfacecolor" in kind:
        for line in ax.lines[before:]:
            line.set_markeredgecolor(line.get_color())


def _layer_colours(layers) -> dict:
    return dict(zip(layers, sns.color_palette("Blues", len(layers) + 2)[2:], strict=True))


def _percent_tick(value, _position) -> str:
    """A rate's tick label as a percentage (a module-level function: figures are copied by pickling)."""
    return "0" if value == 0 else f"{100 * value:g}%"


def figure_nc(table: pd.DataFrame, title: str = "", rate_cuts=()) -> plt.Figure:
    """NC measurements against epoch (log axis): one colour, marker and line style per lambda
    (``ncpaper.palette``); mean and spread over seeds.

    Only the rows measured during training (``phase == "train"``) are drawn. Filled markers are class means,
    open markers classifier rows (centred when the table has the centred columns; the legend says which).
    ``rate_cuts``: epochs where the learning rate was cut, drawn as dotted grey vertical lines.
    """
    from .analysis import training_rows

    data = training_rows(table)
    data = data[data["epoch"] > 0].copy()
    data["weight decay"] = data["weight_decay"].map(weight_decay_label)
    styles = _lambda_kwargs(data["weight_decay"])
    centred_any = False
    with plt.rc_context(PAGE_FONTS):
        fig, axes = plt.subplots(4, 2, figsize=(PAGE_WIDTH_IN, 10.4), constrained_layout=True)
        for ax, (means, weights, panel_title, log_y) in zip(axes.flat, NC_PANELS, strict=True):
            lines = [(means, FILLED)] if means else []
            if weights:
                column, centred = classifier_column(data, weights)
                centred_any |= centred
                lines.append((column, OPEN if means else FILLED))
                if not means:
                    panel_title += " (W centred)" if centred else ""
            for column, kind in lines:
                _lineplot(ax, kind, data=data, x="epoch", y=column, **styles, legend=False, errorbar=("pi", 100))
            ax.set(xscale="log", xlabel="epoch", ylabel="")
            ax.set_title(panel_title, loc="left")
            if log_y == "symlog":  # an error rate: small differences near 0 matter, and 0 must show
                ax.set_yscale("symlog", linthresh=1e-3, linscale=0.3)
                ax.set_ylim(bottom=0)
                ax.yaxis.set_major_locator(matplotlib.ticker.FixedLocator([0, 1e-3, 1e-2, 1e-1, 1]))
                ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(_percent_tick))
                ax.yaxis.set_minor_locator(matplotlib.ticker.NullLocator())
            elif log_y:
                ax.set_yscale("log")
            for epoch in rate_cuts:
                ax.axvline(epoch, color="grey", linestyle=":", linewidth=1)
            ax.grid(True, which="major", alpha=0.3)
        handles = _lambda_handles(data["weight_decay"])
        handles += [plt.Line2D([], [], color="grey", marker="o", linestyle="", label="class means", **FILLED),
                    plt.Line2D([], [], color="grey", marker="o", linestyle="", **OPEN,
                               label="classifier rows, centred" if centred_any else "classifier rows")]
        if len(rate_cuts):
            handles.append(plt.Line2D([], [], color="grey", linestyle=":", label="learning rate cut"))
        fig.legend(handles=handles, loc="outside lower center", ncol=3, frameon=False)
        if title:
            fig.suptitle(title)
    return fig


def runs_provenance(runs, profile: str, figure) -> dict:
    """What a saved figure records: figure, profile, data source, the plotting commit, every run's commit and
    key, the ncpaper version and the licences. No date: the files' bytes change only when their content does."""
    from . import __version__
    from .citing import LICENCE
    from .results import _git_state

    return {"figure": figure, "profile": profile,
            "data_source": "; ".join(sorted({r.meta["data_source"] for r in runs})),
            "plotted_at_commit": _git_state(), "ncpaper_version": __version__,
            "runs": [{"key": r.meta["key"], "git": r.meta.get("git")} for r in runs],
            "licence": LICENCE}


def smallest_text_pt(fig: plt.Figure) -> float:
    """The size in points of the smallest visible text in ``fig`` (titles, labels, ticks, legend)."""
    fig.draw_without_rendering()  # lays the figure out and makes its tick labels, without rasterising it
    sizes = [t.get_fontsize() for t in fig.findobj(matplotlib.text.Text) if t.get_visible() and t.get_text().strip()]
    return float(min(sizes))


def narrow_path(stem: str | Path) -> Path:
    """Where :func:`save_figure` writes the phone-width copy of ``stem``'s figure: ``<stem>-narrow.png``."""
    stem = Path(stem)
    return stem.with_name(f"{stem.name}-narrow.png")


def narrow_copy(fig: plt.Figure) -> plt.Figure:
    """A copy of ``fig`` for a phone: its panels stacked in one column NARROW_WIDTH_IN wide (text the same size).

    Panels are taken in the figure's reading order: along rows, or down columns when the figure says
    ``fig.ncpaper_reading_order = "columns"`` (one column per dataset). Hidden panels are dropped, figure
    legends take one or two columns above the panels (a phone reads the key before four screens of panels), and
    the title breaks at its " · " separators. ``fig`` is not changed.
    """
    copy = pickle.loads(pickle.dumps(fig))
    by_columns = getattr(fig, "ncpaper_reading_order", "rows") == "columns"
    panels = [ax for ax in copy.axes if ax.get_subplotspec() is not None]

    def place(ax):
        spec = ax.get_subplotspec()
        row, column = spec.rowspan.start, spec.colspan.start
        return (column, row) if by_columns else (row, column)

    shown = sorted((ax for ax in panels if ax.axison), key=place)
    for ax in panels:
        if not ax.axison:
            copy.delaxes(ax)
    grid = copy.add_gridspec(len(shown), 1)
    for k, ax in enumerate(shown):
        ax.set_subplotspec(grid[k])
        ax.tick_params(labelleft=True, labelbottom=True)  # shared axes had hidden the inner panels' tick labels
    title = copy._suptitle
    if title is not None:
        title.set_text(title.get_text().replace(" · ", "\n"))
    for k, legend in enumerate(list(copy.legends)):  # figure legends again, in one or two columns
        handles, labels = legend.legend_handles, [t.get_text() for t in legend.get_texts()]
        legend.remove()
        heading = {}
        if k == 0 and title is not None:  # above the panels the legend and the title would overlap: the title
            heading = {"title": title.get_text(), "title_fontproperties": {"size": title.get_fontsize()}}  # heads it
            title.remove()
            copy._suptitle = None
        copy.legend(handles=handles, labels=labels, loc="outside upper center", ncol=1 if len(labels) <= 4 else 2,
                    frameon=False, fontsize=legend.get_texts()[0].get_fontsize(), **heading)  # before the panels
    extra = 0.25 * sum(len(legend.get_texts()) for legend in copy.legends) / 2 + 0.5
    copy.set_size_inches(NARROW_WIDTH_IN, NARROW_PANEL_IN * len(shown) + extra)
    return copy


# PNGs at print resolution: the narrow copy (NARROW_WIDTH_IN, text at least 8 pt) is also the figure at the width of
# one column of a two-column paper
DPI = 300


def save_figure(fig: plt.Figure, stem: str | Path, provenance: dict, dpi: int = DPI, narrow: bool = True
                ) -> list[Path]:
    """Write ``stem.png`` and ``stem.pdf`` with the provenance embedded in their metadata, and (``narrow``) the
    phone-width copy ``<stem>-narrow.png`` (:func:`narrow_copy`), which the site shows on narrow screens.

    The files hold no timestamp, so saving the same figure again gives the same bytes. The provenance also
    records the figure's width and its smallest text size, from which a page can tell its displayed text size.
    The PDF's fonts are TrueType (``pdf.fonttype`` 42), never Type 3. Returns [png, pdf] (the narrow copy's
    path is :func:`narrow_path`).
    """
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    # never with_suffix: a rerun's stem holds dots ("weight_decays-0-0.05-1a2b3c4d"), which it would cut
    png, pdf = stem.parent / f"{stem.name}.png", stem.parent / f"{stem.name}.pdf"
    copy = narrow_copy(fig) if narrow else None
    _save(fig, png, provenance, dpi, pdf)
    if copy is not None:
        _save(copy, narrow_path(stem), {**provenance, "variant": "narrow"}, dpi)
        plt.close(copy)
    return [png, pdf]


def _save(fig: plt.Figure, png: Path, provenance: dict, dpi: int, pdf: Path | None = None) -> None:
    # laid out and drawn from a copy: each layout starts from the positions the last one left, so that saving the
    # same figure twice drifted by a pixel (at 300 dpi already the second time); a copy always starts afresh
    fig = pickle.loads(pickle.dumps(fig))
    width_in = fig.get_figwidth()
    engine = fig.get_layout_engine()
    provenance = {**provenance, "smallest_text_pt": smallest_text_pt(fig), "width_in": width_in, "dpi": dpi}
    text = json.dumps(provenance, sort_keys=True, default=str)
    # smallest_text_pt's draw has laid the figure out; both files keep that layout instead of redoing it
    # (constrained layout of a many-panel figure is most of its drawing time)
    fig.set_layout_engine("none")
    try:
        with plt.rc_context(PDF_FONTS):
            fig.savefig(png, dpi=dpi, metadata={"Title": png.stem, "Description": text, "Software": "ncpaper"})
            if pdf is not None:
                fig.savefig(pdf, metadata={"Title": pdf.stem, "Subject": text, "Creator": "ncpaper",
                                           "Producer": "ncpaper", "CreationDate": None})
    finally:
        fig.set_layout_engine(engine)
        plt.close(fig)


def pdf_fonts(pdf: str | Path) -> list[tuple[str, str]]:
    """(font name, font type) of every font a PDF embeds or refers to, read from its font dictionaries
    ("/Type /Font ... /Subtype /Type3" and so on); matplotlib writes them uncompressed."""
    import re

    data = Path(pdf).read_bytes()
    fonts = []
    for match in re.finditer(rb"/Type\s*/Font\b(.*?)>>", data, re.S):
        body = match.group(1)
        subtype = re.search(rb"/Subtype\s*/(\w+)", body)
        name = re.search(rb"/BaseFont\s*/([^\s/<>]+)", body)
        fonts.append(((name.group(1).decode() if name else "?"), subtype.group(1).decode() if subtype else "?"))
    return fonts


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
    """End-of-training metrics against lambda (log axis; lambda = 0 drawn apart at the left, left of a grey line).

    ``last`` has one row per run (its last epoch) with ``weight_decay`` and ``seed``; lines are the mean over
    seeds, bands the min-max spread, and each lambda's mean is marked in its own colour and marker
    (``ncpaper.palette``: lambda = 0 a black circle, with min-max bars). The last panel shows every layer's
    Lemma 2 ratio.
    """
    positive = sorted(w for w in last["weight_decay"].unique() if w > 0)
    zero_at = positive[0] / 10 if positive else 1e-6
    data = last.assign(x=last["weight_decay"].where(last["weight_decay"] > 0, zero_at))
    layers = sorted((c for c in data.columns if c.startswith("layer_norm_sq_")), key=lambda c: int(c[14:]))
    with plt.rc_context(PAGE_FONTS):
        fig, axes = plt.subplots(4, 2, figsize=(PAGE_WIDTH_IN, 10.4), constrained_layout=True)
        for ax, (column, panel_title, log_y) in zip(axes.flat, PHASE_PANELS, strict=True):
            _phase_panel(ax, data, layers, column, panel_title, log_y, zero_at)
        if title:
            fig.suptitle(title)
    return fig


def _lambda_points(ax, data: pd.DataFrame, column: str, zero_at: float) -> None:
    """Each lambda's mean over seeds in its own colour and marker; lambda = 0 at ``zero_at`` with min-max bars."""
    styles = lambda_styles(data["weight_decay"])
    means = data.groupby("weight_decay")[column].agg(["mean", "min", "max"])
    for wd, row in means.iterrows():
        style = styles[wd]
        if wd == 0:
            ax.errorbar([zero_at], [row["mean"]], yerr=[[row["mean"] - row["min"]], [row["max"] - row["mean"]]],
                        fmt=style.marker, color=style.colour, capsize=3, markersize=5, zorder=3)
        else:
            ax.plot([wd], [row["mean"]], linestyle="", marker=style.marker, color=style.colour, markersize=5,
                    markeredgecolor="black", markeredgewidth=0.4, zorder=3)


def _phase_panel(ax, data: pd.DataFrame, layers: list[str], column: str, panel_title: str, log_y: bool,
                 zero_at: float) -> None:
    if column == "nc3":
        column, centred = classifier_column(data, "nc3")
        panel_title += " (W centred)" if centred else ""
    if column == "balance_ratio":
        pos = data[(data["weight_decay"] > 0) & (data["fit_term"] > 0)]  # f = 0 networks have no ratio
        colours = _layer_colours(range(1, len(layers) + 1))
        for k, layer in enumerate(layers, start=1):
            ratio = pos["weight_decay"] * pos[layer] / pos["fit_term"]
            label = "classifier" if k == len(layers) else f"layer {k}"
            sns.lineplot(x=pos["x"], y=ratio, ax=ax, errorbar=("pi", 100), label=label, color=colours[k],
                         marker=LAYER_MARKERS[(k - 1) % len(LAYER_MARKERS)], markersize=3.5)
        ax.axhline(1, color="black", linewidth=0.8, linestyle=":")
        ax.legend(frameon=False)
    else:
        sns.lineplot(data=data[data["weight_decay"] > 0], x="x", y=column, ax=ax, errorbar=("pi", 100),
                     color="0.45", linewidth=1)
        _lambda_points(ax, data, column, zero_at)
    ax.axvline(zero_at * 3, color="grey", linewidth=0.6)
    ax.set(xscale="log", xlabel="λ  (left of the grey line: λ = 0)", ylabel="")
    ax.set_title(panel_title, loc="left")
    if log_y:
        ax.set_yscale("log")
    ax.grid(True, which="major", alpha=0.3)


# ---- Layer by layer: NC at every hidden layer and on held-out data (the "Layer by layer" page) ----

__all__ += ["figure_layers_end", "figure_layers_phase", "figure_layers_training", "figure_train_test",
            "layer_columns"]

# (key, panel title, log y-axis) of the per-layer panels; the columns are f"{key}_layer_{l}", l = 1..L-1.
LAYER_PANELS = [
    ("nc1", r"NC1: $\mathrm{Tr}(\Sigma_W \Sigma_B^+)/C$", True),
    ("cdnv", "CDNV", True),
    ("nc4", "nearest class centre ≠ network", False),
]


def layer_columns(table: pd.DataFrame, key: str) -> list[tuple[int, str]]:
    """The hidden layers' columns ``f"{key}_layer_{l}"`` of ``table`` as (l, column), in layer order (columns
    with no value at all, from deeper networks in the same table, are left out)."""
    prefix = f"{key}_layer_"
    return sorted((int(c[len(prefix):]), c) for c in table.columns
                  if c.startswith(prefix) and c[len(prefix):].isdigit() and table[c].notna().any())


def _per_layer(rows: pd.DataFrame, key: str) -> pd.DataFrame:
    """One row per (measured row, hidden layer): its ``layer`` and the ``value`` of ``key`` there (NaN dropped)."""
    columns = layer_columns(rows, key)
    ids = [c for c in ("run_id", "weight_decay", "seed", "epoch") if c in rows.columns]
    long = rows.melt(id_vars=ids, value_vars=[c for _, c in columns], var_name="column", value_name="value")
    long["layer"] = long["column"].map({c: layer for layer, c in columns})
    return long.dropna(subset=["value"])


def _lambda_legend(ax, values) -> None:
    ax.legend(handles=_lambda_handles(values), frameon=False, loc="best")


def figure_layers_end(lasts: dict[str, pd.DataFrame], title: str = "") -> plt.Figure:
    """End of training at every hidden layer (x: layer 1..L-1), one column per dataset: NC1, CDNV and the
    fraction of training examples whose nearest class centre at that layer differs from the network's decision.

    ``lasts`` maps a dataset's label to its end-of-training rows (one per run); one colour, marker and line style
    per lambda (``ncpaper.palette``), bars: min-max over seeds (none with one seed).
    """
    with plt.rc_context(PAGE_FONTS):
        fig, axes = plt.subplots(len(LAYER_PANELS), len(lasts), figsize=(PAGE_WIDTH_IN, 7.4), squeeze=False,
                                 constrained_layout=True)
        fig.ncpaper_reading_order = "columns"  # one column per dataset
        for col, (name, last) in enumerate(lasts.items()):
            styles = _lambda_kwargs(last["weight_decay"])
            for row, (key, panel_title, log_y) in enumerate(LAYER_PANELS):
                ax = axes[row, col]
                long = _per_layer(last, key)
                long["weight decay"] = long["weight_decay"].map(weight_decay_label)
                sns.lineplot(data=long, x="layer", y="value", **styles, errorbar=("pi", 100), err_style="bars",
                             ax=ax, legend=False, markersize=5, linewidth=1.3)
                ax.set_xticks(sorted(long["layer"].unique()))
                ax.set(xlabel="hidden layer", ylabel="")
                ax.set_title(f"{name}: {panel_title}", loc="left")
                if log_y:
                    ax.set_yscale("log")
                ax.grid(True, which="major", alpha=0.3)
            _lambda_legend(axes[0, col], last["weight_decay"])
        if title:
            fig.suptitle(title)
    return fig


def figure_layers_phase(lasts: dict[str, pd.DataFrame], title: str = "", keys=("nc1", "cdnv")) -> plt.Figure:
    """End-of-training NC at every hidden layer against lambda (log axis; lambda = 0 drawn apart at the left):
    one line per layer (a blue ramp, dark for the last hidden layer: colours here are layers, not lambdas), mean
    over seeds, bands min-max over seeds; one column per dataset, one row per key."""
    panels = {key: (t, log) for key, t, log in LAYER_PANELS}
    with plt.rc_context(PAGE_FONTS):
        fig, axes = plt.subplots(len(keys), len(lasts), figsize=(PAGE_WIDTH_IN, 2.7 * len(keys) + 0.4),
                                 squeeze=False, constrained_layout=True)
        fig.ncpaper_reading_order = "columns"
        for col, (name, last) in enumerate(lasts.items()):
            positive = sorted(w for w in last["weight_decay"].unique() if w > 0)
            zero_at = positive[0] / 10 if positive else 1e-6
            for row, key in enumerate(keys):
                ax, (panel_title, log_y) = axes[row, col], panels[key]
                long = _per_layer(last, key)
                long["x"] = long["weight_decay"].where(long["weight_decay"] > 0, zero_at)
                layers = sorted(long["layer"].unique())
                colours = _layer_colours(layers)
                for layer in layers:
                    own = long[long["layer"] == layer]
                    marker = LAYER_MARKERS[(layer - 1) % len(LAYER_MARKERS)]
                    label = f"layer {layer}" + (" (last hidden)" if layer == layers[-1] else "")
                    sns.lineplot(data=own[own["weight_decay"] > 0], x="x", y="value", ax=ax, errorbar=("pi", 100),
                                 color=colours[layer], marker=marker, markersize=3.5, label=label)
                    zero = own[own["weight_decay"] == 0]["value"]
                    if len(zero):
                        ax.errorbar([zero_at], [zero.mean()], fmt=marker, color=colours[layer],
                                    yerr=[[zero.mean() - zero.min()], [zero.max() - zero.mean()]], capsize=3)
                ax.axvline(zero_at * 3, color="grey", linewidth=0.6)
                ax.set(xscale="log", xlabel="λ  (left of the grey line: λ = 0)", ylabel="")
                ax.set_title(f"{name}: {panel_title}", loc="left")
                if log_y:
                    ax.set_yscale("log")
                ax.grid(True, which="major", alpha=0.3)
                ax.legend(frameon=False)
        if title:
            fig.suptitle(title)
    return fig


def figure_layers_training(tables: dict[str, pd.DataFrame], title: str = "", key: str = "nc1") -> plt.Figure:
    """Small multiples: ``key`` at each hidden layer against epoch (log axes), one row per dataset and one panel per
    layer (the same y-axis along a row), one colour, marker and line style per lambda. Training rows only."""
    from .analysis import training_rows

    depth = max(len(layer_columns(t, key)) for t in tables.values())
    with plt.rc_context(PAGE_FONTS):
        fig, axes = plt.subplots(len(tables), depth, figsize=(PAGE_WIDTH_IN, 2.5 * len(tables) + 0.5), squeeze=False,
                                 sharey="row", constrained_layout=True)
        for row, (name, table) in enumerate(tables.items()):
            data = training_rows(table)
            data = data[data["epoch"] > 0].copy()
            data["weight decay"] = data["weight_decay"].map(weight_decay_label)
            styles = _lambda_kwargs(data["weight_decay"])
            columns = layer_columns(data, key)
            for k in range(depth):
                ax = axes[row, k]
                if k >= len(columns):
                    ax.set_axis_off()
                    continue
                layer, column = columns[k]
                _lineplot(ax, FILLED, data=data, x="epoch", y=column, **styles, errorbar=("pi", 100), legend=False)
                ax.set(xscale="log", yscale="log", xlabel="epoch", ylabel=key.upper() if k == 0 else "")
                last = " (last hidden)" if k == len(columns) - 1 else ""
                ax.set_title(f"{name}: layer {layer}{last}", loc="left")
                ax.grid(True, which="major", alpha=0.3)
            _lambda_legend(axes[row, 0], data["weight_decay"])
        if title:
            fig.suptitle(title)
    return fig


# (training column, test column, panel title, log y-axis) of the held-out panels
TRAIN_TEST_PANELS = [
    ("nc1", "test_nc1", "NC1", True),
    ("cdnv", "test_cdnv", "CDNV", True),
    ("nc4", "test_nc4", "NC4: nearest class centre ≠ network", False),
    ("train_error", "test_error", "error", False),
]


def figure_train_test(tables: dict[str, pd.DataFrame], title: str = "") -> plt.Figure:
    """NC on the training set (filled markers) beside NC on the test set with its own class means (open markers),
    against epoch, one column per dataset, one colour, marker and line style per lambda. The last row adds, without
    markers, the test error of the nearest-class-centre rule built from the training means. Training rows only."""
    from .analysis import training_rows

    with plt.rc_context(PAGE_FONTS):
        fig, axes = plt.subplots(len(TRAIN_TEST_PANELS), len(tables), figsize=(PAGE_WIDTH_IN, 9.6), squeeze=False,
                                 constrained_layout=True)
        fig.ncpaper_reading_order = "columns"
        for col, (name, table) in enumerate(tables.items()):
            data = training_rows(table)
            data = data[data["epoch"] > 0].copy()
            data["weight decay"] = data["weight_decay"].map(weight_decay_label)
            styles = _lambda_kwargs(data["weight_decay"])
            for row, (train_column, test_column, panel_title, log_y) in enumerate(TRAIN_TEST_PANELS):
                ax = axes[row, col]
                lines = [(train_column, FILLED), (test_column, OPEN)]
                if train_column == "train_error":
                    lines.append(("test_ncc_error", PLAIN))
                for column, kind in lines:
                    _lineplot(ax, kind, data=data, x="epoch", y=column, **styles, errorbar=("pi", 100), legend=False)
                ax.set(xscale="log", xlabel="epoch", ylabel="")
                ax.set_title(f"{name}: {panel_title}", loc="left")
                if log_y:
                    ax.set_yscale("log")
                ax.grid(True, which="major", alpha=0.3)
            _lambda_legend(axes[0, col], data["weight_decay"])
        handles = [plt.Line2D([], [], color="grey", marker="o", linestyle="", label="training set", **FILLED),
                   plt.Line2D([], [], color="grey", marker="o", linestyle="", label="test set (its own class means)",
                              **OPEN),
                   plt.Line2D([], [], color="grey", label="test, nearest training class centre (no markers)",
                              linewidth=PLAIN["linewidth"])]
        fig.legend(handles=handles, loc="outside lower center", ncol=3, frameon=False)
        if title:
            fig.suptitle(title)
    return fig
