"""The Layer by layer page (``notebooks/layers.md``): Neural Collapse at every hidden layer and on the test set.

The page has no runs of its own: it reads those of Figures 1-2 and of the two phase diagrams (same profile),
and the full-scale figure runs of ``published/paper/`` where they are published. The functions take the
runs' tables (dataset name -> table); :class:`LayersPage` holds the runs and makes the figures.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from functools import cached_property

import pandas as pd

from .display import _HTML, table
from .figures import FigureFiles, page_figure
from .prose import number, pooling_text

DATASETS = {"mnist": "MNIST", "cifar10": "CIFAR-10"}  # key (profiles, glue names) -> name (the page's prose)
KEYS = {name: key for key, name in DATASETS.items()}


def value_range(values, fmt=".2g") -> str:
    """'a' or 'a–b' (smallest to largest) for the finite values; "undefined" when none is finite."""
    values = sorted(v for v in values if math.isfinite(v))
    if not values:
        return "undefined"
    low, high = number(values[0], fmt), number(values[-1], fmt)
    return low if low == high else f"{low}–{high}"


def weight_decay_direction(ratios, tolerance: float = 0.1) -> str:
    """Where a quantity is with weight decay, from ratios (value without / value with), in words without numbers:
    "within 10% of its value without" (every ratio within ``tolerance`` of 1), "lower than without", "higher than
    without" or "lower at some λ and higher at others"."""
    ratios = [r for r in ratios if math.isfinite(r)]
    if not ratios:
        return "undefined"
    if all(abs(math.log(r)) <= math.log1p(tolerance) + 1e-12 for r in ratios):  # 10% either way is within
        return f"within {tolerance:.0%} of its value without"
    return ("lower than without" if min(ratios) > 1 else "higher than without" if max(ratios) < 1
            else "lower at some λ and higher at others")


def times_lower(ratio: float, tolerance: float = 0.1) -> str:
    """A ratio (value without / value with) in words: "5 times lower", "1.3 times higher", or "within 10% of its
    value without"."""
    if abs(math.log(ratio)) <= math.log1p(tolerance) + 1e-12:
        return f"within {tolerance:.0%} of its value without"
    return f"{ratio:.2g} times lower" if ratio > 1 else f"{1 / ratio:.2g} times higher"


def falls_with_depth(values) -> bool:
    """True when the finite values fall at every step from the first layer to the last."""
    values = [v for v in values if math.isfinite(v)]
    return len(values) > 1 and all(b < a for a, b in itertools.pairwise(values))


def layer_nc1_table(last: pd.DataFrame) -> pd.DataFrame:
    """NC1 at every hidden layer per lambda (mean over seeds), plus its ratio last/first layer."""
    from ..plots import layer_columns

    columns = layer_columns(last, "nc1")
    frame = last.groupby("weight_decay")[[c for _, c in columns]].mean()
    frame.columns = [f"layer {layer}" for layer, _ in columns]
    frame["last / first"] = frame.iloc[:, -1] / frame.iloc[:, 0]
    return frame


def depth_checks(lasts: dict) -> tuple[list[bool], list[bool]]:
    """Per run (end of training): does NC1 fall at every layer; does the nearest-class-centre disagreement with
    the network's decision never rise from one layer to the next?"""
    from ..plots import layer_columns

    nc1_falls = [falls_with_depth(r[[c for _, c in layer_columns(last, "nc1")]].tolist())
                 for last in lasts.values() for _, r in last.iterrows()]
    ncc_never_rises = [all(b <= a for a, b in itertools.pairwise(v))
                       for last in lasts.values() for _, r in last.iterrows()
                       for v in [r[[c for _, c in layer_columns(last, "nc4")]].dropna().tolist()]]
    return nc1_falls, ncc_never_rises


