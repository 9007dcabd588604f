"""The sympy derivations against the slides' printed forms, constructed networks and a trained one."""

import pytest
import sympy as sp
import torch

from ncpaper import theory
from ncpaper.metrics import neural_collapse
from ncpaper.train import RunConfig, fit, square_loss

C, a, e, d, lam = theory.C, theory.alpha, theory.eps, theory.delta, theory.lam


def same(x, y):
    return sp.simplify(x - y) == 0


def test_lemma1_is_the_slides_form_with_minimum_one_over_2c():
    lemma = theory.derive_lemma1()
    assert same(lemma.loss, lemma.slides_form)  # N per class: the slides' value holds as printed
    assert same(lemma.alpha_star, (C - 1) / C)
    assert same(lemma.minimum, 1 / (2 * C))
    assert theory.lemma1_floor(10) == pytest.approx(1 / 20)


@pytest.mark.parametrize("c", [2, 3, 10])
@pytest.mark.parametrize("alpha", [0.5, 0.9, 1.0])
def test_lemma1_against_the_training_loss_on_collapsed_outputs(c, alpha):
    outputs = torch.tensor(np_matrix(theory.collapsed_outputs(c, alpha))).T  # row c: f on class c
    labels = torch.arange(c).repeat(4)  # N = 4 examples per class
    measured = square_loss(outputs.repeat(4, 1), labels).item()
    assert measured == pytest.approx(float(theory.derive_lemma1().loss.subs({C: c, a: alpha})))


def np_matrix(m):
    return [[float(v) for v in m.row(i)] for i in range(m.rows)]


@pytest.mark.parametrize("c", [2, 5, 10])
def test_without_w_proportional_to_m_collapsed_relu_features_interpolate(c):
    """Lemma 1's caveat: W = k M + beta 1 mu_G^T on NC1 + NC2 features reaches zero loss."""
    s = theory.interpolating_collapsed_solution(c, c + 3)
    assert (s["features"] >= 0).all()  # ReLU features
    f = s["features"] @ s["weights"].T
    assert square_loss(f, s["labels"]).item() == 0
    nc = neural_collapse(s["features"].repeat(3, 1), s["labels"].repeat(3), s["weights"])
    assert nc["nc1"] == 0 and nc["nc2_equinorm_means"] < 1e-12 and nc["nc2_maxangle_means"] < 1e-12
    expected = s["k"] * s["centred_means"] + s["beta"] * torch.ones(c, 1, dtype=torch.float64) * s["global_mean"]
    assert torch.allclose(s["weights"], expected)


def test_balance_identity_and_the_slides_theorem_as_printed():
    assert same(theory.derive_balance_identity(), e - C * e**2 / (C - 1))
    thm = theory.derive_theorem()
    assert same(thm.classifier_scale, thm.slides_scale)
    assert same(thm.row_norm_sq, thm.slides_row_norm_sq)
    assert same(thm.common_component, 0)
    assert same(thm.cosine, -1 / (C - 1))
    assert same(theory.quasi_interpolation_residual_sum(), 0)
    assert theory.predicted_classifier_scale(0.1, 1e-2, 10) == pytest.approx(0.1 / (1e-2 * 9))
    assert theory.predicted_row_norm_sq(0.1, 1e-2, 10) == pytest.approx((0.1 - 10 * 0.01 / 9) / (10 * 1e-2))


def test_two_parameter_theorem_closed_forms():
    t = theory.derive_two_parameter_theorem()
    assert same(t.k, (e + d) / (C * lam))
    assert same(t.beta, (e - (C - 1) * d) / (C * lam))
    assert same(t.row_norm_sq, t.classifier_norm_sq_total / C)  # equinorm rows
    assert same(t.classifier_norm_sq_total, (e * (1 - e) - (C - 1) * d**2) / lam)
    assert same(t.centred_cosine, -1 / (C - 1))
    assert same(t.raw_cosine, -d * (1 - 2 * e + (C - 2) * d) / (e * (1 - e) - (C - 1) * d**2))
    assert same(t.output_sum_from_readout, t.output_sum)
    slides = {d: e / (C - 1)}  # the slides' case: beta = 0, and k, ||W_c||^2 are the printed ones
    assert same(t.beta.subs(slides), 0)
    assert same(t.k.subs(slides), theory.derive_theorem().slides_scale)
    assert same(t.row_norm_sq.subs(slides), theory.derive_theorem().slides_row_norm_sq)
    assert same(t.raw_cosine.subs(slides), -1 / (C - 1))  # only there do the raw rows reach the simplex angle


