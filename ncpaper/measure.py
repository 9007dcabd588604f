"""Measurement of a network on its training (and test) set: losses, errors, Lemma 2's balance, NC at every layer.

Called by :func:`ncpaper.train.fit` at the measured epochs; returns one row of plain floats.
Notation (the slides'): N examples per class, C classes, n = NC in all; ``f_i = f(x_i)``, one-hot ``y_i``,
residual ``r_i = y_i - f_i``, W = W_L (C x p), h = the last hidden layer's features, M = rows mu_c - mu_G,
lambda = ``weight_decay``. Hidden layers h_1 .. h_{L-1} are :meth:`~ncpaper.models.HomogeneousClassifier.
layer_features` (MLP: each post-ReLU output; ConvNet: each stage after ReLU and max pooling, flattened).

Every statistic streams over batches in float64: pass 1 over the training set gives every layer's class
means and sums of squares and the output sums; pass 2 every layer's within-class scatter on the span of its
centred means and its nearest-class-centre decisions; the test set gets the same two passes at the last
layer. Pass 2 replays pass 1's features when they fit in ``KEEP_FEATURES_BYTES`` (the default profile's
1,000 images: 12 MB) and computes them again otherwise (the full training sets): the same numbers either way.
"""

from __future__ import annotations

import math

import torch

from . import data as data_module
from .metrics import (
    CENTRED_CLASSIFIER_KEYS,
    NC_KEYS,
    ClassStatistics,
    SpanScatter,
    UndefinedCollapseError,
    centred_classifier_collapse,
    classifier_alignment,
    classifier_fit,
    means_collapse,
    nearest_class_centre,
    neural_collapse_from_statistics,
)
from .models import weight_matrices

__all__ = ["KEEP_FEATURES_BYTES", "LAYER_KEYS", "TEST_NC_KEYS", "TrainingDivergedError", "data_term",
           "data_term_gradients", "evaluate", "gradient_norms", "measure", "negative_output_gradient", "square_loss"]

# Pass 2 replays pass 1's float64 features and outputs when a split's take at most this much memory.
KEEP_FEATURES_BYTES = 256 * 2**20

# Measured at every hidden layer l = 1..L-1 as f"{key}_layer_{l}"; nc4_layer_l is the fraction of
# training examples whose nearest class centre at layer l differs from the network's decision argmax f.
LAYER_KEYS = ("nc1", "nc2_equiangular_means", "nc4", "cdnv")
# On the test split, at the last hidden layer, with the test set's own class means; test_ncc_error is
# the error of the nearest-class-centre rule built from the TRAINING means.
TEST_NC_KEYS = ("test_nc1", "test_nc2_equinorm_means", "test_nc2_equiangular_means", "test_nc4", "test_cdnv",
                "test_ncc_error")
_CLASSIFIER_KEYS = ("w_means_scale", "w_means_residual", "w_mean_cosine", *CENTRED_CLASSIFIER_KEYS,
                    "w_fit_k", "w_fit_beta", "w_fit_residual")


class TrainingDivergedError(RuntimeError):
    """The loss or the features became NaN or infinite."""


