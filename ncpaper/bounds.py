"""Beyond the paper: Neural Collapse bounded by the spread of the outputs (the slides' future work).

The slides' objective with lambda > 0 on balanced classes (N examples per class, C classes, n = NC):

    J = 1/(2NC) sum_{n,c} ||y_{n(c)} - W_L h_{n(c)}||^2 + lambda/2 ||W_L||_F^2 + (the other layers' penalty).

With the features h fixed, J is a ridge regression in W_L; every critical point of J, and every settled point
(:mod:`ncpaper.settle`), has the readout that solves it, W_L (Sigma_W + U U^T/C + lambda I) = U^T/C. Notation
(the book's, :mod:`ncpaper.metrics`: covariances over all n examples, NC1 = Tr(Sigma_W Sigma_B^+)/C):

    U = [mu_1 ... mu_C]  (p x C)      the class means
    Sigma_W = 1/n sum_i (h_i - mu_{y_i})(h_i - mu_{y_i})^T,   A = (lambda I + Sigma_W)^{-1}
    F = W_L U  (C x C)                column c: the mean output on class c;   R = I - F
    Sigma_f = W_L Sigma_W W_L^T        the within-class covariance of the outputs
    P = I - 11^T/C,   M = P U^T  (C x p, rows mu_c - mu_G),   G = M M^T,   NC1 = Tr(Sigma_W (M^T M)^+)

What holds (proved on the book's page "Beyond the paper: collapse bounded by the outputs", checked in
``tests/test_bounds.py``):

1. W_L = (1/C) R U^T A with R = (I + U^T A U/C)^{-1}, so F = I - R is symmetric with 0 <= F < I.
2. With X = [P (R^{-1} - I) P]^+, Phi = Tr(X P R^{-1} Sigma_f R^{-1} P X) is the NC1 of the whitened features
   A^{1/2} h, and NC1(h) - Phi = Tr(D^T (Sigma_W + 2 lambda I) D) >= 0 with D = M^+ - A M^T (M A M^T)^+.
   Computed by the stable route Phi = ||Sigma_W^{1/2} A^{1/2} (M A^{1/2})^+||_F^2 (:func:`whitened_lower_bound`),
   which divides by cond(M A^{1/2}) = sqrt(cond(M A M^T)); the outputs-only formula pseudo-inverts
   P (R^{-1} - I) P = M A M^T / C and is ill-posed near f = 0 (R -> I: it divides a vanishing Sigma_f by a
   vanishing R^{-1} - I). Settled rows record both (metrics version 7; versions 5-6 recorded that formula only,
   :data:`SETTLED_COLUMNS`).
3. NC1(h) <= C^2 (lambda + s_max(Sigma_W))^2 Tr(G^+ P R^{-1} Sigma_f R^{-1} P G^+).
4. Sigma_f = 0 gives NC1(h) = 0 and NC4 = the training error, with h != mu_c still possible
   (:func:`spread_outside_means_critical_point`).
5. F = (1 - eps - delta) I + delta 11^T gives Phi = Tr(P Sigma_f P)/(1 - eps - delta)^2, the NC1 of the outputs.
6. The centred classifier P W_L = (1/C) P R U^T A: its NC3 comes from the asymmetry of R and from Sigma_W.

Everything is float64. :class:`WithinClassScatter` accumulates the class means and the p x p within-class
scatter in one streaming pass (Chan's pairwise merge), so the features never need to be in memory together.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd
import torch

from .analysis import TERMINAL_TRAIN_ERROR
from .metrics import (
    ClassStatistics,
    UndefinedCollapseError,
    _as_tensor,
    _check_features,
    _check_labels,
    centred_classifier_collapse,
    neural_collapse,
)

__all__ = ["BOUND_KEYS", "CHECK_SETTINGS", "RELIABLE_CONDITION", "SETTLED_COLUMNS", "WithinClassScatter",
           "bounds_figure", "bounds_from_statistics", "bounds_summary", "bounds_table", "critical_point_report",
           "fits", "identity_residuals", "identity_table", "output_spread_bounds", "output_spread_bounds_streaming",
           "random_relu_features", "ridge_readout", "settled_columns", "share_by_weight_decay",
           "spread_outside_means_critical_point", "symmetric_output_features", "symmetric_outputs_check",
           "whitened_lower_bound"]

_F64 = torch.float64

# The mapping output_spread_bounds returns, in this order.
BOUND_KEYS = (
    "nc1",  # Tr(Sigma_W Sigma_B^+)/C of the features
    "nc1_lower",  # Phi (item 2) by the stable route ||Sigma_W^{1/2} A^{1/2} (M A^{1/2})^+||_F^2
    "nc1_upper",  # item 3
    "nc1_outputs",  # NC1 of the outputs f = W_L h (equal to Phi when F is symmetric about the classes, item 5)
    "nc3_centred",  # ||W~/||W~|| - M/||M||||_F^2 with W~ = P W_L
    "nc3_centred_within",  # the same with R replaced by its symmetric part: only Sigma_W acts (item 6)
    "nc3_centred_asymmetry",  # the same with Sigma_W replaced by 0: only the asymmetry of R acts (item 6)
    "output_asymmetry",  # ||R - R_sym||_F / ||R||_F, R_sym = a I + b 11^T the closest symmetric form
    "lower_condition",  # s_max/s_min of M A^{1/2} on NC1's rank: what the stable route divides by
    "sigma_w_max",  # s_max(Sigma_W): the upper bound is loose by up to (1 + s_max/lambda)^2
    "sigma_w_means",  # the mean within-class variance along the span of the centred means, Tr(Pi Sigma_W)/rank(M)
    "readout_gap",  # ||W_L - W_ridge||_F / ||W_ridge||_F (0 when the readout is the ridge one)
    "mean_output_skew",  # ||F - F^T||_F / ||F||_F (0 for the ridge readout, item 1)
    "nc1_lower_pinv",  # Phi by item 2's outputs-only formula, pseudo-inverting P (R^-1 - I) P = M A M^T / C
    "lower_condition_pinv",  # s_max/s_min of P (R^-1 - I) P on NC1's rank (= lower_condition^2 in exact arithmetic)
)

# The columns a settled row records (:func:`settled_columns`): BOUND_KEYS of the ridge readout on the settled
# network's features, renamed where the row already has a column of that name for the network's own readout.
# Metrics version 7 records Phi by the stable route (nc1_lower) with its condition number cond(M A^{1/2})
# (nc1_lower_condition), and the outputs-only formula beside it (nc1_lower_pinv, nc1_lower_pinv_condition). Versions
# 5-6 recorded the outputs formula as nc1_lower with cond(M A M^T) as nc1_lower_condition: either way nc1_lower is a
# route's Phi and nc1_lower_condition that route's own condition, which RELIABLE_CONDITION is compared with.
SETTLED_COLUMNS = {"nc1_lower": "nc1_lower", "nc1_upper": "nc1_upper", "nc1_outputs": "nc1_outputs",
                   "nc3_centred": "nc3_centred_ridge", "nc3_centred_within": "nc3_centred_within",
                   "nc3_centred_asymmetry": "nc3_centred_asymmetry", "output_asymmetry": "output_asymmetry",
                   "sigma_w_max": "sigma_w_max", "sigma_w_means": "sigma_w_means",
                   "lower_condition": "nc1_lower_condition", "nc1_lower_pinv": "nc1_lower_pinv",
                   "lower_condition_pinv": "nc1_lower_pinv_condition"}
# Either route loses about its own condition number x 2.2e-16 of Phi's relative accuracy in float64: cond(M A^{1/2})
# for the stable route (lower_condition), cond(M A M^T) = cond(M A^{1/2})^2 for the outputs formula
# (lower_condition_pinv, the settled rows' nc1_lower_condition). Above this condition number of its own route
# (centred class means that nearly lose a direction) Phi is rounding, not a bound, and Phi <= NC1 <= upper is not
# checked. The same 1e10 on both: about 2e-6 of relative accuracy left; the stable route reaches it with class means
# twice as many digits closer to losing a direction.
RELIABLE_CONDITION = 1e10


class WithinClassScatter:
    """One streaming pass: class counts and means (a :class:`~ncpaper.metrics.ClassStatistics`) and the p x p
    within-class scatter S = sum_i (h_i - mu_{y_i})(h_i - mu_{y_i})^T, so that Sigma_W = S / n.

    A batch with class counts n_b and means m_b merges into the running n_a, m_a as
    S += sum_{i in batch} (h_i - m_b)(h_i - m_b)^T + sum_c n_a n_b/(n_a + n_b) (m_b - m_a)(m_b - m_a)^T
    (Chan et al.), which never forms E[h h^T] - mu mu^T and so does not cancel when the spread is tiny.
    State: C (p + 2) + p^2 numbers whatever n.
    """

    def __init__(self, num_classes: int, dim: int, device: torch.device | str | None = None):
        self.classes = ClassStatistics(num_classes, dim, device=device)
        self.scatter = torch.zeros(dim, dim, dtype=_F64, device=device)

    def update(self, features, labels) -> WithinClassScatter:
        stats = self.classes
        h = _as_tensor(features, "features").to(stats.means.device)
        _check_features(h)
        if h.shape[1] != stats.dim:
            raise ValueError(f"features have p = {h.shape[1]} columns, expected {stats.dim}")
        y = _check_labels(_as_tensor(labels, "labels", dtype=None).to(h.device), h.shape[0], stats.num_classes)
        if h.shape[0] == 0:
            return self
        n_b = torch.bincount(y, minlength=stats.num_classes).to(_F64)
        m_b = torch.zeros_like(stats.means).index_add_(0, y, h) / n_b.clamp(min=1).unsqueeze(1)
        centred = h - m_b[y]
        total = stats.counts + n_b
        weight = torch.where(total > 0, stats.counts * n_b / total.clamp(min=1), torch.zeros_like(total))
        shift = m_b - stats.means
        self.scatter += centred.T @ centred + (shift * weight.unsqueeze(1)).T @ shift
        stats.update(h, y)
        return self

    def within_class_covariance(self) -> torch.Tensor:
        """Sigma_W = S / n (p x p, symmetric)."""
        sigma = self.scatter / self.classes.counts.sum()
        return (sigma + sigma.T) / 2


def _weight_decay(value) -> float:
    lam = float(value)
    if not (math.isfinite(lam) and lam > 0):
        raise ValueError(f"the bounds need weight decay lambda > 0 (got {value}): with lambda = 0 the ridge "
                         "readout and A = (lambda I + Sigma_W)^-1 need not exist")
    return lam


def _balanced(stats: ClassStatistics) -> None:
    stats.check_complete()
    counts = stats.counts
    if not bool((counts == counts[0]).all()):
        raise ValueError(f"the bounds assume balanced classes (N examples in every class); got class counts "
                         f"{[int(v) for v in counts.tolist()]}: load a balanced split")


def ridge_readout(class_means: torch.Tensor, sigma_w: torch.Tensor, weight_decay: float) -> torch.Tensor:
    """argmin_W 1/(2n) ||Y - W H||_F^2 + lambda/2 ||W||_F^2 on balanced classes (C x p, float64).

    The normal equations W (H H^T/n + lambda I) = Y H^T/n read W (Sigma_W + U U^T/C + lambda I) = U^T/C, since
    H H^T/n = Sigma_W + U U^T/C and Y H^T/n = U^T/C when every class has n/C examples. ``class_means`` is C x p.
    """
    lam = _weight_decay(weight_decay)
    u = class_means.to(_F64).T
    c, p = u.shape[1], u.shape[0]
    gram = sigma_w.to(_F64) + u @ u.T / c + lam * torch.eye(p, dtype=_F64, device=u.device)
    return torch.cholesky_solve(u / c, torch.linalg.cholesky(gram)).T


def _truncated_pinv(matrix: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The pseudo-inverse keeping the ``rank`` largest singular values (the rest are the null space's rounding),
    and those singular values, largest first (their ratio is the condition number the inverse divides by)."""
    u, s, vh = torch.linalg.svd(matrix)
    return vh[:rank].T @ torch.diag(1 / s[:rank]) @ u[:, :rank].T, s[:rank]


