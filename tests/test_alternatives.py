"""The knob tests (issue 32): collapse time, its scaling, the restated answer, and "has lambda = 0 converged?"."""

import math

import pandas as pd
import pytest

from ncpaper.alternatives import Comparison, collapse_slope, fit_power_law, measure_answer
from ncpaper.analysis import collapse_time
from ncpaper.necessity import float32_loss_floor, travel_bound


def run(values, epochs=None):
    epochs = epochs or [1, 2, 5, 10, 20, 50, 100]
    return pd.DataFrame({"run_id": "r", "epoch": epochs, "train_error": 0.0, "nc1": values})


def test_collapse_time_is_the_first_epoch_after_which_nc1_stays_within_2x_of_its_end():
    assert collapse_time(run([9, 5, 3, 1.9, 1.2, 1.0, 1.0])) == 10  # 1.9 <= 2 from epoch 10 on
    assert collapse_time(run([9, 1.0, 3, 1.5, 1.2, 1.0, 1.0])) == 10  # a dip inside does not count before the rise
    assert collapse_time(run([1.0] * 7)) == 1
    assert collapse_time(run([9, 5, 3, 0.4, 1.2, 1.0, 1.0])) == 20  # below half the end value is outside too
    assert math.isnan(collapse_time(run([9, 5, 3, 2, 1, 0.5, 0.0])))
    with pytest.raises(ValueError, match="within must be > 1"):
        collapse_time(run([1.0] * 7), within=1)


def test_collapse_slope_is_one_for_times_proportional_to_one_over_eta_lambda_per_dataset():
    times = pd.DataFrame({"dataset": ["a"] * 3 + ["b"] * 3, "relaxation_steps": [1e3, 1e4, 1e5] * 2,
                          "collapse_steps": [2e3, 2e4, 2e5, 9e2, 9e3, 9e4], "censored": False})
    assert collapse_slope(times) == pytest.approx(1.0)
    # pooled with one intercept, the offset between datasets would bias the slope; the common slope is not fooled
    offset = times.assign(relaxation_steps=times["relaxation_steps"] * [1, 1, 1, 10, 10, 10])
    assert collapse_slope(offset) == pytest.approx(1.0)
    assert fit_power_law(offset["relaxation_steps"], offset["collapse_steps"])[0] != pytest.approx(1.0)
    censored = times.assign(censored=[False, False, True, False, False, False],
                            collapse_steps=[2e3, 2e4, 1.0, 9e2, 9e3, 9e4])
    assert collapse_slope(censored) == pytest.approx(1.0)  # the censored run is left out


def after(setting, arm, zero, positive, lam=0.0028, slope=0.0):
    rows = [{"run_id": f"{setting}0{s}", "weight_decay": 0.0, "seed": s, "t_star": 10.0, "last_epoch": 3000.0,
             "nc1_end": v, "nc1_slope": slope} for s, v in enumerate(zero)]
    rows += [{"run_id": f"{setting}1{s}", "weight_decay": lam, "seed": s, "t_star": 10.0, "last_epoch": 3000.0,
              "nc1_end": v, "nc1_slope": -1.0} for s, v in enumerate(positive)]
    return Comparison(arm, setting, "mnist", pd.DataFrame(rows))


def test_one_setting_where_lambda_zero_reaches_weight_decay_makes_it_not_necessary():
    default = after("init ×1, η ×1", "implicit", [0.1] * 3, [0.001] * 3)
    small_init = after("init ×0.1, η ×1", "implicit", [0.002] * 3, [0.001] * 3)
    assert measure_answer([default], "nc1") == ("necessary in every setting tried", [])
    assert measure_answer([default, small_init], "nc1") == ("not necessary", ["init ×0.1, η ×1"])
    # arm B compares a small lambda with none: its "no" (too small to help) says nothing against necessity
    small_lambda = after("λ = 0.0001", "small_lambda", [0.1] * 3, [0.09] * 3, lam=0.0001)
    assert measure_answer([default, small_lambda], "nc1")[0] == "necessary in every setting tried"
    overlapping = after("cross-entropy", "cross_entropy", [0.1, 0.1, 0.004], [0.001, 0.001, 0.002])
    assert measure_answer([default, overlapping], "nc1") == ("necessary in 1 of 2 settings",
                                                             ["cross-entropy: not decided"])
    # within 5x of weight decay, but neither collapsed (both near lambda = 0's value at the default knobs)
    neither = after("cross-entropy", "cross_entropy", [0.08] * 3, [0.05] * 3)
    assert measure_answer([default, neither], "nc1") == ("necessary wherever weight decay collapses it",
                                                         ["cross-entropy"])
    assert measure_answer([default, neither, overlapping], "nc1") == (
        "necessary in 1 of 3 settings", ["cross-entropy: neither collapses", "cross-entropy: not decided"])
    with pytest.raises(ValueError, match="no comparison"):
        measure_answer([small_lambda], "nc1")


