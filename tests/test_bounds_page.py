"""The bounds page's sentences and tables (ncpaper.pages.bounds), on constructed bounds tables."""

import math

import pandas as pd

from ncpaper.bounds import RELIABLE_CONDITION
from ncpaper.pages.bounds import BoundsPage, identity_markdown


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
    assert text.endswith("The outputs alone explain 50% to 90% of the measured NC1.")
    page.__dict__["figure_table"].loc[0, "nc1_lower"] = 1.2  # Phi above NC1 on a resolved run
    page.__dict__.pop("every")
    assert "**the ordering fails on 1 of them**" in page.settled_markdown()


def test_the_looseness_table_and_sentence_name_the_looser_dataset():
    page = _page([_row("MNIST", 0.01, 0, 1.0, 0.5, 2.0), _row("CIFAR-10", 0.01, 1, 1.0, 0.9, 30.0, sigma_ratio=9.0)],
                 [])
    frame = page.looseness().set_index("data")
    assert frame.loc["CIFAR-10", "upper / NC1"] == "30 (at most 30)" and frame.loc["MNIST", "Φ / NC1"] == \
        "50% (50% to 50%)"
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