def _means_rank(centred_means: torch.Tensor) -> int:
    """NC1's rank: the singular values of M above the cut-off of :func:`_nc1`, at most C - 1."""
    s = torch.linalg.svdvals(centred_means)
    keep = s > max(centred_means.shape) * torch.finfo(_F64).eps * max(s[0].item(), 1e-300)
    return min(int(keep.sum()), centred_means.shape[0] - 1)


def _stable_lower(centred_means: torch.Tensor, spread: torch.Tensor, directions: torch.Tensor, lam: float,
                  rank: int) -> tuple[float, float]:
    """Phi = ||Sigma_W^{1/2} A^{1/2} (M A^{1/2})^+||_F^2 and cond(M A^{1/2}) in Sigma_W = V diag(s) V^T's basis.

    Sigma_W^{1/2} A^{1/2} = V diag(sqrt(s/(lambda + s))) V^T and M A^{1/2} = B V^T with B = M V diag((lambda + s)^-1/2);
    with B = L S K^T kept to ``rank``, (M A^{1/2})^+ = V K S^-1 L^T, so Phi = ||diag(sqrt(s/(lambda + s))) K S^-1||_F^2.
    """
    _, s, kh = torch.linalg.svd((centred_means @ directions) / (lam + spread).sqrt(), full_matrices=False)
    s, k = s[:rank], kh[:rank].T
    phi = float(((spread / (lam + spread)).sqrt().unsqueeze(1) * k / s).pow(2).sum())
    return phi, float(s[0] / s[-1]) if s[-1] > 0 else math.inf