def end_of_training(lasts: dict) -> tuple[str, dict]:
    """What the end-of-training figure shows, and its numbers for glue (per dataset: NC1 at the first and last
    hidden layer without weight decay; how many runs' NC1 falls at every layer)."""
    nc1_falls, ncc_never_rises = depth_checks(lasts)
    sentences, numbers = [], {}
    for name, last in lasts.items():
        per_layer = layer_nc1_table(last).drop(columns="last / first")
        if 0.0 not in per_layer.index or not (per_layer.index > 0).any():
            continue
        zero, positive = per_layer.loc[0.0], per_layer[per_layer.index > 0]
        first, final = per_layer.columns[0], per_layer.columns[-1]
        sentences.append(
            f"On {name}, with weight decay (λ = {', '.join(f'{w:g}' for w in positive.index)}) the first hidden "
            f"layer's NC1 is {weight_decay_direction(zero[first] / positive[first])}, and the last one's "
            f"{weight_decay_direction(zero[final] / positive[final])}.")
        numbers[f"{KEYS[name]}_nc1_first_nowd"] = float(zero[first])
        numbers[f"{KEYS[name]}_nc1_last_nowd"] = float(zero[final])
    numbers["runs_nc1_falling"] = sum(nc1_falls)
    numbers["runs_total"] = len(nc1_falls)
    text = (f"In **{sum(nc1_falls)} of the {len(nc1_falls)}** runs NC1 falls at every step from the first hidden "
            f"layer to the last" + (": in these runs collapse builds up through the network rather than appearing "
                                    "at the last layer alone. " if sum(nc1_falls) == len(nc1_falls) else ". ")
            + " ".join(sentences) + (" The table below gives every layer's NC1." if sentences else "")
            + f" In {sum(ncc_never_rises)} of the {len(ncc_never_rises)} runs the nearest class centre disagrees "
              f"with the network's decision no more often at each layer than at the one before (bottom row).")
    return text, numbers


def end_of_training_table(lasts: dict) -> _HTML:
    """NC1 of each hidden layer per dataset and lambda, and its ratio last/first layer."""
    per_layer = pd.concat({name: layer_nc1_table(last) for name, last in lasts.items()}, names=["data", "λ"])
    per_layer = per_layer[[c for c in per_layer.columns if c != "last / first"] + ["last / first"]]
    return table(per_layer.reset_index(), "Table: NC1 of each hidden layer at the end of training (figure runs); "
                 "dashes: no such layer or an undefined value.", formats={"λ": "{:g}"}, precision=4)


def phase_best(phase_lasts: dict) -> pd.DataFrame:
    """Per dataset and hidden layer (first, last), among the lambda > 0 that fit (mean training error at most 1%):
    the lambda where the layer's NC1 (mean over seeds) is smallest, NC1 there and at lambda = 0, and their ratio."""
    from ..plots import layer_columns

    rows = []
    for name, last in phase_lasts.items():
        means = last.groupby("weight_decay")[[c for _, c in layer_columns(last, "nc1")]].mean()
        fitting = last.groupby("weight_decay")["train_error"].mean() <= 0.01
        fit_means = means[fitting & (means.index > 0)].dropna()
        if 0.0 not in means.index or fit_means.empty:
            continue
        for which, column in (("first", means.columns[0]), ("last", means.columns[-1])):
            best = fit_means[column].idxmin()
            rows.append({"data": name, "hidden layer": which, "λ where smallest": best,
                         "NC1 at λ = 0": means.loc[0.0, column], "NC1 there": fit_means.loc[best, column],
                         "times lower": means.loc[0.0, column] / fit_means.loc[best, column]})
    return pd.DataFrame(rows)


def phase_comparison(phase_lasts: dict) -> tuple[str, dict]:
    """Per dataset, how much weight decay at its best (:func:`phase_best`) lowers the last and the first hidden
    layer's NC1; and those numbers for glue."""
    best = phase_best(phase_lasts)
    if best.empty:
        return "No weight decay in these sweeps fits the training set, so nothing is compared here.", {}
    sentences, numbers = [], {}
    for name, rows in best.groupby("data", sort=False):
        first, final = (rows[rows["hidden layer"] == which].iloc[0] for which in ("first", "last"))
        gain_first, gain_final = first["times lower"], final["times lower"]
        sentences.append(
            f"On {name}, among the λ > 0 that still fit the training set (mean training error at most 1%), the last "
            f"hidden layer's NC1 is at best {times_lower(gain_final)} (at λ = {final['λ where smallest']:g}) and "
            f"the first layer's {times_lower(gain_first)}"
            + (": weight decay lowers it far more at the last layer than at the first." if gain_final > 2 * max(
                gain_first, 1) else "."))
        numbers[f"{KEYS[name]}_phase_best_lambda"] = float(final["λ where smallest"])
        numbers[f"{KEYS[name]}_phase_gain_last"] = float(gain_final)
        numbers[f"{KEYS[name]}_phase_gain_first"] = float(gain_first)
    return " ".join(sentences), numbers


