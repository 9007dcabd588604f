"""The paper's Lemma 1, Lemma 2 and Theorem, derived with sympy in the slides' notation, and their checks.

Notation (the slides'): examples x_{n(c)}, n = 1..N, c = 1..C, so N counts examples PER CLASS and NC
in all; mu_c is the mean of class c's last-layer features, mu_G = 1/(NC) sum_{n,c} h_{n(c)}, M the C x p
matrix of rows mu_c - mu_G, and

    L = 1/(2NC) sum_{n,c} ||y_{n(c)} - f(x_{n(c)})||^2 + lambda/2 sum_k ||W_k||_F^2,

whose data term is half the mean over examples of ||y - f||^2. With this reading the slides' printed
closed forms hold as printed (derived below; :mod:`tests.test_theory` checks each).
"""

from __future__ import annotations

import copy
import functools
import math
from dataclasses import dataclass

import numpy as np
import sympy as sp
import torch

from .bounds import output_spread_bounds

__all__ = [
    "Lemma1",
    "SymmetricOutputs",
    "Theorem",
    "TwoParameterTheorem",
    "collapsed_outputs",
    "critical_point_check",
    "derive_balance_identity",
    "derive_lemma1",
    "derive_symmetric_outputs",
    "derive_theorem",
    "derive_two_parameter_theorem",
    "derive_upper_bound_slack",
    "homogeneity_residual",
    "interpolating_collapsed_solution",
    "lemma1_floor",
    "output_spread_bounds",
    "predicted_classifier_scale",
    "predicted_row_norm_sq",
    "quasi_interpolation_residual_sum",
    "two_parameter_critical_point",
    "two_parameter_predictions",
]

C, N, alpha, eps, delta, lam = sp.symbols("C N alpha epsilon delta lambda", positive=True)
mu_c, mu_g = sp.symbols("mu_c mu_G", real=True)  # one coordinate of mu_c and mu_G (the maps are linear)


def _per_example(on_class, off_class) -> tuple[sp.Expr, sp.Expr]:
    """||y - f||^2 and <y - f, f> of an example with outputs ``on_class`` on its class, ``off_class`` elsewhere."""
    squared_error = (1 - on_class) ** 2 + (C - 1) * off_class**2
    fit = (1 - on_class) * on_class + (C - 1) * (-off_class) * off_class
    return squared_error, fit


def _slides_mean(per_example: sp.Expr) -> sp.Expr:
    """1/(NC) sum_{n=1..N} sum_{c=1..C} of a quantity equal on every example: the sum has NC equal terms."""
    n = sp.Symbol("n", integer=True, positive=True)
    c = sp.Symbol("c", integer=True, positive=True)
    return sp.simplify(sp.summation(sp.summation(per_example, (n, 1, N)), (c, 1, C)) / (N * C))


@dataclass(frozen=True)
class Lemma1:
    loss: sp.Expr  # the slides' data term at the collapsed solution, as derived
    slides_form: sp.Expr  # ((1 - alpha)^2 + alpha^2/(C-1))/2, as printed
    alpha_star: sp.Expr  # the minimising alpha
    minimum: sp.Expr  # the loss there: 1/(2C) > 0, so no interpolation


def collapsed_outputs(c: int, a) -> sp.Matrix:
    """W M^T = (a C/(C-1)) (I - 11^T/C): column c holds f(x) for every x of class c when W is proportional to M."""
    return (a * c / (c - 1)) * (sp.eye(c) - sp.ones(c, c) / c)


@functools.cache  # pure: derived once per process
def derive_lemma1() -> Lemma1:
    """Loss of a Neural-Collapse solution with lambda = 0 and W proportional to the centred means.

    Column c of W M^T is alpha C/(C-1) (e_c - 1/C): alpha on the true class, -alpha/(C-1) on the C-1
    others, the same for all N examples of class c (NC1). The slides' 1/(2NC) sum_{n,c} then averages
    NC equal terms.
    """
    squared_error, _ = _per_example(alpha, -alpha / (C - 1))
    loss = _slides_mean(squared_error / 2)
    (a_star,) = sp.solve(sp.diff(loss, alpha), alpha)
    return Lemma1(loss=loss, slides_form=((1 - alpha) ** 2 + alpha**2 / (C - 1)) / 2,
                  alpha_star=sp.simplify(a_star), minimum=sp.simplify(loss.subs(alpha, a_star)))


