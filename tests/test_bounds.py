"""NC1 bounded by the spread of the outputs (ncpaper.bounds): each item checked along an independent route."""

import math
from types import SimpleNamespace

import mpmath
import numpy as np
import pandas as pd
import pytest
import sympy as sp
import torch

from ncpaper import bounds, theory
from ncpaper.metrics import UndefinedCollapseError, neural_collapse

SETTINGS = bounds.CHECK_SETTINGS


def direct(h, y, lam):
    """Everything from the raw features in numpy: U, Sigma_W (over n), A, the ridge readout from H itself."""
    h, y = h.numpy(), y.numpy()
    c, n, p = int(y.max()) + 1, len(y), h.shape[1]
    u = np.stack([h[y == k].mean(0) for k in range(c)], 1)  # p x C
    dev = h - u.T[y]
    sigma_w = dev.T @ dev / n
    onehot = np.eye(c)[y]
    ridge = np.linalg.solve(h.T @ h / n + lam * np.eye(p), h.T @ onehot / n).T  # W (H H^T/n + lam I) = Y H^T/n
    a = np.linalg.inv(lam * np.eye(p) + sigma_w)
    proj = np.eye(c) - 1 / c
    return SimpleNamespace(c=c, n=n, p=p, u=u, sigma_w=sigma_w, ridge=ridge, a=a, proj=proj, m=proj @ u.T)


def psd_sqrt(matrix):
    values, vectors = np.linalg.eigh(matrix)
    return vectors @ np.diag(np.sqrt(values.clip(min=0))) @ vectors.T


@pytest.mark.parametrize(("c", "n_per_class", "p", "lam", "spread"), SETTINGS)
def test_item1_readout_and_symmetric_mean_outputs(c, n_per_class, p, lam, spread):
    h, y = bounds.random_relu_features(c, n_per_class, p, spread=spread, seed=c)
    d = direct(h, y, lam)
    r = np.linalg.inv(np.eye(c) + d.u.T @ d.a @ d.u / c)
    assert np.linalg.norm(d.ridge - r @ d.u.T @ d.a / c) <= 1e-10 * np.linalg.norm(d.ridge)
    f = d.ridge @ d.u
    assert np.linalg.norm((np.eye(c) - f) - r) <= 1e-10 * np.linalg.norm(r)
    assert np.linalg.norm(f - f.T) <= 1e-10 * np.linalg.norm(f)
    eigen = np.linalg.eigvalsh((f + f.T) / 2)
    assert eigen.min() >= -1e-12 and eigen.max() < 1
    # the module's ridge readout from the streamed statistics is the same matrix
    stats = bounds.WithinClassScatter(c, p).update(h, y)
    ours = bounds.ridge_readout(stats.classes.means, stats.within_class_covariance(), lam).numpy()
    assert np.linalg.norm(ours - d.ridge) <= 1e-10 * np.linalg.norm(d.ridge)