def phase_best_table(phase_lasts: dict) -> _HTML | None:
    best = phase_best(phase_lasts)
    if best.empty:
        return None
    return table(best, "Table: the phase-diagram runs at the end of training: for the first and the last hidden "
                 "layer, the weight decay (among those that fit the training set, mean training error at most 1%) "
                 "where its NC1 is smallest, NC1 there and without weight decay (means over seeds), and how many "
                 "times lower it is there.", formats={"λ where smallest": "{:g}", "times lower": "{:.2g}"},
                 precision=3)


def nc1_falls_over_training(table: pd.DataFrame) -> tuple[dict, bool]:
    """Per hidden layer, each run's NC1 at the first measured epoch over NC1 at the last (layer -> Series by run);
    and whether in every run the deeper the layer, the further its NC1 falls."""
    from ..analysis import last_rows, training_rows
    from ..plots import layer_columns

    rows = training_rows(table)
    columns = layer_columns(rows, "nc1")
    start, end = rows[rows["epoch"] == rows["epoch"].min()].set_index("run_id"), last_rows(rows).set_index("run_id")
    falls = {layer: (start[c] / end[c]).dropna() for layer, c in columns}
    deeper_falls_more = all(falls_with_depth([1 / falls[layer][run] for layer in falls]) for run in end.index
                            if all(run in falls[layer] for layer in falls))
    return falls, deeper_falls_more


def over_training(tables: dict) -> str:
    """Whether, per dataset, the deeper the layer the further its NC1 falls during training (numbers:
    :func:`over_training_table`)."""
    sentences = []
    for name, t in tables.items():
        _, deeper_falls_more = nc1_falls_over_training(t)
        sentences.append(f"On {name}, " + ("in every run the deeper the layer, the further its NC1 falls from the "
                                            "first measured epoch to the last." if deeper_falls_more else
                                            "not every run's NC1 falls further at a deeper layer."))
    return " ".join(sentences) + " The table gives each layer's fall."


def over_training_table(tables: dict) -> _HTML:
    """Per dataset and hidden layer: NC1 at the first measured epoch over NC1 at the last (smallest to largest
    over the runs, every lambda)."""
    rows = [{"data": name, "hidden layer": layer, "NC1 fall, first to last epoch": value_range(falls)}
            for name, t in tables.items() for layer, falls in nc1_falls_over_training(t)[0].items()]
    return table(pd.DataFrame(rows), "Table: how many times each hidden layer's NC1 falls during training, from "
                 "the first measured epoch to the last (smallest–largest over the runs of Figures 1-2, every λ).")


def train_test_rows(scales: dict) -> pd.DataFrame:
    """One row per run and scale ((dataset name, scale) -> last rows): training set against test set."""
    rows = []
    for (name, scale), last in scales.items():
        for _, r in last.sort_values("weight_decay").iterrows():
            rows.append({"data": name, "runs": scale, "λ": r["weight_decay"], "NC1": r["nc1"],
                         "test NC1": r["test_nc1"], "CDNV": r["cdnv"], "test CDNV": r["test_cdnv"], "NC4": r["nc4"],
                         "test NC4": r["test_nc4"], "training error": r["train_error"],
                         "test error": r["test_error"], "test error, nearest training centre": r["test_ncc_error"]})
    return pd.DataFrame(rows)


def _direction(group: pd.DataFrame) -> str | None:
    """Weight decay's effect on the test NC1 in one group of runs: "lower", "higher" or "neither..."; None
    without both lambda = 0 and lambda > 0."""
    zero, positive = group[group["λ"] == 0], group[group["λ"] > 0]
    if zero.empty or positive.empty:
        return None
    z, p = float(zero["test NC1"].iloc[0]), positive["test NC1"]
    return "lower" if (p < z).all() else "higher" if (p > z).all() else "neither uniformly lower nor higher"


