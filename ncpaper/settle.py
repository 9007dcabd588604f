"""Settling a trained network towards a critical point of the slides' objective, before testing the theory.

    J(W) = 1/(2NC) sum_{n,c} ||y_{n(c)} - f(x_{n(c)})||^2 + lambda/2 sum_l ||W_l||_F^2

SGD with weight decay relaxes the layers' norms only slowly (a layer's excess norm decays like
exp(-2 eta lambda t / (1 - m)) over t steps), so at the end of training the hidden layers can sit well
off Lemma 2's balance lambda ||W_l||^2 = (1/NC) sum <y - f, f>. :func:`settle` finishes the job by
block-coordinate descent on J itself; every step leaves J no larger:

1. **Neuron rescaling.** A ReLU unit's incoming weights times t and outgoing weights divided by t
   leave f unchanged (positive homogeneity); t^2 = ||out|| / ||in|| minimises the penalty. Swept over
   the hidden layers until every unit is balanced, this makes all layers' norms equal.
2. **Global scale.** W_l -> s W_l for every l turns f into s^L f; s minimises the 1-D function J(s).
3. **Exact readout.** With the features h fixed, J is a ridge regression in W_L, solved in closed
   form in float64: W_L = Y^T H (H^T H + NC lambda I)^-1, where the critical-point identity
   lambda W_L = (1/NC) sum_i (y_i - f_i) h_i^T holds exactly.

Rounds repeat until Lemma 2's balance holds on every layer within ``tolerance`` and the readout is
stationary, or until a round leaves every weight as it was (a network whose every output is zero
becomes all zeros, J's minimum along these steps, in two rounds). The network stays the same
architecture; nothing is trained by SGD here. The result is stationary in W_L and along every rescaling,
not in every direction of the hidden layers (:func:`stationarity` measures what is left).
"""

from __future__ import annotations

import copy
import itertools
import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from .measure import data_term_gradients
from .models import weight_matrices

__all__ = ["Settled", "readout_decomposition", "settle", "stationarity"]

_F64 = torch.float64


@dataclass(frozen=True)
class Settled:
    """A settled copy of the network and how the settling went."""

    model: torch.nn.Module
    rounds: int
    seconds: float
    objective_before: float
    objective_after: float
    max_balance_error: float  # max_l |lambda ||W_l||^2 / fit - 1|
    readout_residual: float  # ||lambda W_L - (1/NC) sum r h^T||_F / ||lambda W_L||_F
    converged: bool

    def summary(self) -> dict:
        """Plain floats for a results row (prefixed ``settle_``)."""
        return {"settle_rounds": self.rounds, "settle_seconds": self.seconds,
                "settle_objective_before": self.objective_before, "settle_objective_after": self.objective_after,
                "settle_converged": self.converged}