def lemma1_floor(num_classes: int) -> float:
    """The smallest loss an NC solution with W proportional to M reaches at lambda = 0: 1/(2C)."""
    return float(derive_lemma1().minimum.subs(C, num_classes))


def interpolating_collapsed_solution(num_classes: int, dim: int | None = None) -> dict:
    """Why Lemma 1 needs W proportional to M: a bias-free classifier on ReLU features that interpolates.

    The proof takes mu_G = 0, which ReLU features cannot have unless h = 0 (h >= 0). Features
    h_{n(c)} = e_c (exactly collapsed, NC1; centred means e_c - 1/C form a simplex ETF, NC2) with
    W = I = k M + beta 1 mu_G^T (k = 1, beta = 1) give f = y on every example: zero loss. Returns the
    features (one example per class), labels, W, M, mu_G, k and beta as float64 tensors.
    """
    d = dim or num_classes
    if d < num_classes:
        raise ValueError(f"the construction needs feature dimension p >= C = {num_classes}, got {d}")
    h = torch.zeros(num_classes, d, dtype=torch.float64)
    h[:, :num_classes] = torch.eye(num_classes, dtype=torch.float64)
    mu_global = h.mean(0)
    centred = h - mu_global
    w = centred + torch.ones(num_classes, 1, dtype=torch.float64) * mu_global  # k M + beta 1 mu_G^T, k = beta = 1
    return {"features": h, "labels": torch.arange(num_classes), "weights": w, "centred_means": centred,
            "global_mean": mu_global, "k": 1.0, "beta": 1.0}


@functools.cache  # pure: derived once per process
def derive_balance_identity() -> sp.Expr:
    """Lemma 2 under symmetric quasi-interpolation: lambda ||W_l||^2 = eps - C eps^2/(C-1).

    At any critical point dL/dW_l = -1/(NC) sum (y - f)^T df/dW_l + lambda W_l = 0; the inner product
    with W_l and Euler's identity <W_l, df/dW_l> = f (f is 1-homogeneous in W_l; checked numerically by
    :func:`homogeneity_residual`) give lambda ||W_l||^2 = 1/(NC) sum_{n,c} <y - f, f> for every l. If
    f = y on every example the right side is 0, so every W_l = 0 and f = 0 != y: no interpolation.
    """
    _, fit = _per_example(1 - eps, eps / (C - 1))
    return _slides_mean(fit)


def quasi_interpolation_residual_sum() -> sp.Expr:
    """sum_c (y - f)_c under symmetric quasi-interpolation: eps - (C-1) eps/(C-1) = 0.

    At a critical point W_L = 1/(NC lambda) sum (y - f) h^T, so this zero makes the rows of W_L sum to
    zero, hence sum_c f_c(x) = 0 on every input, while the hypothesis has sum_c f_c = 1: with lambda > 0
    exact symmetric quasi-interpolation is impossible and the theorem as stated is vacuous.
    """
    return sp.simplify(eps + (C - 1) * (-eps / (C - 1)))


def _readout_row(on_residual, off_residual) -> sp.Expr:
    """One coordinate of row c of W_L = 1/(NC lambda) sum_{n,c'} (y - f)_c h^T, for class-constant residuals.

    The N examples of class c add on_residual mu_c each; those of the other classes off_residual
    mu_c' each, and sum_{c' != c} mu_c' = C mu_G - mu_c.
    """
    return (N * on_residual * mu_c + N * off_residual * (C * mu_g - mu_c)) / (N * C * lam)


def _coefficients(row: sp.Expr) -> tuple[sp.Expr, sp.Expr]:
    """(k, beta) with row = k (mu_c - mu_G) + beta mu_G identically in mu_c, mu_G."""
    k, beta = sp.symbols("k beta")
    solution = sp.solve(sp.Poly(sp.expand(row - k * (mu_c - mu_g) - beta * mu_g), mu_c, mu_g).coeffs(), [k, beta])
    return sp.simplify(solution[k]), sp.simplify(solution[beta])


