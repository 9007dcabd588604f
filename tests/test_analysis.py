import math

import numpy as np
import pandas as pd
import pytest

from ncpaper.analysis import collapse_onset, fit_breakdown, last_rows, seed_summary


def table():
    rows = []
    for wd, nc1, err in [(0.0, 1.0, 0.0), (1e-4, 0.5, 0.0), (1e-3, 0.05, 0.0), (1e-2, 0.02, 0.2)]:
        for seed in (0, 1):
            for epoch, scale in ((1, 10.0), (100, 1.0)):
                rows.append({"run_id": f"{wd}-{seed}", "weight_decay": wd, "seed": seed, "epoch": epoch,
                             "nc1": nc1 * scale * (1 + 0.1 * seed), "train_error": err})
    return pd.DataFrame(rows)


def test_last_rows_and_seed_summary():
    last = last_rows(table())
    assert len(last) == 8 and set(last["epoch"]) == {100}
    summary = seed_summary(last, "nc1")
    assert summary.loc[0.0, "mean"] == pytest.approx(1.05) and summary.loc[0.0, "max"] == pytest.approx(1.1)


def test_onset_and_breakdown():
    last = last_rows(table())
    assert collapse_onset(last) == 1e-3
    assert math.isnan(collapse_onset(last, factor=1000))
    assert fit_breakdown(last) == 1e-2
    with pytest.raises(ValueError, match="no lambda = 0 run"):
        collapse_onset(last[last["weight_decay"] > 0])


# After interpolation: constructed runs with known t*, falls and slopes.

def run_table(errors, nc1, epochs=None, run_id="r", weight_decay=0.0, seed=0, phase="train"):
    epochs = epochs or [10 ** (k / 4) for k in range(len(errors))]
    return pd.DataFrame({"run_id": run_id, "weight_decay": weight_decay, "seed": seed, "phase": phase,
                         "epoch": epochs, "train_error": errors, "nc1": nc1, "nc3_centred": [2 * v for v in nc1]})


def test_interpolation_epoch_is_where_the_error_stays_low():
    from ncpaper.analysis import first_error_free_epoch, interpolation_epoch

    run = run_table([0.5, 0.001, 0.01, 0.002, 0.0, 0.001], [1] * 6, epochs=[1, 2, 3, 4, 5, 6])
    assert interpolation_epoch(run) == 4  # 2 dips below 0.2% but 3 goes back above
    assert interpolation_epoch(run, max_error=0.01) == 2
    assert first_error_free_epoch(run) == 5
    never = run_table([0.5, 0.1, 0.003], [1] * 3, epochs=[1, 2, 3])
    assert math.isnan(interpolation_epoch(never)) and math.isnan(first_error_free_epoch(never))
    assert interpolation_epoch(run_table([0.0, 0.0], [1, 1], epochs=[1, 2])) == 1


def test_settled_rows_do_not_count():
    from ncpaper.analysis import interpolation_epoch

    run = pd.concat([run_table([0.5, 0.0], [1, 1], epochs=[1, 2]),
                     run_table([0.9], [1], epochs=[2], phase="settled")])
    assert interpolation_epoch(run) == 2


def test_late_slope_recovers_a_power_law():
    from ncpaper.analysis import late_slope

    epochs = [round(x) for x in np.geomspace(1, 3000, 42)]
    run = run_table([0.0] * 42, [5 * e ** -0.7 for e in epochs], epochs=epochs)
    assert late_slope(run) == pytest.approx(-0.7, abs=1e-9)
    flat = run_table([0.0] * 42, [0.3] * 42, epochs=epochs)
    assert late_slope(flat) == pytest.approx(0.0, abs=1e-12)
    # only the last decade counts: a fall before epoch 300 and a plateau after it
    kink = run_table([0.0] * 42, [e ** -1.0 if e < 300 else 1 / 300 for e in epochs], epochs=epochs)
    assert late_slope(kink) == pytest.approx(0.0, abs=1e-12)
    assert late_slope(kink, decades=2) < -0.3
    assert math.isnan(late_slope(run_table([0.0] * 3, [0.0, 0.0, 0.0], epochs=[1, 2, 3])))


def test_after_interpolation_per_run():
    from ncpaper.analysis import after_interpolation

    epochs = [1, 10, 100, 1000]
    table = pd.concat([
        run_table([0.5, 0.0, 0.0, 0.0], [1.0, 0.5, 0.5, 0.5], epochs, run_id="a"),  # flat after t* = 10
        run_table([0.5, 0.1, 0.0, 0.0], [1.0, 0.8, 0.1, 0.01], epochs, run_id="b", weight_decay=0.01, seed=1),
        run_table([0.5, 0.4, 0.3, 0.2], [1.0, 0.8, 0.6, 0.4], epochs, run_id="c", weight_decay=1.0),
    ])
    out = after_interpolation(table, decades=3).set_index("run_id")
    assert list(out["t_star"].fillna(-1)) == [10, 100, -1]
    assert out.loc["a", "nc1_fall"] == 1.0
    assert out.loc["a", "nc1_slope"] == pytest.approx(-0.3 * math.log10(2))  # least squares through 4 points
    assert out.loc["b", "nc1_at_t_star"] == 0.1 and out.loc["b", "nc1_fall"] == pytest.approx(10)
    assert out.loc["b", "nc3_centred_end"] == pytest.approx(0.02) and out.loc["b", "seed"] == 1
    assert math.isnan(out.loc["c", "nc1_fall"]) and out.loc["c", "nc1_end"] == 0.4
    with pytest.raises(ValueError, match="lacks column"):
        after_interpolation(table.drop(columns="nc3_centred"))
