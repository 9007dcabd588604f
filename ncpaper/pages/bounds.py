"""The page 'Beyond the paper: collapse bounded by the outputs' (``notebooks/bounds.md``): its checks and its runs.

The maths (the bounds, the constructions, :func:`ncpaper.bounds.bounds_table`) lives in :mod:`ncpaper.bounds`;
here are the sentences and tables the page shows about them: the checks on random features and constructions,
and NC1 against its bounds at every settled weight-decay run of a profile (:class:`BoundsPage`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import pandas as pd

from ..analysis import TERMINAL_TRAIN_ERROR
from .display import _HTML, table
from .figures import FigureFiles, page_figure
from .prose import lambda_list, percent

DATASETS = {"mnist": "MNIST", "cifar10": "CIFAR-10"}


def takeaway() -> str:
    """The page's takeaway: what each bound needs. Phi (item 2) is written in the outputs alone (F and Sigma_f);
    the upper bound (item 3) needs besides them lambda, G = M M^T and s_max(Sigma_W), which are the features'."""
    return ("Beyond the paper: last-layer NC1 is bounded below by the outputs alone (class means, within-class "
            "spread), and above by the outputs with λ and the features' centred-means "
            r"Gram matrix $G$ and $s_{\max}(\Sigma_W)$. All six parts are proved and hold to rounding on random "
            "features.")


def _runs(count) -> str:
    return f"{int(count)} run" + ("" if count == 1 else "s")


def _share_range(median: float, low: float, high: float, count) -> str:
    """'62% (55% to 70%, 3 runs)', or '62% (1 run)'."""
    return f"{median:.0%} ({_runs(count)})" if count == 1 else f"{median:.0%} ({low:.0%} to {high:.0%}, {_runs(count)})"


def _span(values: pd.Series, form=lambda v: f"{v:.0%}") -> str:
    """'10% to 60%', or '20%' when every value reads the same."""
    low, high = form(values.min()), form(values.max())
    return low if low == high else f"{low} to {high}"


def share_markdown(resolved: pd.DataFrame, max_train_error: float = TERMINAL_TRAIN_ERROR,
                   by_lambda: bool = True) -> str:
    """The share Phi / NC1 of NC1 the outputs explain, over the runs that fit their training set (training error
    at most ``max_train_error``), and the runs that do not fit apart; ``resolved``: :func:`ncpaper.bounds.bounds_table`
    rows whose Phi is defined and resolved. ``by_lambda``: point to the table of :func:`share_table_frame`."""
    from ..bounds import fits

    if resolved.empty:
        return ""
    fit = fits(resolved, max_train_error)
    fitting, apart = resolved[fit], resolved[~fit]
    rule = f"training error at most {percent(max_train_error)}"
    text = f"Of the {len(resolved)} runs whose Φ is resolved, " + (
        f"{len(fitting)} {'fits its' if len(fitting) == 1 else 'fit their'} training set ({rule}): on "
        f"{'it' if len(fitting) == 1 else 'them'} the outputs alone explain {_span(fitting['share'])} of the measured "
        "NC1" if len(fitting) else f"none fits its training set ({rule})")
    if len(apart):
        one = len(apart) == 1
        text += (f"; the {len(apart)} that {'does' if one else 'do'} not fit (λ = "
                 f"{lambda_list(set(apart['weight_decay']))}, training error {_span(apart['train_error'], percent)}) "
                 f"{'is' if one else 'are'} counted apart, with Φ / NC1 {_span(apart['share'])}")
    return text + (". By λ: the table below." if by_lambda else ".")


