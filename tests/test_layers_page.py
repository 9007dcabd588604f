"""The Layer by layer page's logic (ncpaper.pages.layers) on small tables built by hand."""

import math

import pandas as pd
import pytest

from ncpaper.pages.layers import (
    depth_checks,
    end_of_training,
    falls_with_depth,
    held_out,
    held_out_summary,
    layer_nc1_table,
    nc1_falls_over_training,
    phase_best,
    phase_best_table,
    phase_comparison,
    times_lower,
    train_test_rows,
    value_range,
    weight_decay_direction,
)
from ncpaper.pages.prose import number

NAN = float("nan")


def _last(rows):
    """End-of-training rows: (weight decay, seed, NC1 per layer, nearest-centre disagreement per layer)."""
    frame = []
    for k, (wd, seed, nc1, nc4) in enumerate(rows):
        row = {"run_id": f"r{k}", "weight_decay": wd, "seed": seed, "epoch": 10, "train_error": 0.0}
        row.update({f"nc1_layer_{layer}": v for layer, v in enumerate(nc1, start=1)})
        row.update({f"nc4_layer_{layer}": v for layer, v in enumerate(nc4, start=1)})
        frame.append(row)
    return pd.DataFrame(frame)


def test_numbers_and_ranges_read_as_a_reader_reads_them():
    assert number(0.012345) == "0.012" and number(1234.5) == "1,234" and number(0.5, ".1%") == "50.0%"
    assert value_range([3.0, 1.0, 2.0]) == "1–3"  # smallest to largest, an en dash
    assert value_range([1.001, 1.004]) == "1"  # the same when written: one number
    assert value_range([NAN, math.inf, 2.0]) == "2"  # only the finite values
    assert value_range([NAN, -math.inf]) == "undefined"


def test_the_effect_of_weight_decay_is_named_by_the_direction_of_every_ratio():
    assert weight_decay_direction([2.0, 4.0]) == "lower than without"
    assert weight_decay_direction([0.5, 0.25]) == "higher than without"
    assert weight_decay_direction([0.5, 2.0, NAN]) == "lower at some λ and higher at others"
    assert weight_decay_direction([0.95, 1.08]) == "within 10% of its value without"  # both ways, but within 10%
    assert weight_decay_direction([1 / 1.1, 1.1]) == "within 10% of its value without"  # 10% either way is within
    assert weight_decay_direction([1.2, 1.05]) == "lower than without" and weight_decay_direction([NAN]) == "undefined"
    assert times_lower(5.0) == "5 times lower" and times_lower(0.5) == "2 times higher"
    assert times_lower(0.97) == "within 10% of its value without"


def test_falls_with_depth_needs_a_fall_at_every_step_between_finite_values():
    assert falls_with_depth([3.0, 2.0, 1.0])
    assert falls_with_depth([3.0, NAN, 1.0])  # an undefined layer is skipped, not a break
    assert not falls_with_depth([3.0, 3.0, 1.0])  # a plateau is no fall
    assert not falls_with_depth([3.0, 1.0, 2.0])
    assert not falls_with_depth([1.0]) and not falls_with_depth([NAN, NAN])  # one layer: nothing to compare


def test_the_layer_table_averages_seeds_and_leaves_out_layers_no_run_has():
    last = _last([(0.0, 0, [4.0, 2.0], [0, 0]), (0.0, 1, [6.0, 4.0], [0, 0]), (0.01, 0, [2.0, 0.5], [0, 0])])
    last["nc1_layer_3"] = NAN  # a deeper network's column, empty here
    frame = layer_nc1_table(last)
    assert list(frame.columns) == ["layer 1", "layer 2", "last / first"]
    assert frame.loc[0.0, "layer 1"] == 5.0 and frame.loc[0.0, "layer 2"] == 3.0  # mean over the two seeds
    assert frame.loc[0.0, "last / first"] == pytest.approx(0.6) and frame.loc[0.01, "last / first"] == 0.25


