"""The necessity page's answer per alternative: the ``alternatives`` runs against the ``horizon`` runs' answer.

:class:`AlternativesPage` reads both published profiles (never trains), compares lambda = 0 with lambda > 0 under
each knob setting (:mod:`ncpaper.alternatives`), and builds the answer table, the restated one-line answer, the
knob figure, the collapse-time figure and square loss beside cross-entropy.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import cached_property

import pandas as pd

from ..alternatives import (
    COLLAPSE_WITHIN,
    DEFAULT_SETTING,
    MEASURES,
    NECESSARY_WHERE_COLLAPSED,
    SETTLED_POINTS,
    Comparison,
    baseline_value,
    collapse_slope,
    collapse_times,
    comparisons,
    knob_frame,
    measure_answer,
    outcome,
    small_lambda_frame,
)
from ..analysis import TERMINAL_TRAIN_ERROR
from ..necessity import COLLAPSE_FACTOR, DATASET_NAMES, REACH

__all__ = ["AlternativesPage", "alternatives_page", "base_rates"]


def base_rates(profile: str = "horizon") -> dict:
    """The horizon profile's learning rate per dataset (its constant-rate entries): arm A's "η x1"."""
    from ..profiles import load_profile

    entries = load_profile(profile).get("horizon", {})
    return {spec["dataset"]: float(spec["lr"]) for spec in entries.values()}


def _value(values, digits: int = 2) -> str:
    """A seed range "lo–hi" (or one value), ``digits`` significant digits."""
    values = [float(v) for v in values if pd.notna(v)]
    if not values:
        return "–"
    lo, hi = min(values), max(values)
    return f"{lo:.{digits}g}" if f"{lo:.{digits}g}" == f"{hi:.{digits}g}" else f"{lo:.{digits}g}–{hi:.{digits}g}"


def _fold(value: float) -> str:
    """A ratio for prose and cells: two significant digits, whole numbers from 100 on (340, not 3.4e+02)."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.2g}"


def _count(fractions, n: int) -> str:
    """NC4 as misclassified counts: "44–53 of 500"."""
    counts = [round(float(f) * n) for f in fractions if pd.notna(f)]
    if not counts:
        return "–"
    lo, hi = min(counts), max(counts)
    return f"{lo} of {n}" if lo == hi else f"{lo}–{hi} of {n}"