def test_float32_floor_and_travel_bound():
    assert float32_loss_floor(10, 256) == pytest.approx(5 * 256 * 2.0 ** -48)
    # 2 intervals of 10 epochs x 16 steps, eta 0.01 / (1 - 0.9) = 0.1 per unit gradient, larger gradient of each
    assert travel_bound([100, 110, 120], [3e-3, 1e-3, 2e-3], [0.01] * 3, 16, 0.9) == pytest.approx(
        160 * 0.1 * 3e-3 + 160 * 0.1 * 2e-3)
    assert travel_bound([100], [1.0], [0.1], 16, 0.9) == 0


# ---- one verdict of each arm, recomputed from the published tables without ncpaper's analysis ----

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def _published_ends(profile: str, column: str, **knobs) -> dict:
    """{lambda: [(end value, late slope, fits)] over seeds} of the published runs whose config matches ``knobs``
    (missing keys at their defaults), read straight from metrics.csv and meta.json."""
    import json

    import numpy as np

    defaults = {"init_scale": 1.0, "loss": "square", "model": "mlp", "lr_milestones": []}
    out: dict = {}
    for meta_path in sorted((REPO / "published" / profile).glob("*/meta.json")):
        config = json.loads(meta_path.read_text())["config"]
        if any(config.get(k, defaults.get(k)) != v for k, v in {**defaults, **knobs}.items()):
            continue
        rows = pd.read_csv(meta_path.parent / "metrics.csv")
        rows = rows[rows["phase"] == "train"].sort_values("epoch")
        last = rows["epoch"].iloc[-1]
        late = rows[rows["epoch"] >= last / 10]
        slope = np.polyfit(np.log10(late["epoch"]), np.log10(late[column]), 1)[0] if (late[column] > 0).all() else 0
        fits = bool((rows["train_error"].iloc[-1:] <= 0.002).all())
        out.setdefault(config["weight_decay"], []).append((float(rows[column].iloc[-1]), float(slope), fits))
    return out


def _rule(ends: dict, floor: float = 0.0) -> tuple[str, float]:
    """The necessity rule, written again: (answer, gap of the seed means)."""
    zero = ends.pop(0.0)
    means = {lam: sum(v for v, _, _ in runs) / len(runs) for lam, runs in ends.items() if all(f for _, _, f in runs)}
    best = min(means, key=means.get)
    zero_mean = sum(v for v, _, _ in zero) / len(zero)
    gap = zero_mean / means[best] if means[best] > 0 else math.inf
    if zero_mean <= floor or gap < 5:
        return "no", gap
    worst = min(v for v, _, _ in zero) / max(v for v, _, _ in ends[best])
    slope = sum(s for _, s, _ in zero) / len(zero)
    close = 3000 * gap ** (1 / -slope) if slope < 0 else math.inf
    return ("yes" if worst >= 5 and close > 10 * 3000 else "not decided"), gap


@pytest.fixture(scope="module")
def knob_page():
    from ncpaper.pages.alternatives import alternatives_page

    return alternatives_page()


@pytest.mark.parametrize("arm, setting, dataset, column, knobs", [
    ("implicit", "init ×0.1, η ×4", "mnist", "nc1", {"dataset": "mnist", "init_scale": 0.1, "lr": 0.08}),
    ("small_lambda", "λ = 0.0001", "cifar10", "nc1", {"dataset": "cifar10"}),
    ("cross_entropy", "cross-entropy", "mnist", "nc3_centred", {"dataset": "mnist", "loss": "cross_entropy"}),
    ("convnet", None, "cifar10", "nc1", {"dataset": "cifar10", "model": "convnet"}),
])
def test_one_verdict_of_each_arm_recomputed_from_the_published_tables(knob_page, arm, setting, dataset, column,
                                                                      knobs):
    (comparison,) = [c for c in knob_page.of(dataset) if c.arm == arm and setting in (None, c.setting)]
    if arm == "small_lambda":  # lambda = 0 is the horizon runs' constant-rate one
        ends = {0.0: _published_ends("horizon", column, **knobs)[0.0],
                1e-4: _published_ends("alternatives", column, **knobs)[1e-4]}
    else:
        ends = _published_ends("alternatives", column, **knobs)
    assert {len(v) for v in ends.values()} == {3}  # seeds 0, 1, 2
    answer, gap = _rule(ends)
    v = comparison.verdict(column)
    assert (v.answer, v.gap) == (answer, pytest.approx(gap, rel=1e-12))
