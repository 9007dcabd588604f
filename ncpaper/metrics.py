"""Neural Collapse measurements (Papyan, Han & Donoho, 2020), as used in the paper.

Notation (the paper's): features ``h`` (N x p) of the last hidden layer, labels ``y`` in
``{0..C-1}``, classifier ``W`` (C x p, rows ``W_c``), class means ``mu_c``, global mean ``mu_G``,

    Sigma_W = 1/N sum_i (h_i - mu_{y_i}) (h_i - mu_{y_i})^T       within-class covariance
    Sigma_B = 1/C sum_c (mu_c - mu_G) (mu_c - mu_G)^T              between-class covariance
    M       = rows (mu_c - mu_G)                                   centred class means (C x p)

    nc1                      = Tr(Sigma_W Sigma_B^+) / C
    nc2_equinorm_{means,weights}    = std_c ||v_c|| / mean_c ||v_c||          (ddof = 0)
    nc2_equiangular_{means,weights} = std over c < c' of cos(v_c, v_c')      (ddof = 0)
    nc2_maxangle_{means,weights}    = mean over c < c' of |cos(v_c, v_c') + 1/(C-1)|
    nc3                      = || W/||W||_F - M/||M||_F ||_F^2
    nc4                      = fraction of i with argmax_c (W h_i)_c != argmin_c ||h_i - mu_c||

Everything is accumulated in float64. :class:`ClassStatistics` streams over batches, holding only
class counts, class means and the p x p within-class scatter, so memory never grows with N.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "NC_KEYS",
    "ClassStatistics",
    "UndefinedCollapseError",
    "classifier_alignment",
    "count_ncc_mismatches",
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
    if not torch.isfinite(features).all():
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
    """Streaming float64 class counts, class means and within-class scatter.

    ``update(h, y)`` merges a batch with Chan et al.'s pairwise rule: with ``n_a, m_a`` the
    running count and mean of class c and ``n_b, m_b`` the batch's,
    ``S_W += S_batch + sum_c n_a n_b / (n_a + n_b) (m_b - m_a)(m_b - m_a)^T``. Centring each
    batch on its own class means avoids the cancellation of ``E[hh^T] - mu mu^T`` when the
    within-class spread is tiny (exactly the collapsed regime we measure).
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
        self.within_scatter = torch.zeros(dim, dim, dtype=_F64, device=device)

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
        n_a = self.counts
        total = n_a + n_b
        delta = m_b - self.means
        pair_weight = torch.where(total > 0, n_a * n_b / total.clamp(min=1), torch.zeros_like(total))
        self.within_scatter += centred.T @ centred + (delta * pair_weight.unsqueeze(1)).T @ delta
        self.means += delta * (n_b / total.clamp(min=1)).unsqueeze(1)
        self.counts = total
        return self

    def global_mean(self) -> torch.Tensor:
        """mu_G, the mean of all samples (equal to the mean of class means on balanced data)."""
        return (self.counts.unsqueeze(1) * self.means).sum(0) / self.counts.sum()

    def centred_means(self) -> torch.Tensor:
        """M, the C x p matrix of rows mu_c - mu_G."""
        return self.means - self.global_mean()

    def sigma_w(self) -> torch.Tensor:
        """Sigma_W = S_W / N, the within-class covariance (p x p)."""
        return self.within_scatter / self.counts.sum()

    def check_complete(self) -> None:
        empty = (self.counts == 0).nonzero().flatten().tolist()
        if empty:
            raise ValueError(f"class(es) {empty} have no samples; every one of the C = "
                             f"{self.num_classes} classes needs at least one")


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


def _nc1(stats: ClassStatistics) -> float:
    """Tr(Sigma_W Sigma_B^+)/C through the thin SVD M^T = U S V^T (rank <= C-1).

    Sigma_B = M^T M / C, so Sigma_B^+ = C U S^-2 U^T and nc1 = sum_i u_i^T Sigma_W u_i / s_i^2.
    The rows of M sum to zero (weighted by class counts), so at most C-1 singular values are
    kept; of those, values below max(p, C) * eps * max(s_max, max_c ||mu_c||) are rounding noise
    (the centring subtracts vectors of norm up to max_c ||mu_c||) and are treated as zero.
    """
    m = stats.centred_means()
    u, s, _ = torch.linalg.svd(m.T, full_matrices=False)
    if s.numel() == 0 or s[0] == 0:
        raise UndefinedCollapseError("all class means coincide (Sigma_B = 0): NC1 is undefined")
    rounding = max(s[0].item(), stats.means.norm(dim=1).max().item())
    keep = s > max(m.shape) * torch.finfo(_F64).eps * rounding
    keep[stats.num_classes - 1:] = False
    u, s = u[:, keep], s[keep]
    quad = ((stats.sigma_w() @ u) * u).sum(0)
    return float((quad / s**2).sum().item())


def count_ncc_mismatches(features, weights, means) -> int:
    """Number of rows where argmax_c (W h)_c differs from the nearest class mean argmin_c ||h - mu_c||.

    Pass 2 of the streaming NC4: needs the final class means of pass 1.
    """
    h = _as_tensor(features, "features")
    w = _as_tensor(weights, "weights").to(h.device)
    mu = _as_tensor(means, "means").to(h.device)
    _check_features(h)
    net = (h @ w.T).argmax(1)
    # ||h - mu_c||^2 = ||h||^2 - 2 h.mu_c + ||mu_c||^2; the first term does not change the argmin.
    ncc = ((mu * mu).sum(1) - 2 * h @ mu.T).argmin(1)
    return int((net != ncc).sum().item())


def neural_collapse_from_statistics(stats: ClassStatistics, weights, ncc_mismatches: int) -> dict:
    """All NC metrics from pass-1 statistics, the classifier and the pass-2 NC4 count."""
    stats.check_complete()
    w = _as_tensor(weights, "weights").to(stats.means.device)
    _check_weights(w, stats.num_classes, stats.dim)
    m = stats.centred_means()
    eq_m, ang_m, max_m = _norm_and_cosine_stats(m)
    eq_w, ang_w, max_w = _norm_and_cosine_stats(w)
    nc3 = (w / w.norm() - m / m.norm()).pow(2).sum().item()
    return {
        "nc1": _nc1(stats),
        "nc2_equinorm_means": eq_m,
        "nc2_equinorm_weights": eq_w,
        "nc2_equiangular_means": ang_m,
        "nc2_equiangular_weights": ang_w,
        "nc2_maxangle_means": max_m,
        "nc2_maxangle_weights": max_w,
        "nc3": float(nc3),
        "nc4": ncc_mismatches / stats.n,
    }


def neural_collapse(features, labels, weights, num_classes: int | None = None) -> dict[str, float]:
    """NC1-NC4 of features (N x p), integer labels (N) and classifier weights (C x p).

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
    return neural_collapse_from_statistics(stats, w, count_ncc_mismatches(h, w, stats.means))


def neural_collapse_streaming(batches: Callable[[], Iterable], weights, num_classes: int,
                              dim: int, device=None) -> dict[str, float]:
    """NC1-NC4 over batches that never need to be in memory together.

    ``batches()`` must return a fresh iterable of ``(features, labels)`` each time it is called:
    it is called twice (pass 1 accumulates class statistics, pass 2 counts NC4 mismatches
    against the final means).
    """
    stats = ClassStatistics(num_classes, dim, device=device)
    for h, y in batches():
        stats.update(h, y)
    stats.check_complete()
    mismatches = sum(count_ncc_mismatches(h, weights, stats.means) for h, _ in batches())
    return neural_collapse_from_statistics(stats, weights, mismatches)


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