@dataclass
class AlternativesPage:
    """The horizon runs and the alternatives runs, read from their published folders."""

    runs: list
    profile: str = "alternatives"
    horizon_profile: str = "horizon"
    root: str = "."
    published_in: dict | None = None  # run key -> the profile it was published under (None: all ``profile``'s)

    def own_runs(self) -> list:
        """The runs of ``profile`` (not the horizon runs it compares with)."""
        where = self.published_in or {}
        return [r for r in self.runs if where.get(r.meta["key"], self.profile) == self.profile]

    @cached_property
    def table(self) -> pd.DataFrame:
        from ..results import collect

        return collect(self.runs)

    @cached_property
    def knobs(self) -> pd.DataFrame:
        return knob_frame(self.runs, base_rates(self.horizon_profile))

    @cached_property
    def comparisons(self) -> list[Comparison]:
        return comparisons(self.table, self.knobs)

    @property
    def datasets(self) -> list[str]:
        return [d for d in DATASET_NAMES if any(c.dataset == d for c in self.comparisons)]

    def of(self, dataset: str) -> list[Comparison]:
        return [c for c in self.comparisons if c.dataset == dataset]

    @cached_property
    def n_train(self) -> dict:
        return self.knobs.groupby("dataset")["n_train"].first().to_dict()

    def cell(self, comparison: Comparison, measure: str) -> str:
        """lambda = 0's end values over seeds against the best lambda > 0's, the fold and the outcome."""
        v = comparison.verdict(measure)
        answer = outcome(comparison, measure, baseline_value(self.of(comparison.dataset), measure))
        if math.isnan(v.best_lambda):
            return f"{v.answer}: {v.reason}"
        best = comparison.at(v.best_lambda)
        if measure == "nc4":
            n = self.n_train[comparison.dataset]
            values = f"{_count(comparison.zero['nc4_end'], n)} → {_count(best['nc4_end'], n)}"
        else:
            fold = f"{_fold(v.gap)}×" if math.isfinite(v.gap) else "to 0"
            values = f"{_value(comparison.zero[measure + '_end'])} → {_value(best[measure + '_end'])} ({fold})"
        return f"{answer}: {values}, λ = {v.best_lambda:g}"

    def answer_frame(self, dataset: str) -> pd.DataFrame:
        """One row per comparison on ``dataset`` (its setting names the arm's knob, and the epochs where they are not
        3,000); per measure, the outcome, λ = 0's end values (seed range) → the best λ > 0's, the fold (seed means)
        and that λ."""
        rows = []
        for c in self.of(dataset):
            epochs = max(c.epochs)
            setting = c.setting + (" (the horizon runs)" if c.setting == DEFAULT_SETTING else "")
            setting += f" ({epochs:,} epochs)" if epochs != 3000 else ""
            row = {"setting": setting}
            row.update({name: self.cell(c, m) for m, name in MEASURES.items()})
            rows.append(row)
        return pd.DataFrame(rows)

    def lowest(self, dataset: str, measure: str) -> dict:
        """The lowest seed-mean end value of ``measure`` without weight decay over every setting of arms A, C, D, and
        the lowest with it (any fitting lambda > 0, any setting): is the best of lambda = 0 as good as the best of
        weight decay, whatever the knobs?"""
        zero, positive = [], []
        for c in self.of(dataset):
            if c.arm == "small_lambda":
                continue
            zero.append((float(c.zero[f"{measure}_end"].mean()), c.setting, 0.0))
            fitting = c.after[c.after["weight_decay"] > 0].groupby("weight_decay").filter(
                lambda runs: bool(runs["t_star"].notna().all()))
            for wd, runs in fitting.groupby("weight_decay"):
                positive.append((float(runs[f"{measure}_end"].mean()), c.setting, float(wd)))
        (z, z_setting, _), (p, p_setting, p_wd) = min(zero), min(positive)
        return {"zero": z, "zero_setting": z_setting, "positive": p, "positive_setting": p_setting,
                "positive_lambda": p_wd, "fold": z / p if p > 0 else math.inf}

    def lowest_frame(self) -> pd.DataFrame:
        """Per dataset and measure: the lowest value without weight decay over every setting against the lowest with
        it, their settings and the fold."""
        rows = []
        for d in self.datasets:
            for m, name in MEASURES.items():
                low = self.lowest(d, m)
                fold = "both 0" if low["zero"] == low["positive"] == 0 else (
                    "to 0" if not math.isfinite(low["fold"]) else f"{_fold(low['fold'])}×")
                if m == "nc4":
                    n = self.n_train[d]
                    values = (f"{low['zero'] * n:.2g} of {n}", f"{low['positive'] * n:.2g} of {n}")
                else:
                    values = (f"{low['zero']:.2g}", f"{low['positive']:.2g}")
                rows.append({"data": DATASET_NAMES[d], "measure": name, "lowest at λ = 0": values[0],
                             "its setting": low["zero_setting"], "lowest at λ > 0": values[1],
                             "its setting and λ": f"{low['positive_setting']}, λ = {low['positive_lambda']:g}",
                             "fold": fold})
        return pd.DataFrame(rows)

    def answer(self, dataset: str, measure: str) -> str:
        """The restated answer for one dataset and measure, in words (which settings make it unnecessary)."""
        answer, settings = measure_answer(self.of(dataset), measure)
        if answer == "not necessary":
            return f"not necessary (λ = 0 reaches it with {'; '.join(settings)})"
        if answer == NECESSARY_WHERE_COLLAPSED:
            return f"{answer} (with {'; '.join(settings)} weight decay does not either)"
        if settings:
            return f"{answer} (other settings: {'; '.join(settings)})"
        return answer

    def dataset_label(self, dataset: str) -> str:
        """The dataset's name and the data source its runs record (e.g. "CIFAR-10 (JPEG q75 copy)")."""
        from .display import markdown_text

        sources = sorted({markdown_text(r.meta["data_source"]) for r in self.runs if r.config.dataset == dataset})
        return f"{DATASET_NAMES[dataset]} ({'; '.join(sources)})"

    def groups(self) -> dict:
        """(measure, dataset, settings) grouped by answer: "necessary" (every setting tried, or every one where weight
        decay collapses it: then the settings where it does not), "not necessary" (with the settings where lambda = 0
        collapses too), "mixed"."""
        out = {"necessary": [], "not necessary": [], "mixed": []}
        for m in MEASURES:
            for d in self.datasets:
                answer, settings = measure_answer(self.of(d), m)
                kind = ("not necessary" if answer == "not necessary" else
                        "necessary" if answer in ("necessary in every setting tried", NECESSARY_WHERE_COLLAPSED)
                        else "mixed")
                out[kind].append((m, d, [] if kind == "mixed" else settings))
        return out

    def takeaway(self) -> str:
        """At most three lines: :meth:`one_line` and what it rests on."""
        seeds = f"{min(self.seeds)}–{max(self.seeds)}" if len(self.seeds) > 2 else ", ".join(map(str, self.seeds))
        return f"{self.one_line()} After interpolation; seeds {seeds}; both datasets unless named; our rule."

    def settings_tried(self) -> list[str]:
        return sorted({(c.arm, c.setting) for c in self.comparisons if c.arm != "small_lambda"})

    def answer_markdown(self) -> str:
        """The page's first paragraph: per dataset, each measure's answer over every setting tried, and what the
        verdicts rest on."""
        parts = []
        for d in self.datasets:
            clauses = "; ".join(f"{name}: **{self.answer(d, m)}**" for m, name in MEASURES.items())
            parts.append(f"**{self.dataset_label(d)}.** Is weight decay necessary? {clauses}.")
        parts.append(f"Settings tried: {len(self.settings_tried())} (the horizon runs' knobs, four more initialisation "
                     f"and learning-rate pairs, cross-entropy, a ConvNet); {self.basis()}. The tables below give every "
                     f"comparison.")
        return "\n\n".join(parts)

    def collapse_markdown(self) -> str:
        """The fitted slope of the collapse time against 1/(eta lambda), in words."""
        slopes = self.collapse_slopes()
        frame = self.collapse_frame
        per = ", ".join(f"{DATASET_NAMES[d]} {slopes[d]:.2f}" for d in self.datasets if d in slopes)
        censored = int(frame["censored"].sum())
        scaled = ("scales like 1/(ηλ)" if abs(slopes["both"] - 1) <= 0.25 else
                  f"scales like (1/(ηλ))^{slopes['both']:.2f}, not like 1/(ηλ)")
        return (f"Over {len(frame) - censored} weight-decay runs that settled (λ from {frame['weight_decay'].min():g} "
                f"to {frame['weight_decay'].max():g}, η ×1 and ×4), the collapse time against 1/(ηλ) has a fitted "
                f"slope of {slopes['both']:.2f} on log axes (one intercept per dataset; alone: {per}): the time "
                f"weight decay needs {scaled} (within "
                f"0.25 of 1 counts as proportional). {censored} run(s) have fewer than {SETTLED_POINTS} measurements "
                f"after their collapse time (NC1 may still be moving: lower bounds) and are "
                f"left out of the fit.")

    def provenance(self) -> pd.DataFrame:
        """The alternatives runs by dataset: device, CPU, commits and whether clean, when, wall time."""
        rows = []
        for r in self.own_runs():
            git = r.meta.get("git") or {}
            rows.append({"data": DATASET_NAMES[r.config.dataset], "device": r.meta.get("device", "unknown"),
                         "cpu": r.meta.get("cpu", "unknown"),
                         "commit": (git.get("commit") or "unknown")[:10]
                         + (" (modified)" if git.get("dirty") else "" if git.get("dirty") is False else " (unknown)"),
                         "finished": r.meta["created"].replace("T", " ")[:16],
                         "minutes": r.meta["timings"]["wall_seconds"] / 60})
        frame = pd.DataFrame(rows)
        return frame.groupby("data", sort=False).agg(
            runs=("device", "size"), device=("device", "first"), cpu=("cpu", "first"),
            commits=("commit", lambda c: ", ".join(sorted(set(c)))), finished=("finished", "max"),
            minutes=("minutes", "sum")).reset_index()

    def one_line(self) -> str:
        """The answer in at most three lines (the landing page's and the takeaway's): per answer, the measures and
        datasets it holds for, and the knobs that stand in for weight decay where it is not necessary."""
        groups, parts = self.groups(), []
        if groups["not necessary"]:
            kinds = [k for _, _, settings in groups["not necessary"] for s in settings
                     for k in _knob_kinds([s]).split(" or ")]
            common = sorted(set(kinds), key=lambda k: (-kinds.count(k), k))[:2]
            parts.append(f"Not necessary for {_measures(groups['not necessary'])} (λ = 0 gets there with "
                         f"{' or '.join(common)})")
        if groups["necessary"]:
            parts.append(f"Necessary for {_measures(groups['necessary'])}"
                         + (", where weight decay collapses them"
                            if any(settings for _, _, settings in groups["necessary"]) else ""))
        if groups["mixed"]:
            parts.append(f"Undecided for {_measures(groups['mixed'])}")
        return ". ".join(parts) + "."

    @property
    def seeds(self) -> list[int]:
        return sorted({s for c in self.comparisons for s in c.seeds})

    def basis(self) -> str:
        """What every verdict rests on: seeds, horizons, after interpolation."""
        epochs = sorted({e for c in self.comparisons for e in c.epochs})
        return (f"seeds {', '.join(str(s) for s in self.seeds)}; measured at the last epoch "
                f"({', '.join(f'{e:,}' for e in epochs)} epochs by setting), after interpolation (training error at "
                f"most {TERMINAL_TRAIN_ERROR:.1%}), at a constant learning rate")

    def rule_markdown(self) -> str:
        """The rule, in full, where it is used."""
        return (f"**The rule** (ours, `ncpaper.necessity.verdict`, the same as for the horizon runs). For one measure "
                f"and one setting, λ = 0 is compared with the λ > 0 that fits the training set on every seed and "
                f"ends lowest (seed means). **No**: λ = 0's seed mean ends within {COLLAPSE_FACTOR:g} times of it, "
                f"or at most at the floor (0, and for NC4 {TERMINAL_TRAIN_ERROR:.1%} of the training set: one "
                f"image in 500). **Yes**: λ = 0 ends at least {COLLAPSE_FACTOR:g} times higher on *every pairing* "
                f"of seeds (its lowest seed over the weight decay's highest), and at λ = 0's own late slope "
                f"(a power law over the last decade of epochs) closing the gap would take more than "
                f"{REACH:g} times the run's epochs (the extrapolation test). **Not decided**: anything else (the "
                f"seeds overlap, or λ = 0 still falls fast enough). So \"no\" is judged on seed means while \"yes\" "
                f"needs every pairing of seeds. A \"no\" counts as λ = 0 *collapsing too* only where λ = 0's seed "
                f"mean is itself at least {COLLAPSE_FACTOR:g} times below its value at the horizon runs' knobs (or at "
                f"the floor); otherwise the page says **neither collapses** (weight decay does not help there either, "
                f"which says nothing about necessity). A measure is *not necessary* where some setting at λ = 0 "
                f"collapses too; arm B (a small λ against none) cannot make it so.")

    # ---- arm B: how long weight decay takes, and small lambda ----

    @cached_property
    def collapse_frame(self) -> pd.DataFrame:
        return collapse_times(self.table, self.knobs)

    def collapse_slopes(self) -> dict:
        """Per dataset and for both: the fitted slope of log(collapse steps) against log(1/(eta lambda))."""
        frame = self.collapse_frame
        out = {d: collapse_slope(g) for d, g in frame.groupby("dataset", sort=False)}
        out["both"] = collapse_slope(frame)
        return out

    def collapse_table(self) -> pd.DataFrame:
        """Per dataset, rate and lambda: 1/(eta lambda) and the collapse time over seeds."""
        rows = []
        for (d, lr, wd), g in self.collapse_frame.groupby(["dataset", "lr", "weight_decay"], sort=True):
            rows.append({"data": DATASET_NAMES[d], "η": f"{lr:g}", "λ": f"{wd:g}", "epochs": f"{g['epochs'].max():,}",
                         "1/(ηλ) steps": f"{g['relaxation_steps'].iloc[0]:,.0f}",
                         "collapse time (steps)": _value(g["collapse_steps"], 3),
                         "NC1 at the end": _value(g["nc1_end"]),
                         "not settled": f"{int(g['censored'].sum())} of {len(g)}"})
        return pd.DataFrame(rows)

    def small_lambda_table(self) -> pd.DataFrame:
        rows = []
        for d in self.datasets:
            frame = small_lambda_frame(self.comparisons, d)
            for wd, r in frame.iterrows():
                rows.append({"data": DATASET_NAMES[d], "λ": f"{wd:g}", "epochs": f"{int(r['epochs']):,}",
                             "NC1 at the end": _value([r["low"], r["high"]]), "NC1 (seed mean)": r["mean"]})
        return pd.DataFrame(rows)

    def continuity(self, dataset: str) -> str:
        """Does NC1 at the end go back to lambda = 0's value as lambda -> 0? Compared at the smallest lambda, with the
        lambdas whose runs had not settled (:func:`~ncpaper.alternatives.collapse_times`)."""
        frame = small_lambda_frame(self.comparisons, dataset)
        zero, positive = frame.loc[0.0, "mean"], frame[frame.index > 0]
        smallest = positive.index.min()
        ratio = zero / positive.loc[smallest, "mean"]
        trend = ("it falls as λ grows over the whole range" if positive["mean"].is_monotonic_decreasing else
                 "it rises with λ over the whole range" if positive["mean"].is_monotonic_increasing else
                 f"it is lowest at an intermediate λ ({positive['mean'].idxmin():g})")
        near = "already back within 2x of" if ratio < 2 else f"still {_fold(ratio)} times below"
        times = self.collapse_frame[self.collapse_frame["dataset"] == dataset]
        times = times[times["lr"] == times["lr"].min()]  # the horizon rate: the small lambdas' runs
        moving = [f"λ = {w:g} ({int(g['censored'].sum())} of {len(g)} runs, {int(g['epochs'].max()):,} epochs)"
                  for w, g in times.groupby("weight_decay") if g["censored"].any()]
        still = (f" NC1 had not settled by the end (fewer than {SETTLED_POINTS} measurements within 2x of its final "
                 f"value) with {'; '.join(moving)}: their collapse times are lower bounds, and their NC1 may still "
                 f"change." if moving else "")
        return (f"On {DATASET_NAMES[dataset]}, NC1 at the end with λ = {smallest:g} is {near} λ = 0's "
                f"({positive.loc[smallest, 'mean']:.2g} against {zero:.2g}); among λ > 0 {trend}.{still}")

    def _figure(self, fig, stem: str, title: str, caption: str, alt: str):
        from .figures import page_figure

        return page_figure(fig, f"{stem}_{self.profile}", self.runs, self.profile, figure_id=title, what=title,
                           notebook="necessity.md", params=f"alternatives='{self.profile}'", caption=caption,
                           alt=alt, root=self.root)

    @cached_property
    def knob_files(self):
        from ..alternatives_plots import alternatives_figure

        fig = alternatives_figure({d: self.of(d) for d in self.datasets}, MEASURES,
                                  {d: self.n_train[d] for d in self.datasets})
        return self._figure(
            fig, "alternatives", "Is weight decay necessary under other knobs?",
            f"**Is weight decay necessary under other knobs?** Each measure at the last epoch (log scale) for every "
            f"setting tried: black circles λ = 0, coloured diamonds the best λ > 0 under the same knobs (the λ "
            f"our rule compares with); markers: seed means, bars: min–max over seeds {', '.join(map(str, self.seeds))}"
            f". Settings: initialisation scale × learning rate (the horizon rate η ×1 or ×4) of the bias-free MLP "
            f"256-256 with the square loss, then cross-entropy, then a bias-free ConvNet. NC4 is the fraction of "
            f"training images whose nearest class centre disagrees with the network (0 is drawn at half an image). "
            f"All settings are our choices.",
            "Grid of dot plots, one row per dataset and one column per measure (NC1, NC3 centred, NC3 raw, NC4): "
            "for each knob setting, the value without weight decay beside the best value with weight decay.")

    @cached_property
    def collapse_files(self):
        from ..alternatives_plots import collapse_time_figure

        slopes = self.collapse_slopes()
        fig = collapse_time_figure(self.collapse_frame, {d: small_lambda_frame(self.comparisons, d)
                                                         for d in self.datasets}, DATASET_NAMES)
        return self._figure(
            fig, "collapse_time", "How long does weight decay take?",
            f"**How long does weight decay take?** Left: each weight-decay run's collapse time (the first epoch "
            f"after which NC1 stays within {COLLAPSE_WITHIN:g}x of its final value, in SGD steps) against "
            f"1/(ηλ) in steps, log-log (square loss, PyTorch's initialisation, constant rate; open markers: "
            f"fewer than {SETTLED_POINTS} measurements follow the collapse time, so NC1 may still be moving: left out "
            f"of the "
            f"fits). Solid lines: least-squares fits per dataset (a common slope with one intercept per dataset: "
            f"{slopes['both']:.2f}); dotted: slope 1, proportional to 1/(ηλ). Right: NC1 at the last epoch against "
            f"λ (seed mean and min–max); the dashed line and band are λ = 0.",
            "Two log-log scatter plots: collapse time against one over learning rate times weight decay, with fitted "
            "lines; and final NC1 against weight decay with the no-weight-decay level as a horizontal band.")

    @cached_property
    def loss_files(self):
        from ..necessity import figure_horizon

        keep = self.knobs[(self.knobs["model"] == "mlp") & (self.knobs["init_scale"] == 1)
                          & (self.knobs["lr_factor"] == 1) & self.knobs["constant_rate"]
                          & ((self.knobs["loss"] == "cross_entropy")
                             | (self.knobs["weight_decay"] == 0) | (self.knobs["weight_decay"] >= 0.0028))]
        label = keep.set_index("run_id")["loss"]
        table = self.table[self.table["run_id"].isin(label.index)]
        table = table.assign(schedule=table["run_id"].map(label))
        after = pd.concat([c.after for c in self.comparisons if c.setting in (DEFAULT_SETTING, "cross-entropy")])
        after = after.assign(schedule=after["run_id"].map(label)).dropna(subset=["schedule"])
        names = {"square": "square loss", "cross_entropy": "cross-entropy"}
        fig = figure_horizon(table, after, ("nc1", "nc3_centred", "train_loss"), row_labels={
            (d, loss): f"{DATASET_NAMES[d]},\n{names[loss]}" for d in self.datasets for loss in names})
        return self._figure(
            fig, "square_vs_cross_entropy", "Square loss and cross-entropy",
            "**Square loss and cross-entropy**, side by side: NC1, the centred NC3 and the training loss (each "
            "run's own data term: half the mean squared error, or the mean cross-entropy) against epoch, log-log, "
            "bias-free MLP 256-256 at PyTorch's initialisation and the horizon rate, constant; lines: mean over "
            "seeds, bands: min–max, ringed dots: median t*.",
            "Log-log line plots of NC1, centred NC3 and training loss against epoch, one row per dataset and loss, "
            "one line per weight decay including none.")

    def cross_entropy_markdown(self) -> str:
        """What cross-entropy's lambda = 0 runs do: the loss, the weights' growth and NC1 over the last decade."""
        parts = []
        train = self.table[self.table["phase"] == "train"] if "phase" in self.table.columns else self.table
        for dataset in self.datasets:
            ids = self.knobs[(self.knobs["dataset"] == dataset) & (self.knobs["loss"] == "cross_entropy")
                             & (self.knobs["weight_decay"] == 0)]["run_id"]
            if ids.empty:
                continue
            growth, loss_fall, nc1_ratio = [], [], []
            for run_id in ids:
                run = train[train["run_id"] == run_id].sort_values("epoch")
                last = run["epoch"].iloc[-1]
                start = run[run["epoch"] >= last / 10].iloc[0]
                end = run.iloc[-1]
                growth.append(100 * (math.sqrt(end["weight_norm_sq"] / start["weight_norm_sq"]) - 1))
                loss_fall.append(start["train_loss"] / end["train_loss"])
                nc1_ratio.append(100 * (end["nc1"] / start["nc1"] - 1))
            parts.append(f"On {DATASET_NAMES[dataset]} with cross-entropy and λ = 0, from epoch {start['epoch']:,.0f} "
                         f"to {last:,.0f} the weights' norm grows by {_value(growth)}%, the cross-entropy falls "
                         f"{_value(loss_fall)} times and NC1 changes by {_value(nc1_ratio)}% (seed ranges)"
                         + (": the outputs sharpen while the features stay where they are." if max(map(abs, nc1_ratio))
                            < 20 else "."))
        return " ".join(parts)

    def convnet_markdown(self) -> str:
        """Are 1,000 epochs enough for the ConvNet's weight decay? eta lambda x steps (and with momentum's 1/(1 - beta))
        and when NC1 settled (:func:`~ncpaper.analysis.collapse_time`), per dataset."""
        from ..analysis import collapse_time, training_rows

        parts = []
        train = training_rows(self.table)
        for d in self.datasets:
            runs = self.knobs[(self.knobs["dataset"] == d) & (self.knobs["model"] == "convnet")
                              & (self.knobs["weight_decay"] > 0)]
            if runs.empty:
                continue
            k = runs.iloc[0]
            steps = k["epochs"] * math.ceil(k["n_train"] / k["batch_size"])
            relax = k["lr"] * k["weight_decay"] * steps
            momentum = next(r.config.momentum for r in self.runs if r.meta["key"] == k["run_id"])
            times = [collapse_time(train[train["run_id"] == rid].sort_values("epoch")) for rid in runs["run_id"]]
            settled = all(int((train[train["run_id"] == rid]["epoch"] >= t).sum()) >= SETTLED_POINTS
                          for rid, t in zip(runs["run_id"], times, strict=True))
            parts.append(f"On {DATASET_NAMES[d]} the ConvNet's λ = {k['weight_decay']:g} gets ηλ × steps = "
                         f"{relax:.2g} relaxation times in {k['epochs']:,} epochs ({relax / (1 - momentum):.2g} with "
                         f"momentum's 1/(1 − β)); its NC1 settles (within {COLLAPSE_WITHIN:g}x of its end) at epoch "
                         f"{_value(times, 3)}: {'enough' if settled else 'not enough on every seed'}.")
        return " ".join(parts)

    def glue(self) -> None:
        """Glue the restated answer (the landing page's line) and the collapse-time slopes, displaying nothing."""
        from myst_nb import glue

        glue("necessity_one_line", self.one_line(), display=False)
        for d in self.datasets:
            for m in MEASURES:
                glue(f"alternatives_{d}_{m}", self.answer(d, m), display=False)
        for d, slope in self.collapse_slopes().items():
            glue(f"collapse_slope_{d}", f"{slope:.2f}", display=False)


