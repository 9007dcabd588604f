"""The bounds page's sentences and tables (ncpaper.pages.bounds), on constructed bounds tables."""

import math
from types import SimpleNamespace

import pandas as pd

from ncpaper.analysis import TERMINAL_TRAIN_ERROR
from ncpaper.bounds import RELIABLE_CONDITION
from ncpaper.pages.bounds import BoundsPage, identity_markdown, share_markdown, share_table_frame, takeaway


def _row(data, wd, seed, nc1, lower, upper, condition=1e3, train_error=0.0, sigma_ratio=2.0):
    return {"data": data, "weight_decay": wd, "seed": seed, "train_error": train_error, "nc1": nc1,
            "nc1_lower": lower, "nc1_upper": upper, "share": lower / nc1 if nc1 else math.nan,
            "upper_ratio": upper / nc1 if nc1 else math.nan, "spread_ratio": sigma_ratio,
            "worst_factor": (1 + sigma_ratio) ** 2, "means_factor": 1.5, "nc1_outputs": lower,
            "nc3_centred": 0.1, "nc3_centred_ridge": 0.1, "nc3_centred_within": 0.08 if seed else 0.01,
            "nc3_centred_asymmetry": 0.02, "output_asymmetry": 0.01, "lower_condition": condition,
            "reliable": condition <= RELIABLE_CONDITION}


def _page(figure_rows, phase_rows):
    page = BoundsPage("smoke", figure_runs=[], phase_runs={})
    page.__dict__["figure_table"] = pd.DataFrame(figure_rows)
    columns = list(_row("MNIST", 0.1, 0, 1.0, 1.0, 1.0))  # bounds_table's columns, also when there are no rows
    page.__dict__["phase_tables"] = {"MNIST": pd.DataFrame(phase_rows, columns=columns)}
    return page


def test_the_settled_paragraph_counts_runs_and_leaves_out_what_float64_cannot_resolve():
    page = _page([_row("MNIST", 0.01, 0, 1.0, 0.5, 2.0), _row("CIFAR-10", 0.01, 1, 1.0, 0.9, 30.0, sigma_ratio=9.0)],
                 [_row("mnist", 0.1, 0, math.nan, math.nan, math.nan),  # f = 0: NC1 undefined
                  _row("mnist", 0.2, 0, 1.0, 1.5, 2.0, condition=1e15, train_error=0.3)])  # Phi > NC1: rounding
    assert list(page.every["data"]) == ["MNIST", "CIFAR-10", "MNIST", "MNIST"]  # phase runs named like the figures'
    text = page.settled_markdown()
    assert text.startswith("Of the 4 settled weight-decay runs, 3 have distinct class means; the other 1 sit at the "
                           "trivial solution $f = 0$")
    assert "Of those 3, 2 have a lower bound that float64 resolves" in text
    assert "on every one of them $\\Phi \\le \\mathrm{NC1} \\le$ upper." in text
    assert "On the other 1, at λ = 0.2 with 30% to 30% of the training set misclassified" in text
    assert "condition number 1e+15 to 1e+15" in text
    assert "even by the stable route, which divides by the square root of the outputs formula's condition number" \
        in text
    assert text.endswith("Of the 2 runs whose Φ is resolved, 2 fit their training set (training error at most 0.2%): "
                         "on them the outputs alone explain 50% to 90% of the measured NC1. By λ: the table below.")
    page.__dict__["figure_table"].loc[0, "nc1_lower"] = 1.2  # Phi above NC1 on a resolved run
    page.__dict__.pop("every")
    assert "**the ordering fails on 1 of them**" in page.settled_markdown()


def test_the_looseness_table_and_sentence_name_the_looser_dataset():
    page = _page([_row("MNIST", 0.01, 0, 1.0, 0.5, 2.0), _row("CIFAR-10", 0.01, 1, 1.0, 0.9, 30.0, sigma_ratio=9.0)],
                 [])
    frame = page.looseness().set_index("data")
    assert frame.loc["CIFAR-10", "upper / NC1"] == "30 (at most 30)"
    assert frame.loc["MNIST", "Φ / NC1, runs that fit"] == "50% (1 run)"
    assert page.looseness_markdown() == ("The upper bound is looser on CIFAR-10, where the within-class spread is "
                                         "also larger against λ, as item 3 predicts.")
    assert "where the upper bound is loose" in page.looseness_table().text


def test_the_nc3_sentence_counts_the_runs_where_the_spread_is_the_larger_source():
    page = _page([_row("MNIST", 0.01, 0, 1.0, 0.5, 2.0), _row("MNIST", 0.01, 1, 1.0, 0.5, 2.0)], [])
    assert page.nc3_markdown().startswith("The within-class spread is the larger source on 1 of these 2 runs")
    assert page.full_scale_markdown().startswith("The full-scale runs (profile 'paper') are not published yet")


