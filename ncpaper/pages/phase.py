"""The phase-diagram pages (``notebooks/phase.md``): end-of-training measurements over many lambdas and seeds."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property

import pandas as pd

from .display import _HTML, table_html
from .figures import FigureFiles, page_figure
from .prose import lambda_list, pooling_text, span
from .verdicts import TERMINAL_TRAIN_ERROR, after_interpolation_table


@dataclass
class PhasePage:
    """The weight-decay phase diagram on one dataset: end-of-training rows over many lambdas and seeds."""

    profile: str
    dataset: str
    runs: list
    root: str = "."

    @cached_property
    def table(self) -> pd.DataFrame:
        from ..results import collect

        return collect(self.runs)

    @cached_property
    def last(self) -> pd.DataFrame:
        from ..analysis import last_rows

        return last_rows(self.table)

    def after_table(self):
        """t*, and NC1 and NC3 after it, per lambda (:func:`after_interpolation_table`)."""
        return after_interpolation_table(self.table, f"The phase diagram ({self.runs[0].meta['data_source']}, "
                                                     f"profile '{self.profile}')")

    @cached_property
    def description(self) -> str:
        c = self.runs[0].config
        return (f"{self.runs[0].meta['data_source']}{pooling_text(self.runs[0])}, {c.n_per_class} training "
                f"images per class, {c.architecture()}, {c.epochs} epochs, "
                f"{self.last['weight_decay'].nunique()} weight decays x {self.last['seed'].nunique()} seeds, "
                f"profile '{self.profile}'")

    @cached_property
    def files(self) -> FigureFiles:
        from ..plots import figure_phase

        stem = f"phase_{self.dataset}_{self.profile}"
        caption = (f"**Phase diagram ({self.runs[0].meta['data_source']}).** {self.description}. End-of-training "
                   f"measurements on the training set against λ (log axis; left of the grey line: λ = 0). "
                   f"Lines: mean over seeds; bands and bars: min-max over seeds. Last panel: each layer's Lemma 2 "
                   f"ratio $\\lambda\\lVert W_l\\rVert_F^2 / \\frac{{1}}{{NC}}\\sum_i\\langle y_i - f_i, f_i\\rangle$ "
                   f"(1 at a critical point).")
        lambdas = self.last["weight_decay"]
        alt = (f"Eight plots against weight decay λ on a log axis, from {lambdas[lambdas > 0].min():g} "
               f"to {lambdas.max():g}, with λ = 0 as a square at the left: training error, ε, NC1, "
               f"NC2 equinorm and equiangularity of the class means, NC3, NC4, and each layer's Lemma 2 ratio.")
        fig = figure_phase(self.last, title=f"Phase diagram · {self.runs[0].meta['data_source']} · profile "
                                            f"'{self.profile}'")
        return page_figure(fig, stem, self.runs, self.profile, figure_id=f"phase diagram ({self.dataset})",
                           what=f"phase diagram ({self.runs[0].meta['data_source']}, profile '{self.profile}')",
                           notebook="phase.md", params=self._params, caption=caption, alt=alt, root=self.root)

    @property
    def _params(self) -> str:
        return f"profile='{self.profile}', dataset='{self.dataset}'"

    def interactive(self):
        """The phase diagram as an interactive figure (``ncpaper.interactive``)."""
        from ..interactive import phase_figure

        return phase_figure(self.last, title=f"Phase diagram · {self.runs[0].meta['data_source']} · profile "
                                             f"'{self.profile}'", name=f"phase_{self.dataset}_{self.profile}")

    @cached_property
    def layers_files(self) -> FigureFiles:
        """NC1 and CDNV of every hidden layer at the end of training against lambda (seeds as bands)."""
        from ..plots import figure_layers_phase

        source = self.runs[0].meta["data_source"]
        stem = f"phase_layers_{self.dataset}_{self.profile}"
        caption = (f"**Phase diagram per layer ({source}).** {self.description}. NC1 and CDNV of each hidden "
                   f"layer's features at the end of training against λ (log axis; λ = 0 at the left); lines: mean "
                   f"over seeds, bands: min-max. The last hidden layer's NC1 is the NC1 of the figure above.")
        alt = (f"Two plots against weight decay λ on a log axis, one line per hidden layer: NC1 and CDNV at the "
               f"end of training, {source}.")
        fig = figure_layers_phase({source: self.last})
        return page_figure(fig, stem, self.runs, self.profile, figure_id=f"phase diagram per layer ({self.dataset})",
                           what=f"phase diagram per layer ({source}, profile '{self.profile}')",
                           notebook="phase.md", params=self._params, caption=caption, alt=alt, root=self.root)

    @cached_property
    def edges(self) -> tuple[pd.DataFrame, float, float, list, list]:
        """NC1 over seeds per lambda; the smallest lambda with NC1 below a tenth of lambda = 0's (onset); the
        smallest from which the mean training error exceeds the terminal threshold (breakdown); the lambdas > 0
        whose mean training error is within it (fit), and those of them below the tenth (both). NaN where no
        lambda in the range does it."""
        from ..analysis import collapse_onset, fit_breakdown, seed_summary

        nc1 = seed_summary(self.last, "nc1")
        errors = seed_summary(self.last, "train_error")["mean"]
        fit = [w for w in nc1.index if w > 0 and errors[w] <= TERMINAL_TRAIN_ERROR]
        both = [w for w in fit if nc1.loc[w, "mean"] < nc1.loc[0.0, "mean"] / 10]
        return nc1, collapse_onset(self.last, "nc1", 10), fit_breakdown(self.last), fit, both

    def headline(self) -> str:
        """The page's takeaway in two or three lines, from :attr:`edges`."""
        nc1, onset, breakdown, _, both = self.edges
        runs = (f"{self.runs[0].meta['data_source']}, {self.last['weight_decay'].nunique()} weight decays x "
                f"{self.last['seed'].nunique()} seeds, {self.runs[0].config.epochs} epochs")
        onset_text = f"from λ = {onset:.2g}" if onset == onset else "at no λ in this range"
        breakdown_text = f"from λ = {breakdown:.2g}" if breakdown == breakdown else "at no λ in this range"
        both_text = (f"only λ = {lambda_list(both)} {'does' if len(both) == 1 else 'do'} both" if both else
                     "no λ does both")
        return (f"{runs}: NC1 falls below a tenth of its value without weight decay ({nc1.loc[0.0, 'mean']:.3g}) "
                f"{onset_text}, and the network stops fitting its training set {breakdown_text}: {both_text}. "
                f"Our settings and thresholds, not the paper's.")

    def onset_markdown(self) -> str:
        nc1, onset, breakdown, fit, both = self.edges
        dead = self.last[~self.last["nc_defined"].astype(bool)]
        onset_text = (f"**λ = {onset:.2g}** (NC1 {nc1.loc[onset, 'mean']:.3g})" if onset == onset
                      else "**no λ in this range**")
        breakdown_text = f"**λ = {breakdown:.2g}**" if breakdown == breakdown else "**no λ in this range**"
        both_text = (f"Both tests pass at λ = {lambda_list(both)} only" if both else
                     "No λ here passes both tests")
        above = [w for w in fit if nc1.loc[w, "mean"] >= nc1.loc[0.0, "mean"]]
        above_text = (f" NC1 is not monotone in λ: at λ = {lambda_list(above)} the network fits, yet NC1 (mean "
                      f"{span([nc1.loc[w, 'mean'] for w in above])}) is no lower than without weight decay."
                      if above else "")
        dead_text = (f"From λ = {dead['weight_decay'].min():.2g} on, {len(dead)} of the runs end at the trivial "
                     "solution f = 0 (every last-layer feature zero), where Neural Collapse is undefined; they "
                     "appear as gaps."
                     if len(dead) else "No run ends at the trivial solution f = 0.")
        minutes = sum(r.meta["timings"]["train_seconds"] + r.meta["timings"]["measure_seconds"] for r in self.runs) / 60
        return (f"**Where collapse sets in.** Without weight decay NC1 ends at {nc1.loc[0.0, 'mean']:.3g} (mean of "
                f"{self.last['seed'].nunique()} seeds). The smallest weight decay at which NC1 falls below a tenth "
                f"of that (our threshold) is {onset_text}. Training stops fitting the data (mean training error above "
                f"{TERMINAL_TRAIN_ERROR:.1%}, the threshold of every page) from {breakdown_text}. {both_text} (the "
                f"network fits and NC1 is below a tenth of λ = 0's).{above_text} Both edges depend on the training "
                f"budget: a smaller $\\lambda$ needs more steps (about $1/(\\eta\\lambda)$) to reach the balanced "
                f"critical point of Lemma 2, which is why the smallest values here behave like $\\lambda = 0$ "
                f"([Is weight decay necessary?](necessity.ipynb) follows four of these λ for twenty times the "
                f"epochs). {dead_text} The {len(self.runs)} runs took {minutes:.1f} CPU-minutes.{self._pooling_note()}")

    def _pooling_note(self) -> str:
        k = self.runs[0].config.input_pool
        if k == 1:
            return ""
        height, width = self.runs[0].meta["input_shape"][-2:]
        return (f" These runs see each image averaged over {k}x{k} pixel blocks ({height}x{width} inputs): a "
                f"first layer {k * k} times cheaper, so that the sweep fits the book's CPU budget. Side by side with "
                f"the sweep on the full images (`benchmarks/README.md`: {height * k}x{width * k} inputs, twice the "
                "epochs at half the rate) it puts the NC1 and centred-NC3 onsets and the fit breakdown at the same "
                f"λ, and collapses less at the strongest λ that still fit (its first layer has 1/{k * k} of the "
                "weights) and misclassifies more past the breakdown.")

    def theory_summary(self) -> tuple[pd.DataFrame, str]:
        """Per lambda > 0 (seed means): Lemma 2's balance per layer, RHS against symmetric quasi-interpolation,
        the classifier rows' mean cosine against -1/(C-1); and a sentence on the fitting lambdas."""
        import sympy

        from .. import theory

        num_classes = self.runs[0].meta["num_classes"]
        positive = self.last[self.last["weight_decay"] > 0].copy()
        layers = sorted((c for c in positive.columns if c.startswith("layer_norm_sq_")), key=lambda c: int(c[14:]))
        symmetric = sympy.lambdify((theory.eps, theory.C), theory.derive_balance_identity())  # Lemma 2's RHS
        positive["symmetric"] = [float(symmetric(e, num_classes)) for e in positive["eps"]]
        fits = positive["fit_term"] > 0
        for k, layer in enumerate(layers, start=1):
            name = "λ‖W_L‖²/RHS" if k == len(layers) else f"λ‖W_{k}‖²/RHS"
            positive[name] = (positive["weight_decay"] * positive[layer] / positive["fit_term"]).where(fits)
        positive["RHS/symmetric"] = (positive["fit_term"] / positive["symmetric"]).where(fits)
        nc3 = "nc3_centred" if "nc3_centred" in positive.columns else "nc3"  # the figure's NC3 (W centred)
        columns = ["train_error", "eps", "nc1", nc3, "RHS/symmetric"] + [c for c in positive.columns if "/RHS" in c]
        summary = positive.groupby("weight_decay")[[*columns, "off_class_mean", "w_mean_cosine"]].mean()
        summary["cos predicted (ε, δ)"] = [  # the two-parameter theorem's raw-row cosine at the measured eps, delta
            theory.two_parameter_predictions(e, d, w, num_classes)["raw_cosine"]
            for w, e, d in zip(summary.index, summary["eps"], summary["off_class_mean"], strict=True)]
        summary["-1/(C-1)"] = -1 / (num_classes - 1)
        summary = summary.rename(columns={"off_class_mean": "δ"})
        fitting = summary[summary["train_error"] <= TERMINAL_TRAIN_ERROR]
        if len(fitting):
            deviation = (fitting["λ‖W_L‖²/RHS"] - 1).abs()
            close_from = next((w for w in deviation.index if (deviation.loc[w:] <= 0.05).all()), None)
            cosine = float((fitting["w_mean_cosine"] - fitting["cos predicted (ε, δ)"]).abs().max())
            simplex = float((fitting["w_mean_cosine"] + 1 / (num_classes - 1)).abs().max())
            balance = (f"within {deviation.max():.1%} of Lemma 2's right-hand side at every $\\lambda$"
                       if close_from is None or close_from == deviation.index[0] else
                       f"within 5% of Lemma 2's right-hand side from $\\lambda$ = {close_from:g} on, and off by up to "
                       f"{deviation.max():.1%} at smaller $\\lambda$ (where fewer steps than about "
                       f"$1/(\\eta\\lambda)$ were run)")
            text = (f"Where the network still fits the data (training error at most {TERMINAL_TRAIN_ERROR:.1%}), the "
                    f"classifier's $\\lambda\\lVert W_L\\rVert^2$ is {balance}. The mean cosine between the "
                    f"(uncentred) classifier rows is within {cosine:.3f} of the two-parameter theorem's prediction "
                    f"$-\\delta(1 - 2\\epsilon + (C-2)\\delta) / (\\epsilon(1-\\epsilon) - (C-1)\\delta^2)$ at the "
                    f"measured $\\epsilon$ and $\\delta$ ([Theorem](theorem.ipynb)), and within {simplex:.3f} of "
                    f"$-1/(C-1)$, the value the raw rows reach only when $\\delta = \\epsilon/(C-1)$.")
        else:
            text = (f"No weight decay in this sweep fits the data (training error at most {TERMINAL_TRAIN_ERROR:.1%}), "
                    "so nothing is compared.")
        return summary.rename_axis("λ"), text

    def theory_table(self):
        summary, _ = self.theory_summary()
        caption = (f"Table: the theorem's predictions across λ ({self.runs[0].meta['data_source']}, profile "
                   f"'{self.profile}'), means over seeds; dashes: f = 0.")
        return _HTML(table_html(summary, caption, precision=3, index=True))

    def glue(self) -> None:
        from myst_nb import glue

        from ..analysis import collapse_onset

        onset = collapse_onset(self.last, "nc1", 10)
        glue("n_runs", len(self.runs), display=False)
        glue("n_lambdas", int(self.last["weight_decay"].nunique()), display=False)
        glue("n_seeds", int(self.last["seed"].nunique()), display=False)
        glue("onset_text", f"λ = {onset:.2g}" if onset == onset else "no λ in this range", display=False)
        glue("phase_caption", self.description, display=False)
        glue("figure_anchor", self.files.anchor, display=False)


def phase_page(profile: str, dataset: str, root: str | os.PathLike = ".", progress: bool = True) -> PhasePage:
    from ..profiles import phase_configs
    from ..sweep import run_sweep

    return PhasePage(profile, dataset, run_sweep(phase_configs(profile, dataset), progress=progress), str(root))
