"""Measurement of a network on its training (and test) set: losses, errors, Lemma 2's balance, NC1-NC4.

Called by :func:`ncpaper.train.fit` at the measured epochs; returns one row of plain floats.
Notation (the slides'): N examples per class, C classes, NC in all; ``f_i = f(x_i)``, one-hot ``y_i``.
"""

from __future__ import annotations

import math

import torch

from . import data as data_module
from .metrics import (
    NC_KEYS,
    ClassStatistics,
    UndefinedCollapseError,
    classifier_alignment,
    count_ncc_mismatches,
    neural_collapse_from_statistics,
)
from .models import weight_matrices

__all__ = ["TrainingDivergedError", "evaluate", "measure", "square_loss"]


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


@torch.no_grad()
def measure(model, train: data_module.LabelledImages, test: data_module.LabelledImages | None,
            weight_decay: float, batch_size: int = 4096) -> dict:
    """Losses, errors, eps, the balance of Lemma 2, layer norms and NC1-NC4 on the training set."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    c = model.num_classes
    n = len(train.y)
    stats = ClassStatistics(c, model.feature_dim, device=device)
    sums = dict.fromkeys(("loss", "errors", "on_class", "off_class", "fit"), 0.0)
    for start in range(0, n, batch_size):
        xb, yb = train.x[start:start + batch_size].to(device), train.y[start:start + batch_size].to(device)
        h = model.features(xb)
        f = model.classifier(h).double()
        if not (torch.isfinite(h).all() and torch.isfinite(f).all()):
            raise TrainingDivergedError("features or outputs became NaN or infinite")
        stats.update(h, yb)
        onehot = torch.nn.functional.one_hot(yb, c).double()
        sums["loss"] += square_loss(f, yb, reduction="sum").item()
        sums["errors"] += (f.argmax(1) != yb).sum().item()
        on = (f * onehot).sum(1)
        sums["on_class"] += on.sum().item()
        sums["off_class"] += (f.sum(1) - on).sum().item()
        sums["fit"] += ((onehot - f) * f).sum().item()
    w = model.classifier.weight
    mismatches = sum(
        count_ncc_mismatches(model.features(train.x[s:s + batch_size].to(device)), w, stats.means)
        for s in range(0, n, batch_size))
    norms = {f"layer_norm_sq_{k}": float(p.detach().double().pow(2).sum())
             for k, (_, p) in enumerate(weight_matrices(model), start=1)}
    row = {
        "train_loss": sums["loss"] / n,
        "train_objective": sums["loss"] / n + weight_decay / 2 * sum(norms.values()),
        "train_error": sums["errors"] / n,
        "eps": 1 - sums["on_class"] / n,  # 1 - mean_i f_{y_i}(x_i)
        "off_class_mean": sums["off_class"] / (n * (c - 1)),  # eps/(C-1) under symmetry
        "fit_term": sums["fit"] / n,  # (1/NC) sum_{n,c} <y - f, f> over all NC examples: lambda ||W_k||^2 at a critical point
    }
    if test is not None:
        row.update(evaluate(model, test, batch_size))
    try:
        row.update(neural_collapse_from_statistics(stats, w, mismatches))
        align = classifier_alignment(w, stats.centred_means())
        row.update({"w_means_scale": align.scale, "w_means_residual": align.relative_residual,
                    "w_mean_cosine": align.mean_cosine, "w_row_norm_sq": align.mean_row_norm_sq, "nc_defined": True})
    except UndefinedCollapseError:  # e.g. weight decay drove the network to f = 0: recorded as undefined
        row.update(dict.fromkeys((*NC_KEYS, "w_means_scale", "w_means_residual", "w_mean_cosine"), math.nan))
        row.update({"w_row_norm_sq": float(w.detach().double().pow(2).sum(1).mean()), "nc_defined": False})
    row.update(norms)
    model.train(was_training)
    return row


def evaluate(model, split: data_module.LabelledImages, batch_size: int) -> dict:
    device = next(model.parameters()).device
    loss, errors = 0.0, 0
    for start in range(0, len(split.y), batch_size):
        xb, yb = split.x[start:start + batch_size].to(device), split.y[start:start + batch_size].to(device)
        f = model(xb).double()
        loss += square_loss(f, yb, reduction="sum").item()
        errors += int((f.argmax(1) != yb).sum())
    n = len(split.y)
    return {"test_loss": loss / n, "test_error": errors / n}