def share_table_frame(resolved: pd.DataFrame, max_train_error: float = TERMINAL_TRAIN_ERROR) -> pd.DataFrame:
    """:func:`ncpaper.bounds.share_by_weight_decay` as the page shows it: one row per λ, for each dataset the share
    Phi / NC1 (median, min to max, runs) of the runs that fit their training set and of those that do not."""
    from ..bounds import share_by_weight_decay

    long = share_by_weight_decay(resolved, max_train_error)
    if long.empty:
        return pd.DataFrame(columns=["λ"])
    long = long.assign(cell=[_share_range(*v) for v in long[["share_median", "share_min", "share_max", "runs"]].values],
                       column=long["data"] + long["fits"].map({True: ": fits", False: ": does not fit"}))
    wide = long.pivot(index="weight_decay", columns="column", values="cell")
    order = [f"{d}: {k}" for d in dict.fromkeys(long["data"]) for k in ("fits", "does not fit")]
    return wide.reindex(columns=[c for c in order if c in wide]).reset_index(names="λ").rename_axis(columns=None)


def identity_markdown(checks: pd.DataFrame) -> str:
    """What :func:`ncpaper.bounds.identity_table` shows: how well the identities hold, whether both bounds do,
    and where the lower bound explains least."""
    least = checks.loc[checks["share"].idxmin()]
    held = "both bounds hold in every setting" if checks["ordered"].all() else "**a bound fails in some setting**"
    return (f"Every identity holds to {checks['worst identity'].max():.0e}, and {held}. The lower bound explains "
            f"{checks['share'].min():.0%} to {checks['share'].max():.0%} of NC1, least in the setting with $p$ = "
            f"{int(least['p'])} features and $n$ = {int(least['C'] * least['N'])} examples.")


def unresolved(rows: pd.DataFrame) -> pd.Series:
    """The rows whose Φ float64 cannot resolve: its condition above ``RELIABLE_CONDITION``, or Φ above the measured
    NC1 (which a resolved Φ never is)."""
    from ..bounds import RELIABLE_CONDITION

    return (rows["lower_condition"] > RELIABLE_CONDITION) | (rows["nc1_lower"] > rows["nc1"] * (1 + 1e-9))


def identity_table_html(checks: pd.DataFrame) -> _HTML:
    return table(checks.rename(columns={"nc1_lower": "Φ (lower)", "nc1_upper": "upper", "share": "Φ / NC1",
                                        "spread_ratio": "s_max(Σ_W)/λ", "weight_decay": "λ", "spread": "s",
                                        "ordered": "Φ ≤ NC1 ≤ upper"}),
                 "Table: the identities and the bounds on random ReLU features.", precision=3)


def critical_point_table(report: dict, point: dict) -> _HTML:
    """:func:`ncpaper.bounds.critical_point_report` of the constructed critical point as a one-row table."""
    shown = {"‖∂J/∂W_1‖ / ‖λW_1‖": report["gradient_1"], "‖∂J/∂W_2‖ / ‖λW_2‖": report["gradient_2"],
             "smallest |pre-activation| / largest": report["kink_margin"], "Tr Σ_f": report["output_spread"],
             "NC1": report["nc1"], "Φ (item 2)": report["nc1_lower"], "upper bound (item 3)": report["nc1_upper"],
             "CDNV": report["cdnv"], "NC4": report["nc4"], "training error": report["train_error"],
             "‖W_2 − ridge readout‖ / ‖W_2‖": report["readout_gap"]}
    classes, per_class = int(point["labels"].max()) + 1, int((point["labels"] == 0).sum())
    return table(pd.DataFrame([shown]), f"Table: the constructed critical point (C = {classes}, N = {per_class}, "
                                        f"λ = {point['weight_decay']:g}, ρ = {point['input_norm']:g}): gradients, "
                                        "kinks, collapse.", precision=3)


def critical_point_markdown(report: dict, point: dict) -> str:
    per_class = int((point["labels"] == 0).sum())
    return (rf"Every gradient is at float64 rounding ({report['gradient_1']:.0e} and {report['gradient_2']:.0e} of "
            rf"$\lVert\lambda W_l\rVert$). No ReLU is near its kink: the smallest pre-activation is "
            rf"{report['kink_margin']:.2f} of the largest. The outputs are constant within each class and NC1 is 0, "
            rf"but the CDNV is {report['cdnv']:.2f}, which is $(N-1)/2$ for this construction ($N$ = {per_class}).")