def whitened_lower_bound(sigma_w, centred_means, weight_decay: float, rank: int | None = None) -> tuple[float, float]:
    """Item 2's Phi by the stable route, Phi = ||Sigma_W^{1/2} A^{1/2} (M A^{1/2})^+||_F^2, and cond(M A^{1/2}).

    Equal to Tr((M A M^T)^+ M A Sigma_W A M^T (M A M^T)^+) (with B = M A^{1/2}, A^{1/2} B^+ = A M^T (M A M^T)^+),
    but it divides by cond(M A^{1/2}) = sqrt(cond(M A M^T)): Phi is resolved in float64 while that is at most
    :data:`RELIABLE_CONDITION`. ``sigma_w`` p x p, ``centred_means`` M (C x p, rows mu_c - mu_G); ``rank`` NC1's
    rank (default: M's numerical rank, at most C - 1). Float64.
    """
    lam = _weight_decay(weight_decay)
    m = _as_tensor(centred_means, "centred_means")
    sigma = _as_tensor(sigma_w, "sigma_w").to(m.device)
    spread, directions = torch.linalg.eigh((sigma + sigma.T) / 2)
    rank = _means_rank(m) if rank is None else rank
    if rank == 0:
        raise UndefinedCollapseError("all class means coincide (M = 0): Phi is undefined")
    return _stable_lower(m, spread.clamp(min=0), directions, lam, rank)


def _nc1(sigma: torch.Tensor, centred_means: torch.Tensor) -> float:
    """Tr(sigma (M^T M)^+) for rows M (:data:`~ncpaper.metrics` convention, the same rounding cut-off as
    :meth:`~ncpaper.metrics.ClassStatistics.between_class_basis`)."""
    u, s, _ = torch.linalg.svd(centred_means.T, full_matrices=False)
    keep = s > max(centred_means.shape) * torch.finfo(_F64).eps * max(s[0].item(), 1e-300)
    keep[centred_means.shape[0] - 1:] = False
    if not keep.any():
        raise UndefinedCollapseError("all class means coincide (Sigma_B = 0): NC1 is undefined")
    u, s = u[:, keep], s[keep]
    return float(((u.T @ sigma @ u).diagonal() / s**2).sum())


def _nc3_centred(weights: torch.Tensor, centred_means: torch.Tensor) -> float:
    return centred_classifier_collapse(weights, centred_means)["nc3_centred"]


