"""The paper's Lemma 1, Lemma 2 and Theorem, derived with sympy, and their numeric predictions.

The loss is written with a normalisation ``kappa``:

    L = 1/(2 N kappa) sum_i ||y_i - f(x_i)||^2 + lambda/2 sum_k ||W_k||_F^2,

``kappa = C`` is the slides' loss as printed (and what :mod:`ncpaper.train` optimises);
``kappa = 1`` is the per-sample sum of squares. Deriving with ``kappa`` kept symbolic shows which
normalisation each of the slides' closed forms belongs to.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import sympy as sp
import torch

__all__ = [
    "Lemma1",
    "Theorem",
    "derive_balance_identity",
    "derive_lemma1",
    "derive_theorem",
    "homogeneity_residual",
    "lemma1_floor",
    "predicted_classifier_scale",
    "predicted_row_norm_sq",
    "quasi_interpolation_fit_term",
    "quasi_interpolation_residual_sum",
    "theorem_check",
]

C, alpha, eps, lam, kappa, N = sp.symbols("C alpha epsilon lambda kappa N", positive=True)


@dataclass(frozen=True)
class Lemma1:
    per_sample_loss: sp.Expr  # loss of the collapsed solution W M = alpha C/(C-1) (I - 11^T/C)
    slides_form: sp.Expr  # ((1 - alpha)^2 + alpha^2/(C-1))/2
    alpha_star: sp.Expr  # the minimising alpha
    minimum: sp.Expr  # the loss there: > 0, so no interpolation


def collapsed_outputs(c: int, a) -> sp.Matrix:
    """W M = (a C/(C-1)) (I - 11^T/C): column c holds f(x) for every x of class c."""
    return (a * c / (c - 1)) * (sp.eye(c) - sp.ones(c, c) / c)


def derive_lemma1() -> Lemma1:
    """Loss of a Neural-Collapse solution with lambda = 0, for symbolic C.

    Column c of W M is alpha C/(C-1) (e_c - 1/C): alpha on the true class, -alpha/(C-1) on the
    C-1 others. Squared error per sample: (1-alpha)^2 + (C-1) (alpha/(C-1))^2.
    """
    on_class, off_class = alpha, -alpha / (C - 1)
    squared_error = (1 - on_class) ** 2 + (C - 1) * off_class**2
    per_sample = sp.simplify(squared_error / (2 * kappa))
    a_star = sp.solve(sp.diff(per_sample, alpha), alpha)[0]
    return Lemma1(
        per_sample_loss=per_sample,
        slides_form=((1 - alpha) ** 2 + alpha**2 / (C - 1)) / 2,
        alpha_star=sp.simplify(a_star),
        minimum=sp.simplify(per_sample.subs(alpha, a_star)),
    )


def lemma1_floor(num_classes: int, normalisation: int | None = None) -> float:
    """The smallest loss any NC solution reaches with lambda = 0 (kappa defaults to C, our loss)."""
    k = num_classes if normalisation is None else normalisation
    return float(derive_lemma1().minimum.subs({C: num_classes, kappa: k}))


def quasi_interpolation_fit_term() -> sp.Expr:
    """(1/C) <y - f, f> for symmetric quasi-interpolation: f = 1 - eps on class, eps/(C-1) off it."""
    on, off = 1 - eps, eps / (C - 1)
    inner = (1 - on) * on + (C - 1) * (0 - off) * off
    return sp.simplify(inner / C)


def quasi_interpolation_residual_sum() -> sp.Expr:
    """sum_c (y - f)_c under symmetric quasi-interpolation: eps - (C-1) eps/(C-1) = 0.

    At a critical point W_L = 1/(N kappa lambda) sum_i (y_i - f_i) h_i^T, so this zero makes the rows
    of W_L sum to zero, hence sum_c f_c(x) = 0 for every x, while symmetric quasi-interpolation has
    sum_c f_c = (1 - eps) + eps = 1. With lambda > 0 the hypothesis can hold only approximately.
    """
    return sp.simplify(eps + (C - 1) * (-eps / (C - 1)))


def derive_balance_identity() -> sp.Expr:
    """Lemma 2: at a critical point, lambda ||W_l||^2 = 1/(N kappa) sum_i <y_i - f_i, f_i> for every l.

    From dL/dW_l = -1/(N kappa) sum_i (y_i - f_i)^T df_i/dW_l + lambda W_l = 0, take the inner
    product with W_l and use Euler's identity <W_l, df/dW_l> = f (f is 1-homogeneous in W_l; checked
    numerically by :func:`homogeneity_residual`). If f_i = y_i for all i the right side is 0, so
    every W_l = 0 and f = 0 != y: no interpolation when lambda > 0. Returned: lambda ||W_l||^2 under
    symmetric quasi-interpolation, (C/kappa) (eps - C eps^2/(C-1)) / C.
    """
    return sp.simplify(quasi_interpolation_fit_term() * C / kappa)


@dataclass(frozen=True)
class Theorem:
    classifier_scale: sp.Expr  # k with W_c = k (mu_c - mu_G)
    classifier_norm_sq_total: sp.Expr  # ||W_L||_F^2
    row_norm_sq: sp.Expr  # ||W_c||^2 = ||W_L||_F^2 / C under equinorm
    cosine: sp.Expr  # cos(W_c, W_c')
    slides_scale: sp.Expr
    slides_row_norm_sq: sp.Expr


def derive_theorem() -> Theorem:
    """Closed forms at a critical point that symmetrically quasi-interpolates.

    dL/dW_L = 0 gives W_L = 1/(N kappa lambda) sum_i (y_i - f_i) h_i^T. Row c: the n = N/C samples
    of class c contribute eps mu_c each, the others -eps/(C-1) mu_c', and sum_{c' != c} mu_c' =
    C mu_G - mu_c. (One coordinate of the vectors suffices: the map is linear.)
    """
    mu_c, mu_g = sp.symbols("mu_c mu_G", real=True)
    n = N / C
    row = (n * eps * mu_c - n * eps / (C - 1) * (C * mu_g - mu_c)) / (N * kappa * lam)
    scale = sp.simplify(sp.factor(row) / (mu_c - mu_g))
    total = sp.simplify(derive_balance_identity() / lam)
    (cos,) = sp.solve(1 + (C - 1) * sp.Symbol("x"), sp.Symbol("x"))  # sum_c' cos(c, c') = 0, equal angles
    return Theorem(
        classifier_scale=scale,
        classifier_norm_sq_total=total,
        row_norm_sq=sp.simplify(total / C),
        cosine=cos,
        slides_scale=eps / (lam * (C - 1)),
        slides_row_norm_sq=(eps - C * eps**2 / (C - 1)) / (C * lam),
    )


def _evaluate(expr: sp.Expr, eps_value: float, weight_decay: float, num_classes: int) -> float:
    return float(expr.subs({eps: eps_value, lam: weight_decay, C: num_classes, kappa: num_classes}))


def predicted_classifier_scale(eps_value: float, weight_decay: float, num_classes: int) -> float:
    """k in W_c = k (mu_c - mu_G) for our loss (kappa = C): eps / (lambda C (C-1))."""
    return _evaluate(derive_theorem().classifier_scale, eps_value, weight_decay, num_classes)


def predicted_row_norm_sq(eps_value: float, weight_decay: float, num_classes: int) -> float:
    """||W_c||^2 for our loss (kappa = C): (eps - C eps^2/(C-1)) / (C^2 lambda)."""
    return _evaluate(derive_theorem().row_norm_sq, eps_value, weight_decay, num_classes)


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


def theorem_check(last: dict, weight_decay: float, num_classes: int) -> dict:
    """The theorem's closed forms at the measured eps, against the measured end-of-training values.

    ``last`` is a results-table row (``eps``, ``w_row_norm_sq``, ``w_means_scale``, ``w_mean_cosine``,
    ``fit_term``, ``layer_norm_sq_*``).
    """
    e = float(last["eps"])
    layers = sorted(k for k in last if str(k).startswith("layer_norm_sq_"))
    return {
        "eps": e,
        "row_norm_sq_predicted": predicted_row_norm_sq(e, weight_decay, num_classes),
        "row_norm_sq_measured": float(last["w_row_norm_sq"]),
        "scale_predicted": predicted_classifier_scale(e, weight_decay, num_classes),
        "scale_measured": float(last["w_means_scale"]),
        "cosine_predicted": -1.0 / (num_classes - 1),
        "cosine_measured": float(last["w_mean_cosine"]),
        "fit_term": float(last["fit_term"]),
        "symmetric_fit_term": float(quasi_interpolation_fit_term().subs({eps: e, C: num_classes})),
        **{f"lambda_{k}": weight_decay * float(last[k]) for k in layers},
    }