@pytest.mark.parametrize(("c", "n_per_class", "p", "lam", "spread"), SETTINGS)
def test_item2_lower_bound_is_the_whitened_nc1_and_items_2_3_order(c, n_per_class, p, lam, spread):
    h, y = bounds.random_relu_features(c, n_per_class, p, spread=spread, seed=c)
    d = direct(h, y, lam)
    got = bounds.output_spread_bounds(h, y, lam)
    assert got["nc1"] == pytest.approx(neural_collapse(h, y, torch.tensor(d.ridge))["nc1"], rel=1e-10)
    # Phi from the outputs alone, as the statement writes it
    f = d.ridge @ d.u
    r_inv = np.linalg.inv(np.eye(c) - f)
    sigma_f = d.ridge @ d.sigma_w @ d.ridge.T
    x = np.linalg.pinv(d.proj @ (r_inv - np.eye(c)) @ d.proj, rcond=1e-10, hermitian=True)
    phi = np.trace(x @ d.proj @ r_inv @ sigma_f @ r_inv @ d.proj @ x)
    assert got["nc1_lower"] == pytest.approx(phi, rel=1e-10)
    # ... is the book's NC1 of the whitened features A^{1/2} h
    whitened = h.numpy() @ psd_sqrt(d.a)
    assert phi == pytest.approx(neural_collapse(torch.tensor(whitened), y, torch.tensor(d.ridge @ psd_sqrt(
        np.linalg.inv(d.a))))["nc1"], rel=1e-10)
    # item 3, as the statement writes it
    g_plus = np.linalg.pinv(d.m @ d.m.T, rcond=1e-10, hermitian=True)
    s_max = np.linalg.eigvalsh(d.sigma_w).max()
    upper = c**2 * (lam + s_max) ** 2 * np.trace(g_plus @ d.proj @ r_inv @ sigma_f @ r_inv @ d.proj @ g_plus)
    assert got["nc1_upper"] == pytest.approx(upper, rel=1e-10)
    assert got["nc1_lower"] <= got["nc1"] <= got["nc1_upper"]
    basis = np.linalg.svd(d.m.T, full_matrices=False)[0][:, :c - 1]
    assert got["sigma_w_means"] == pytest.approx(np.trace(basis.T @ d.sigma_w @ basis) / (c - 1), rel=1e-10)
    assert got["sigma_w_max"] == pytest.approx(np.linalg.eigvalsh(d.sigma_w).max(), rel=1e-10)
    # the gap is exactly Tr(D^T (Sigma_W + 2 lambda I) D), D = M^+ - A M^T (M A M^T)^+
    gap_d = np.linalg.pinv(d.m) - d.a @ d.m.T @ np.linalg.pinv(d.m @ d.a @ d.m.T, rcond=1e-10, hermitian=True)
    gap = np.trace(gap_d.T @ (d.sigma_w + 2 * lam * np.eye(d.p)) @ gap_d)
    assert got["nc1"] - got["nc1_lower"] == pytest.approx(gap, rel=1e-8, abs=1e-12 * got["nc1"])


@pytest.mark.parametrize(("c", "n_per_class", "p", "lam", "spread"), SETTINGS)
def test_identity_residuals_are_at_rounding(c, n_per_class, p, lam, spread):
    h, y = bounds.random_relu_features(c, n_per_class, p, spread=spread, seed=c)
    res = bounds.identity_residuals(h, y, lam)
    for key in ("readout", "r_is_i_minus_f", "f_symmetric", "phi_whitened", "phi_routes", "gap", "centred_classifier"):
        assert res[key] < 1e-10, key
    assert 0 <= res["f_eigen_min"] and res["f_eigen_max"] < 1
    assert res["lower_margin"] >= 0 and res["upper_margin"] >= 0


def test_the_lower_bound_is_tight_when_the_means_span_an_invariant_subspace_of_sigma_w():
    """D = 0 when Sigma_W maps the span of the centred means into itself: isotropic spread, for instance."""
    rng = np.random.default_rng(1)
    c, p, sigma = 4, 7, 0.3
    means = rng.normal(size=(c, p))
    rows = [means[k] + s * math.sqrt(p) * sigma * np.eye(p)[j] for k in range(c) for j in range(p) for s in (1, -1)]
    labels = torch.tensor([k for k in range(c) for _ in range(2 * p)])
    got = bounds.output_spread_bounds(torch.tensor(np.array(rows)), labels, 0.05)
    assert got["nc1_lower"] == pytest.approx(got["nc1"], rel=1e-10)
    assert got["nc3_centred_within"] < 1e-20  # A = I/(lambda + sigma^2): the Sigma_W part of NC3 vanishes
    assert got["nc3_centred"] == pytest.approx(got["nc3_centred_asymmetry"], rel=1e-8)