def test_the_end_of_training_counts_runs_and_glues_the_numbers_without_weight_decay():
    lasts = {"MNIST": _last([(0.0, 0, [4.0, 2.0], [0.3, 0.1]),
                             (0.01, 0, [2.0, 3.0], [0.2, 0.2]),  # NC1 rises with depth
                             (0.1, 0, [1.0, 0.1], [0.1, 0.2])])}  # the nearest centre disagrees more deeper
    assert depth_checks(lasts) == ([True, False, True], [True, True, False])
    text, numbers = end_of_training(lasts)
    assert numbers == {"mnist_nc1_first_nowd": 4.0, "mnist_nc1_last_nowd": 2.0, "runs_nc1_falling": 2,
                       "runs_total": 3}
    assert text.startswith("In **2 of the 3** runs NC1 falls at every step from the first hidden layer to the last. ")
    assert "builds up through the network" not in text  # said only when every run falls
    assert "On MNIST, with weight decay (λ = 0.01, 0.1) the first hidden layer's NC1 is lower than without, and the " \
           "last one's lower at some λ and higher at others. The table below gives every layer's NC1." in text
    assert "0.1" not in text.replace("λ = 0.01, 0.1", "")  # the numbers are in the table, not the prose
    assert text.endswith("In 2 of the 3 runs the nearest class centre disagrees with the network's decision no more "
                         "often at each layer than at the one before (bottom row).")
    all_fall = {"MNIST": lasts["MNIST"].drop(index=1)}
    assert "In **2 of the 2** runs" in end_of_training(all_fall)[0]
    assert "collapse builds up through the network" in end_of_training(all_fall)[0]


def test_a_dataset_without_weight_decay_runs_gets_no_sentence_but_its_runs_count():
    text, numbers = end_of_training({"CIFAR-10": _last([(0.01, 0, [2.0, 1.0], [0, 0])])})
    assert numbers == {"runs_nc1_falling": 1, "runs_total": 1} and "On CIFAR-10" not in text


def test_the_phase_comparison_looks_only_at_the_weight_decays_that_fit():
    last = _last([(0.0, 0, [4.0, 2.0], [0, 0]), (0.0, 1, [4.0, 2.0], [0, 0]),
                  (0.001, 0, [2.0, 0.5], [0, 0]), (0.001, 1, [2.0, 0.3], [0, 0]),
                  (0.01, 0, [1.0, 0.01], [0, 0]), (0.01, 1, [1.0, 0.01], [0, 0])])
    last.loc[last["weight_decay"] == 0.01, "train_error"] = 0.5  # the smallest NC1, but it does not fit
    text, numbers = phase_comparison({"MNIST": last})
    assert numbers == {"mnist_phase_best_lambda": 0.001, "mnist_phase_gain_last": pytest.approx(5.0),
                       "mnist_phase_gain_first": pytest.approx(2.0)}
    assert text == ("On MNIST, among the λ > 0 that still fit the training set (mean training error at most 1%), the "
                    "last hidden layer's NC1 is at best 5 times lower (at λ = 0.001) and the first layer's 2 times "
                    "lower: weight decay lowers it far more at the last layer than at the first.")
    best = phase_best({"MNIST": last}).set_index("hidden layer")
    assert best.loc["last", "NC1 at λ = 0"] == 2.0 and best.loc["last", "NC1 there"] == pytest.approx(0.4)
    assert list(best["λ where smallest"]) == [0.001, 0.001]  # never 0.01, which does not fit
    last["train_error"] = 0.5
    assert phase_comparison({"MNIST": last}) == ("No weight decay in these sweeps fits the training set, so nothing "
                                                 "is compared here.", {})
    assert phase_best_table({"MNIST": last}) is None


def test_over_training_each_layer_falls_from_the_first_measured_epoch_to_the_last():
    rows = []
    for run, (first, last) in {"a": ([2.0, 8.0], [1.0, 1.0]), "b": ([3.0, 3.0], [1.0, 0.5])}.items():
        for epoch, values in ((1, first), (5, [NAN, NAN]), (10, last)):
            rows.append({"run_id": run, "weight_decay": 0.0, "epoch": epoch, "phase": "train",
                         "nc1_layer_1": values[0], "nc1_layer_2": values[1]})
    rows.append({"run_id": "a", "weight_decay": 0.0, "epoch": 10, "phase": "settled", "nc1_layer_1": 100.0,
                 "nc1_layer_2": 100.0})  # after training: not the last training row
    falls, deeper = nc1_falls_over_training(pd.DataFrame(rows))
    assert falls[1].to_dict() == {"a": 2.0, "b": 3.0} and falls[2].to_dict() == {"a": 8.0, "b": 6.0}
    assert deeper  # in both runs layer 2 falls further than layer 1
    rows[0]["nc1_layer_1"] = 16.0  # run a: layer 1 now falls further
    assert not nc1_falls_over_training(pd.DataFrame(rows))[1]