@dataclass(frozen=True)
class Theorem:
    """The slides' theorem (symmetric quasi-interpolation, off-class output eps/(C-1))."""

    classifier_scale: sp.Expr  # k with W_c = k (mu_c - mu_G) + beta mu_G
    common_component: sp.Expr  # beta: 0, so W_c is proportional to mu_c - mu_G
    classifier_norm_sq_total: sp.Expr  # ||W_L||_F^2 (Lemma 2 for the last layer)
    row_norm_sq: sp.Expr  # ||W_c||^2 = ||W_L||_F^2 / C under equinorm
    cosine: sp.Expr  # cos(W_c, W_c')
    slides_scale: sp.Expr  # eps / (lambda (C-1)), as printed
    slides_row_norm_sq: sp.Expr  # (eps - C eps^2/(C-1)) / (C lambda), as printed


@functools.cache  # pure: derived once per process
def derive_theorem() -> Theorem:
    """Closed forms at a critical point that symmetrically quasi-interpolates (as the slides state it)."""
    k, beta = _coefficients(_readout_row(eps, -eps / (C - 1)))
    total = sp.simplify(derive_balance_identity() / lam)
    x = sp.Symbol("x")
    (cos,) = sp.solve(1 + (C - 1) * x, x)  # sum_c' (mu_c' - mu_G) = 0 with equal norms and angles
    return Theorem(classifier_scale=k, common_component=beta, classifier_norm_sq_total=total,
                   row_norm_sq=sp.simplify(total / C), cosine=cos, slides_scale=eps / (lam * (C - 1)),
                   slides_row_norm_sq=(eps - C * eps**2 / (C - 1)) / (C * lam))


@dataclass(frozen=True)
class TwoParameterTheorem:
    """A critical point whose outputs are 1 - eps on the class and delta off it, on every example."""

    k: sp.Expr  # W_L = k M + beta 1 mu_G^T
    beta: sp.Expr
    classifier_norm_sq_total: sp.Expr  # ||W_L||_F^2 = (1/lambda) (1/NC) sum <y - f, f>
    row_norm_sq: sp.Expr  # ||W_c||^2 (the rows are equinorm)
    centred_cosine: sp.Expr  # cos of the centred rows W_c - mean_c' W_c' (= of mu_c - mu_G)
    raw_cosine: sp.Expr  # cos(W_c, W_c') of the rows as they are: -delta(1-2eps+(C-2)delta)/(eps(1-eps)-(C-1)delta^2)
    centred_mean_norm_sq: sp.Expr  # ||mu_c - mu_G||^2
    global_mean_norm_sq: sp.Expr  # ||mu_G||^2
    output_sum: sp.Expr  # sum_c f_c(x) on every example, by hypothesis
    output_sum_from_readout: sp.Expr  # sum_c f_c(x) = C beta <mu_G, h(x)>, averaged over the examples


@functools.cache  # pure: derived once per process
def derive_two_parameter_theorem() -> TwoParameterTheorem:
    """The theorem with off-class output delta free; the slides' case is delta = eps/(C-1), i.e. beta = 0.

    Readout: W_L = k M + beta 1 mu_G^T with k, beta from the critical-point equation. Outputs: with
    F = (1 - eps - delta) I + delta 11^T the C x C matrix of class outputs (column c: f on class c),
    P = I - 11^T/C and 1^T M = 0, P F P = k M M^T gives M M^T = (1 - eps - delta)/k P (a simplex
    Gram: equinorm, cosines -1/(C-1)), and 1^T F = C beta mu_G^T [mu_1 .. mu_C] gives
    <mu_G, mu_c> = (1 - eps + (C-1) delta)/(C beta) for every c, so <mu_c - mu_G, mu_G> = 0, the rows
    of W_L are equinorm, and ||mu_G||^2 is that value. It needs beta != 0: at beta = 0 it reads 0 = 1.
    """
    k, beta = _coefficients(_readout_row(eps, -delta))
    _, fit = _per_example(1 - eps, delta)
    total = sp.simplify(_slides_mean(fit) / lam)
    gram_scale = (1 - eps - delta) / k  # M M^T = gram_scale (I - 11^T/C)
    centred_norm = sp.simplify(gram_scale * (1 - 1 / C))
    cosine = sp.simplify((gram_scale * (-1 / C)) / centred_norm)
    output_sum = 1 - eps + (C - 1) * delta
    global_norm = sp.simplify(output_sum / (C * beta))
    row_norm = sp.simplify(k**2 * centred_norm + beta**2 * global_norm)  # cross term <mu_c - mu_G, mu_G> = 0
    # <W_c, W_c'> = k^2 <m_c, m_c'> + beta^2 ||mu_G||^2 with m_c = mu_c - mu_G (the cross terms vanish again)
    raw_cosine = sp.factor(sp.simplify((k**2 * centred_norm * cosine + beta**2 * global_norm) / row_norm))
    return TwoParameterTheorem(k=k, beta=beta, classifier_norm_sq_total=total, row_norm_sq=row_norm,
                               centred_cosine=cosine, raw_cosine=raw_cosine, centred_mean_norm_sq=centred_norm,
                               global_mean_norm_sq=global_norm, output_sum=output_sum,
                               output_sum_from_readout=sp.simplify(C * beta * global_norm))


