"""The pages of Figures 1 and 2 (``notebooks/figure.md``): one figure on one profile, trained or published."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from functools import cached_property

import pandas as pd

from .display import _HTML, inline_text, markdown_text, table_html
from .figures import FigureFiles, page_figure
from .prose import commit_notes, lambda_list, percent, pooling_text, span
from .verdicts import (
    COLLAPSE_FACTOR,
    TERMINAL_TRAIN_ERROR,
    after_interpolation_markdown,
    after_interpolation_table,
    criterion_groups,
    criterion_table,
    judge_lambdas,
    verdict_sentence,
)


def _configs_with(configs, weight_decays):
    """The profile's runs at the given lambdas (same settings and seeds); None: the profile's own lambdas."""
    if weight_decays is None:
        return configs
    weight_decays = [float(w) + 0.0 for w in weight_decays]  # + 0.0: lambda = -0 is the run of lambda = 0
    if 0.0 not in weight_decays:
        raise ValueError(f"weight_decays={weight_decays}: include 0, the runs every lambda is compared with")
    first = [c for c in configs if c.weight_decay == configs[0].weight_decay]  # one per seed
    return [dataclasses.replace(c, weight_decay=w) for w in sorted(set(weight_decays)) for c in first]


@dataclass
class FigurePage:
    """Figure 1 or 2 on one profile: the runs, the figure, and what the page says about them."""

    profile: str
    figure: str
    figure_number: int
    published: bool = False
    weight_decays: list | None = None
    root: str = "."
    missing: str | None = None
    runs: list = field(default_factory=list)

    @cached_property
    def table(self) -> pd.DataFrame:
        from ..results import collect

        return collect(self.runs)

    @cached_property
    def last(self) -> pd.DataFrame:
        """End of training (last "train" row), mean over seeds, one row per lambda."""
        from ..analysis import last_rows

        return last_rows(self.table).groupby("weight_decay").mean(numeric_only=True)

    @cached_property
    def seeds(self) -> int:
        """Seeds per weight decay (the most any lambda has)."""
        return int(self.table.groupby("weight_decay")["seed"].nunique().max())

    @property
    def over_seeds(self) -> str:
        """How the page's numbers combine seeds: "one seed (seed 0)" or "means over 3 seeds"."""
        return (f"one seed (seed {int(self.table['seed'].iloc[0])})" if self.seeds == 1
                else f"means over {self.seeds} seeds")

    @property
    def nc3_column(self) -> str:
        from ..plots import classifier_column

        return classifier_column(self.table, "nc3")[0]

    @property
    def label(self) -> str:
        return f"Figure {self.figure_number} ({self.runs[0].meta['data_source'] if self.runs else self.figure}, " \
               f"profile '{self.profile}')"

    @cached_property
    def description(self) -> str:
        c, source, classes = self.runs[0].config, self.runs[0].meta["data_source"], self.runs[0].meta["num_classes"]
        test = (f", test error on {c.n_test_per_class * classes:,} test images ({c.n_test_per_class:,} per class)"
                if c.n_test_per_class else "")
        return (f"{source}{pooling_text(self.runs[0])}, {c.n_per_class * classes:,} training images "
                f"({c.n_per_class:,} per class){test}, {c.architecture()}, {c.epochs} epochs, profile '{self.profile}'")

    @cached_property
    def files(self) -> FigureFiles:
        from ..plots import figure_nc
        from ..rerun import figure_stem, rerun_of

        lambdas = sorted(self.last.index)
        rerun = rerun_of("figure.md", {"profile": self.profile, "figure": self.figure,
                                       "figure_number": self.figure_number, "published": self.published,
                                       "weight_decays": self.weight_decays})
        stem = figure_stem(f"figure{self.figure_number}_{self.figure}_{self.profile}", rerun)
        side = "classifier rows, centred" if self.nc3_column.endswith("_centred") else "classifier rows"
        seeds = "lines are means over seeds, bands their range" if self.seeds > 1 else \
            f"{self.over_seeds} per weight decay"
        caption = (f"**Figure {self.figure_number}.** {inline_text(self.description)}. Neural Collapse measured on "
                   f"the training set at log-spaced epochs, one colour, marker and line style per weight decay "
                   f"(λ = {lambda_list(lambdas)}; black, solid: none); {seeds}. Filled markers: class means; open "
                   f"markers: {side}; dotted verticals: learning-rate cuts. All settings are our choices (see "
                   f"Reproduce and cite).")
        nc1 = ", ".join(f"{self.last.loc[w, 'nc1']:.3g} at λ = {w:g}" for w in lambdas)
        alt = (f"Eight line plots against training epoch on a log axis, one line per weight decay "
               f"(λ = {lambda_list(lambdas)}): training error, training loss, NC1, NC2 equinorm, NC2 equiangularity, "
               f"NC2 max-angle, NC3 and NC4. At the last epoch NC1 is {nc1}.")
        params = f"profile='{self.profile}', figure='{self.figure}'" + (
            f", weight_decays={[float(w) for w in lambdas]}" if self.weight_decays is not None else "")
        c = self.runs[0].config
        fig = figure_nc(self.table, title=_plain(f"Figure {self.figure_number} · {self.runs[0].meta['data_source']} · "
                                                 f"profile '{self.profile}'"),
                        rate_cuts=[round(m * c.epochs) for m in c.lr_milestones])
        return page_figure(fig, stem, self.runs, self.profile, figure_id=self.figure_number,
                           what=f"Figure {self.figure_number} ({inline_text(self.runs[0].meta['data_source'])}, "
                                f"profile '{self.profile}')",
                           notebook="figure.md", params=params, caption=caption, alt=alt, root=self.root,
                           rerun=rerun)

    def interactive(self):
        """The figure as an interactive figure (``ncpaper.interactive``); None while the runs are missing."""
        if self.missing:
            return None
        from ..interactive import nc_figure

        c = self.runs[0].config
        return nc_figure(self.table, title=f"Figure {self.figure_number} · {self.runs[0].meta['data_source']} · "
                                           f"profile '{self.profile}'", name=self.files.stem,
                         rate_cuts=[round(m * c.epochs) for m in c.lr_milestones])

    def figure_block(self):
        if self.missing:
            return self.missing
        return self.files.html()

    def results(self) -> list:
        """What the page shows under its figure, in order: our criterion (a sentence and its table), what to take
        from the figure, every measure at the last epoch, after interpolation (a sentence and its table), Lemma 2's
        balance (a sentence and its table). The numbers sit in the tables; the sentences say what they mean."""
        return self.criterion_results() + self.after_results() + self.balance_results()

    def criterion_results(self) -> list:
        """The page's section on our criterion: its sentence and table, what to take from the figure, every
        measure at the last epoch (nothing while the runs are missing)."""
        if self.missing:
            return []
        return [verdict_sentence(self.last, self.nc3_column), self.criterion_table(), self.takeaway(),
                self.end_table()]

    def after_results(self) -> list:
        """The section after interpolation: a sentence and its table."""
        return [] if self.missing else [after_interpolation_markdown(self.table), self.after_table()]

    def balance_results(self) -> list:
        """The section on Lemma 2's balance: a sentence and its table."""
        return [] if self.missing else [self.balance_markdown(), self.balance_table()]

    def criterion_table(self):
        """Per lambda at the last epoch: training error, NC1 and NC3 and how many times lower than without weight
        decay, our criterion's verdict (:func:`criterion_table`), and NC1's fall over the last quarter."""
        frame = criterion_table(self.last, self.nc3_column)
        if self.last_quarter_fall is not None:
            frame.insert(len(frame.columns) - 1, "NC1 fall, last ¼", frame["λ"].map(self.last_quarter_fall))
        caption = (f"Table: {self.label} at the last epoch ({self.runs[0].config.epochs}), {self.over_seeds}: our "
                   f"criterion per weight decay. Ratio: the value without weight decay over the value with it (how "
                   f"many times lower); NC1 fall, last ¼: NC1 at 75% of the epochs over NC1 at the end (above 1: "
                   f"still falling); fits, < {COLLAPSE_FACTOR:g}x: fits the training set but collapses less than "
                   f"{COLLAPSE_FACTOR:g}-fold; no fit: training error over {TERMINAL_TRAIN_ERROR:.1%}.")
        return _HTML(table_html(frame, caption, formats={"training error": percent, "λ": "{:g}"},
                                first=["our criterion"]))

    def after_table(self):
        """t*, and NC1 and NC3 after it, per lambda (:func:`after_interpolation_table`)."""
        return None if self.missing else after_interpolation_table(self.table, self.label)

    @cached_property
    def last_quarter_fall(self) -> pd.Series | None:
        """Per lambda (seed means): NC1 at the last measurement within 75% of the epochs over NC1 at the end (above
        1: still falling over the last quarter); None when a run has no measurement that early."""
        from ..analysis import last_rows, training_rows

        train = training_rows(self.table)
        earlier = last_rows(train[train["epoch"] <= 0.75 * self.runs[0].config.epochs])
        if earlier["run_id"].nunique() != self.table["run_id"].nunique():
            return None
        return earlier.groupby("weight_decay")["nc1"].mean() / self.last["nc1"]

    def headline(self, factor: float = COLLAPSE_FACTOR, max_train_error: float = TERMINAL_TRAIN_ERROR) -> str:
        """The page's takeaway in two or three lines: which lambdas meet our criterion (fits the training set,
        NC1 and NC3 ``factor`` times smaller than without weight decay), by how much, on how many seeds."""
        if self.missing:
            return (f"Not yet published: this page shows Figure {self.figure_number} at full scale once "
                    f"`published/{self.profile}/` holds its runs (how to make them is below).")
        judged = judge_lambdas(self.last, self.nc3_column, factor, max_train_error)
        met, weak, unfit = criterion_groups(judged, factor)
        runs = (f"{markdown_text(self.runs[0].meta['data_source'])}, {self.runs[0].config.epochs} epochs, "
                + ("one seed" if self.seeds == 1 else f"means over {self.seeds} seeds"))
        two = "{:.2g}".format
        if met:
            nc1, nc3 = span([judged[w][0][0] for w in met], two), span([judged[w][0][1] for w in met], two)
            said = (f"at λ = {lambda_list(met)} the network fits its training set and NC1 ends {nc1}, NC3 {nc3} "
                    f"times lower than without weight decay")
        else:
            said = f"no λ fits the training set with NC1 and NC3 {factor:g} times lower than without weight decay"
        if weak:
            said += f"; at λ = {lambda_list(weak)} it fits but collapses less"
        if unfit:
            said += f"; from λ = {min(unfit):g} on it no longer fits (training error over {max_train_error:.1%})"
        return f"{runs}: {said}. Our settings and thresholds, not the paper's."

    def takeaway(self, factor: float = COLLAPSE_FACTOR, max_train_error: float = TERMINAL_TRAIN_ERROR) -> str:
        """One paragraph on what to take from the figure, claiming no more than the measured numbers show; the
        numbers themselves are in :meth:`criterion_table` and :meth:`end_table`."""
        from ..analysis import training_rows

        last, nc3 = self.last, self.nc3_column
        zero = last.loc[0.0]
        judged = judge_lambdas(last, nc3, factor, max_train_error)
        ratio = {w: ratios for w, (ratios, _) in judged.items()}
        met, weak, unfit = criterion_groups(judged, factor)
        seeds = "one seed" if self.seeds == 1 else f"{self.seeds} seeds, means"
        spread_note = (" How much such numbers move from seed to seed is measured on [Is weight decay necessary?]"
                       "(necessity.ipynb) (3 seeds of smaller runs, twenty times longer) and on the phase diagrams "
                       "(3 seeds at every λ)." if self.seeds == 1 else "")
        train = training_rows(self.table)
        first_nc1 = train[train["epoch"] == train["epoch"].min()].groupby("weight_decay")["nc1"].mean()[0.0]
        fits = "fits" if zero["train_error"] <= max_train_error else "does not fit"
        parts = [f"**What to take from it** ({seeds} per λ).{spread_note} Without weight decay the network {fits} "
                 f"its training set, and "
                 + (f"NC1 falls too: {first_nc1 / zero['nc1']:.2g}-fold from the first measured epoch."
                    if first_nc1 > zero["nc1"] else "NC1 ends no lower than at the first measured epoch.")]
        if met:
            parts.append(f"With λ = {lambda_list(met)} it fits as well and NC1 and NC3 end at least {factor:g} times "
                         f"lower: the collapse of NC1 and NC3 with weight decay that the paper's figures show.")
            edge = [w for w in met if min(ratio[w]) < 1.1 * factor]
            if edge:
                parts.append(f"At λ = {lambda_list(edge)} the smaller ratio is within 10% of our {factor:g}x "
                             f"threshold: met, but only just, on {seeds.split(',')[0]}.")
        if weak:
            parts.append(f"At λ = {lambda_list(weak)} it fits but collapses less than {factor:g}-fold.")
        if unfit:
            parts.append(f"From λ = {min(unfit):g} on, more of the training set than our {max_train_error:.1%} "
                         f"threshold stays misclassified, so those runs are outside the terminal phase as we define "
                         f"it.")
        if self.last_quarter_fall is not None and ratio:
            still = max(self.last_quarter_fall[w] for w in ratio)
            if still > 1.5:
                parts.append(f"NC1 was still falling over the last quarter of training with weight decay (up to "
                             f"{still:.2g}-fold): the ratios are those at epoch {self.runs[0].config.epochs}, not "
                             f"limits.")
        if "test_error" in last.columns and last["test_error"].notna().all() and ratio:
            errors = [last.loc[w, "test_error"] for w in ratio]
            way = ("lower with every weight decay than without" if max(errors) < zero["test_error"] else
                   "higher with every weight decay than without" if min(errors) > zero["test_error"] else
                   "lower with some weight decays and higher with others")
            parts.append(f"Test error (in the table of every measure at the last epoch, below) is {way}.")
        return " ".join(parts)

    @cached_property
    def balance_frame(self) -> pd.DataFrame:
        """Per weight-decay run: Lemma 2's balance ratios (lambda ||W_l||^2 over the fit term; 1 at a critical
        point) at SGD's last iterate and after settling, and the hidden layers' gradient after settling. Empty when
        the runs were not settled."""
        from ..analysis import last_rows, settled_rows, training_rows

        settled = settled_rows(self.table)
        balance = [c for c in settled.columns if c.startswith("balance_")]
        if settled.empty or not balance:
            return pd.DataFrame()
        trained = last_rows(training_rows(self.table)).set_index("run_id")
        rows = []
        for _, run in settled[settled["weight_decay"] > 0].iterrows():
            last = trained.loc[run["run_id"], balance].astype(float)
            row = {"λ": run["weight_decay"], "seed": int(run["seed"]),
                   "last iterate: ratios": f"{last.min():.3g}–{last.max():.3g}",
                   "settled: largest |ratio − 1|": float((run[balance].astype(float) - 1).abs().max())}
            gradients = sorted((c for c in settled.columns if c.startswith("settle_gradient_")),
                               key=lambda c: int(c.rsplit("_", 1)[1]))[:-1]  # W_L's is 0 after settling
            if gradients and pd.notna(run[gradients]).all():
                row["settled: hidden layers' gradient"] = float(run[gradients].astype(float).max())
            rows.append(row)
        return pd.DataFrame(rows)

    def balance_markdown(self) -> str:
        frame = self.balance_frame
        if frame.empty:
            return ""
        gradient = frame.get("settled: hidden layers' gradient")
        still = ("" if gradient is None or gradient.isna().any() else
                 " The hidden layers are not stationary there: their gradient "
                 "$\\lVert\\nabla_{W_l}J\\rVert_F / \\lVert\\lambda W_l\\rVert_F$, 0 at a critical point, is "
                 + ("far from 0 in every run (last column)." if gradient.min() > 0.01 else
                    "below 0.01 in some runs and larger in others (last column)." if gradient.max() > 0.01 else
                    "below 0.01 in every run (last column)."))
        return ("**Lemma 2's balance** (every layer's ratio $\\lambda\\lVert W_l\\rVert_F^2$ over the fit term is 1) "
                "holds at critical points, and SGD's last iterate is not one: the table gives its ratios. Settling "
                "after training ([Lemma 2](lemma2.ipynb) page: the classifier solved exactly and every unit and layer "
                "rescaled) stops only when every layer is within 0.1% of it, so the settled runs meet it by "
                "construction; it makes the objective stationary in those directions, not in every direction."
                + still)

    def balance_table(self):
        frame = self.balance_frame
        if frame.empty:
            return None
        caption = (f"Table: {self.label}, Lemma 2's balance per weight-decay run: every layer's ratio "
                   f"λ‖W_l‖² / fit term at SGD's last iterate (smallest–largest layer), the largest distance from 1 "
                   f"after settling, and the largest hidden layer's gradient ‖∇J‖ / ‖λW_l‖ after settling.")
        return _HTML(table_html(frame, caption, formats={"λ": "{:g}", "settled: largest |ratio − 1|": "{:.2%}",
                                                         "settled: hidden layers' gradient": "{:.3g}"}))

    def end_table(self):
        if self.missing:
            return None
        columns = ["train_error", "test_error", "train_loss", "eps", "nc1", "nc2_equinorm_means",
                   "nc2_equiangular_means", self.nc3_column, "nc4"]
        caption = (f"Table: {self.label} at the last training epoch, {self.over_seeds}, one row per weight decay "
                   f"(the measurements on the training set; test error on the test set).")
        return _HTML(table_html(self.last[columns], caption, index=True,
                                formats={"train_error": percent, "test_error": percent}))

    def origin_markdown(self) -> str:
        from ..analysis import provenance_table

        if self.missing:
            return ""
        prov = provenance_table(self.runs)
        if self.published:
            notes = sorted({markdown_text(n) for r in self.runs if (n := (r.meta.get("git") or {}).get("note"))})
            listed = {column: ", ".join(sorted({markdown_text(v) for v in prov[column]}))
                      for column in ("device", "precision")}
            return (f"These are **published results**: the book reads them from `published/{self.profile}/` and "
                    f"does not retrain them. They were trained on {listed['device']} in {listed['precision']}, "
                    f"finished between {markdown_text(prov['finished (UTC)'].min())} and "
                    f"{markdown_text(prov['finished (UTC)'].max())} UTC; their wall times "
                    f"(training, measuring and settling, some side by side on one device) add up to "
                    f"{prov['wall min'].sum():.0f} minutes. `ncpaper sweep --profile {self.profile} --figure "
                    f"{self.figure} --retrain-published` retrains them (resuming from checkpoints) and `ncpaper "
                    f"publish --profile {self.profile}` republishes them."
                    + commit_notes(notes))
        return (f"These runs are trained when the book is built (or read from the result cache, keyed by their "
                f"configuration and data) on the profile '{self.profile}'.")

    def provenance(self):
        from ..analysis import provenance_table

        if self.missing:
            return None
        shown = provenance_table(self.runs).drop(columns=["data", "training images"])  # both are in the caption
        return _HTML(table_html(shown, f"Table: the runs of {self.label}: where, when and by which code each was "
                                       "trained.", formats={"wall min": "{:.1f}", "images/s": "{:,.0f}",
                                                            "λ": "{:g}"}))

    def glue(self) -> None:
        """Glue the page's numbers (for other pages and the tests), without displaying anything."""
        from myst_nb import glue

        glue("missing", self.missing or "", display=False)
        if self.missing:
            return
        last, nc3 = self.last, self.nc3_column
        glue("caption", self.description, display=False)
        glue("data_source", self.runs[0].meta["data_source"], display=False)
        glue("epochs", int(self.runs[0].config.epochs), display=False)
        glue("nc1_nowd", float(last.loc[0.0, "nc1"]), display=False)
        glue("nc3_nowd", float(last.loc[0.0, nc3]), display=False)
        for k, wd in enumerate(sorted(w for w in last.index if w > 0), start=1):
            glue(f"wd{k}", float(wd), display=False)
            glue(f"nc1_ratio_{k}", float(last.loc[0.0, "nc1"] / last.loc[wd, "nc1"]), display=False)
            glue(f"nc3_ratio_{k}", float(last.loc[0.0, nc3] / last.loc[wd, nc3]), display=False)
        glue("figure_anchor", self.files.anchor, display=False)
        glue("fit_edge", self.fit_edge(), display=False)

    def fit_edge(self) -> str:
        """The smallest lambda whose training error exceeds our 0.2% threshold, with that error and how much lower
        NC1 and NC3 still are than without weight decay (a sentence; "" when every lambda fits)."""
        from ..analysis import TERMINAL_TRAIN_ERROR

        last, nc3 = self.last, self.nc3_column
        above = [w for w in sorted(last.index) if w > 0 and last.loc[w, "train_error"] > TERMINAL_TRAIN_ERROR]
        if not above:
            return ""
        w = above[0]
        return (f"at λ = {w:g} it misclassifies {last.loc[w, 'train_error']:.2%} of its training images while NC1 is "
                f"{last.loc[0.0, 'nc1'] / last.loc[w, 'nc1']:.2g} times and NC3 "
                f"{last.loc[0.0, nc3] / last.loc[w, nc3]:.2g} times lower than without weight decay")


