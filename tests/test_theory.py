"""The sympy derivations against hand-derived closed forms."""

import pytest
import sympy as sp

from ncpaper import theory

C, a, e, lam, k = theory.C, theory.alpha, theory.eps, theory.lam, theory.kappa


def same(x, y):
    return sp.simplify(x - y) == 0


def test_lemma1():
    lemma = theory.derive_lemma1()
    assert same(lemma.per_sample_loss, ((1 - a) ** 2 + a**2 / (C - 1)) / (2 * k))
    assert same(lemma.alpha_star, (C - 1) / C)
    assert same(lemma.minimum, 1 / (2 * C * k))
    assert same(lemma.slides_form, lemma.per_sample_loss.subs(k, 1))  # the slides use kappa = 1
    assert theory.lemma1_floor(10) == pytest.approx(1 / 200)


@pytest.mark.parametrize("c", [2, 3, 10])
def test_collapsed_outputs_are_alpha_on_class_and_centred(c):
    m = theory.collapsed_outputs(c, sp.Rational(3, 4))
    assert all(m[i, i] == sp.Rational(3, 4) for i in range(c))
    assert all(sum(m[:, j]) == 0 for j in range(c))


def test_balance_and_theorem():
    balance = theory.derive_balance_identity()
    assert same(balance, (e - C * e**2 / (C - 1)) / k)
    thm = theory.derive_theorem()
    assert same(thm.classifier_scale, e / (k * lam * (C - 1)))
    assert same(thm.row_norm_sq, (e - C * e**2 / (C - 1)) / (C * k * lam))
    assert same(thm.cosine, -1 / (C - 1))
    assert same(thm.slides_scale, thm.classifier_scale.subs(k, 1))
    assert same(thm.slides_row_norm_sq, thm.row_norm_sq.subs(k, 1))


def test_numeric_predictions_for_our_loss():
    assert theory.predicted_classifier_scale(0.1, 1e-3, 10) == pytest.approx(0.1 / (1e-3 * 10 * 9))
    assert theory.predicted_row_norm_sq(0.1, 1e-3, 10) == pytest.approx((0.1 - 10 * 0.01 / 9) / (100 * 1e-3))


def test_symmetric_quasi_interpolation_residuals_sum_to_zero():
    """Why exact symmetric quasi-interpolation cannot hold at a critical point (see the theorem page)."""
    assert same(theory.quasi_interpolation_residual_sum(), 0)