def test_streaming_equals_in_memory_and_does_not_cancel():
    h, y = bounds.random_relu_features(5, 40, 12, seed=3)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    h, y = h[order], y[order]
    cuts = ((0, 7), (7, 1), (8, 0), (8, 100), (108, 92))
    whole = bounds.output_spread_bounds(h, y, 0.01)
    streamed = bounds.output_spread_bounds_streaming([(h[a:a + b], y[a:a + b]) for a, b in cuts], 5, 12, 0.01)
    for key in bounds.BOUND_KEYS:
        assert streamed[key] == pytest.approx(whole[key], rel=1e-10, abs=1e-14), key
    h = 1e4 + 1e-3 * h  # a huge common mean and a tiny spread: E[h h^T] - mu mu^T would lose every digit
    dev = (h - torch.stack([h[y == k].mean(0) for k in range(5)])[y]).numpy()
    scatter = bounds.WithinClassScatter(5, 12)
    for a, b in cuts:
        scatter.update(h[a:a + b], y[a:a + b])
    reference = dev.T @ dev
    assert np.linalg.norm(scatter.scatter.numpy() - reference) < 1e-8 * np.linalg.norm(reference)
    raw, labels = h.numpy(), y.numpy()
    naive = raw.T @ raw - sum(40 * np.outer(raw[labels == k].mean(0), raw[labels == k].mean(0)) for k in range(5))
    assert np.linalg.norm(naive - reference) > 1e-3 * np.linalg.norm(reference)  # what the merge avoids


def test_item5_symmetric_outputs_give_the_outputs_nc1():
    lam, c = 0.05, 4
    h, y = bounds.symmetric_output_features(c, 6, lam)
    d = direct(h, y, lam)
    f = d.ridge @ d.u
    on, off = f.diagonal().mean(), f[~np.eye(c, dtype=bool)].mean()
    assert np.abs(f - ((on - off) * np.eye(c) + off)).max() < 1e-12  # F = (1 - eps - delta) I + delta 11^T
    got = bounds.output_spread_bounds(h, y, lam)
    sigma_f = d.ridge @ d.sigma_w @ d.ridge.T
    predicted = np.trace(d.proj @ sigma_f @ d.proj) / (on - off) ** 2  # 1 - eps - delta = on - off
    assert got["nc1_lower"] == pytest.approx(predicted, rel=1e-10)
    assert got["nc1_outputs"] == pytest.approx(predicted, rel=1e-10)
    assert got["nc1"] > 1.5 * got["nc1_lower"]  # a full-rank, anisotropic Sigma_W: the bound is not tight here
    assert got["output_asymmetry"] < 1e-12 and got["nc3_centred_asymmetry"] < 1e-20
    assert got["nc3_centred"] == pytest.approx(got["nc3_centred_within"], rel=1e-10)


def test_item5_and_item3_algebra_with_sympy():
    sym = theory.derive_symmetric_outputs()
    target = 1 / (1 - theory.eps - theory.delta) ** 2
    assert sp.simplify(sym.phi_factor - target) == 0 and sp.simplify(sym.outputs_nc1_factor - target) == 0
    slack = theory.derive_upper_bound_slack()
    symbols = {s.name: s for s in slack.excess.free_symbols}
    s_max, sigma = symbols["s_max"], symbols["sigma"]
    rng = np.random.default_rng(0)
    for _ in range(50):
        values = np.sort(rng.exponential(size=2))
        excess = slack.excess.subs({sigma: values[0], s_max: values[1], theory.lam: rng.exponential()})
        assert float(excess) >= 0
    assert sp.simplify(slack.excess - (slack.ratio * sigma - sigma)) == 0


@pytest.mark.parametrize(("c", "n_per_class", "lam"), [(3, 2, 0.01), (4, 3, 0.05), (2, 5, 0.001)])
def test_item4_a_critical_point_with_constant_outputs_and_uncollapsed_features(c, n_per_class, lam):
    point = bounds.spread_outside_means_critical_point(c, n_per_class, lam)
    report = bounds.critical_point_report(point["model"], point["x"], point["labels"], lam)
    assert report["gradient_1"] < 1e-13 and report["gradient_2"] < 1e-13  # every gradient at float64 rounding
    assert report["kink_margin"] > 0.05  # no ReLU near its kink: a critical point of the smooth piece
    assert report["output_spread"] < 1e-28 and report["nc1"] < 1e-28  # Sigma_f = 0 (to rounding), so NC1 = 0
    assert 0 <= report["nc1_lower"] <= report["nc1_upper"] < 1e-12  # from W Sigma_W W^T: 0 to rounding
    assert report["cdnv"] == pytest.approx((n_per_class - 1) / 2)  # the features are far from collapsed
    assert report["nc4"] == report["train_error"]
    assert report["readout_gap"] < 1e-13  # W_2 is the ridge readout of its features
    # the same point through independent autograd: J's gradient in every layer
    model = point["model"]
    params = list(model.parameters())
    out = model(point["x"])
    y = torch.nn.functional.one_hot(point["labels"], c).double()
    objective = (y - out).pow(2).sum(1).mean() / 2 + lam / 2 * sum(p.pow(2).sum() for p in params)
    for g, p in zip(torch.autograd.grad(objective, params), params, strict=True):
        assert g.abs().max() < 1e-14 * max(1.0, p.abs().max().item())