def symmetric_outputs_markdown(check: dict) -> str:
    """What :func:`ncpaper.bounds.symmetric_outputs_check` shows: Phi, item 5's closed form and the outputs' NC1
    agree, and the features' NC1 is larger."""
    return (rf"Here $F$ is of the symmetric form to within {check['f_distance']:.0e} ($\epsilon$ = "
            rf"{check['eps']:.3f}, $\delta$ = {check['delta']:.3f}), and $\Phi$ = {check['nc1_lower']:.6f}, "
            rf"$\mathrm{{Tr}}(P\Sigma_fP)/(1-\epsilon-\delta)^2$ = {check['closed_form']:.6f} and the outputs' NC1 = "
            rf"{check['nc1_outputs']:.6f} agree, while the features' NC1 is {check['nc1']:.3f}.")


@dataclass
class BoundsPage:
    """The settled weight-decay runs of one profile (figure runs, phase runs per dataset name) and the published
    full-scale ones, with NC1 against its bounds (:func:`ncpaper.bounds.bounds_table`)."""

    profile: str
    figure_runs: list
    phase_runs: dict
    published: list = field(default_factory=list)
    root: str = "."

    @cached_property
    def figure_table(self) -> pd.DataFrame:
        from ..bounds import bounds_table

        frame = bounds_table(self.figure_runs)
        return frame.assign(data=frame["data"].map(DATASETS))

    @cached_property
    def phase_tables(self) -> dict:
        from ..bounds import bounds_table

        return {name: bounds_table(runs) for name, runs in self.phase_runs.items()}

    @cached_property
    def every(self) -> pd.DataFrame:
        """Every settled weight-decay run: the figure runs, then the phase runs (column ``runs``)."""
        phase = [t.assign(runs="phase", data=t["data"].map(DATASETS)) for t in self.phase_tables.values()]
        return pd.concat([self.figure_table.assign(runs="figure"), *phase], ignore_index=True)

    @property
    def defined(self) -> pd.DataFrame:
        """The runs with distinct class means (NC1 and both bounds defined; not at f = 0)."""
        return self.every.dropna(subset=["nc1", "nc1_lower", "nc1_upper"])

    @property
    def reliable(self) -> pd.DataFrame:
        """The defined runs whose Phi float64 resolves (``reliable``)."""
        defined = self.defined
        return defined[defined["reliable"].astype(bool)]

    def ordered(self) -> pd.Series:
        """Phi <= NC1 <= upper on each reliable run (Phi up to a relative 1e-9)."""
        r = self.reliable
        return (r["nc1_lower"] <= r["nc1"] * (1 + 1e-9)) & (r["nc1"] <= r["nc1_upper"])

    def settled_markdown(self) -> str:
        """How many settled runs there are, which have a defined and resolvable Phi, whether the ordering holds on
        them (and why the others are left out), and the share of NC1 the outputs explain."""
        from ..bounds import RELIABLE_CONDITION

        every, defined, reliable, ordered = self.every, self.defined, self.reliable, self.ordered()
        rounding = defined[~defined["reliable"].astype(bool)]
        conditioned = (
            f"On the other {len(rounding)}, at λ = {lambda_list(set(rounding['weight_decay']))} with "
            f"{rounding['train_error'].min():.0%} to {rounding['train_error'].max():.0%} of the training set "
            f"misclassified, the centred class means nearly lose a direction: the matrix that "
            f"the recorded $\\Phi$ divides by has condition number {rounding['lower_condition'].min():.0e} to "
            f"{rounding['lower_condition'].max():.0e}, so float64 rounding decides $\\Phi$ there and those runs are "
            "left out of the check and of the shares below (they are not counterexamples: item 2 is proved; "
            "settling the same network again gives other values of $\\Phi$ there), even by the stable route, "
            "which divides by the square root of the outputs formula's condition number. " if len(rounding) else "")
        holds = ("on every one of them $\\Phi \\le \\mathrm{NC1} \\le$ upper. " if ordered.all() else
                 f"**the ordering fails on {int((~ordered).sum())} of them**: $\\Phi \\le \\mathrm{{NC1}} \\le$ upper "
                 "does not hold there. ")
        share = share_markdown(reliable)
        return (f"Of the {len(every)} settled weight-decay runs, {len(defined)} have distinct class means; the other "
                f"{len(every) - len(defined)} sit at the trivial solution $f = 0$, where NC1 is undefined. Of those "
                f"{len(defined)}, {len(reliable)} have a lower bound that float64 resolves (condition number of what "
                f"it pseudo-inverts at most {RELIABLE_CONDITION:.0e}"
                + (f"; the largest here is {reliable['lower_condition'].max():.0e}" if len(reliable) else "")
                + "), and " + holds + conditioned + share)

    def figure_runs_table(self) -> _HTML:
        columns = {"data": "data", "weight_decay": "weight_decay", "seed": "seed", "train_error": "train_error",
                   "nc1_lower": "Φ (lower)", "nc1": "nc1", "nc1_upper": "upper", "share": "Φ / NC1",
                   "upper_ratio": "upper / NC1", "means_factor": "((λ + s_max)/(λ + σ̄))²",
                   "spread_ratio": "s_max(Σ_W)/λ", "worst_factor": "(1 + s_max/λ)²"}
        return table(self.figure_table[list(columns)].rename(columns=columns),
                     f"Table: NC1 and its bounds at the settled points of Figures 1-2's weight-decay runs (profile "
                     f"'{self.profile}').", precision=3)

    def share_table(self) -> _HTML | None:
        """:func:`share_table_frame` of the resolved settled runs (figure and phase runs)."""
        frame = share_table_frame(self.reliable)
        if frame.empty:
            return None
        return table(frame, f"Table: the share Φ / NC1 of NC1 the outputs explain against λ, median (min to max) "
                            f"over the settled runs whose Φ is resolved (profile '{self.profile}'), the runs that fit "
                            f"their training set (training error at most {percent(TERMINAL_TRAIN_ERROR)}) apart from "
                            "those that do not; dashes: no such run.", formats={"λ": "{:g}"})

    def figure(self) -> FigureFiles:
        from ..bounds import RELIABLE_CONDITION, bounds_figure

        fig = bounds_figure(self.phase_tables,
                            title=f"NC1 between its output bounds · phase diagrams · profile '{self.profile}'")
        return page_figure(
            fig, f"bounds_{self.profile}", [r for group in self.phase_runs.values() for r in group], self.profile,
            figure_id="bounds", what=f"NC1 bounded by the outputs (profile '{self.profile}')", notebook="bounds.md",
            params=f"profile='{self.profile}'",
            caption=(f"NC1 of the last hidden layer at the settled points of the phase diagrams' runs (profile "
                     f"'{self.profile}'), between its lower bound Φ from the outputs alone (item 2) and the upper "
                     "bound of item 3, across λ (top), and the share Φ / NC1 of NC1 that the outputs explain "
                     "(bottom). Lines: means over seeds; bands: min-max over seeds; in the bottom row the line and "
                     "band are over the runs that fit their training set (training error at most "
                     f"{percent(TERMINAL_TRAIN_ERROR)}) and crosses mark the runs that do not. λ with every seed at "
                     "f = 0 have no point; runs whose Φ float64 cannot resolve (condition number above "
                     f"{RELIABLE_CONDITION:.0e}, listed below) are left out."),
            alt=("Two columns of plots, MNIST and CIFAR-10, against weight decay on a log axis: top, NC1 with its "
                 "lower and upper bounds on a log axis; bottom, the ratio of the lower bound to NC1 between 0 and 1, "
                 "a line for the runs that fit their training set and crosses for those that do not."),
            root=self.root)

    def looseness(self) -> pd.DataFrame:
        """Per dataset, medians over its reliable runs (:func:`ncpaper.bounds.bounds_summary`) as the page shows
        them: s_max / lambda, the upper bound's factor at the means' variance, the upper bound over NC1 and the
        share of NC1 that Phi explains on the runs that fit their training set (``fit_runs`` of them)."""
        from ..bounds import bounds_summary

        summary = bounds_summary(self.defined)
        return pd.DataFrame([{
            "data": name, "runs": int(row["runs"]), "s_max(Σ_W)/λ": row["spread_ratio_median"],
            "((λ + s_max)/(λ + σ̄))²": row["means_factor_median"],
            "upper / NC1": f"{row['upper_ratio_median']:.3g} (at most {row['upper_ratio_max']:.3g})",
            "Φ / NC1, runs that fit": (_share_range(row["fit_share_median"], row["fit_share_min"],
                                                    row["fit_share_max"], row["fit_runs"])
                                       if row["fit_runs"] else "no run fits")}
            for name, row in summary.iterrows()])

    def looseness_table(self) -> _HTML | None:
        frame = self.looseness()
        if frame.empty:
            return None
        return table(frame, "Table: where the upper bound is loose, per dataset: medians over its settled runs "
                            "whose Φ is resolved (figure and phase runs); upper / NC1 with its largest value, and "
                            "Φ / NC1 with its range over the runs that fit their training set (training error at "
                            f"most {percent(TERMINAL_TRAIN_ERROR)}).", precision=3)

    def looseness_markdown(self) -> str:
        """Which dataset's upper bound is looser, and whether its within-class spread against lambda says why."""
        from ..bounds import bounds_summary

        summary = bounds_summary(self.defined)
        if len(summary) != 2:
            return ""
        loose, tight = summary["upper_ratio_median"].idxmax(), summary["upper_ratio_median"].idxmin()
        wider = summary.loc[loose, "spread_ratio_median"] > summary.loc[tight, "spread_ratio_median"]
        return (f"The upper bound is looser on {loose}, where the within-class spread is "
                + ("also larger against λ, as item 3 predicts." if wider else
                   "not larger against λ: there NC1 sits in directions of smaller within-class variance."))

    def nc3_split(self) -> pd.DataFrame:
        return self.figure_table[["data", "weight_decay", "seed", "nc3_centred", "nc3_centred_ridge",
                                  "nc3_centred_within", "nc3_centred_asymmetry", "output_asymmetry"]]

    def nc3_split_table(self) -> _HTML:
        return table(self.nc3_split().rename(columns={
            "nc3_centred": "NC3 centred (network)", "nc3_centred_ridge": "NC3 centred (ridge)",
            "nc3_centred_within": "spread only", "nc3_centred_asymmetry": "asymmetry only",
            "output_asymmetry": "asymmetry of R"}),
            "Table: the centred NC3 and its two sources at the settled points of Figures 1-2's weight-decay runs.",
            precision=3)

    def spread_dominates(self) -> int:
        """On how many figure runs the within-class spread is the larger source of the centred NC3."""
        split = self.nc3_split()
        return int((split["nc3_centred_within"] > split["nc3_centred_asymmetry"]).sum())

    def nc3_markdown(self) -> str:
        return (f"The within-class spread is the larger source on {self.spread_dominates()} of these "
                f"{len(self.nc3_split())} runs; on the others it is the asymmetry of the mean outputs.")

    def full_scale_markdown(self) -> str:
        """Whether the published full-scale runs have the bounds' columns, and their share if they do."""
        from ..bounds import bounds_table

        if not self.published:
            return "The full-scale runs (profile 'paper') are not published yet; their columns come with them."
        with_columns = bounds_table(self.published)
        if len(with_columns) == len(self.published):
            resolved = with_columns.dropna(subset=["nc1", "nc1_lower", "nc1_upper"])
            resolved = resolved[resolved["reliable"].astype(bool)]
            return (f"The {len(self.published)} full-scale weight-decay runs (profile 'paper') have these columns. "
                    + share_markdown(resolved, by_lambda=False))
        versions = sorted({r.meta["metrics_version"] for r in self.published})
        return (f"**Full scale.** The {len(self.published)} full-scale weight-decay runs (profile 'paper', "
                f"`published/paper/`) were measured with metrics version {', '.join(map(str, versions))}, before "
                "these columns, and keep no weights, so their bounds cannot be computed from what is published. The "
                "columns come when they are next trained (on a GPU), which measures every settled point with them.")

    def listing_table(self) -> _HTML:
        """Every settled run's NC1 and bounds, the rows whose Φ float64 cannot resolve marked (:func:`unresolved`)."""
        from ..bounds import RELIABLE_CONDITION

        listing = self.every[["data", "runs", "weight_decay", "seed", "nc1", "nc1_lower", "nc1_upper",
                              "lower_condition"]].sort_values(["runs", "data", "weight_decay", "seed"], kind="stable")
        return table(listing.rename(columns={"runs": "part", "nc1_lower": "Φ (lower)", "nc1_upper": "upper",
                                             "lower_condition": "condition of Φ"}),
                     f"Table: NC1, its lower bound Φ (as recorded: the stable route) and its upper bound at "
                     f"every settled weight-decay run (profile '{self.profile}'); dashes: f = 0; condition of Φ "
                     f"(of M A^½) above {RELIABLE_CONDITION:.0e}: float64 cannot resolve Φ.", precision=3,
                     marked=(unresolved(listing), f"unresolved: the condition of Φ is above {RELIABLE_CONDITION:.0e} "
                                                  "or Φ exceeds the measured NC1, so float64 cannot resolve Φ here."))

    def glue(self) -> None:
        """Glue the page's counts and shares (for the tests), without displaying anything."""
        from ..bounds import fits
        from .display import glue_numbers

        reliable = self.reliable
        fitting = reliable[fits(reliable)]
        glue_numbers({"n_settled": len(self.every), "n_defined": len(self.defined), "n_reliable": len(reliable),
                      "all_ordered": bool(self.ordered().all()),
                      "share_min": float(reliable["share"].min()) if len(reliable) else float("nan"),
                      "share_max": float(reliable["share"].max()) if len(reliable) else float("nan"),
                      "n_fit": len(fitting),
                      "fit_share_min": float(fitting["share"].min()) if len(fitting) else float("nan"),
                      "fit_share_max": float(fitting["share"].max()) if len(fitting) else float("nan"),
                      "nc3_runs": len(self.nc3_split()), "nc3_within_dominates": self.spread_dominates()})


def bounds_page(profile: str, root: str = ".", full_scale_profile: str = "paper") -> BoundsPage:
    """Read (or train) the weight-decay runs of ``profile``'s figures and phase diagrams, and the published
    full-scale weight-decay runs where they are published."""
    from ..profiles import figure_configs, phase_configs
    from ..published import MissingResultError, load_published
    from ..sweep import run_sweep

    figure_runs = [run for d in ("cifar10", "mnist")
                   for run in run_sweep([c for c in figure_configs(profile, d) if c.weight_decay > 0], progress=False)]
    phase_runs = {name: run_sweep([c for c in phase_configs(profile, d) if c.weight_decay > 0], progress=False)
                  for d, name in DATASETS.items()}
    try:
        published = [r for d in ("cifar10", "mnist")
                     for r in load_published([c for c in figure_configs(full_scale_profile, d) if c.weight_decay > 0],
                                             full_scale_profile)]
    except MissingResultError:
        published = []
    return BoundsPage(profile, figure_runs, phase_runs, published, str(root))