def held_out_summary(rows: pd.DataFrame) -> pd.DataFrame:
    """:func:`train_test_rows` per dataset and scale: the test NC1 over the training NC1, NC4 on both sets, the
    test NC1 without against with weight decay and which way weight decay moves it, and how far the nearest-class-
    centre rule's test error is from the network's (ranges: smallest–largest over the runs)."""
    summary = []
    for (name, scale), group in rows.groupby(["data", "runs"], sort=False):
        zero, positive = group[group["λ"] == 0], group[group["λ"] > 0]
        gap = (100 * (group["test error, nearest training centre"] - group["test error"]).abs()).dropna()
        summary.append({
            "data": name, "runs": scale, "test NC1 / NC1": value_range(group["test NC1"] / group["NC1"]),
            "NC4": value_range(group["NC4"], ".1%"), "test NC4": value_range(group["test NC4"], ".1%"),
            "test NC1, λ = 0 against λ > 0": (f"{float(zero['test NC1'].iloc[0]):.3g} against "
                                              f"{value_range(positive['test NC1'], '.3g')}"
                                              if len(zero) and len(positive) else "–"),
            "weight decay's test NC1": _direction(group) or "–",
            "nearest centre against network, test error (points)": f"{gap.max():.1f}" if len(gap) else "–"})
    return pd.DataFrame(summary)


def held_out(rows: pd.DataFrame, images: dict) -> tuple[str, dict]:
    """What :func:`held_out_summary` shows, and whether the effect of weight decay on the test NC1 survives the
    change of scale (``images``: dataset name -> training images of the book's runs); and the numbers for glue
    (the book's runs only, not the full-scale ones)."""
    sentences, directions, numbers = [], {}, {}
    for (name, scale), group in rows.groupby(["data", "runs"], sort=False):
        if (direction := _direction(group)) is not None:
            directions[(name, scale)] = direction
        if scale != "full scale":
            zero = group[group["λ"] == 0]
            if len(zero) and (group["λ"] > 0).any():
                numbers[f"{KEYS[name]}_test_nc1_nowd"] = float(zero["test NC1"].iloc[0])
            numbers[f"{KEYS[name]}_test_nc4_max"] = float(group["test NC4"].max())
    less_collapsed = bool((rows["test NC1"] > rows["NC1"]).all())
    if less_collapsed:
        sentences.append("In every run the test set's NC1 is higher than the training set's: collapse measured on "
                         "the training set does not, by itself, carry over to held-out images.")
    gap = (100 * (rows["test error, nearest training centre"] - rows["test error"]).abs()).dropna()
    if len(gap):
        sentences.append(f"On the test set, the nearest-class-centre rule built from the training means errs within "
                         f"{gap.max():.1f} percentage points of the network's own test error in every run.")
    book_scale = next((scale for _, scale in directions if scale != "full scale"), None)
    for name, count in images.items():
        small, full = directions.get((name, book_scale)), directions.get((name, "full scale"))
        if small and full and small != full:
            sentences.append(f"On {name} the direction depends on the scale: weight decay leaves the test NC1 "
                             f"{small} on the book's {count:,}-image runs and {full} on the full training set; "
                             "neither is a general effect of weight decay.")
        elif small and full:
            sentences.append(f"On {name} the test NC1 with weight decay is {small} than without at both scales.")
        elif small:
            sentences.append(f"On {name} the test NC1 with weight decay is {small} than without.")
    return " ".join(sentences) + " The first table sums up each dataset and scale; the second gives every run.", \
        numbers