def test_item4_constant_outputs_make_nc4_the_training_error_even_when_it_is_not_zero():
    """Spread orthogonal to every class mean gives Sigma_f = 0 for the ridge readout; with nearly parallel means
    of different sizes and a large lambda, the ridge readout misclassifies, and NC4 equals that error."""
    c, p = 3, 6  # coordinate 0 the common direction, 1..3 one per class, 4..5 the spread
    means = np.zeros((c, p))
    means[:, 0] = [1.0, 2.0, 3.0]
    means[:, 1:c + 1] = 0.05 * np.eye(c)
    rows, labels = [], []
    for k in range(c):
        for s in (1, -1):
            for j in (c + 1, c + 2):
                rows.append(means[k] + s * np.eye(p)[j])
                labels.append(k)
    h, y = torch.tensor(np.array(rows)), torch.tensor(labels)
    lam = 10.0
    got = bounds.output_spread_bounds(h, y, lam)
    d = direct(h, y, lam)
    nc = neural_collapse(h, y, torch.tensor(d.ridge))
    error = float(((h @ torch.tensor(d.ridge).T).argmax(1) != y).double().mean())
    assert np.abs(d.ridge @ d.sigma_w @ d.ridge.T).max() < 1e-28 and got["nc1"] < 1e-28
    assert error > 0 and nc["nc4"] == pytest.approx(error)
    assert nc["cdnv"] > 0.1


def test_given_readouts_and_bad_input():
    h, y = bounds.random_relu_features(3, 10, 6, seed=0)
    ridge = bounds.output_spread_bounds(h, y, 0.1)
    d = direct(h, y, 0.1)
    same = bounds.output_spread_bounds(h, y, 0.1, weights=torch.tensor(d.ridge))
    for key in bounds.BOUND_KEYS:
        assert same[key] == pytest.approx(ridge[key], rel=1e-9, abs=1e-12), key
    other = bounds.output_spread_bounds(h, y, 0.1, weights=d.ridge + 0.1 * np.random.default_rng(0).normal(
        size=d.ridge.shape))
    assert other["readout_gap"] > 0.01 and other["mean_output_skew"] > 1e-3 and other["nc1"] == ridge["nc1"]
    with pytest.raises(ValueError, match="lambda > 0"):
        bounds.output_spread_bounds(h, y, 0.0)
    with pytest.raises(ValueError, match="balanced"):
        bounds.output_spread_bounds(h[1:], y[1:], 0.1)
    with pytest.raises(ValueError, match="C x p"):
        bounds.output_spread_bounds(h, y, 0.1, weights=np.zeros((3, 5)), num_classes=3)
    with pytest.raises(UndefinedCollapseError):
        bounds.output_spread_bounds(torch.ones(6, 4, dtype=torch.float64), torch.arange(6) % 3, 0.1)
    with pytest.raises(ValueError, match="n lambda < rho"):
        bounds.spread_outside_means_critical_point(3, 2, 1.0)


def test_settled_rows_record_the_bounds():
    from ncpaper.train import RunConfig, fit

    config = RunConfig(dataset="mnist", sizes={"widths": [24, 24]}, n_per_class=10, n_test_per_class=None,
                       weight_decay=5e-3, lr=0.02, batch_size=20, epochs=60, n_measurements=2)
    rows, _, _ = fit(config)
    settled = rows[-1]
    assert settled["phase"] == "settled"
    for column in bounds.SETTLED_COLUMNS.values():
        assert column in settled and math.isfinite(settled[column]), column
    assert settled["nc1_lower"] <= settled["nc1"] * (1 + 1e-9) and settled["nc1"] <= settled["nc1_upper"]
    # the network's own readout is the ridge one up to the settling's tolerance: the same centred NC3, nearly
    assert settled["nc3_centred_ridge"] == pytest.approx(settled["nc3_centred"], rel=0.05, abs=1e-3)


