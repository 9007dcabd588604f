"""Neural Collapse measurements (Papyan, Han & Donoho, 2020), as used in the paper.

Notation (the paper's): features ``h`` (n x p) of a layer, labels ``y`` in ``{0..C-1}``, classifier
``W`` (C x p, rows ``W_c``), class means ``mu_c``, global mean ``mu_G``, n = NC examples in all,

    Sigma_W = 1/n sum_i (h_i - mu_{y_i}) (h_i - mu_{y_i})^T       within-class covariance
    Sigma_B = 1/C sum_c (mu_c - mu_G) (mu_c - mu_G)^T              between-class covariance
    M       = rows (mu_c - mu_G)                                   centred class means (C x p)
    var_c   = 1/n_c sum_{i in c} ||h_i - mu_c||^2                  class c's variance (trace of its covariance)

    nc1                      = Tr(Sigma_W Sigma_B^+) / C
    nc2_equinorm_{means,weights}    = std_c ||v_c|| / mean_c ||v_c||          (ddof = 0)
    nc2_equiangular_{means,weights} = std over c < c' of cos(v_c, v_c')      (ddof = 0)
    nc2_maxangle_{means,weights}    = mean over c < c' of |cos(v_c, v_c') + 1/(C-1)|
    nc3                      = || W/||W||_F - M/||M||_F ||_F^2
    nc4                      = fraction of i with argmax_c (W h_i)_c != argmin_c ||h_i - mu_c||
    cdnv                     = mean over c < c' of (var_c + var_c') / (2 ||mu_c - mu_c'||^2)
                               (Galanti et al. 2022, "On the role of neural collapse in transfer learning")

Everything is accumulated in float64, in two streaming passes that keep no per-example data:
pass 1 (:class:`ClassStatistics`) the class counts, means and within-class sums of squares (N p work);
pass 2 (:class:`SpanScatter`) the within-class scatter only on the span of the C centred means, which is
all that Tr(Sigma_W Sigma_B^+) needs: with M^T = U S V^T (rank r <= C-1), Sigma_B^+ = C U S^-2 U^T and

    nc1 = sum_j (1/n) sum_i (u_j^T (h_i - mu_{y_i}))^2 / s_j^2                 (N p r work, not N p^2)

and the nearest-class-centre counts (NC4) are taken in the same pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "CENTRED_CLASSIFIER_KEYS",
    "NC_KEYS",
    "ClassStatistics",
    "SpanScatter",
    "UndefinedCollapseError",
    "cdnv",
    "centred_classifier_collapse",
    "classifier_alignment",
    "classifier_fit",
    "count_ncc_mismatches",
    "means_collapse",
    "nearest_class_centre",
    "neural_collapse",
    "neural_collapse_from_statistics",
    "neural_collapse_streaming",
]

NC_KEYS = (
    "nc1",
    "nc2_equinorm_means",
    "nc2_equinorm_weights",
    "nc2_equiangular_means",
    "nc2_equiangular_weights",
    "nc2_maxangle_means",
    "nc2_maxangle_weights",
    "nc3",
    "nc4",
    "cdnv",
)

CENTRED_CLASSIFIER_KEYS = (
    "nc2_equinorm_weights_centred",
    "nc2_equiangular_weights_centred",
    "nc2_maxangle_weights_centred",
    "nc3_centred",
)

_F64 = torch.float64


class UndefinedCollapseError(ValueError):
    """The geometry is degenerate (coinciding class means, a zero classifier row): NC is undefined.

    A network whose weight decay drove it to the trivial solution f = 0 ends here; this is a
    measured outcome, not a bug in the input.
    """


def _as_tensor(x, name: str, dtype=_F64) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x.detach()
    elif isinstance(x, np.ndarray | list | tuple):
        t = torch.as_tensor(np.asarray(x))
    else:
        raise TypeError(f"{name} must be a torch.Tensor or a NumPy array, got {type(x).__name__}")
    return t.to(dtype) if dtype is not None else t


def _check_features(features: torch.Tensor) -> None:
    if features.ndim != 2:
        raise ValueError(f"features must be a 2-D (N x p) array, got shape {tuple(features.shape)}")
    # one reduction, no temporary: a NaN or an infinity anywhere makes the float64 sum non-finite
    if not math.isfinite(features.sum(dtype=_F64).item()):
        bad = (~torch.isfinite(features)).any(dim=1).sum().item()
        raise ValueError(f"features contain NaN or infinite values ({bad} rows); "
                         "the network has diverged or the input is corrupt")


def _check_labels(labels: torch.Tensor, n: int, num_classes: int) -> torch.Tensor:
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"labels must be a 1-D array of length N = {n} (one per feature row), "
                         f"got shape {tuple(labels.shape)}")
    if labels.dtype.is_floating_point:
        if not torch.equal(labels, labels.round()):
            raise ValueError("labels must be integer class indices, got non-integer values")
    labels = labels.long()
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels out of range: found {labels.min().item()}..{labels.max().item()}, "
                         f"expected 0..{num_classes - 1} for C = {num_classes} classes")
    return labels


def _check_weights(weights: torch.Tensor, num_classes: int, dim: int) -> None:
    if weights.ndim != 2 or weights.shape != (num_classes, dim):
        raise ValueError(f"classifier weights must be C x p = {num_classes} x {dim}, "
                         f"got shape {tuple(weights.shape)}")
    if not torch.isfinite(weights).all():
        raise ValueError("classifier weights contain NaN or infinite values")


class ClassStatistics:
    """Pass 1: float64 class counts n_c, class means mu_c and within-class sums of squares S_c.

    ``update(h, y)`` merges a batch with Chan et al.'s pairwise rule: with ``n_a, m_a`` the running
    count and mean of class c and ``n_b, m_b`` the batch's,
    ``S_c += S_batch,c + n_a n_b / (n_a + n_b) ||m_b - m_a||^2``. Centring each batch on its own class
    means avoids the cancellation of ``E||h||^2 - ||mu||^2`` when the within-class spread is tiny
    (exactly the collapsed regime we measure). State: C (p + 2) numbers whatever n.
    """

    def __init__(self, num_classes: int, dim: int, device: torch.device | str | None = None):
        if num_classes < 2:
            raise ValueError(f"Neural Collapse needs at least 2 classes, got C = {num_classes}")
        if dim < 1:
            raise ValueError(f"feature dimension must be positive, got p = {dim}")
        self.num_classes = num_classes
        self.dim = dim
        self.counts = torch.zeros(num_classes, dtype=_F64, device=device)
        self.means = torch.zeros(num_classes, dim, dtype=_F64, device=device)
        self.sum_squares = torch.zeros(num_classes, dtype=_F64, device=device)

    @property
    def n(self) -> int:
        return int(self.counts.sum().item())

    def update(self, features, labels) -> ClassStatistics:
        h = _as_tensor(features, "features").to(self.means.device)
        _check_features(h)
        if h.shape[1] != self.dim:
            raise ValueError(f"features have p = {h.shape[1]} columns, expected {self.dim}")
        y = _check_labels(_as_tensor(labels, "labels", dtype=None).to(h.device), h.shape[0],
                          self.num_classes)
        if h.shape[0] == 0:
            return self
        n_b = torch.bincount(y, minlength=self.num_classes).to(_F64)
        sums = torch.zeros_like(self.means).index_add_(0, y, h)
        m_b = sums / n_b.clamp(min=1).unsqueeze(1)
        centred = h - m_b[y]
        batch_squares = torch.zeros_like(self.sum_squares).index_add_(0, y, torch.linalg.vector_norm(centred, dim=1)
                                                                       .square())
        n_a = self.counts
        total = n_a + n_b
        delta = m_b - self.means
        pair_weight = torch.where(total > 0, n_a * n_b / total.clamp(min=1), torch.zeros_like(total))
        self.sum_squares += batch_squares + pair_weight * (delta * delta).sum(1)
        self.means += delta * (n_b / total.clamp(min=1)).unsqueeze(1)
        self.counts = total
        return self

    def global_mean(self) -> torch.Tensor:
        """mu_G, the mean of all samples (equal to the mean of class means on balanced data)."""
        return (self.counts.unsqueeze(1) * self.means).sum(0) / self.counts.sum()

    def centred_means(self) -> torch.Tensor:
        """M, the C x p matrix of rows mu_c - mu_G."""
        return self.means - self.global_mean()

    def class_variances(self) -> torch.Tensor:
        """var_c = S_c / n_c, the trace of class c's covariance (C values)."""
        return self.sum_squares / self.counts

    def check_complete(self) -> None:
        empty = (self.counts == 0).nonzero().flatten().tolist()
        if empty:
            raise ValueError(f"class(es) {empty} have no samples; every one of the C = "
                             f"{self.num_classes} classes needs at least one")

    def between_class_basis(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(U, s): the kept left singular vectors (p x r) and values of M^T, the support of Sigma_B^+.

        The rows of M sum to zero (weighted by class counts), so at most C-1 singular values are
        kept; of those, values below max(p, C) * eps * max(s_max, max_c ||mu_c||) are rounding noise
        (the centring subtracts vectors of norm up to max_c ||mu_c||) and are dropped. All means equal:
        r = 0 (NC1 undefined).
        """
        m = self.centred_means()
        u, s, _ = torch.linalg.svd(m.T, full_matrices=False)
        if s.numel() == 0 or s[0] == 0:
            return u[:, :0], s[:0]
        rounding = max(s[0].item(), self.means.norm(dim=1).max().item())
        keep = s > max(m.shape) * torch.finfo(_F64).eps * rounding
        keep[self.num_classes - 1:] = False
        return u[:, keep], s[keep]


class SpanScatter:
    """Pass 2: d_j = sum_i (u_j^T (h_i - mu_{y_i}))^2 for the kept directions u_j of M^T = U S V^T.

    Needs pass 1's final means (so the centring is exact and nothing cancels); costs N p r with
    r <= C-1, against the N p^2 of the full p x p within-class scatter.
    """

    def __init__(self, stats: ClassStatistics):
        stats.check_complete()
        self.stats = stats
        self.basis, self.singular_values = stats.between_class_basis()
        self.projected_squares = torch.zeros(self.basis.shape[1], dtype=_F64, device=stats.means.device)

    def update(self, features, labels) -> SpanScatter:
        h = _as_tensor(features, "features").to(self.stats.means.device)
        _check_features(h)
        y = _check_labels(_as_tensor(labels, "labels", dtype=None).to(h.device), h.shape[0],
                          self.stats.num_classes)
        return self._add(h, y)

    def _add(self, h: torch.Tensor, y: torch.Tensor) -> SpanScatter:
        """``update`` on float64 features and labels already checked."""
        projected = (h - self.stats.means[y]) @ self.basis
        self.projected_squares += projected.square().sum(0)
        return self

    def nc1(self) -> float:
        """Tr(Sigma_W Sigma_B^+)/C = sum_j (d_j / n) / s_j^2."""
        if self.singular_values.numel() == 0:
            raise UndefinedCollapseError("all class means coincide (Sigma_B = 0): NC1 is undefined")
        return float((self.projected_squares / self.stats.counts.sum() / self.singular_values**2).sum().item())


def _norms_and_pairwise_cosines(vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The row norms of a C x p matrix and cos(v_c, v_c') for every c < c'."""
    c = vectors.shape[0]
    norms = vectors.norm(dim=1)
    if (norms == 0).any():
        raise UndefinedCollapseError("a class mean coincides with the global mean (or a classifier row is zero): "
                                     "cosines are undefined")
    unit = vectors / norms.unsqueeze(1)
    iu = torch.triu_indices(c, c, offset=1, device=vectors.device)
    return norms, (unit @ unit.T)[iu[0], iu[1]]


def _norm_and_cosine_stats(vectors: torch.Tensor) -> tuple[float, float, float]:
    """(equinorm, equiangular, maxangle) of the rows of a C x p matrix."""
    c = vectors.shape[0]
    norms, cos = _norms_and_pairwise_cosines(vectors)
    equinorm = (norms.std(unbiased=False) / norms.mean()).item()
    equiangular = cos.std(unbiased=False).item()
    maxangle = (cos + 1.0 / (c - 1)).abs().mean().item()
    return equinorm, equiangular, maxangle


def cdnv(stats: ClassStatistics) -> float:
    """mean over c < c' of (var_c + var_c') / (2 ||mu_c - mu_c'||^2); no pseudo-inverse needed."""
    stats.check_complete()
    c = stats.num_classes
    iu = torch.triu_indices(c, c, offset=1, device=stats.means.device)
    distances = (stats.means[iu[0]] - stats.means[iu[1]]).pow(2).sum(1)
    if (distances == 0).any():
        raise UndefinedCollapseError("two class means coincide: the CDNV is undefined")
    variances = stats.class_variances()
    return float(((variances[iu[0]] + variances[iu[1]]) / (2 * distances)).mean().item())


def nearest_class_centre(features, means) -> torch.Tensor:
    """argmin_c ||h_i - mu_c|| for every row of ``features`` (the nearest-class-centre rule)."""
    h = _as_tensor(features, "features")
    mu = _as_tensor(means, "means").to(h.device)
    _check_features(h)
    # ||h - mu_c||^2 = ||h||^2 - 2 h.mu_c + ||mu_c||^2; the first term does not change the argmin.
    return ((mu * mu).sum(1) - 2 * h @ mu.T).argmin(1)


def count_ncc_mismatches(features, weights, means) -> int:
    """Number of rows where argmax_c (W h)_c differs from the nearest class mean argmin_c ||h - mu_c||."""
    h = _as_tensor(features, "features")
    _check_features(h)
    return _count_mismatches(h, _as_tensor(weights, "weights").to(h.device), _as_tensor(means, "means").to(h.device))


def _count_mismatches(h: torch.Tensor, w: torch.Tensor, mu: torch.Tensor) -> int:
    """:func:`count_ncc_mismatches` on checked float64 tensors: one product with the C + C rows of W and M."""
    scores = h @ torch.cat([w, mu]).T
    c = w.shape[0]
    ncc = ((mu * mu).sum(1) - 2 * scores[:, c:]).argmin(1)
    return int((scores[:, :c].argmax(1) != ncc).sum().item())


def means_collapse(stats: ClassStatistics, span: SpanScatter) -> dict[str, float]:
    """The class-means side of NC at one layer: nc1, nc2_*_means and cdnv (raises if undefined)."""
    eq_m, ang_m, max_m = _norm_and_cosine_stats(stats.centred_means())
    return {"nc1": span.nc1(), "nc2_equinorm_means": eq_m, "nc2_equiangular_means": ang_m,
            "nc2_maxangle_means": max_m, "cdnv": cdnv(stats)}


def neural_collapse_from_statistics(stats: ClassStatistics, span: SpanScatter, weights,
                                    ncc_mismatches: int) -> dict[str, float]:
    """All NC metrics (:data:`NC_KEYS`) from the two passes' accumulators, the classifier and the NC4 count."""
    stats.check_complete()
    w = _as_tensor(weights, "weights").to(stats.means.device)
    _check_weights(w, stats.num_classes, stats.dim)
    m = stats.centred_means()
    eq_w, ang_w, max_w = _norm_and_cosine_stats(w)
    if m.norm() == 0:
        raise UndefinedCollapseError("all class means coincide: NC3 is undefined")
    nc3 = (w / w.norm() - m / m.norm()).pow(2).sum().item()
    row = means_collapse(stats, span)
    row.update({"nc2_equinorm_weights": eq_w, "nc2_equiangular_weights": ang_w, "nc2_maxangle_weights": max_w,
                "nc3": float(nc3), "nc4": ncc_mismatches / stats.n})
    return {key: row[key] for key in NC_KEYS}


def neural_collapse(features, labels, weights, num_classes: int | None = None) -> dict[str, float]:
    """NC1-NC4 and the CDNV of features (N x p), integer labels (N) and classifier weights (C x p).

    ``num_classes`` defaults to the number of rows of ``weights``. Returns a dict with exactly
    the keys :data:`NC_KEYS`, as plain Python floats.
    """
    h = _as_tensor(features, "features")
    w = _as_tensor(weights, "weights")
    _check_features(h)
    if w.ndim != 2:
        raise ValueError(f"classifier weights must be a 2-D (C x p) array, got shape {tuple(w.shape)}")
    c = num_classes if num_classes is not None else w.shape[0]
    stats = ClassStatistics(c, h.shape[1], device=h.device).update(h, labels)
    stats.check_complete()
    _check_weights(w.to(h.device), c, h.shape[1])
    span = SpanScatter(stats).update(h, labels)
    return neural_collapse_from_statistics(stats, span, w, count_ncc_mismatches(h, w, stats.means))


def neural_collapse_streaming(batches: Callable[[], Iterable], weights, num_classes: int,
                              dim: int, device=None) -> dict[str, float]:
    """NC1-NC4 and the CDNV over batches that never need to be in memory together.

    ``batches()`` must return a fresh iterable of ``(features, labels)`` each time it is called:
    it is called twice (pass 1 accumulates class statistics; pass 2 the scatter on the span of
    the centred means and the NC4 mismatches against the final means).
    """
    stats = ClassStatistics(num_classes, dim, device=device)
    for h, y in batches():
        stats.update(h, y)
    stats.check_complete()
    span = SpanScatter(stats)
    w = _as_tensor(weights, "weights").to(stats.means.device)
    _check_weights(w, num_classes, dim)
    mismatches = 0
    for h, y in batches():
        h = _as_tensor(h, "features").to(stats.means.device)  # float64 and checked once for both uses
        _check_features(h)
        y = _check_labels(_as_tensor(y, "labels", dtype=None).to(h.device), h.shape[0], num_classes)
        span._add(h, y)
        mismatches += _count_mismatches(h, w, stats.means)
    return neural_collapse_from_statistics(stats, span, w, mismatches)


def centred_classifier_collapse(weights, centred_means) -> dict[str, float]:
    """NC2 and NC3 of the centred classifier W~ = W - 1 (mean_c W_c)^T (:data:`CENTRED_CLASSIFIER_KEYS`).

    At a critical point W = k M + beta 1 mu_G^T carries a common row, so the raw rows' cosines cannot
    reach -1/(C-1); W~'s can. Same formulas as for W: nc3_centred = ||W~/||W~||_F - M/||M||_F||_F^2.
    """
    w = _as_tensor(weights, "weights")
    m = _as_tensor(centred_means, "centred_means").to(w.device)
    _check_weights(w, m.shape[0], m.shape[1])
    centred = w - w.mean(0)
    if centred.norm() == 0 or m.norm() == 0:
        raise UndefinedCollapseError("the centred classifier or the centred means are zero")
    equinorm, equiangular, maxangle = _norm_and_cosine_stats(centred)
    nc3 = (centred / centred.norm() - m / m.norm()).pow(2).sum().item()
    return dict(zip(CENTRED_CLASSIFIER_KEYS, (equinorm, equiangular, maxangle, float(nc3)), strict=True))


def classifier_fit(weights, centred_means, global_mean) -> dict[str, float]:
    """The two-parameter fit W ~ k M + beta 1 mu_G^T (Frobenius-orthogonal regressors on balanced data).

    w_fit_k = <W, M>_F / ||M||_F^2, w_fit_beta = <mean_c W_c, mu_G> / ||mu_G||^2,
    w_fit_residual = ||W - k M - beta 1 mu_G^T||_F / ||W||_F.
    """
    w = _as_tensor(weights, "weights")
    m = _as_tensor(centred_means, "centred_means").to(w.device)
    mu_g = _as_tensor(global_mean, "global_mean").to(w.device)
    _check_weights(w, m.shape[0], m.shape[1])
    if m.norm() == 0 or mu_g.norm() == 0 or w.norm() == 0:
        raise UndefinedCollapseError("the centred means, the global mean or the classifier is zero")
    k = (w * m).sum() / (m * m).sum()
    beta = (w.mean(0) @ mu_g) / (mu_g @ mu_g)
    residual = (w - k * m - beta * mu_g.unsqueeze(0)).norm() / w.norm()
    return {"w_fit_k": float(k), "w_fit_beta": float(beta), "w_fit_residual": float(residual)}


@dataclass(frozen=True)
class ClassifierAlignment:
    """How close W is to a multiple of the centred means M: the theorem's W_c = k (mu_c - mu_G)."""

    scale: float  # least-squares k* = <W, M>_F / ||M||_F^2
    relative_residual: float  # ||W - k* M||_F / ||W||_F
    mean_cosine: float  # mean over c < c' of cos(W_c, W_c')
    mean_row_norm_sq: float  # mean_c ||W_c||^2


def classifier_alignment(weights, centred_means) -> ClassifierAlignment:
    """The quantities the theorem predicts in closed form, measured on W and M."""
    w = _as_tensor(weights, "weights")
    m = _as_tensor(centred_means, "centred_means").to(w.device)
    _check_weights(w, m.shape[0], m.shape[1])
    if m.norm() == 0:
        raise UndefinedCollapseError("every centred class mean is zero")
    _, cos = _norms_and_pairwise_cosines(w)
    scale = (w * m).sum() / (m * m).sum()
    return ClassifierAlignment(
        scale=float(scale),
        relative_residual=float((w - scale * m).norm() / w.norm()),
        mean_cosine=float(cos.mean()),
        mean_row_norm_sq=float((w * w).sum(1).mean()),
    )