def _numeric(expr: sp.Expr, **values) -> float:
    symbols = {"eps": eps, "delta": delta, "lam": lam, "C": C}
    value = expr.subs({symbols[name]: value for name, value in values.items()})
    return float(value) if value.is_finite else math.nan  # e.g. ||mu_G||^2 at beta = 0: no such point


def predicted_classifier_scale(eps_value: float, weight_decay: float, num_classes: int) -> float:
    """The slides' k in W_c = k (mu_c - mu_G): eps / (lambda (C-1))."""
    return _numeric(derive_theorem().classifier_scale, eps=eps_value, lam=weight_decay, C=num_classes)


def predicted_row_norm_sq(eps_value: float, weight_decay: float, num_classes: int) -> float:
    """The slides' ||W_c||^2: (eps - C eps^2/(C-1)) / (C lambda)."""
    return _numeric(derive_theorem().row_norm_sq, eps=eps_value, lam=weight_decay, C=num_classes)


def two_parameter_predictions(eps_value: float, delta_value: float, weight_decay: float, num_classes: int) -> dict:
    """The two-parameter theorem's closed forms at measured eps and delta, as plain floats."""
    thm = derive_two_parameter_theorem()
    values = {"eps": eps_value, "delta": delta_value, "lam": weight_decay, "C": num_classes}
    return {name: _numeric(getattr(thm, name), **values)
            for name in ("k", "beta", "classifier_norm_sq_total", "row_norm_sq", "centred_cosine", "raw_cosine",
                         "centred_mean_norm_sq", "global_mean_norm_sq", "output_sum")}


def two_parameter_critical_point(eps_value: float, delta_value: float, weight_decay: float, num_classes: int,
                                 n_per_class: int = 3, dim: int | None = None, seed: int = 0) -> dict:
    """A constructed last-layer critical point with outputs 1 - eps / delta, from the closed forms alone.

    Exactly collapsed features h_{n(c)} = mu_G + m_c, with m_c a simplex ETF of squared norm
    ``centred_mean_norm_sq`` in a random subspace and mu_G of squared norm ``global_mean_norm_sq``
    orthogonal to it, and W_L = k M + beta 1 mu_G^T. Returns float64 tensors (features, labels, weights)
    for checking the outputs and the identity lambda W_L = 1/(NC) sum (y - f) h^T numerically.
    """
    p = dim or num_classes + 2
    if p < num_classes + 1:
        raise ValueError(f"the construction needs feature dimension p >= C + 1 = {num_classes + 1}, got {p}")
    pred = two_parameter_predictions(eps_value, delta_value, weight_decay, num_classes)
    if not (pred["centred_mean_norm_sq"] > 0 and pred["global_mean_norm_sq"] > 0):  # NaN at beta = 0
        raise ValueError("no such critical point: need 1 - eps - delta > 0 and beta (eps - (C-1) delta) of the "
                         "sign of 1 - eps + (C-1) delta")
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.normal(size=(p, num_classes + 1)))  # C + 1 orthonormal columns
    etf = (np.eye(num_classes) - 1 / num_classes) @ basis[:, :num_classes].T  # rows sum to 0
    etf *= np.sqrt(pred["centred_mean_norm_sq"]) / np.linalg.norm(etf[0])
    mu_global = basis[:, num_classes] * np.sqrt(pred["global_mean_norm_sq"])  # orthogonal to the ETF's span
    labels = np.repeat(np.arange(num_classes), n_per_class)
    features = mu_global + etf[labels]
    weights = pred["k"] * etf + pred["beta"] * np.outer(np.ones(num_classes), mu_global)
    as_t = lambda a: torch.tensor(a, dtype=torch.float64)  # noqa: E731
    return {"features": as_t(features), "labels": torch.as_tensor(labels), "weights": as_t(weights), **pred}