def test_settled_columns_of_a_dead_network_are_nan():
    from ncpaper.models import make_model

    model = make_model("mlp", (4,), 3, widths=[5])
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    split = SimpleNamespace(x=torch.randn(6, 4), y=torch.arange(6) % 3)
    values = bounds.settled_columns(model, split, 0.1)
    assert set(values) == set(bounds.SETTLED_COLUMNS.values()) and all(math.isnan(v) for v in values.values())


def test_bounds_table_and_figure_from_runs():
    def run(dataset, lam, seed, nc1, with_columns=True):
        settled = {"train_error": 0.0, "nc1": nc1, "nc3_centred": 0.1}
        if with_columns:
            settled.update({"nc1_lower": 0.8 * nc1, "nc1_upper": 3 * nc1, "sigma_w_max": 2 * lam, "nc1_outputs": nc1,
                            "sigma_w_means": 0.5 * lam,
                            "nc3_centred_ridge": 0.1, "nc3_centred_within": 0.05, "nc3_centred_asymmetry": 0.07,
                            "output_asymmetry": 0.2})
        return SimpleNamespace(settled=pd.Series(settled), config=SimpleNamespace(weight_decay=lam, seed=seed),
                               meta={"data": {"train": {"dataset": dataset}}})

    runs = [run("mnist", lam, seed, 0.1 / (1 + 10 * lam) + seed * 1e-3) for lam in (0.01, 0.1) for seed in (0, 1)]
    runs.append(run("mnist", 1.0, 0, 0.05, with_columns=False))  # measured before the columns: left out
    runs.append(SimpleNamespace(settled=None, config=SimpleNamespace(weight_decay=0.0, seed=0), meta={}))
    table = bounds.bounds_table(runs)
    assert len(table) == 4 and table["share"].tolist() == pytest.approx([0.8] * 4)
    assert table["spread_ratio"].tolist() == pytest.approx([2.0] * 4)
    assert table["upper_ratio"].tolist() == pytest.approx([3.0] * 4) and table["worst_factor"].tolist() == [9.0] * 4
    assert table["means_factor"].tolist() == pytest.approx([4.0] * 4)
    fig = bounds.bounds_figure({"MNIST": table, "CIFAR-10": table})
    assert len(fig.axes) == 4 and len(fig.axes[0].get_lines()) == 3
    bottom = fig.axes[2]  # MNIST's share: a line over the runs that fit, no crosses when every run fits
    assert len(bottom.get_lines()) == 1 and not bottom.collections[1:]
    apart = table.assign(train_error=[0.0, 0.0, 0.3, 0.3])  # lambda = 0.1 does not fit
    bottom = bounds.bounds_figure({"MNIST": apart}).axes[1]
    assert list(bottom.get_lines()[0].get_xdata()) == [0.01]
    crosses = bottom.collections[-1]
    assert crosses.get_label() == "does not fit" and len(crosses.get_offsets()) == 2


def test_the_page_summaries():
    checks = bounds.identity_table()
    assert len(checks) == len(bounds.CHECK_SETTINGS) and checks["ordered"].all()
    assert (checks["worst identity"] < 1e-10).all()
    sym = bounds.symmetric_outputs_check()
    assert sym["f_distance"] < 1e-12 and sym["nc1_lower"] == pytest.approx(sym["closed_form"], rel=1e-10)
    assert sym["nc1_outputs"] == pytest.approx(sym["closed_form"], rel=1e-10) and sym["nc1"] > sym["nc1_lower"]
    table = pd.DataFrame({"data": ["mnist", "mnist", "cifar10"], "nc1": [1.0, 2.0, math.nan],
                          "nc1_lower": [0.5, 1.0, math.nan], "nc1_upper": [2.0, 8.0, math.nan],
                          "share": [0.5, 0.5, math.nan], "upper_ratio": [2.0, 4.0, math.nan],
                          "spread_ratio": [3.0, 5.0, math.nan], "means_factor": [1.0, 2.0, math.nan]})
    summary = bounds.bounds_summary(table)
    assert list(summary.index) == ["mnist"] and summary.loc["mnist", "runs"] == 2
    assert summary.loc["mnist", "upper_ratio_median"] == 3.0 and summary.loc["mnist", "spread_ratio_median"] == 4.0