def _end(wd, nc1, test_nc1, test_error=0.1, ncc_error=0.12):
    return {"weight_decay": wd, "nc1": nc1, "test_nc1": test_nc1, "cdnv": 0.1, "test_cdnv": 0.2, "nc4": 0.01,
            "test_nc4": 0.05, "train_error": 0.0, "test_error": test_error, "test_ncc_error": ncc_error}


def test_held_out_compares_scales_and_glues_only_the_books_runs():
    book = pd.DataFrame([_end(0.01, 0.1, 0.5), _end(0.0, 1.0, 2.0)])  # weight decay: a lower test NC1
    full = pd.DataFrame([_end(0.0, 1.0, 2.0), _end(0.01, 0.2, 3.0)])  # ... and a higher one at full scale
    rows = train_test_rows({("MNIST", "profile 'smoke'"): book, ("MNIST", "full scale"): full})
    assert list(rows["runs"]) == ["profile 'smoke'"] * 2 + ["full scale"] * 2
    assert list(rows["λ"]) == [0.0, 0.01, 0.0, 0.01]  # sorted by weight decay within each scale
    assert list(rows.columns[:5]) == ["data", "runs", "λ", "NC1", "test NC1"]
    text, numbers = held_out(rows, {"MNIST": 1000})
    assert numbers == {"mnist_test_nc1_nowd": 2.0, "mnist_test_nc4_max": 0.05}  # not the full-scale runs'
    assert text.startswith("In every run the test set's NC1 is higher than the training set's")  # as every run's is
    assert "within 2.0 percentage points of the network's own test error in every run" in text
    assert ("On MNIST the direction depends on the scale: weight decay leaves the test NC1 lower on the book's "
            "1,000-image runs and higher on the full training set") in text
    summary = held_out_summary(rows).set_index("runs")
    assert summary.loc["profile 'smoke'", "test NC1 / NC1"] == "2–5"
    assert summary.loc["profile 'smoke'", "test NC1, λ = 0 against λ > 0"] == "2 against 0.5"
    assert summary.loc["full scale", "test NC1, λ = 0 against λ > 0"] == "2 against 3"
    assert list(summary["weight decay's test NC1"]) == ["lower", "higher"]
    assert summary.loc["full scale", "nearest centre against network, test error (points)"] == "2.0"
    assert summary.loc["full scale", "NC4"] == "1.0%" and summary.loc["full scale", "test NC4"] == "5.0%"


def test_held_out_says_when_the_direction_holds_at_both_scales():
    book = pd.DataFrame([_end(0.0, 1.0, 2.0), _end(0.01, 0.1, 0.5)])
    full = pd.DataFrame([_end(0.0, 1.0, 0.9), _end(0.01, 0.2, 0.1)])  # a test NC1 below the training NC1
    text, _ = held_out(train_test_rows({("CIFAR-10", "profile 'smoke'"): book, ("CIFAR-10", "full scale"): full}),
                       {"CIFAR-10": 500})
    assert "On CIFAR-10 the test NC1 with weight decay is lower than without at both scales." in text
    assert "carry over to held-out images" not in text


def test_the_takeaway_counts_the_runs_that_collapse_layer_by_layer_and_the_test_ratio():
    from ncpaper.pages import LayersPage

    page = LayersPage("smoke", figure_runs={}, phase_runs={})
    page.__dict__["lasts"] = {"MNIST": _last([(0.0, 0, [1.0, 0.5], [0.1, 0.0]), (0.01, 0, [0.5, 0.6], [0.1, 0.0])])}
    page.__dict__["held_out_rows"] = pd.DataFrame({"NC1": [0.5, 0.1], "test NC1": [1.0, 0.5]})
    assert page.headline() == ("At the end of training NC1 falls at every step from the first hidden layer to the "
                               "last in 1 of 2 runs of Figures 1-2 (collapse builds up through the network); on "
                               "held-out images NC1 is 2–5 times its training value, so collapse on the training "
                               "set does not carry over by itself.")
    page.__dict__["held_out_rows"] = pd.DataFrame({"NC1": [0.5], "test NC1": [0.25]})
    assert page.headline().endswith("on held-out images NC1 is 0.5 times its training value.")