@pytest.mark.parametrize(("eps", "delta", "weight_decay", "c"), [(0.1, 0.005, 1e-2, 10), (0.3, 0.02, 5e-3, 4)])
def test_two_parameter_theorem_on_a_constructed_critical_point(eps, delta, weight_decay, c):
    s = theory.two_parameter_critical_point(eps, delta, weight_decay, c, n_per_class=5)
    h, w, labels = s["features"], s["weights"], s["labels"]
    f = h @ w.T
    y = torch.nn.functional.one_hot(labels, c).double()
    assert torch.allclose(f[y.bool()], torch.full((len(labels),), 1 - eps, dtype=torch.float64))
    assert torch.allclose(f[~y.bool()], torch.full((len(labels) * (c - 1),), delta, dtype=torch.float64))
    readout = (y - f).T @ h / len(labels)  # (1/NC) sum (y - f) h^T
    assert torch.allclose(weight_decay * w, readout, atol=1e-12)  # a critical point in W_L
    assert weight_decay * w.pow(2).sum().item() == pytest.approx(((y - f) * f).sum(1).mean().item())  # Lemma 2
    assert w.pow(2).sum(1).mean().item() == pytest.approx(s["row_norm_sq"])
    centred = w - w.mean(0)
    cos = torch.nn.functional.cosine_similarity(centred[0], centred[1], dim=0).item()
    assert cos == pytest.approx(-1 / (c - 1))
    raw = torch.nn.functional.cosine_similarity(w[:, None], w[None], dim=2)[~torch.eye(c, dtype=torch.bool)]
    assert torch.allclose(raw, torch.full_like(raw, s["raw_cosine"]), atol=1e-12)
    assert h.mean(0).pow(2).sum().item() == pytest.approx(s["global_mean_norm_sq"])


def test_no_constructed_critical_point_in_the_slides_case():
    with pytest.raises(ValueError, match="no such critical point"):
        theory.two_parameter_critical_point(0.1, 0.1 / 9, 1e-2, 10)


def test_the_identities_on_a_trained_and_settled_network():
    """Lemma 2 on every layer and the readout identity hold at the settled point of a trained net."""
    config = RunConfig(dataset="mnist", sizes={"widths": [24, 24]}, n_per_class=10, n_test_per_class=None,
                       weight_decay=5e-3, lr=0.02, batch_size=20, epochs=60, n_measurements=2)
    rows, _, _ = fit(config)
    trained, settled = rows[-2], rows[-1]
    assert trained["phase"] == "train" and settled["phase"] == "settled"
    for layer in (1, 2, 3):
        assert settled[f"balance_{layer}"] == pytest.approx(1, abs=0.05)
    assert settled["critical_residual"] <= 0.05
    # ||W_c||^2 = (1/(C lambda)) (eps(1-eps) - Var f_y - (C-1)(delta^2 + Var f_off)): the two-parameter form
    # minus the outputs' spread, exactly (Lemma 2 for the last layer)
    eps, delta = settled["eps"], settled["off_class_mean"]
    spread = settled["on_class_var"] + 9 * settled["off_class_var"]
    predicted = (eps * (1 - eps) - 9 * delta**2 - spread) / (10 * config.weight_decay)
    assert settled["w_row_norm_sq"] == pytest.approx(predicted, rel=0.05)


def test_euler_identity_on_both_architectures():
    from ncpaper.models import make_model

    torch.manual_seed(0)
    for name, shape, sizes in [("mlp", (1, 28, 28), {"widths": [32, 32]}),
                               ("convnet", (3, 32, 32), {"channels": [4, 8], "fc_width": 16})]:
        model = make_model(name, shape, 10, **sizes)
        assert theory.homogeneity_residual(model, torch.randn(4, *shape)) < 1e-10