def reference_phi(m, sigma_w, lam, digits=60):
    """Tr(Z^T Sigma_W Z), Z = A M^T (M A M^T)^+ (the pseudo-inverse on its C - 1 largest eigenvalues), in mpmath
    at ``digits`` decimal digits from the float64 inputs: the exact Phi of the matrices float64 holds."""
    with mpmath.workdps(digits):
        mm, s = mpmath.matrix(m.tolist()), mpmath.matrix(sigma_w.tolist())
        a = (lam * mpmath.eye(s.rows) + s) ** -1
        values, vectors = mpmath.eigsy(mm * a * mm.T)
        kept = sorted(range(mm.rows), key=lambda i: -abs(values[i]))[:mm.rows - 1]
        inverse = sum((vectors[:, i] * vectors[:, i].T / values[i] for i in kept), mpmath.zeros(mm.rows))
        z = a * mm.T * inverse
        return float(mpmath.fsum((z.T * s * z)[i, i] for i in range(mm.rows)))


@pytest.mark.parametrize(("c", "p", "rank", "lam", "seed"),
                         [(3, 5, 5, 0.1, 0), (10, 30, 12, 1e-3, 1), (4, 8, 2, 1.0, 2), (6, 64, 64, 1e-2, 3)])
def test_the_stable_route_equals_the_pseudo_inverse_formula_on_well_conditioned_inputs(c, p, rank, lam, seed):
    """||Sigma_W^{1/2} A^{1/2} (M A^{1/2})^+||_F^2 = Tr((M A M^T)^+ M A Sigma_W A M^T (M A M^T)^+) in float64 on random
    centred means and a random (possibly singular) Sigma_W, and cond(M A^{1/2}) = sqrt(cond(M A M^T))."""
    rng = np.random.default_rng(seed)
    proj = np.eye(c) - 1 / c
    m = proj @ rng.normal(size=(c, p))  # M = P U^T: rows mu_c - mu_G
    g = rng.normal(size=(p, rank))
    sigma_w = g @ g.T / rank
    a = np.linalg.inv(lam * np.eye(p) + sigma_w)
    inverse = np.linalg.pinv(m @ a @ m.T, rcond=1e-10, hermitian=True)
    old = np.trace(inverse @ m @ a @ sigma_w @ a @ m.T @ inverse)
    phi, condition = bounds.whitened_lower_bound(sigma_w, m, lam)
    assert phi == pytest.approx(old, rel=1e-10)
    values = np.linalg.eigvalsh(m @ a @ m.T)[1:]  # the zero eigenvalue of the all-ones direction dropped
    assert condition == pytest.approx(math.sqrt(values.max() / values.min()), rel=1e-8)
    assert condition < bounds.RELIABLE_CONDITION
    # as written on the page, with the square roots formed explicitly
    assert phi == pytest.approx(np.linalg.norm(psd_sqrt(sigma_w) @ psd_sqrt(a) @ np.linalg.pinv(m @ psd_sqrt(a),
                                                                                                 rcond=1e-10)) ** 2,
                                rel=1e-8)
    with pytest.raises(UndefinedCollapseError):
        bounds.whitened_lower_bound(sigma_w, np.zeros((c, p)), lam)


def nearly_flat_means(offset, c=4, lam=0.05):
    """Random ReLU features with class 3's mean moved to within ``offset`` of the plane of the other three means."""
    h, y = bounds.random_relu_features(c, 30, 12, seed=3)
    means = torch.stack([h[y == k].mean(0) for k in range(c)])
    target = (means[0] + means[1] + means[2]) / 3 + 0.5 * (means[1] - means[0]) + offset * torch.ones(h.shape[1])
    flat = h.clone()
    flat[y == 3] += target - means[3]
    return flat, y


