"""Our criterion (not the paper's) for Neural Collapse with weight decay, and what happens after interpolation.

The criterion, at the last epoch: the network is in the terminal phase (training error at most
``TERMINAL_TRAIN_ERROR``) and NC1 and NC3 are ``COLLAPSE_FACTOR`` times smaller than without weight decay.
"After interpolation": from t*, the first measured epoch from which the training error stays that low.
"""

from __future__ import annotations

import pandas as pd

from .. import analysis as _analysis
from .display import _HTML, table_html
from .prose import lambda_list, span

# Our criterion (not the paper's) for "Neural Collapse with weight decay" at the last epoch: the terminal phase
# (training error at most TERMINAL_TRAIN_ERROR) and NC1 and NC3 COLLAPSE_FACTOR times below lambda = 0.
COLLAPSE_FACTOR = 5.0
TERMINAL_TRAIN_ERROR = _analysis.TERMINAL_TRAIN_ERROR  # "fits its training set", on every page


def judge_lambdas(last_means: pd.DataFrame, nc3_column: str, factor: float, max_train_error: float) -> dict:
    """lambda > 0 -> ((NC1 ratio, NC3 ratio) against lambda = 0, fits the training set?), in lambda order."""
    if 0.0 not in last_means.index:
        raise ValueError("the figure has no lambda = 0 runs to compare with; add 0 to its weight decays")
    zero = last_means.loc[0.0]
    return {w: ((zero["nc1"] / last_means.loc[w, "nc1"], zero[nc3_column] / last_means.loc[w, nc3_column]),
                bool(last_means.loc[w, "train_error"] <= max_train_error))
            for w in sorted(w for w in last_means.index if w > 0)}


def criterion_groups(judged: dict, factor: float) -> tuple[list, list, list]:
    """:func:`judge_lambdas`'s lambdas split by our criterion: (met, fit but collapse less than ``factor``-fold,
    unfit)."""
    met = [w for w, (ratios, fits) in judged.items() if fits and min(ratios) >= factor]
    weak = [w for w, (ratios, fits) in judged.items() if fits and min(ratios) < factor]
    unfit = [w for w, (_, fits) in judged.items() if not fits]
    return met, weak, unfit


def criterion_verdicts(judged: dict, factor: float = COLLAPSE_FACTOR,
                       max_train_error: float = TERMINAL_TRAIN_ERROR) -> dict:
    """lambda > 0 -> our criterion's verdict in a few words: "met", "fits, < 5x" (it fits but collapses less than
    5-fold) or "no fit (> 0.2%)" (training error over the threshold)."""
    met, weak, _ = criterion_groups(judged, factor)
    return {w: "met" if w in met else f"fits, < {factor:g}x" if w in weak else f"no fit (> {max_train_error:.1%})"
            for w in judged}


def criterion_table(last_means: pd.DataFrame, nc3_column: str, factor: float = COLLAPSE_FACTOR,
                    max_train_error: float = TERMINAL_TRAIN_ERROR) -> pd.DataFrame:
    """One row per lambda (lambda = 0 first, the reference): training error, NC1 and NC3 at the last epoch, their
    ratios (the value at lambda = 0 over the value here: how many times lower), and our criterion's verdict
    (:func:`criterion_verdicts`)."""
    judged = judge_lambdas(last_means, nc3_column, factor, max_train_error)
    verdicts = criterion_verdicts(judged, factor, max_train_error)
    nc3_name = "NC3 (W centred)" if nc3_column.endswith("_centred") else "NC3"
    rows = []
    for wd in sorted(last_means.index):
        row = last_means.loc[wd]
        ratios = judged[wd][0] if wd > 0 else (1.0, 1.0)
        rows.append({"λ": wd, "training error": row["train_error"], "NC1": row["nc1"], "NC1 ratio": ratios[0],
                     nc3_name: row[nc3_column], f"{nc3_name} ratio": ratios[1],
                     "our criterion": verdicts.get(wd, "reference")})
    return pd.DataFrame(rows)