def _measures(items) -> str:
    """ "NC1 and NC4, NC3 (raw W) on CIFAR-10" from (measure, dataset, settings) triples: a measure without a dataset
    holds on every dataset."""
    datasets: dict = {}
    for m, d, _ in items:
        datasets.setdefault(m, []).append(d)
    by_where: dict = {}
    for m, ds in datasets.items():
        where = "" if len(ds) == len(DATASET_NAMES) else " on " + " and ".join(DATASET_NAMES[d] for d in ds)
        by_where.setdefault(where, []).append(MEASURES[m])
    return ", ".join(f"{' and '.join(names)}{where}" for where, names in by_where.items())


def _knob_kinds(settings) -> str:
    """What the settings moved, in words: "a smaller init or a 4x rate", "a ConvNet", ..."""
    kinds = []
    for setting in settings:
        if setting.startswith("init ×"):
            init, rate = (float(part.split("×")[1]) for part in setting.split(", "))
            kinds += ["a smaller init"] if init < 1 else []
            kinds += [f"a {rate:g}x rate"] if rate != 1 else []
            kinds += ["the default knobs"] if init == 1 and rate == 1 else []
        else:
            kinds.append({"ConvNet": "a ConvNet"}.get(setting, setting))
    return " or ".join(dict.fromkeys(kinds))


def alternatives_page(profile: str = "alternatives", horizon_profile: str = "horizon",
                      root: str | os.PathLike = ".") -> AlternativesPage:
    """The published runs of ``horizon_profile``'s horizon section and ``profile``'s alternatives section."""
    from ..profiles import load_profile, section_configs
    from ..published import load_published

    runs, published_in = [], {}
    for prof, section in ((horizon_profile, "horizon"), (profile, "alternatives")):
        entries = load_profile(prof).get(section, {})
        if not entries:
            raise ValueError(f"profile {prof!r} has no {section} section")
        found = load_published([c for entry in entries for c in section_configs(prof, section, entry)], prof)
        published_in.update({r.meta["key"]: prof for r in found})
        runs += found
    return AlternativesPage(runs, profile, horizon_profile, str(root), published_in)