def test_the_lower_bounds_condition_number_is_that_of_what_it_pseudo_inverts():
    """lower_condition = s_max/s_min of M A^{1/2} (the stable route) and lower_condition_pinv (a settled row's
    nc1_lower_condition) = that of P (R^-1 - I) P = M A M^T / C, on their C - 1 directions; class means that nearly
    lose a direction push the latter past RELIABLE_CONDITION, and such a run is left out of the page's shares."""
    c, lam = 4, 0.05
    h, y = bounds.random_relu_features(c, 30, 12, seed=3)
    d = direct(h, y, lam)
    values = np.linalg.eigvalsh(d.m @ d.a @ d.m.T / c)[1:]  # the zero eigenvalue of the all-ones direction dropped
    got = bounds.output_spread_bounds(h, y, lam)
    assert got["lower_condition_pinv"] == pytest.approx(values.max() / values.min(), rel=1e-8)
    assert got["lower_condition"] == pytest.approx(math.sqrt(got["lower_condition_pinv"]), rel=1e-8)
    assert got["nc1_lower"] == pytest.approx(got["nc1_lower_pinv"], rel=1e-10)
    assert got["lower_condition_pinv"] < bounds.RELIABLE_CONDITION
    flat, y = nearly_flat_means(1e-9)
    degenerate = bounds.output_spread_bounds(flat, y, lam)
    assert degenerate["lower_condition_pinv"] > bounds.RELIABLE_CONDITION

    def run(values):
        settled = pd.Series({"train_error": 0.5, "nc1": values["nc1"], "nc3_centred": 0.1,
                             **{column: values[key] for key, column in bounds.SETTLED_COLUMNS.items()}})
        return SimpleNamespace(settled=settled, config=SimpleNamespace(weight_decay=lam, seed=0),
                               meta={"data": {"train": {"dataset": "mnist"}}})

    table = bounds.bounds_table([run(got), run(degenerate)])
    assert table["reliable"].tolist() == [True, True]  # the stable route resolves what the outputs formula could not
    assert table["nc1_lower"].tolist() == [got["nc1_lower"], degenerate["nc1_lower"]]  # as recorded
    assert bounds.bounds_summary(table).loc["mnist", "runs"] == 2
    legacy = {**{c: degenerate[k] for k, c in bounds.SETTLED_COLUMNS.items()},
              "nc1_lower": degenerate["nc1_lower_pinv"], "nc1_lower_condition": degenerate["lower_condition_pinv"]}
    old = bounds.bounds_table([SimpleNamespace(settled=pd.Series({"train_error": 0.5, "nc1": degenerate["nc1"],
                                                                   "nc3_centred": 0.1, **legacy}),
                                               config=SimpleNamespace(weight_decay=lam, seed=0),
                                               meta={"data": {"train": {"dataset": "mnist"}}})])
    assert old["reliable"].tolist() == [False]  # a version-6 row: the outputs formula, flagged


@pytest.mark.parametrize("offset", [1e-7, 1e-9])
def test_the_stable_route_resolves_what_the_pseudo_inverse_formula_cannot(offset):
    """Class means within 1e-7 or 1e-9 of losing a direction: cond(M A M^T) is past RELIABLE_CONDITION, so the
    outputs formula is flagged (and off), while cond(M A^{1/2}) is not, and the stable route agrees with Phi
    computed at 60 digits from the same float64 Sigma_W and M; it stays below NC1."""
    lam = 0.05
    flat, y = nearly_flat_means(offset)
    scatter = bounds.WithinClassScatter(4, flat.shape[1]).update(flat, y)
    got = bounds.bounds_from_statistics(scatter, lam)
    assert got["lower_condition_pinv"] > bounds.RELIABLE_CONDITION >= got["lower_condition"]
    reference = reference_phi(scatter.classes.centred_means().numpy(), scatter.within_class_covariance().numpy(), lam)
    assert got["nc1_lower"] == pytest.approx(reference, rel=1e3 * got["lower_condition"] * np.finfo(float).eps)
    assert abs(got["nc1_lower_pinv"] - reference) > 1e-3 * reference  # what the flag leaves out
    assert got["nc1_lower"] <= got["nc1"] <= got["nc1_upper"]