def test_the_random_feature_check_names_the_setting_where_the_lower_bound_explains_least():
    checks = pd.DataFrame({"worst identity": [1e-12, 3e-11], "ordered": [True, True], "share": [0.2, 0.9],
                           "p": [8, 64], "C": [3, 4], "N": [5, 10]})
    assert identity_markdown(checks) == ("Every identity holds to 3e-11, and both bounds hold in every setting. The "
                                         "lower bound explains 20% to 90% of NC1, least in the setting with $p$ = 8 "
                                         "features and $n$ = 15 examples.")
    checks.loc[1, "ordered"] = False
    assert "**a bound fails in some setting**" in identity_markdown(checks)


def test_the_takeaway_says_what_each_bound_needs():
    text = takeaway()
    assert "bounded below by the outputs alone" in text
    assert ("above by the outputs with λ and the features' centred-means Gram matrix $G$ and "
            "$s_{\\max}(\\Sigma_W)$") in text
    assert "below and above by the outputs alone" not in text


def test_the_share_is_over_the_runs_that_fit_and_the_others_are_apart():
    """A run that misclassifies more than TERMINAL_TRAIN_ERROR of its training set is out of the share's range (its
    100% would be its end) and shown apart, in the sentence and in the table by λ."""
    rows = [_row("MNIST", 0.001, 0, 1.0, 0.1, 2.0),
            _row("MNIST", 0.001, 1, 1.0, 0.3, 2.0, train_error=TERMINAL_TRAIN_ERROR),  # at most 0.2%: fits
            _row("MNIST", 0.01, 0, 1.0, 0.6, 2.0), _row("MNIST", 1.0, 0, 1.0, 1.0, 2.0, train_error=0.9),
            _row("CIFAR-10", 0.01, 0, 1.0, 0.4, 2.0), _row("CIFAR-10", 0.01, 1, 1.0, 0.95, 2.0, train_error=0.05)]
    resolved = pd.DataFrame(rows)
    assert share_markdown(resolved) == (
        "Of the 6 runs whose Φ is resolved, 4 fit their training set (training error at most 0.2%): on them the "
        "outputs alone explain 10% to 60% of the measured NC1; the 2 that do not fit (λ = 0.01, 1, training error 5% "
        "to 90%) are counted apart, with Φ / NC1 95% to 100%. By λ: the table below.")
    frame = share_table_frame(resolved).set_index("λ")
    assert list(frame.columns) == ["CIFAR-10: fits", "CIFAR-10: does not fit", "MNIST: fits", "MNIST: does not fit"]
    assert frame.loc[0.001, "MNIST: fits"] == "20% (10% to 30%, 2 runs)"
    assert frame.loc[1.0, "MNIST: does not fit"] == "100% (1 run)" and pd.isna(frame.loc[1.0, "MNIST: fits"])
    assert frame.loc[0.01, "CIFAR-10: does not fit"] == "95% (1 run)"
    nobody = resolved.assign(train_error=0.5)
    assert share_markdown(nobody, by_lambda=False).startswith("Of the 6 runs whose Φ is resolved, none fits its "
                                                              "training set (training error at most 0.2%); the 6")
    assert share_markdown(resolved.iloc[:0]) == "" and share_table_frame(resolved.iloc[:0]).empty
    # on the page: only resolved runs count, and the table is there
    page = _page(rows, [_row("mnist", 0.1, 0, 1.0, 1.2, 2.0, condition=1e15, train_error=0.0)])
    assert page.settled_markdown().endswith(share_markdown(resolved))
    assert "does not fit" in page.share_table().text
    looseness = page.looseness().set_index("data")
    assert looseness.loc["MNIST", "Φ / NC1, runs that fit"] == "30% (10% to 60%, 3 runs)"


def test_the_full_scale_sentence_takes_the_share_over_the_runs_that_fit():
    def run(lam, train_error, lower):
        settled = pd.Series({"train_error": train_error, "nc1": 1.0, "nc1_lower": lower, "nc1_upper": 2.0,
                             "sigma_w_max": lam, "sigma_w_means": lam, "nc1_outputs": lower, "nc3_centred": 0.1,
                             "nc3_centred_ridge": 0.1, "nc3_centred_within": 0.1, "nc3_centred_asymmetry": 0.1,
                             "output_asymmetry": 0.1, "nc1_lower_condition": 10.0})
        return SimpleNamespace(settled=settled, config=SimpleNamespace(weight_decay=lam, seed=0),
                               meta={"data": {"train": {"dataset": "cifar10"}}})

    page = BoundsPage("smoke", figure_runs=[], phase_runs={}, published=[run(0.001, 0.0, 0.2), run(1.0, 0.9, 1.0)])
    assert page.full_scale_markdown() == (
        "The 2 full-scale weight-decay runs (profile 'paper') have these columns. Of the 2 runs whose Φ is resolved, "
        "1 fits its training set (training error at most 0.2%): on it the outputs alone explain 20% of the measured "
        "NC1; the 1 that does not fit (λ = 1, training error 90%) is counted apart, with Φ / NC1 100%.")