def homogeneity_residual(model: torch.nn.Module, x: torch.Tensor) -> float:
    """max over layers l of |sum_i <W_l, d f(x_i)/d W_l> - sum_i f(x_i)| / |sum_i f(x_i)| (Euler's identity).

    Computed in float64 with autograd on the summed outputs (a random projection keeps it general).
    """
    model = copy.deepcopy(model).double()
    out = model(x.double())
    direction = torch.randn(out.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    value = (out * direction).sum()
    params = list(model.parameters())
    grads = torch.autograd.grad(value, params)
    residuals = [abs(((p * g).sum() - value).item()) for p, g in zip(params, grads, strict=True)]
    return max(residuals) / abs(value.item())


def critical_point_check(row, weight_decay: float, num_classes: int) -> dict:
    """The theorem's predictions at a measured (settled) row, beside the measured values, as plain floats.

    ``row`` is a results-table row (mapping) measured at a critical point: it has ``eps``, ``off_class_mean``
    (delta), ``fit_term``, ``on_class_var``, ``off_class_var``, ``w_row_norm_sq``, ``w_fit_k``, ``w_fit_beta``,
    ``global_mean_norm_sq``, ``balance_*`` and ``critical_residual``. Keys: ``measured_*``, ``*_two_parameter``
    (closed forms at the measured eps and delta), ``*_slides`` (the slides' forms at the measured eps).
    """
    e, dl, c = float(row["eps"]), float(row["off_class_mean"]), num_classes
    two = two_parameter_predictions(e, dl, weight_decay, c)
    spread = float(row["on_class_var"]) + (c - 1) * float(row["off_class_var"])
    balances = [float(v) for k, v in sorted(row.items()) if str(k).startswith("balance_")]
    return {
        "eps": e, "delta": dl, "delta_slides": e / (c - 1),
        "max_balance_error": max(abs(b - 1) for b in balances) if balances else math.nan,
        "critical_residual": float(row["critical_residual"]),
        "k_measured": float(row["w_fit_k"]), "k_two_parameter": two["k"],
        "k_slides": predicted_classifier_scale(e, weight_decay, c),
        "beta_measured": float(row["w_fit_beta"]), "beta_two_parameter": two["beta"],
        "row_norm_sq_measured": float(row["w_row_norm_sq"]), "row_norm_sq_two_parameter": two["row_norm_sq"],
        "row_norm_sq_slides": predicted_row_norm_sq(e, weight_decay, c),
        # Lemma 2 for W_L with the outputs' spread: exact at a critical point
        "row_norm_sq_with_spread": two["row_norm_sq"] - spread / (c * weight_decay),
        "output_spread": spread,
        "global_mean_norm_sq_measured": float(row["global_mean_norm_sq"]),
        "global_mean_norm_sq_two_parameter": two["global_mean_norm_sq"],
        "output_sum_measured": float(row["output_sum_mean"]), "output_sum_two_parameter": two["output_sum"],
        "centred_cosine": two["centred_cosine"],
    }


# Beyond the paper (ncpaper.bounds): the algebra of the output-spread bounds.

def _span_product(a: tuple, b: tuple) -> tuple:
    """(x1 I + y1 J)(x2 I + y2 J) with J = 11^T (C x C), J^2 = C J: matrices of the form x I + y J, as (x, y)."""
    return sp.simplify(a[0] * b[0]), sp.simplify(a[0] * b[1] + a[1] * b[0] + C * a[1] * b[1])


def _span_inverse(a: tuple) -> tuple:
    """(x I + y J)^-1 = (1/x) I - y/(x (x + C y)) J (eigenvalues x on 1-perp, x + C y on 1)."""
    return sp.simplify(1 / a[0]), sp.simplify(-a[1] / (a[0] * (a[0] + C * a[1])))


def _multiple_of_p(a: tuple) -> sp.Expr:
    """k with x I + y J = k P (P = I - J/C); raises if the matrix is not a multiple of P."""
    k = sp.simplify(a[0])
    if sp.simplify(a[1] + k / C) != 0:
        raise ValueError(f"{a} is not a multiple of P = I - 11^T/C")
    return k


@dataclass(frozen=True)
class SymmetricOutputs:
    """Item 5 of :mod:`ncpaper.bounds`: the lower bound when F = (1 - eps - delta) I + delta 11^T."""

    r_inverse: tuple  # R^-1 = x I + y 11^T, as (x, y)
    whitened_gram: sp.Expr  # k with P (R^-1 - I) P = k P, so X = P / k
    phi_factor: sp.Expr  # Phi = phi_factor * Tr(P Sigma_f P): X P R^-1 = t P, phi_factor = t^2
    outputs_nc1_factor: sp.Expr  # NC1 of the outputs = this * Tr(P Sigma_f P): P F = g P, factor 1/g^2


@functools.cache  # pure: derived once per process
def derive_symmetric_outputs() -> SymmetricOutputs:
    """Phi and the outputs' NC1 for symmetric mean outputs, for every C, in the algebra of x I + y 11^T.

    Every matrix involved (F, R, R^-1, P, X) is of that form, so they commute and Phi = Tr(T Sigma_f T^T) with
    T = X P R^-1 = t P gives Phi = t^2 Tr(P Sigma_f P). The outputs' class means are F's columns: centred,
    P F = g P, so Sigma_B(f) = g^2 P / C and NC1(f) = Tr(Sigma_f Sigma_B(f)^+)/C = Tr(P Sigma_f P)/g^2.
    """
    identity, proj = (sp.Integer(1), sp.Integer(0)), (sp.Integer(1), -1 / C)
    f = (1 - eps - delta, delta)
    r = (1 - f[0], -f[1])
    r_inv = _span_inverse(r)
    k = _multiple_of_p(_span_product(_span_product(proj, (r_inv[0] - identity[0], r_inv[1])), proj))
    x = (1 / k, -1 / (k * C))  # (k P)^+ = P / k
    t = _multiple_of_p(_span_product(_span_product(x, proj), r_inv))
    g = _multiple_of_p(_span_product(proj, f))
    return SymmetricOutputs(r_inverse=r_inv, whitened_gram=k, phi_factor=sp.factor(t**2),
                            outputs_nc1_factor=sp.factor(1 / g**2))


@dataclass(frozen=True)
class UpperBoundSlack:
    """Item 3 of :mod:`ncpaper.bounds`, one eigen-direction of Sigma_W at a time (eigenvalue sigma <= s_max)."""

    ratio: sp.Expr  # (lambda + s_max)^2 / (lambda + sigma)^2: the bound's factor over NC1's in that direction
    excess: sp.Expr  # (lambda + s_max)^2 sigma/(lambda + sigma)^2 - sigma, factored: >= 0


@functools.cache  # pure: derived once per process
def derive_upper_bound_slack() -> UpperBoundSlack:
    """Item 3 direction by direction: with Q = M^+, NC1 = Tr(Q^T Sigma_W Q) and the bound is
    (lambda + s_max)^2 Tr(Q^T A Sigma_W A Q); A Sigma_W A has the eigenvalues sigma/(lambda + sigma)^2 of Sigma_W's
    eigenvectors, so the bound minus NC1 is Tr(Q^T E Q) with E's eigenvalues ``excess`` >= 0 (sigma <= s_max)."""
    s_max, sigma = sp.symbols("s_max sigma", nonnegative=True)
    ratio = (lam + s_max) ** 2 / (lam + sigma) ** 2
    return UpperBoundSlack(ratio=ratio, excess=sp.factor(ratio * sigma - sigma))