def _plain(title: str) -> str:
    """A figure title that matplotlib draws as it is (a ``$`` in a data source would start mathtext)."""
    return title.replace("$", r"\$")


def _not_published(profile: str, figure: str, err: Exception) -> str:
    return (f"**Not yet published.** The full-scale runs of this figure (profile '{profile}', as it stands in "
            f"`ncpaper/profiles.yaml`) are not in `published/{profile}/` yet, so there is no figure here. To make "
            f"them: `ncpaper sweep --profile {profile} --figure {figure}`, then `ncpaper publish --profile "
            f"{profile}`, and rebuild the book. ({markdown_text(err)})")


def figure_page(profile: str, figure: str, figure_number: int, published: bool = False,
                weight_decays: list | None = None, root: str | os.PathLike = ".", progress: bool = True
                ) -> FigurePage:
    """Load (published) or train the figure's runs and return its page; a missing publication is a note."""
    from ..profiles import figure_configs
    from ..published import MissingResultError, load_published
    from ..sweep import run_sweep

    configs = _configs_with(figure_configs(profile, figure), weight_decays)
    page = FigurePage(profile, figure, figure_number, published, weight_decays, str(root))
    if published:
        try:
            page.runs = load_published(configs, profile)
        except MissingResultError as err:
            page.missing = _not_published(profile, figure, err)
    else:
        page.runs = run_sweep(configs, progress=progress)
    return page