def square_loss(outputs: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """The slides' data term 1/(2NC) sum_{n,c} ||y_{n(c)} - f(x_{n(c)})||^2 with one-hot y.

    N counts examples per class, so with NC examples in all this is half the MEAN over examples of
    ||y - f||^2 (``reduction='sum'`` returns the half sum instead). ``nn.MSELoss`` instead averages over
    the NC x C output entries: it equals (2/C) times this.
    """
    residual = outputs.clone()
    residual[torch.arange(len(labels), device=labels.device), labels] -= 1
    total = residual.pow(2).sum() / 2
    return total / outputs.shape[0] if reduction == "mean" else total


def data_term(outputs: torch.Tensor, labels: torch.Tensor, loss: str = "square", reduction: str = "mean"
              ) -> torch.Tensor:
    """A run's data term: :func:`square_loss` (``loss="square"``) or the cross-entropy -log softmax(f)_{y},
    as the mean over examples (``reduction="sum"``: the sum)."""
    if loss == "square":
        return square_loss(outputs, labels, reduction)
    if loss != "cross_entropy":
        raise ValueError(f"loss must be 'square' or 'cross_entropy', got {loss!r}")
    total = torch.nn.functional.cross_entropy(outputs, labels, reduction="sum")
    return total / outputs.shape[0] if reduction == "mean" else total


def negative_output_gradient(outputs: torch.Tensor, onehot: torch.Tensor, loss: str = "square") -> torch.Tensor:
    """r_i = -d loss_i / d f_i per example: y_i - f_i for the square loss (the residual), y_i - softmax(f_i) for
    cross-entropy. By homogeneity, at a critical point lambda ||W_k||^2 = (1/NC) sum_i <r_i, f_i> for every k."""
    if loss == "square":
        return onehot - outputs
    return onehot - torch.softmax(outputs, dim=1)


class _Moments:
    """Streaming count, mean and sum of squared deviations of scalars (Chan's merge, float64)."""

    def __init__(self):
        self.count, self.mean, self.m2 = 0, 0.0, 0.0

    def update(self, values: torch.Tensor) -> None:
        if values.numel() == 0:
            return
        n_b, m_b = values.numel(), values.mean().item()
        m2_b = (values - m_b).pow(2).sum().item()
        total = self.count + n_b
        delta = m_b - self.mean
        self.m2 += m2_b + delta * delta * self.count * n_b / total
        self.mean += delta * n_b / total
        self.count = total

    def variance(self) -> float:
        """Population variance (ddof 0)."""
        return self.m2 / self.count


def _batches(split: data_module.LabelledImages, batch_size: int, device):
    for start in range(0, len(split.y), batch_size):
        yield split.x[start:start + batch_size].to(device), split.y[start:start + batch_size].to(device)


class _TwoPasses:
    """A split's batches through ``forward`` (a batch -> a tuple of tensors), iterated as (*outputs, labels).

    The first iteration keeps the outputs when ``values_per_example`` float64 values per example fit in
    KEEP_FEATURES_BYTES; a later iteration then replays them instead of running the network again.
    """

    def __init__(self, forward, split: data_module.LabelledImages, batch_size: int, device,
                 values_per_example: int):
        self._forward, self._split, self._batch_size, self._device = forward, split, batch_size, device
        self._keep = len(split.y) * values_per_example * 8 <= KEEP_FEATURES_BYTES
        self._kept: list[tuple] | None = None

    def __iter__(self):
        if self._kept is not None:
            yield from self._kept
            return
        kept = []
        for xb, yb in _batches(self._split, self._batch_size, self._device):
            batch = (*self._forward(xb), yb)
            if self._keep:
                kept.append(batch)
            yield batch
        if self._keep:
            self._kept = kept


def _forward(model, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Every hidden layer's features (float64) and the outputs f (float64); raises if any is not finite."""
    layers = model.layer_features(x)
    f = model.classifier(layers[-1]).double()
    # one reduction per tensor: a NaN or an infinity anywhere makes the float64 sum non-finite
    if not all(math.isfinite(t.sum(dtype=torch.float64).item()) for t in [*layers, f]):
        raise TrainingDivergedError("features or outputs became NaN or infinite")
    return [h.double() for h in layers], f


def data_term_gradients(model, split: data_module.LabelledImages, batch_size: int = 4096, loss: str = "square"
                        ) -> list[torch.Tensor]:
    """d/dW_l of the data term over the whole ``split``, every layer l: the slides' 1/(2NC) sum_i
    ||y_i - f(x_i)||^2, or the mean cross-entropy for ``loss="cross_entropy"`` (:func:`data_term`).

    The network runs in its own dtype (a float64 copy gives float64 gradients); the batches' gradients are
    summed in float64. Returned in layer order, float64, on the network's device.
    """
    params = [w for _, w in weight_matrices(model)]
    device, dtype = params[0].device, params[0].dtype
    grads = [torch.zeros_like(w, dtype=torch.float64) for w in params]
    n = len(split.y)
    with torch.enable_grad():
        for xb, yb in _batches(split, batch_size, device):
            term = data_term(model(xb.to(dtype)), yb, loss, reduction="sum") / n
            for total, g in zip(grads, torch.autograd.grad(term, params), strict=True):
                total += g.double()
    return grads


def gradient_norms(model, split: data_module.LabelledImages, weight_decay: float, batch_size: int = 4096,
                   loss: str = "square") -> dict:
    """How fast the slides' objective J still moves: full-batch gradient norms and the weights' size.

    ``grad_norm`` = ||grad J||_F over all layers (J = data term + lambda/2 sum_l ||W_l||^2; 0 at a critical
    point), ``data_grad_norm`` = ||grad of the data term||_F (with lambda = 0 the two are equal), and
    ``weight_norm_sq`` = sum_l ||W_l||_F^2. The network runs in its training dtype (float32: a relative floor
    near 1e-7 of ||lambda W|| for ``grad_norm`` with lambda > 0), summed in float64.
    """
    grads = data_term_gradients(model, split, batch_size, loss)
    weights = [w.detach().double() for _, w in weight_matrices(model)]
    data = sum(float(g.pow(2).sum()) for g in grads)
    total = sum(float((g + weight_decay * w).pow(2).sum()) for g, w in zip(grads, weights, strict=True))
    return {"grad_norm": math.sqrt(total), "data_grad_norm": math.sqrt(data),
            "weight_norm_sq": sum(float(w.pow(2).sum()) for w in weights)}


def _require_complete(stats: ClassStatistics, split: str) -> None:
    empty = (stats.counts == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"the {split} split has no examples of class(es) {empty}: Neural Collapse needs every one "
                         f"of the C = {stats.num_classes} classes; load a balanced split "
                         f"(n_per_class / n_test_per_class)")


@torch.no_grad()
def measure(model, train: data_module.LabelledImages, test: data_module.LabelledImages | None,
            weight_decay: float, batch_size: int = 4096, loss: str = "square") -> dict:
    """Losses, errors, eps, output spread, Lemma 2's balance, the critical-point residual, NC at every layer
    on the training set, and (with ``test``) the test loss, error and NC on the test set.

    ``loss``: the run's data term (:func:`data_term`); ``train_loss``, ``test_loss``, the objective, the gradient
    norms, the fit term and the critical-point residual are those of that loss (r_i = y_i - f_i for the square
    loss, y_i - softmax(f_i) for cross-entropy: :func:`negative_output_gradient`)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    c, dims = model.num_classes, model.layer_dims()
    n = len(train.y)
    w = model.classifier.weight.detach().double()

    # Pass 1: every layer's class statistics; sums over the outputs and residuals r_i = y_i - f_i.
    stats = [ClassStatistics(c, p, device=device) for p in dims]
    on, off = _Moments(), _Moments()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, errors, fit, output sum
    residual_features = torch.zeros_like(w)  # sum_i r_i h_i^T (C x p)
    passes = _TwoPasses(lambda x: _forward(model, x), train, batch_size, device, sum(dims) + c)
    for layers, f, yb in passes:
        for layer_stats, h in zip(stats, layers, strict=True):
            layer_stats.update(h, yb)
        onehot = torch.nn.functional.one_hot(yb, c).bool()
        residual = negative_output_gradient(f, onehot.double(), loss)
        term = residual.pow(2).sum() / 2 if loss == "square" else data_term(f, yb, loss, reduction="sum")
        sums += torch.stack([term, (f.argmax(1) != yb).sum().double(), (residual * f).sum(), f.sum()])
        on.update(f[onehot])
        off.update(f[~onehot])
        residual_features += residual.T @ layers[-1]
    _require_complete(stats[-1], "training")

    # Pass 2: every layer's scatter on the span of its centred means and nearest-class-centre decisions.
    spans = [SpanScatter(s) for s in stats]
    disagreements = torch.zeros(len(dims), dtype=torch.float64, device=device)
    for layers, f, yb in passes:
        decision = f.argmax(1)
        for k, (span, h) in enumerate(zip(spans, layers, strict=True)):
            span.update(h, yb)
            disagreements[k] += (nearest_class_centre(h, stats[k].means) != decision).sum()

    term_sum, errors, fit, output_sum = sums.tolist()
    norms = {f"layer_norm_sq_{k}": float(p.detach().double().pow(2).sum())
             for k, (_, p) in enumerate(weight_matrices(model), start=1)}
    fit_term = fit / n
    row = {
        "train_loss": term_sum / n,
        "train_objective": term_sum / n + weight_decay / 2 * sum(norms.values()),
        "train_error": errors / n,
        "eps": 1 - on.mean,  # 1 - mean_i f_{y_i}(x_i)
        "off_class_mean": off.mean,  # mean of f_c(x_i) over c != y_i: eps/(C-1) under symmetry
        "fit_term": fit_term,  # (1/NC) sum_i <y_i - f_i, f_i>: lambda ||W_k||^2 at a critical point
        "on_class_var": on.variance(),  # variance over i of f_{y_i}(x_i)
        "off_class_var": off.variance(),  # variance of f_c(x_i) over all pairs (i, c != y_i)
        "output_sum_mean": output_sum / n,  # mean_i sum_c f_c(x_i)
        "w_row_norm_sq": float(w.pow(2).sum(1).mean()),
    }
    row.update(norms)
    row.update(gradient_norms(model, train, weight_decay, batch_size, loss))
    for k, norm in enumerate(norms.values(), start=1):  # Lemma 2: lambda ||W_k||^2 = fit_term at a critical point
        row[f"balance_{k}"] = weight_decay * norm / fit_term if weight_decay > 0 and fit_term > 0 else math.nan
    # stationarity in W_L: lambda W_L = (1/n) sum_i r_i h_i^T at a critical point
    penalty_gradient = weight_decay * w
    row["critical_residual"] = (float((penalty_gradient - residual_features / n).norm() / penalty_gradient.norm())
                                if weight_decay > 0 and w.norm() > 0 else math.nan)
    last = stats[-1]
    row["global_mean_norm_sq"] = float(last.global_mean().pow(2).sum())
    row.update(_last_layer_collapse(last, spans[-1], w, int(disagreements[-1].item())))
    for k, (layer_stats, span) in enumerate(zip(stats, spans, strict=True), start=1):
        try:
            values = {**means_collapse(layer_stats, span), "nc4": disagreements[k - 1].item() / n}
        except UndefinedCollapseError:  # this layer's features do not separate the classes at all
            values = dict.fromkeys(LAYER_KEYS, math.nan)
        row.update({f"{key}_layer_{k}": values[key] for key in LAYER_KEYS})
    if test is not None:
        row.update(_test_collapse(model, test, last, batch_size, device, loss))
    model.train(was_training)
    return row


def _last_layer_collapse(stats: ClassStatistics, span: SpanScatter, w: torch.Tensor, mismatches: int) -> dict:
    """NC1-NC4, CDNV and the classifier's geometry against M; NaNs (nc_defined False) when undefined."""
    try:
        row = neural_collapse_from_statistics(stats, span, w, mismatches)
        m = stats.centred_means()
        align = classifier_alignment(w, m)
        row.update({"w_means_scale": align.scale, "w_means_residual": align.relative_residual,
                    "w_mean_cosine": align.mean_cosine})
        row.update(centred_classifier_collapse(w, m))
        row.update(classifier_fit(w, m, stats.global_mean()))
        row["nc_defined"] = True
    except UndefinedCollapseError:  # e.g. weight decay drove the network to f = 0: recorded as undefined
        row = dict.fromkeys((*NC_KEYS, *_CLASSIFIER_KEYS), math.nan)
        row["nc_defined"] = False
    return row


def _test_collapse(model, test: data_module.LabelledImages, train_stats: ClassStatistics, batch_size: int,
                   device, loss: str = "square") -> dict:
    """Test loss and error; NC on the test set with its own class means; the NCC error with the training means."""
    c, n = model.num_classes, len(test.y)
    stats = ClassStatistics(c, model.feature_dim, device=device)
    total, errors = 0.0, 0

    def last_layer(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = model.features(x)
        return h.double(), model.classifier(h).double()

    passes = _TwoPasses(last_layer, test, batch_size, device, model.feature_dim + c)
    for h, f, yb in passes:
        total += data_term(f, yb, loss, reduction="sum").item()
        errors += int((f.argmax(1) != yb).sum())
        stats.update(h, yb)
    _require_complete(stats, "test")
    span = SpanScatter(stats)
    mismatches, ncc_errors = 0, 0
    for h, f, yb in passes:
        decision = f.argmax(1)
        span.update(h, yb)
        mismatches += int((nearest_class_centre(h, stats.means) != decision).sum())
        ncc_errors += int((nearest_class_centre(h, train_stats.means) != yb).sum())
    row = {"test_loss": total / n, "test_error": errors / n}
    try:
        values = means_collapse(stats, span)
        row.update({"test_nc1": values["nc1"], "test_nc2_equinorm_means": values["nc2_equinorm_means"],
                    "test_nc2_equiangular_means": values["nc2_equiangular_means"], "test_nc4": mismatches / n,
                    "test_cdnv": values["cdnv"]})
    except UndefinedCollapseError:
        row.update(dict.fromkeys(TEST_NC_KEYS[:-1], math.nan))
    defined = train_stats.between_class_basis()[1].numel() > 0  # the training means do not all coincide
    row["test_ncc_error"] = ncc_errors / n if defined else math.nan
    return row


def evaluate(model, split: data_module.LabelledImages, batch_size: int) -> dict:
    """Square loss and error of the network on a split."""
    device = next(model.parameters()).device
    loss, errors = 0.0, 0
    for xb, yb in _batches(split, batch_size, device):
        f = model(xb).double()
        loss += square_loss(f, yb, reduction="sum").item()
        errors += int((f.argmax(1) != yb).sum())
    n = len(split.y)
    return {"test_loss": loss / n, "test_error": errors / n}
