import math

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