@torch.no_grad()
def _features_and_outputs(model, x: torch.Tensor, batch_size: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    hs = [model.features(x[s:s + batch_size]).to(_F64) for s in range(0, len(x), batch_size)]
    h = torch.cat(hs)
    return h, h @ model.classifier.weight.to(_F64).T


def _fit_and_loss(f: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(1/NC) sum <y - f, f> and the data term (1/2NC) sum ||y - f||^2, both float64."""
    r = y - f
    return float((r * f).sum(1).mean()), float(r.pow(2).sum(1).mean() / 2)


@torch.no_grad()
def _balance_units(weights: list[torch.Tensor], sweeps: int = 200, tolerance: float = 1e-10) -> None:
    """Rescale every hidden unit so that its incoming and outgoing weights have equal norms (in place).

    Unit j of layer l owns row j of W_l (reshaped to (units, -1)) and slice j of W_{l+1} (reshaped to
    (out, units, -1): a linear layer's column, a convolution's input channel, or the block of
    columns that a flattened channel feeds). Max pooling and ReLU commute with a positive per-unit
    scale, so f is unchanged. A unit with a zero side is dead: both sides are set to zero.
    """
    for _ in range(sweeps):
        worst = 0.0
        for cur, nxt in itertools.pairwise(weights):
            units = cur.shape[0]
            rows = cur.view(units, -1)
            cols = nxt.view(nxt.shape[0], units, -1)
            a = rows.pow(2).sum(1).sqrt()
            b = cols.pow(2).sum((0, 2)).sqrt()
            alive = (a > 0) & (b > 0)
            t = torch.where(alive, (b / a.clamp(min=1e-300)).sqrt(), torch.zeros_like(a))
            rows.mul_(t.unsqueeze(1))
            cols.div_(torch.where(alive, t, torch.ones_like(t)).view(1, units, 1))
            cols.mul_(alive.to(cols.dtype).view(1, units, 1))
            worst = max(worst, float((t[alive] - 1).abs().max()) if alive.any() else 0.0)
        if worst < tolerance:
            return


def _best_global_scale(fit_yf: float, ff: float, norm_sq: float, weight_decay: float, depth: int) -> float:
    """argmin_s J(s) = -s^L A + s^{2L} B / 2 + lambda s^2 S / 2 (+ const).

    A = (1/NC) sum <y, f>, B = (1/NC) sum ||f||^2, S = sum_l ||W_l||^2.
    """
    def objective(log_s: float) -> float:
        s = math.exp(log_s)
        return -s**depth * fit_yf + s ** (2 * depth) * ff / 2 + weight_decay * s**2 * norm_sq / 2

    lo, hi = -2.0, 2.0  # golden-section search on log s; J is smooth and the optimum is near s = 1
    grid = np.linspace(lo, hi, 81)
    best = grid[int(np.argmin([objective(g) for g in grid]))]
    lo, hi = best - (hi - lo) / 80, best + (hi - lo) / 80
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(60):
        m1, m2 = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if objective(m1) < objective(m2):
            hi = m2
        else:
            lo = m1
    return math.exp((lo + hi) / 2)


def _objective(weights: list[torch.Tensor], f: torch.Tensor, y: torch.Tensor, weight_decay: float) -> float:
    _, data_term = _fit_and_loss(f, y)
    return data_term + weight_decay / 2 * sum(float(w.pow(2).sum()) for w in weights)


@torch.no_grad()
def settle(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor, weight_decay: float,
           tolerance: float = 1e-3, max_rounds: int = 200) -> Settled:
    """A float64 copy of ``model`` moved to a critical point of J by the three descent steps above.

    ``x`` and ``labels`` are the whole training set. Stops when every layer's balance is within
    ``tolerance`` of 1 and the readout identity holds to ``tolerance`` (relative), or after
    ``max_rounds`` rounds; the returned :class:`Settled` says which.
    """
    if not weight_decay > 0:
        raise ValueError(f"settling needs weight decay lambda > 0 (got {weight_decay}): with lambda = 0 the "
                         "objective has no critical points at finite weights to settle onto")
    tic = time.perf_counter()
    net = copy.deepcopy(model).to(_F64).eval()
    x = x.to(next(net.parameters()).device, _F64)
    y = torch.nn.functional.one_hot(labels.to(x.device).long(), net.num_classes).to(_F64)
    weights = [w.data for _, w in weight_matrices(net)]
    depth, n = len(weights), len(x)
    h, f = _features_and_outputs(net, x)
    before = _objective(weights, f, y, weight_decay)
    rounds, balance_error, residual = 0, math.inf, math.inf
    for rounds in range(1, max_rounds + 1):  # noqa: B007 (rounds is reported)
        previous = [w.clone() for w in weights]
        _balance_units(weights)
        h, f = _features_and_outputs(net, x)
        s = _best_global_scale(float((y * f).sum(1).mean()), float(f.pow(2).sum(1).mean()),
                               sum(float(w.pow(2).sum()) for w in weights), weight_decay, depth)
        for w in weights:
            w.mul_(s)
        h = h * s ** (depth - 1)
        gram = h.T @ h + n * weight_decay * torch.eye(h.shape[1], dtype=_F64, device=h.device)
        weights[-1].copy_(torch.linalg.solve(gram, h.T @ y).T)  # W_L = Y^T H (H^T H + n lambda I)^-1
        # Converged? Measure after the readout, on the network as it now stands.
        f = h @ weights[-1].T
        fit, _ = _fit_and_loss(f, y)
        norms = [float(w.pow(2).sum()) for w in weights]
        balance_error = max(abs(weight_decay * v / fit - 1) for v in norms) if fit > 0 else math.inf
        stationarity = weight_decay * weights[-1] - (y - f).T @ h / n
        residual = float(stationarity.norm() / (weight_decay * weights[-1].norm()).clamp(min=1e-300))
        if balance_error < tolerance and residual < tolerance:
            break
        if all(torch.equal(w, v) for w, v in zip(weights, previous, strict=True)):
            break  # a fixed point (a dead network is all zeros after two rounds): every further round repeats it
    after = _objective(weights, f, y, weight_decay)
    return Settled(net.to(torch.float32), rounds, time.perf_counter() - tic, before, after, balance_error,
                   residual, balance_error < tolerance and residual < tolerance)


def stationarity(model: torch.nn.Module, train, weight_decay: float, batch_size: int = 4096) -> list[float]:
    """||dJ/dW_l||_F / ||lambda W_l||_F for every layer l, in float64 over the whole training set.

    0 at a critical point of J. Settling makes it 0 for W_L (the exact readout) and makes J stationary
    along every unit's and every layer's rescaling (the directions Lemma 2's identity comes from), but
    not in every direction of the hidden layers: this says how far from it they are.
    """
    net = copy.deepcopy(model).to(_F64)
    params = [w for _, w in weight_matrices(net)]
    grads = data_term_gradients(net, train, batch_size)
    return [float((g + weight_decay * w.detach()).norm() / (weight_decay * w.detach().norm()).clamp(min=1e-300))
            for g, w in zip(grads, params, strict=True)]


@torch.no_grad()
def readout_decomposition(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor) -> dict:
    """Split (1/NC) sum_i r_i h_i^T (r = y - f; lambda W_L at a critical point) into its two sources.

    With class means mu_c of h and rbar_c of r, and deviations from them,
    sum_i r_i h_i^T = N sum_c rbar_c mu_c^T + sum_i (r_i - rbar_{y_i})(h_i - mu_{y_i})^T: a mean-field
    part (what the theorem's class-constant outputs give) and a within-class covariance of residuals
    and features (zero when outputs or features do not vary within a class). Returns the covariance
    part's share ||cov|| / ||total|| and the asymmetry of the class-mean outputs: the std over c != c'
    of the mean output c' on class c, relative to its mean delta (0 under the theorem's symmetry).
    """
    net = copy.deepcopy(model).to(_F64).eval()
    device = next(net.parameters()).device
    x, labels = x.to(device, _F64), labels.to(device).long()
    h, f = _features_and_outputs(net, x)
    c = net.num_classes
    y = torch.nn.functional.one_hot(labels, c).to(_F64)
    counts = torch.bincount(labels, minlength=c).to(_F64).unsqueeze(1)
    mean_h = torch.zeros(c, h.shape[1], dtype=_F64, device=device).index_add_(0, labels, h) / counts
    mean_f = torch.zeros(c, c, dtype=_F64, device=device).index_add_(0, labels, f) / counts  # row c: mean f on class c
    total = (y - f).T @ h / len(x)
    mean_field = (torch.eye(c, dtype=_F64, device=device) - mean_f).T @ (mean_h * counts) / len(x)
    off = mean_f[~torch.eye(c, dtype=torch.bool, device=device)]
    return {"readout_within_class_share": float((total - mean_field).norm() / total.norm()),
            "off_class_asymmetry": float(off.std(unbiased=False) / off.mean().abs())}