def bounds_from_statistics(scatter: WithinClassScatter, weight_decay: float, weights=None) -> dict[str, float]:
    """:data:`BOUND_KEYS` from one pass's statistics; ``weights=None``: the ridge readout (exact theorems).

    With another readout (``weights``, C x p) every key is the same formula on that readout's outputs, which
    then bound nothing; ``readout_gap`` says how far it is from the ridge one. ``nc1_lower`` (the stable route)
    needs no readout: it is the features' Phi whatever ``weights``. Raises
    :class:`~ncpaper.metrics.UndefinedCollapseError` when all class means coincide.
    """
    lam = _weight_decay(weight_decay)
    stats = scatter.classes
    _balanced(stats)
    c = stats.num_classes
    device = stats.means.device
    eye = torch.eye(c, dtype=_F64, device=device)
    proj = eye - 1 / c
    u = stats.means.T  # p x C
    m = stats.centred_means()  # C x p, M = P U^T
    sigma_w = scatter.within_class_covariance()
    basis, singular = stats.between_class_basis()  # the book's NC1 support and rank
    if singular.numel() == 0:
        raise UndefinedCollapseError("all class means coincide (Sigma_B = 0): NC1 and its bounds are undefined")
    rank = singular.numel()
    spread, directions = torch.linalg.eigh(sigma_w)
    spread = spread.clamp(min=0)  # rounding can leave -1e-17 on a PSD matrix
    u_t_a = ((u.T @ directions) / (lam + spread)) @ directions.T  # U^T A (C x p)
    ridge = ridge_readout(stats.means, sigma_w, lam)
    w = ridge if weights is None else _as_tensor(weights, "weights").to(device)
    if w.shape != (c, stats.dim) or not bool(torch.isfinite(w).all()):
        raise ValueError(f"classifier weights must be a finite C x p = {c} x {stats.dim} array, "
                         f"got shape {tuple(w.shape)}")

    f = w @ u  # column c: the mean output on class c
    r = eye - f
    root_f = (w @ directions) * spread.sqrt()  # Sigma_f = root_f root_f^T: positive semi-definite after rounding too
    sigma_f = root_f @ root_f.T
    r_inv = torch.linalg.solve(r, eye)
    # item 2 from the outputs alone: Phi = Tr(X P R^-1 Sigma_f R^-T P X^T), X = [P (R^-1 - I) P]^+ (R, X symmetric
    # for the ridge readout); ill-posed near f = 0, where both P (R^-1 - I) P and Sigma_f vanish
    inverse, kept = _truncated_pinv(proj @ (r_inv - eye) @ proj, rank)
    t = inverse @ proj @ r_inv
    lower_pinv = float((t @ root_f).pow(2).sum())
    # item 2 by the stable route, from the features' statistics: ||Sigma_W^{1/2} A^{1/2} (M A^{1/2})^+||_F^2
    lower, condition = _stable_lower(m, spread, directions, lam, rank)
    # item 3: G^+ = (M M^T)^+ = V S^-2 V^T with M = V S basis^T
    v = m @ basis / singular
    q = (v / singular**2) @ v.T @ proj @ r_inv
    upper = float(c**2 * (lam + spread[-1]) ** 2 * (q @ root_f).pow(2).sum())
    nc1 = float(((basis.T @ sigma_w @ basis).diagonal() / singular**2).sum())
    # item 6: R's closest a I + b 11^T (Frobenius: the mean diagonal and off-diagonal entries)
    off = ~eye.bool()
    r_sym = (r.diagonal().mean() - r[off].mean()) * eye + r[off].mean()
    w_within = proj @ r_sym @ u_t_a / c  # Sigma_W acts, the mean outputs made symmetric
    w_asymmetry = proj @ r @ u.T / (c * lam)  # the mean outputs as they are, Sigma_W -> 0 (A -> I/lambda)
    return {
        "nc1": nc1, "nc1_lower": lower, "nc1_upper": upper,
        "nc1_outputs": _nc1(sigma_f, proj @ f.T),  # rows: the centred mean outputs
        "nc3_centred": _nc3_centred(w, m),
        "nc3_centred_within": _nc3_centred(w_within, m),
        "nc3_centred_asymmetry": _nc3_centred(w_asymmetry, m),
        "output_asymmetry": float((r - r_sym).norm() / r.norm()),
        "sigma_w_max": float(spread[-1]),
        "sigma_w_means": float((basis.T @ sigma_w @ basis).diagonal().mean()),
        "readout_gap": float((w - ridge).norm() / ridge.norm()),
        "mean_output_skew": float((f - f.T).norm() / f.norm()) if f.norm() > 0 else math.nan,
        "lower_condition": condition,
        "nc1_lower_pinv": lower_pinv,
        "lower_condition_pinv": float(kept[0] / kept[-1]) if kept[-1] > 0 else math.inf,
    }


def output_spread_bounds(features, labels, weight_decay: float, weights=None,
                         num_classes: int | None = None) -> dict[str, float]:
    """NC1, its bounds by the outputs' spread and the NC3 split (:data:`BOUND_KEYS`), as plain floats.

    ``features`` (n x p) and integer ``labels`` (n) of balanced classes; ``weights`` the C x p readout, None for
    the ridge-optimal one of the slides' objective, W_L = argmin 1/(2n)||Y - W_L H||_F^2 + lambda/2 ||W_L||_F^2,
    computed in float64. ``num_classes`` defaults to the rows of ``weights``, else to max(labels) + 1. For
    features that do not fit in memory, :func:`output_spread_bounds_streaming`.
    """
    h = _as_tensor(features, "features")
    _check_features(h)
    y = _as_tensor(labels, "labels", dtype=None)
    if num_classes is None:
        num_classes = _as_tensor(weights, "weights").shape[0] if weights is not None else int(y.max()) + 1
    return output_spread_bounds_streaming([(h, y)], num_classes, h.shape[1], weight_decay, weights, h.device)


def output_spread_bounds_streaming(batches: Iterable, num_classes: int, dim: int, weight_decay: float,
                                   weights=None, device=None) -> dict[str, float]:
    """:func:`output_spread_bounds` over ``(features, labels)`` batches, read once (one streaming pass)."""
    scatter = WithinClassScatter(num_classes, dim, device=device)
    for h, y in batches:
        scatter.update(h, y)
    return bounds_from_statistics(scatter, weight_decay, weights)