def verdict_sentence(last_means: pd.DataFrame, nc3_column: str, factor: float = COLLAPSE_FACTOR,
                     max_train_error: float = TERMINAL_TRAIN_ERROR) -> str:
    """Our criterion (not the paper's): in the terminal phase (training error at most ``max_train_error``)
    with NC1 and NC3 at the last epoch ``factor`` times smaller than without weight decay? Which lambdas meet it
    and why the others do not; the numbers are in :func:`criterion_table`."""
    met, weak, unfit = criterion_groups(judge_lambdas(last_means, nc3_column, factor, max_train_error), factor)
    missed = ([f"λ = {lambda_list(weak)} (they fit but collapse less than {factor:g}-fold)"] if weak else []) + \
        ([f"λ = {lambda_list(unfit)} (training error over {max_train_error:.1%})"] if unfit else [])
    return (f"**Our criterion** (ours, not the paper's): in the terminal phase (training error at most "
            f"{max_train_error:.1%}) with NC1 and NC3 at the last epoch at least {factor:g} times smaller than "
            f"without weight decay? " + (f"Yes at λ = {lambda_list(met)}. " if met else "")
            + (f"**No** at {' and at '.join(missed)}. " if missed else "")
            + "The table below gives the numbers.")


def after_interpolation_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per lambda, over seeds as "mean (min-max)": t* and NC1 / the figure's NC3 at t*, at the end, their fall
    after t* and their late slope (:func:`ncpaper.analysis.after_interpolation`)."""
    from ..necessity import spread
    from ..plots import classifier_column

    nc3 = classifier_column(table, "nc3")[0]
    after = _analysis.after_interpolation(table, columns=("nc1", nc3))
    rows = []
    for wd, runs in after.groupby("weight_decay"):
        row = {"λ": f"{wd:g}", "fit (seeds)": f"{int(runs['t_star'].notna().sum())} of {len(runs)}",
               "t*": spread(runs["t_star"])}
        for column, name in (("nc1", "NC1"), (nc3, "NC3")):
            row.update({f"{name} at t*": spread(runs[f"{column}_at_t_star"]),
                        f"{name} end": spread(runs[f"{column}_end"]), f"{name} fall": spread(runs[f"{column}_fall"]),
                        f"{name} slope": spread(runs[f"{column}_slope"], 2)})
        rows.append(row)
    return pd.DataFrame(rows)


def after_interpolation_table(table: pd.DataFrame, label: str) -> _HTML:
    """:func:`after_interpolation_summary` as the pages show it."""
    caption = (f"Table: {label} after interpolation. t*: the first measured epoch from which the training error "
               f"stays at most {TERMINAL_TRAIN_ERROR:.1%}; NC1 and NC3 at t* and at the last epoch, their fall after "
               f"t* (times smaller) and late slope d log / d log epoch over the last decade of epochs; mean "
               f"(min–max) over seeds; dashes: never fits (or too few measurements for a slope).")
    return _HTML(table_html(after_interpolation_summary(table), caption))


def after_interpolation_markdown(table: pd.DataFrame) -> str:
    """One sentence: what NC1 does after t* without weight decay, against the weight decays (seed means)."""
    from ..necessity import spread

    after = _analysis.after_interpolation(table, columns=("nc1",))
    zero, positive = after[after["weight_decay"] == 0], after[after["weight_decay"] > 0]
    if zero.empty or zero["t_star"].isna().any():
        return ("**After interpolation.** Without weight decay the network does not fit its training set (training "
                f"error at most {TERMINAL_TRAIN_ERROR:.1%}) on every seed, so nothing is measured after t*.")
    falls = positive.groupby("weight_decay")["nc1_fall"].mean().dropna()
    with_wd = (f"; with weight decay it fell {span(falls.tolist())}-fold after its own t*" if len(falls) else "")
    return (f"**After interpolation** (the table below). Without weight decay the network fits its training set from "
            f"t* = {spread(zero['t_star'])} on and NC1 "
            + (f"still fell {spread(zero['nc1_fall'])}-fold after it" if zero["nc1_fall"].mean() >= 1 else
               "did not fall after it")
            + f"{with_wd}. "
            f"[Is weight decay necessary?](necessity.ipynb) follows this for twenty times longer.")