@dataclass
class LayersPage:
    """The layers page on one profile: the figure and phase-diagram runs per dataset name, and the last rows of
    the published full-scale figure runs (dataset name -> table, where published)."""

    profile: str
    figure_runs: dict
    phase_runs: dict
    full_scale: dict = field(default_factory=dict)
    root: str = "."

    @cached_property
    def tables(self) -> dict:
        from ..results import collect

        return {name: collect(runs) for name, runs in self.figure_runs.items()}

    @cached_property
    def lasts(self) -> dict:
        """The figure runs' last training rows, per dataset."""
        from ..analysis import last_rows

        return {name: last_rows(t) for name, t in self.tables.items()}

    @cached_property
    def phase_lasts(self) -> dict:
        """The phase-diagram runs' last training rows, per dataset."""
        from ..analysis import last_rows
        from ..results import collect

        return {name: last_rows(collect(runs)) for name, runs in self.phase_runs.items()}

    def _figure(self, fig, stem: str, runs: dict, caption: str, alt: str) -> FigureFiles:
        """Save a figure of ``runs`` (dataset name -> runs) with its provenance under ``book/figures/``."""
        runs = [r for group in runs.values() for r in group]
        return page_figure(fig, stem, runs, self.profile, figure_id=stem, what=f"Layer by layer, {stem}",
                           notebook="layers.md", params=f"profile='{self.profile}'", caption=caption, alt=alt,
                           root=self.root)

    def end_figure(self) -> FigureFiles:
        """NC1, CDNV and the nearest-centre disagreement of every hidden layer at the end of training."""
        from ..plots import figure_layers_end

        description = "; ".join(f"{name}: {runs[0].config.n_per_class} training images per class, "
                                f"{runs[0].config.architecture()}, {runs[0].config.epochs} epochs"
                                for name, runs in self.figure_runs.items())
        return self._figure(
            figure_layers_end(self.lasts), f"layers_end_{self.profile}", self.figure_runs,
            f"**Every hidden layer at the end of training** (the runs of Figures 1-2; {description}; profile "
            f"'{self.profile}'). Top: NC1 of each hidden layer's features; middle: CDNV; bottom: fraction of "
            f"training images whose nearest class centre at that layer is not the network's decision. One colour "
            f"and marker per λ.",
            "Three rows of line plots, one column per dataset, against the hidden layer: NC1, CDNV and the "
            "nearest-class-centre disagreement, one line per weight decay.")

    def headline(self) -> str:
        """The page's takeaway in two or three lines: does NC1 build up through the layers, and does the
        training set's collapse carry over to the test set (the figure runs, and the full-scale ones)?"""
        nc1_falls, _ = depth_checks(self.lasts)
        rows = self.held_out_rows
        ratio = (rows["test NC1"] / rows["NC1"]).dropna()
        held = (f"on held-out images NC1 is {value_range(ratio)} times its training value"
                + (", so collapse on the training set does not carry over by itself" if (ratio > 1).all() else ""))
        return (f"At the end of training NC1 falls at every step from the first hidden layer to the last in "
                f"{sum(nc1_falls)} of {len(nc1_falls)} runs of Figures 1-2 (collapse builds up through the network); "
                f"{held}.")

    def end_markdown(self) -> str:
        return end_of_training(self.lasts)[0]

    def end_numbers(self) -> dict:
        return end_of_training(self.lasts)[1]

    def end_table(self) -> _HTML:
        return end_of_training_table(self.lasts)

    def phase_figure(self) -> FigureFiles:
        """NC1 and CDNV of every hidden layer against lambda (the phase-diagram runs, seeds as bands)."""
        from ..plots import figure_layers_phase

        c = next(iter(self.phase_runs.values()))[0].config
        pooled = "".join(f"; {name}{pooling_text(runs[0])}" for name, runs in self.phase_runs.items()
                         if pooling_text(runs[0]))
        seeds = next(iter(self.phase_lasts.values()))["seed"].nunique()
        return self._figure(
            figure_layers_phase(self.phase_lasts), f"layers_phase_{self.profile}", self.phase_runs,
            f"**Every hidden layer across weight decays** (the phase-diagram runs: {c.n_per_class} training images "
            f"per class, {c.architecture()}, {c.epochs} epochs, {seeds} seeds{pooled}; profile '{self.profile}'). "
            f"End-of-training NC1 (top) and CDNV (bottom) of each hidden layer against λ (log axis; the markers "
            f"left of the grey line are λ = 0). Lines: mean over seeds; bands and bars: min-max over seeds. Gaps: "
            f"networks at f = 0, where NC is undefined.",
            "Line plots against weight decay on a log axis, one line per hidden layer, NC1 on top and CDNV below, "
            "one column per dataset.")

    def phase_markdown(self) -> str:
        return phase_comparison(self.phase_lasts)[0]

    def phase_numbers(self) -> dict:
        return phase_comparison(self.phase_lasts)[1]

    def phase_table(self) -> _HTML | None:
        return phase_best_table(self.phase_lasts)

    def training_figure(self) -> FigureFiles:
        """NC1 of each hidden layer against epoch (the figure runs)."""
        from ..plots import figure_layers_training

        return self._figure(
            figure_layers_training(self.tables), f"layers_training_{self.profile}", self.figure_runs,
            f"**NC1 of each hidden layer during training** (the runs of Figures 1-2; profile '{self.profile}'): one "
            f"row per dataset, one panel per hidden layer with a shared y-axis along the row; one colour, marker "
            f"and line style per λ. Log axes.",
            "Small multiples of NC1 against epoch on log axes, one panel per hidden layer, one row per dataset, "
            "one line per weight decay.")

    def training_markdown(self) -> str:
        return over_training(self.tables)

    def training_table(self) -> _HTML:
        return over_training_table(self.tables)

    def train_test_figure(self) -> FigureFiles:
        """NC1, CDNV, NC4 and the error at the last hidden layer, training set against test set."""
        from ..plots import figure_train_test

        return self._figure(
            figure_train_test(self.tables), f"layers_train_test_{self.profile}", self.figure_runs,
            f"**Training set against test set** at the last hidden layer (the runs of Figures 1-2; profile "
            f"'{self.profile}'). Filled markers: training set; open markers: test set with its own class means; no "
            f"markers (bottom row): test error of the nearest-class-centre rule built from the training means. One "
            f"colour, marker and line style per λ.",
            "Four rows of plots against epoch, one column per dataset: NC1, CDNV, NC4 and the error, each on the "
            "training set and on the test set.")

    @cached_property
    def held_out_rows(self) -> pd.DataFrame:
        """:func:`train_test_rows` of the book's runs, then of the full-scale runs where published."""
        scales = {(name, f"profile '{self.profile}'"): last for name, last in self.lasts.items()}
        scales.update({(name, "full scale"): last for name, last in self.full_scale.items()})
        return train_test_rows(scales)

    def _images(self) -> dict:
        return {name: runs[0].config.n_per_class * runs[0].meta["num_classes"]
                for name, runs in self.figure_runs.items()}

    def held_out_markdown(self) -> str:
        return held_out(self.held_out_rows, self._images())[0]

    def held_out_numbers(self) -> dict:
        return held_out(self.held_out_rows, self._images())[1]

    def held_out_summary_table(self) -> _HTML:
        return table(held_out_summary(self.held_out_rows), f"Table: end of training, training set against test set "
                     f"per dataset and scale (profile '{self.profile}', and the full-scale runs of published/paper/): "
                     f"smallest–largest over the runs; the last column is the largest gap between the test error of "
                     f"the nearest-class-centre rule built from the training means and the network's own.")

    def held_out_table(self) -> _HTML:
        return table(self.held_out_rows, f"Table: end of training, training set against test set (profile "
                     f"'{self.profile}', and the full-scale runs of published/paper/).",
                     formats={"λ": "{:g}", "training error": "{:.1%}", "test error": "{:.1%}", "NC4": "{:.1%}",
                              "test NC4": "{:.1%}", "test error, nearest training centre": "{:.1%}"}, precision=3)


def layers_page(profile: str, root: str = ".", progress: bool = True, full_scale_profile: str = "paper"
                ) -> LayersPage:
    """Read (or train) the figure and phase-diagram runs of ``profile``, and the published full-scale figure runs."""
    from ..analysis import last_rows
    from ..profiles import figure_configs, phase_configs
    from ..published import MissingResultError, load_published
    from ..results import collect
    from ..sweep import run_sweep

    figure_runs = {name: run_sweep(figure_configs(profile, key), progress=progress) for key, name in DATASETS.items()}
    phase_runs = {name: run_sweep(phase_configs(profile, key), progress=progress) for key, name in DATASETS.items()}
    full_scale = {}
    for key, name in DATASETS.items():
        try:
            configs = figure_configs(full_scale_profile, key)
            full_scale[name] = last_rows(collect(load_published(configs, full_scale_profile)))
        except MissingResultError:
            pass
    return LayersPage(profile, figure_runs, phase_runs, full_scale, str(root))