def test_settled_rows_record_the_stable_route_and_the_outputs_formula_beside_it():
    """Metrics version 7: nc1_lower is the stable route's Phi and nc1_lower_condition its condition cond(M A^1/2);
    the outputs formula is kept beside it (nc1_lower_pinv, nc1_lower_pinv_condition = cond(M A M^T))."""
    from ncpaper.results import METRICS_VERSION

    assert METRICS_VERSION == 7
    assert list(bounds.SETTLED_COLUMNS.values()) == [
        "nc1_lower", "nc1_upper", "nc1_outputs", "nc3_centred_ridge", "nc3_centred_within", "nc3_centred_asymmetry",
        "output_asymmetry", "sigma_w_max", "sigma_w_means", "nc1_lower_condition", "nc1_lower_pinv",
        "nc1_lower_pinv_condition"]
    from ncpaper.models import make_model

    torch.manual_seed(0)
    model = make_model("mlp", (10,), 4, widths=[12, 9]).double()
    split = SimpleNamespace(x=torch.randn(40, 10, dtype=torch.float64), y=torch.arange(40) % 4)
    values = bounds.settled_columns(model, split, 0.02)
    got = bounds.output_spread_bounds(model.features(split.x).detach(), split.y, 0.02)
    assert values["nc1_lower"] == got["nc1_lower"] and values["nc1_lower_condition"] == got["lower_condition"]
    assert values["nc1_lower_pinv"] == got["nc1_lower_pinv"]
    assert values["nc1_lower_pinv_condition"] == got["lower_condition_pinv"]


def test_the_share_is_taken_over_the_runs_that_fit_their_training_set():
    """bounds_summary's fit_share_* and share_by_weight_decay keep the runs with training error above
    TERMINAL_TRAIN_ERROR apart; unresolved and undefined rows are in neither."""
    from ncpaper.analysis import TERMINAL_TRAIN_ERROR

    table = pd.DataFrame({
        "data": ["mnist"] * 6, "weight_decay": [0.01, 0.01, 0.1, 0.1, 1.0, 1.0],
        "train_error": [0.0, TERMINAL_TRAIN_ERROR, 0.0, 0.05, 0.9, 0.0],
        "nc1": [1.0, 1.0, 1.0, 1.0, 1.0, math.nan], "nc1_lower": [0.2, 0.4, 0.5, 0.99, 1.0, math.nan],
        "nc1_upper": [2.0] * 5 + [math.nan], "share": [0.2, 0.4, 0.5, 0.99, 1.0, math.nan],
        "upper_ratio": [2.0] * 5 + [math.nan], "spread_ratio": [1.0] * 6, "means_factor": [1.0] * 6,
        "reliable": [True, True, True, True, True, True]})
    assert bounds.fits(table).tolist() == [True, True, True, False, False, True]
    summary = bounds.bounds_summary(table).loc["mnist"]
    assert summary["runs"] == 5 and summary["share_max"] == 1.0
    assert summary["fit_runs"] == 3 and (summary["fit_share_min"], summary["fit_share_max"]) == (0.2, 0.5)
    by_lambda = bounds.share_by_weight_decay(table).set_index(["weight_decay", "fits"])
    assert by_lambda.loc[(0.01, True), "runs"] == 2 and by_lambda.loc[(0.01, True), "share_max"] == 0.4
    assert by_lambda.loc[(0.1, True), "share_median"] == 0.5 and by_lambda.loc[(0.1, False), "share_median"] == 0.99
    assert (1.0, True) not in by_lambda.index and by_lambda.loc[(1.0, False), "runs"] == 1
    table.loc[0, "reliable"] = False  # an unresolved Phi is in no share
    assert bounds.share_by_weight_decay(table).set_index(["weight_decay", "fits"]).loc[(0.01, True), "runs"] == 1
    nobody = bounds.bounds_summary(table.assign(train_error=0.5)).loc["mnist"]
    assert nobody["fit_runs"] == 0 and math.isnan(nobody["fit_share_max"])