@torch.no_grad()
def settled_columns(model: torch.nn.Module, train, weight_decay: float, batch_size: int = 4096) -> dict[str, float]:
    """:data:`SETTLED_COLUMNS` for a settled network: the ridge readout's bounds on its training features.

    ``train`` has ``x`` and ``y`` (the whole training set, streamed in batches through ``model.features``). NaN
    in every column when the class means coincide (a network at f = 0).
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()

    def batches():
        for start in range(0, len(train.y), batch_size):
            yield (model.features(train.x[start:start + batch_size].to(device)).double(),
                   train.y[start:start + batch_size].to(device))

    try:
        values = output_spread_bounds_streaming(batches(), model.num_classes, model.feature_dim, weight_decay,
                                                device=device)
    except UndefinedCollapseError:
        values = dict.fromkeys(SETTLED_COLUMNS, math.nan)
    finally:
        model.train(was_training)
    return {column: values[key] for key, column in SETTLED_COLUMNS.items()}


def identity_residuals(features, labels, weight_decay: float) -> dict[str, float]:
    """How exactly items 1, 2, 5-6's identities hold for the ridge readout on these features (relative errors).

    Computed along a second route from the one :func:`bounds_from_statistics` takes: ``readout`` is
    ||W_ridge - (1/C) R U^T A|| with R = (I + U^T A U/C)^-1 (normal equations against item 1's closed form),
    ``r_is_i_minus_f`` ||(I - F) - R||, ``f_symmetric`` ||F - F^T|| (relative to ||F||), ``f_eigen_min`` and
    ``f_eigen_max`` F's extreme eigenvalues (item 1: in [0, 1)), ``phi_whitened`` |Phi - NC1(A^{1/2} h)| with
    NC1 of the whitened features from their own statistics, ``phi_routes`` |Phi - Phi_pinv| / Phi between the
    stable route and the outputs formula, ``gap`` |NC1 - Phi - Tr(D^T (Sigma_W + 2 lambda I) D)|
    (relative to NC1), ``centred_classifier`` ||P W - (1/C) P R U^T A||, and the bounds' ordering margins
    ``lower_margin`` = NC1 - Phi and ``upper_margin`` = upper - NC1 (both >= 0).
    """
    lam = _weight_decay(weight_decay)
    h = _as_tensor(features, "features")
    _check_features(h)
    y = _as_tensor(labels, "labels", dtype=None)
    scatter = WithinClassScatter(int(y.max()) + 1, h.shape[1]).update(h, y)
    bounds = bounds_from_statistics(scatter, lam)
    stats = scatter.classes
    c = stats.num_classes
    eye = torch.eye(c, dtype=_F64)
    u, m, sigma_w = stats.means.T, stats.centred_means(), scatter.within_class_covariance()
    spread, directions = torch.linalg.eigh(sigma_w)
    spread = spread.clamp(min=0)
    a = (directions / (lam + spread)) @ directions.T
    a_half = (directions / (lam + spread).sqrt()) @ directions.T
    w = ridge_readout(stats.means, sigma_w, lam)
    r = torch.linalg.inv(eye + u.T @ a @ u / c)
    closed = r @ u.T @ a / c
    f = w @ u
    eigen = torch.linalg.eigvalsh((f + f.T) / 2)
    whitened = _nc1(a_half @ sigma_w @ a_half, m @ a_half)
    q = torch.linalg.pinv(m)  # M^+ (p x C)
    rank = stats.between_class_basis()[1].numel()
    z = a @ m.T @ _truncated_pinv(m @ a @ m.T, rank)[0]  # A M^T (M A M^T)^+
    d = q - z
    gap = float((d.T @ (sigma_w + 2 * lam * torch.eye(len(sigma_w), dtype=_F64)) @ d).trace())
    proj = eye - 1 / c
    return {
        "readout": float((w - closed).norm() / w.norm()),
        "r_is_i_minus_f": float(((eye - f) - r).norm() / r.norm()),
        "f_symmetric": float((f - f.T).norm() / f.norm()),
        "f_eigen_min": float(eigen[0]), "f_eigen_max": float(eigen[-1]),
        "phi_whitened": abs(bounds["nc1_lower"] - whitened) / whitened,
        "phi_routes": abs(bounds["nc1_lower"] - bounds["nc1_lower_pinv"]) / bounds["nc1_lower"],
        "gap": abs(bounds["nc1"] - bounds["nc1_lower"] - gap) / bounds["nc1"],
        "centred_classifier": float((proj @ w - proj @ closed).norm() / (proj @ w).norm()),
        "lower_margin": bounds["nc1"] - bounds["nc1_lower"], "upper_margin": bounds["nc1_upper"] - bounds["nc1"],
    }


# (C, N per class, p, lambda, spread) of the random-feature checks on the book's page: few and many examples per
# dimension, weak and strong weight decay
CHECK_SETTINGS = ((3, 20, 5, 0.1, 1.0), (10, 15, 30, 1e-3, 0.5), (4, 50, 8, 1.0, 2.0), (6, 8, 64, 1e-2, 0.3))


def identity_table(settings=CHECK_SETTINGS) -> pd.DataFrame:
    """:func:`identity_residuals` and NC1 with its bounds on :func:`random_relu_features`, one row per setting."""
    rows = []
    for c, n_per_class, p, lam, spread in settings:
        h, y = random_relu_features(c, n_per_class, p, spread=spread, seed=c)
        got = output_spread_bounds(h, y, lam)
        res = identity_residuals(h, y, lam)
        rows.append({"C": c, "N": n_per_class, "p": p, "weight_decay": lam, "spread": spread,
                     "worst identity": max(res[k] for k in ("readout", "r_is_i_minus_f", "f_symmetric", "phi_whitened",
                                                            "phi_routes", "gap", "centred_classifier")),
                     "F eigenvalues": f"{res['f_eigen_min']:.3f} to {res['f_eigen_max']:.3f}",
                     "nc1_lower": got["nc1_lower"], "nc1": got["nc1"], "nc1_upper": got["nc1_upper"],
                     "share": got["nc1_lower"] / got["nc1"], "spread_ratio": got["sigma_w_max"] / lam,
                     "ordered": got["nc1_lower"] <= got["nc1"] <= got["nc1_upper"]})
    return pd.DataFrame(rows)


def symmetric_outputs_check(num_classes: int = 4, dim: int = 6, weight_decay: float = 0.05) -> dict[str, float]:
    """Item 5 on :func:`symmetric_output_features`: F's distance from (1 - eps - delta) I + delta 11^T, Phi, the
    closed form Tr(P Sigma_f P)/(1 - eps - delta)^2, the outputs' NC1 and the features' NC1."""
    h, y = symmetric_output_features(num_classes, dim, weight_decay)
    scatter = WithinClassScatter(num_classes, dim).update(h, y)
    got = bounds_from_statistics(scatter, weight_decay)
    sigma_w = scatter.within_class_covariance()
    w = ridge_readout(scatter.classes.means, sigma_w, weight_decay)
    f = w @ scatter.classes.means.T
    eye = torch.eye(num_classes, dtype=_F64)
    on, off = float(f.diagonal().mean()), float(f[~eye.bool()].mean())
    proj = eye - 1 / num_classes
    closed = float((proj @ w @ sigma_w @ w.T @ proj).trace()) / (on - off) ** 2
    return {"eps": 1 - on, "delta": off, "f_distance": float((f - ((on - off) * eye + off)).abs().max()),
            "nc1_lower": got["nc1_lower"], "closed_form": closed, "nc1_outputs": got["nc1_outputs"],
            "nc1": got["nc1"], "n": len(y)}


def random_relu_features(num_classes: int, n_per_class: int, dim: int, spread: float = 1.0,
                         seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ReLU features: h = max(0, z_c + spread g) with Gaussian class centres z_c and noise g (float64)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_classes, dim))
    labels = np.repeat(np.arange(num_classes), n_per_class)
    features = np.maximum(0, centres[labels] + spread * rng.normal(size=(len(labels), dim)))
    return torch.tensor(features, dtype=_F64), torch.as_tensor(labels)


def symmetric_output_features(num_classes: int, dim: int, weight_decay: float, on_class: float = 1.0,
                              common: float = 0.5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Features whose ridge readout has symmetric mean outputs F = (1 - eps - delta) I + delta 11^T (item 5).

    A random within-class covariance S (full rank, so the lower bound is not tight) and class means
    mu_c = (lambda I + S)^{1/2} (a o_c + b o_0) with orthonormal o_0 .. o_C (a = ``on_class``, b = ``common``):
    then U^T A U = a^2 I + b^2 11^T, and F = K (I + K)^-1 with K = U^T A U / C is of the symmetric form. Each class
    has 2p examples mu_c +- sqrt(p) S^{1/2} q_k over an orthonormal basis q_k of its own, so its covariance is
    exactly S. Needs dim >= C + 1.
    """
    lam = _weight_decay(weight_decay)
    if dim < num_classes + 1:
        raise ValueError(f"the construction needs p >= C + 1 = {num_classes + 1}, got {dim}")
    rng = np.random.default_rng(seed)
    g = rng.normal(size=(dim, dim))
    s = g @ g.T / dim
    values, vectors = np.linalg.eigh(s)
    s_half = vectors @ np.diag(np.sqrt(values.clip(min=0))) @ vectors.T
    b_half = vectors @ np.diag(np.sqrt(lam + values)) @ vectors.T
    basis, _ = np.linalg.qr(rng.normal(size=(dim, num_classes + 1)))
    means = (on_class * basis[:, 1:] + common * basis[:, :1]).T @ b_half  # rows mu_c^T (b_half symmetric)
    rows, labels = [], []
    for c in range(num_classes):
        q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
        deviations = math.sqrt(dim) * (s_half @ q).T
        rows += [means[c] + deviations, means[c] - deviations]
        labels += [c] * (2 * dim)
    return torch.tensor(np.concatenate(rows), dtype=_F64), torch.as_tensor(labels)


def spread_outside_means_critical_point(num_classes: int = 3, n_per_class: int = 2, weight_decay: float = 0.01,
                                        input_norm: float = 1.0) -> dict:
    """An exact critical point of J for a bias-free ReLU net f = W_2 s(W_1 x) with Sigma_f = 0 but h != mu_c.

    n = NC inputs x_i of norm rho (``input_norm``) with pairwise negative inner products (a regular simplex,
    x_i . x_j = -rho^2/(n-1)), one hidden unit per example: W_1's row i is alpha x_i / rho (active on x_i
    only, pre-activation alpha rho there and -alpha rho/(n-1) elsewhere: no unit at a kink), W_2's column i is
    alpha e_{y_i}. Every example of class c then has features alpha rho e_i (its own unit) and outputs
    alpha^2 rho e_c; both layers' gradients vanish at alpha^2 = (1 - n lambda/rho)/rho, which needs
    n lambda < rho. The within-class spread lies along e_i - e_j (same class), orthogonal to every class
    mean: NC1 = 0 and Sigma_f = 0, yet the CDNV is (N - 1)/2. Returns the float64 model, inputs and labels.
    """
    from .models import make_model

    lam = _weight_decay(weight_decay)
    n = num_classes * n_per_class
    if n_per_class < 2:
        raise ValueError(f"within-class spread needs N >= 2 examples per class, got {n_per_class}")
    if not n * lam < input_norm:
        raise ValueError(f"no such critical point: needs n lambda < rho, got n lambda = {n * lam:g}, "
                         f"rho = {input_norm:g}")
    alpha = math.sqrt((1 - n * lam / input_norm) / input_norm)
    centred = np.eye(n) - 1 / n
    x = input_norm * centred / np.linalg.norm(centred, axis=1, keepdims=True)
    labels = np.repeat(np.arange(num_classes), n_per_class)
    model = make_model("mlp", (n,), num_classes, widths=[n]).double()
    first, readout = (p for _, p in model.named_parameters())
    with torch.no_grad():
        first.copy_(torch.tensor(alpha * x / input_norm))
        readout.copy_(torch.tensor(alpha * np.eye(num_classes)[labels].T))
    return {"model": model, "x": torch.tensor(x, dtype=_F64), "labels": torch.as_tensor(labels),
            "weight_decay": lam, "input_norm": float(input_norm), "alpha": alpha}


def critical_point_report(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor,
                          weight_decay: float) -> dict[str, float]:
    """How exactly a float64 network sits at a critical point of J, and its collapse (item 4's check).

    ``gradient_l`` = ||dJ/dW_l||_F / ||lambda W_l||_F (autograd, float64); ``kink_margin`` = the smallest
    |pre-activation| of any hidden unit on any example relative to the largest (0 would be a ReLU at its kink);
    ``output_spread`` = Tr(Sigma_f) from the outputs themselves; NC1, CDNV, NC4 and the training error of the last
    hidden layer; the bounds (whose W_L Sigma_W W_L^T is 0 only to rounding, about eps ||W_L||^2 ||Sigma_W||).
    """
    from .measure import square_loss

    lam = _weight_decay(weight_decay)
    params = list(model.parameters())
    out = model(x)
    objective = square_loss(out, labels) + lam / 2 * sum(p.pow(2).sum() for p in params)
    grads = torch.autograd.grad(objective, params)
    row = {f"gradient_{k}": float(g.norm() / (lam * p.detach().norm()))
           for k, (g, p) in enumerate(zip(grads, params, strict=True), start=1)}
    with torch.no_grad():
        pre, z = [], x
        for module in model.body:
            z = module(z)
            if isinstance(module, torch.nn.Linear):
                pre.append(z.abs().flatten())
        pre = torch.cat(pre)
        row["kink_margin"] = float(pre.min() / pre.max())
        h = model.features(x)
        w = model.classifier.weight
        nc = neural_collapse(h, labels, w)
        f = h @ w.T
        scatter = WithinClassScatter(model.num_classes, h.shape[1]).update(h, labels)
        outputs = WithinClassScatter(model.num_classes, f.shape[1]).update(f, labels)
        row["output_spread"] = float(outputs.within_class_covariance().trace())
        row.update({"nc1": nc["nc1"], "cdnv": nc["cdnv"], "nc4": nc["nc4"],
                    "train_error": float((f.argmax(1) != labels).double().mean())})
        bounds = bounds_from_statistics(scatter, lam)
        row.update({"nc1_lower": bounds["nc1_lower"], "nc1_upper": bounds["nc1_upper"],
                    "readout_gap": float((w - ridge_readout(scatter.classes.means, scatter.within_class_covariance(),
                                                           lam)).norm() / w.norm())})
    return row


def bounds_table(runs) -> pd.DataFrame:
    """One row per run with a settled row: data, lambda, seed, training error, NC1 and its bounds, the share of
    NC1 the outputs explain (nc1_lower / nc1), the upper bound over NC1 beside its worst case (1 + s_max/lambda)^2
    (s_max = s_max(Sigma_W)) and its factor ((lambda + s_max)/(lambda + sigma_means))^2 at the mean within-class
    variance sigma_means along the centred means, the outputs' NC1, and the centred NC3 (the network's, the ridge
    readout's) with its two parts.

    ``nc1_lower`` is the Phi the settled row recorded (:data:`SETTLED_COLUMNS`): the stable route from metrics
    version 7 on, item 2's outputs-only formula before. ``reliable``: that route is conditioned well enough for float64
    (``nc1_lower_condition``, the route's own condition number, at most :data:`RELIABLE_CONDITION`; true where a run of
    metrics version 5 lacks the column). Runs measured before these columns (metrics version
    < 5) are left out; a run at f = 0 keeps NaNs.
    """
    rows = []
    for run in runs:
        settled = run.settled
        if settled is None or "nc1_lower" not in settled.index:
            continue
        lam = run.config.weight_decay
        rows.append({
            "data": run.meta["data"]["train"]["dataset"], "weight_decay": lam, "seed": run.config.seed,
            "train_error": settled["train_error"], "nc1": settled["nc1"],
            "nc1_lower": settled["nc1_lower"], "nc1_upper": settled["nc1_upper"],
            "share": settled["nc1_lower"] / settled["nc1"], "upper_ratio": settled["nc1_upper"] / settled["nc1"],
            "spread_ratio": settled["sigma_w_max"] / lam, "worst_factor": (1 + settled["sigma_w_max"] / lam) ** 2,
            "means_factor": ((lam + settled["sigma_w_max"]) / (lam + settled["sigma_w_means"])) ** 2,
            "nc1_outputs": settled["nc1_outputs"], "nc3_centred": settled["nc3_centred"],
            "nc3_centred_ridge": settled["nc3_centred_ridge"], "nc3_centred_within": settled["nc3_centred_within"],
            "nc3_centred_asymmetry": settled["nc3_centred_asymmetry"],
            "output_asymmetry": settled["output_asymmetry"],
            "lower_condition": settled.get("nc1_lower_condition", math.nan),
            "reliable": not settled.get("nc1_lower_condition", 0) > RELIABLE_CONDITION})
    columns = ["data", "weight_decay", "seed", "train_error", "nc1", "nc1_lower", "nc1_upper", "share",
               "upper_ratio", "spread_ratio", "worst_factor", "means_factor", "nc1_outputs", "nc3_centred",
               "nc3_centred_ridge", "nc3_centred_within", "nc3_centred_asymmetry", "output_asymmetry",
               "lower_condition", "reliable"]
    return pd.DataFrame(rows, columns=columns)


def _resolved(table: pd.DataFrame) -> pd.DataFrame:
    """The :func:`bounds_table` rows whose NC1 and bounds are defined and whose Phi is ``reliable``."""
    frame = table.dropna(subset=["nc1", "nc1_lower", "nc1_upper"])
    return frame[frame["reliable"].astype(bool)] if "reliable" in frame else frame


def fits(table: pd.DataFrame, max_train_error: float = TERMINAL_TRAIN_ERROR) -> pd.Series:
    """Which :func:`bounds_table` rows fit their training set: training error at most ``max_train_error`` (the
    book's :data:`~ncpaper.analysis.TERMINAL_TRAIN_ERROR`); all of them where the table has no ``train_error``."""
    if "train_error" not in table:
        return pd.Series(True, index=table.index)
    return table["train_error"] <= max_train_error


def bounds_summary(table: pd.DataFrame, max_train_error: float = TERMINAL_TRAIN_ERROR) -> pd.DataFrame:
    """Per dataset, over the runs whose NC1 is defined and whose Phi is reliable (``reliable``): how many, the
    share nc1_lower / NC1 (min, median, max), the upper bound over NC1 (median, max), s_max(Sigma_W)/lambda and
    the means' factor (medians), from :func:`bounds_table` rows; ``fit_runs`` and ``fit_share_*``: the same share
    over the runs that fit their training set (:func:`fits`; NaN where none does)."""
    frame = _resolved(table)
    summary = frame.groupby("data").agg(
        runs=("nc1", "size"), share_min=("share", "min"), share_median=("share", "median"),
        share_max=("share", "max"), upper_ratio_median=("upper_ratio", "median"),
        upper_ratio_max=("upper_ratio", "max"), spread_ratio_median=("spread_ratio", "median"),
        means_factor_median=("means_factor", "median"))
    fitting = frame[fits(frame, max_train_error)].groupby("data")["share"].agg(
        fit_runs="size", fit_share_min="min", fit_share_median="median", fit_share_max="max")
    summary = summary.join(fitting)
    return summary.assign(fit_runs=summary["fit_runs"].fillna(0).astype(int))


def share_by_weight_decay(table: pd.DataFrame, max_train_error: float = TERMINAL_TRAIN_ERROR) -> pd.DataFrame:
    """The share Phi / NC1 against lambda, the runs that fit their training set (:func:`fits`) apart from those
    that do not: one row per dataset, lambda and ``fits`` with the runs' count and the share's min, median and max,
    over the :func:`bounds_table` rows whose NC1 is defined and whose Phi is reliable."""
    frame = _resolved(table)
    frame = frame.assign(fits=fits(frame, max_train_error).astype(bool))
    return (frame.groupby(["data", "weight_decay", "fits"])["share"]
            .agg(runs="size", share_min="min", share_median="median", share_max="max").reset_index())


def bounds_figure(tables: Mapping[str, pd.DataFrame], title: str = ""):
    """NC1 between its bounds against lambda (top row) and the share nc1_lower / nc1 (bottom row), one column per
    dataset; lines are means over seeds with min-max bands, from :func:`bounds_table` rows (lambda > 0, Phi
    ``reliable``). The share's line and band are over the runs that fit their training set (:func:`fits`); the
    others are crosses of their own."""
    import matplotlib.pyplot as plt

    from .plots import PAGE_FONTS, PAGE_WIDTH_IN

    lines = (("nc1_upper", "upper bound (item 3)", "tab:red", "v"), ("nc1", "NC1 measured", "black", "o"),
             ("nc1_lower", "lower bound Φ (item 2)", "tab:blue", "^"))
    with plt.rc_context(PAGE_FONTS):
        fig, axes = plt.subplots(2, len(tables), figsize=(PAGE_WIDTH_IN, 5.6), squeeze=False, constrained_layout=True)
        fig.ncpaper_reading_order = "columns"
        for col, (name, frame) in enumerate(tables.items()):
            reliable = frame["reliable"].astype(bool) if "reliable" in frame else True
            frame = frame[(frame["weight_decay"] > 0) & reliable]
            top, bottom = axes[0, col], axes[1, col]
            for column, label, colour, marker in lines:
                stats = frame.groupby("weight_decay")[column].agg(["mean", "min", "max"]).dropna()
                top.plot(stats.index, stats["mean"], marker=marker, color=colour, markersize=3.5, linewidth=1.1,
                         label=label)
                top.fill_between(stats.index, stats["min"], stats["max"], color=colour, alpha=0.15, linewidth=0)
            fit = fits(frame)
            share = frame[fit].groupby("weight_decay")["share"].agg(["mean", "min", "max"]).dropna()
            bottom.plot(share.index, share["mean"], marker="o", color="tab:blue", markersize=3.5, linewidth=1.1,
                        label=f"fits its training set (error ≤ {TERMINAL_TRAIN_ERROR:.1%})")
            bottom.fill_between(share.index, share["min"], share["max"], color="tab:blue", alpha=0.15, linewidth=0)
            apart = frame[~fit].dropna(subset=["share"])
            if len(apart):
                bottom.scatter(apart["weight_decay"], apart["share"], marker="x", color="0.4", s=16, linewidths=1,
                               label="does not fit", zorder=3)
            top.set(xscale="log", yscale="log", xlabel="λ", title=f"{name}: NC1 and its bounds")
            bottom.set(xscale="log", xlabel="λ", ylim=(0, 1.05), title=f"{name}: share of NC1 the outputs explain")
            bottom.set_ylabel(r"$\Phi$ / NC1")
            for ax in (top, bottom):
                ax.grid(True, which="major", alpha=0.3)
            top.legend(frameon=False)
            bottom.legend(frameon=False)
        if title:
            fig.suptitle(title)
    return fig
