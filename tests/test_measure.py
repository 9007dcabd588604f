"""One measurement row: NC at every layer and on the test set, Lemma 2's balance, stationarity, output spread."""

import math

import numpy as np
import pytest
import torch

from ncpaper.data import LabelledImages
from ncpaper.measure import LAYER_KEYS, TEST_NC_KEYS, measure
from ncpaper.metrics import NC_KEYS, neural_collapse
from ncpaper.models import make_model, weight_matrices

C = 10
CLASSES = tuple(str(c) for c in range(C))


def split(x, y) -> LabelledImages:
    return LabelledImages(x, y, CLASSES)


def noisy_split(n_per_class=6, shape=(1, 4, 4), seed=0, dtype=torch.float64) -> LabelledImages:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(C).repeat_interleave(n_per_class)
    centres = torch.randn(C, *shape, generator=g, dtype=dtype)
    return split(centres[y] + 0.5 * torch.randn(len(y), *shape, generator=g, dtype=dtype), y)


def random_network(widths=(12, 7, 15), shape=(1, 4, 4), seed=0):
    torch.manual_seed(seed)
    return make_model("mlp", shape, C, widths=list(widths)).double()


def collapsed_network():
    """Class c's inputs are all 2 e_c; each layer maps e_c to a multiple of e_c, so every hidden layer is
    exactly collapsed onto the standard basis (whose centred vectors form a simplex ETF), at widths 12, 7+3, 15."""
    model = make_model("mlp", (1, 4, 4), C, widths=[12, 10, 15]).double()
    with torch.no_grad():
        for (_, w), scale in zip(weight_matrices(model), [1.0, 1.5, 1.0, 1.0], strict=True):
            w.zero_()
            w[:C, :C] = scale * torch.eye(C, dtype=torch.float64)
    y = torch.arange(C).repeat_interleave(4)
    x = torch.zeros(len(y), 16, dtype=torch.float64)
    x[torch.arange(len(y)), y] = 2.0
    return model, split(x.view(-1, 1, 4, 4), y)


def test_exactly_collapsed_hidden_layers_give_zero_at_every_layer():
    model, train = collapsed_network()
    row = measure(model, train, train, weight_decay=1e-2, batch_size=7)
    for layer in (1, 2, 3):
        for key in LAYER_KEYS:
            assert row[f"{key}_layer_{layer}"] == pytest.approx(0, abs=1e-12), (key, layer)
    for key in ("test_nc1", "test_nc2_equinorm_means", "test_nc2_equiangular_means", "test_nc4", "test_cdnv",
                "test_ncc_error", "nc2_equinorm_weights_centred", "nc2_equiangular_weights_centred",
                "nc2_maxangle_weights_centred", "nc3_centred", "w_fit_residual", "on_class_var", "off_class_var"):
        assert row[key] == pytest.approx(0, abs=1e-12), key
    # f = 3 e_c, h = 3 e_c: W = I = k M + beta 1 mu_G^T with M = 3 (e_c - 1/C), mu_G = 3/C 1: k = beta = 1/3;
    # the raw rows carry the common component, so the uncentred NC3 does not vanish
    assert row["w_fit_k"] == pytest.approx(1 / 3) and row["w_fit_beta"] == pytest.approx(1 / 3)
    assert row["global_mean_norm_sq"] == pytest.approx(C * (3 / C) ** 2)
    assert row["output_sum_mean"] == pytest.approx(3.0) and row["eps"] == pytest.approx(-2.0)
    assert row["nc3"] > 0.1


def test_last_layer_equals_nc1_and_every_layer_equals_a_direct_float64_computation():
    model, train = random_network(), noisy_split()
    row = measure(model, train, None, weight_decay=1e-2, batch_size=7)  # several batches
    with torch.no_grad():
        layers = model.layer_features(train.x)
        decisions = model(train.x).argmax(1)
    assert [h.shape[1] for h in layers] == [12, 7, 15] == model.layer_dims()
    for k, h in enumerate(layers, start=1):
        direct = neural_collapse(h, train.y, torch.randn(C, h.shape[1], dtype=torch.float64))  # means side only
        for key in ("nc1", "nc2_equiangular_means", "cdnv"):
            assert row[f"{key}_layer_{k}"] == pytest.approx(direct[key], rel=1e-9), (key, k)
        mu = torch.stack([h[train.y == c].mean(0) for c in range(C)])
        ncc = torch.cdist(h, mu).argmin(1)
        assert row[f"nc4_layer_{k}"] == pytest.approx((ncc != decisions).double().mean().item())
    direct = neural_collapse(layers[-1], train.y, model.classifier.weight)
    for key in NC_KEYS:
        assert row[key] == pytest.approx(direct[key], rel=1e-9, abs=1e-15), key
    for key in LAYER_KEYS:
        assert row[f"{key}_layer_3"] == row[key], key  # the last hidden layer's values are the row's NC


def test_float32_network_measured_in_batches_agrees_with_one_pass():
    train = noisy_split(dtype=torch.float32)
    torch.manual_seed(1)
    model = make_model("mlp", (1, 4, 4), C, widths=[20, 20])
    row = measure(model, train, None, weight_decay=1e-2, batch_size=7)
    with torch.no_grad():
        direct = neural_collapse(model.features(train.x), train.y, model.classifier.weight)
    for key, value in direct.items():
        assert row[key] == pytest.approx(value, rel=1e-5), key


def test_replaying_the_first_pass_gives_the_row_of_two_forward_passes(monkeypatch):
    """Pass 2 replays pass 1's features when they fit (KEEP_FEATURES_BYTES); recomputing them gives the same row."""
    import ncpaper.measure as measure_module

    train, test = noisy_split(dtype=torch.float32), noisy_split(seed=1, dtype=torch.float32)
    torch.manual_seed(2)
    model = make_model("mlp", (1, 4, 4), C, widths=[20, 20])
    replayed = measure(model, train, test, weight_decay=1e-2, batch_size=7)
    forwards = 0

    def counting(module, inputs, output):
        nonlocal forwards
        forwards += 1

    handle = model.body[0].register_forward_hook(counting)  # the first layer: run by every forward pass
    measure(model, train, test, weight_decay=1e-2, batch_size=7)
    monkeypatch.setattr(measure_module, "KEEP_FEATURES_BYTES", 0)
    replayed_forwards, forwards = forwards, 0
    recomputed = measure(model, train, test, weight_decay=1e-2, batch_size=7)
    handle.remove()
    train_batches = math.ceil(len(train.y) / 7)
    batches = train_batches + math.ceil(len(test.y) / 7)
    # one more pass over the training set computes the gradient norms (gradient_norms), replayed or not
    assert (replayed_forwards, forwards) == (batches + train_batches, 2 * batches + train_batches)
    assert replayed.keys() == recomputed.keys()
    for key, value in replayed.items():
        assert value == recomputed[key] or (math.isnan(value) and math.isnan(recomputed[key])), key


def briefly_trained(model, train, steps=60):
    """A few full-batch gradient steps on the square loss, so that the outputs fit a little (fit_term > 0)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
    onehot = torch.nn.functional.one_hot(train.y, C).double()
    for _ in range(steps):
        optimizer.zero_grad()
        ((onehot - model(train.x)).pow(2).sum(1).mean() / 2).backward()
        optimizer.step()
    return model


def objective_gradients(model, train, weight_decay):
    """Autograd gradients of the slides' objective 1/(2n) sum ||y - f||^2 + lambda/2 sum ||W_k||^2."""
    model.zero_grad()
    f = model(train.x)
    onehot = torch.nn.functional.one_hot(train.y, C).double()
    objective = (onehot - f).pow(2).sum() / (2 * len(train.y))
    objective = objective + weight_decay / 2 * sum(w.pow(2).sum() for _, w in weight_matrices(model))
    objective.backward()
    return [w.grad.clone() for _, w in weight_matrices(model)]


@pytest.mark.parametrize("weight_decay", [1e-3, 0.1])
def test_balance_and_stationarity_are_the_objectives_gradients(weight_decay):
    """balance_l - 1 = <W_l, dJ/dW_l> / fit_term (Euler's identity for homogeneous f), and
    critical_residual = ||dJ/dW_L||_F / ||lambda W_L||_F: both read off the true gradient."""
    train = noisy_split()
    model = briefly_trained(random_network(), train)
    row = measure(model, train, None, weight_decay=weight_decay, batch_size=11)
    grads = objective_gradients(model, train, weight_decay)
    weights = [w.detach() for _, w in weight_matrices(model)]
    assert row["fit_term"] > 0
    for k, (w, g) in enumerate(zip(weights, grads, strict=True), start=1):
        assert row[f"balance_{k}"] == pytest.approx(1 + (w * g).sum().item() / row["fit_term"], rel=1e-9), k
    expected = (grads[-1].norm() / (weight_decay * weights[-1]).norm()).item()
    assert row["critical_residual"] == pytest.approx(expected, rel=1e-9)


def test_without_weight_decay_balance_and_stationarity_are_nan():
    row = measure(random_network(), noisy_split(), None, weight_decay=0.0)
    assert math.isnan(row["critical_residual"])
    assert all(math.isnan(row[f"balance_{k}"]) for k in (1, 2, 3, 4))


def test_output_spread_decomposes_the_fit_term():
    """fit_term = eps(1 - eps) - on_class_var - (C-1)(delta^2 + off_class_var), delta = off_class_mean."""
    model, train = random_network(seed=3), noisy_split(seed=3)
    row = measure(model, train, None, weight_decay=0.0, batch_size=13)
    eps, delta = row["eps"], row["off_class_mean"]
    identity = eps * (1 - eps) - row["on_class_var"] - (C - 1) * (delta**2 + row["off_class_var"])
    assert row["fit_term"] == pytest.approx(identity, rel=1e-10, abs=1e-14)
    with torch.no_grad():
        f = model(train.x)
    on = f[torch.arange(len(train.y)), train.y]
    off = f[torch.nn.functional.one_hot(train.y, C) == 0]
    assert row["on_class_var"] == pytest.approx(np.var(on.numpy()), rel=1e-10)
    assert row["off_class_var"] == pytest.approx(np.var(off.numpy()), rel=1e-10)
    assert row["output_sum_mean"] == pytest.approx(f.sum(1).mean().item(), rel=1e-10)


def test_test_columns_on_the_training_set_repeat_the_training_values():
    model, train = random_network(), noisy_split()
    row = measure(model, train, train, weight_decay=1e-3, batch_size=9)
    assert set(TEST_NC_KEYS) <= set(row)
    for key in ("nc1", "nc2_equinorm_means", "nc2_equiangular_means", "nc4", "cdnv"):
        assert row[f"test_{key}"] == pytest.approx(row[key], rel=1e-12), key
    with torch.no_grad():
        h = model.features(train.x)
    mu = torch.stack([h[train.y == c].mean(0) for c in range(C)])
    assert row["test_ncc_error"] == pytest.approx((torch.cdist(h, mu).argmin(1) != train.y).double().mean().item())
    assert row["test_error"] == row["train_error"] and row["test_loss"] == pytest.approx(row["train_loss"])


def test_held_out_ncc_uses_the_training_means():
    """Test images far from every training class centre but labelled as the nearest: NCC error 0, test NC finite."""
    model, train = collapsed_network()
    test = split(train.x * 1.7, train.y)  # same directions, other norm: nearest training centre is still right
    row = measure(model, train, test, weight_decay=1e-3)
    assert row["test_ncc_error"] == 0.0 and row["test_nc1"] == pytest.approx(0, abs=1e-12)
    shuffled = split(train.x, train.y.roll(4))  # labels that disagree with the images
    assert measure(model, train, shuffled, weight_decay=1e-3)["test_ncc_error"] == 1.0


def test_a_test_split_with_a_missing_class_gives_a_clear_error():
    model, train = random_network(), noisy_split()
    keep = train.y != 3
    with pytest.raises(ValueError, match=r"the test split has no examples of class\(es\) \[3\].*n_test_per_class"):
        measure(model, train, split(train.x[keep], train.y[keep]), weight_decay=1e-3)


def test_a_dead_network_still_gives_a_row_of_nans():
    """f = 0 (the last hidden layer is zero): NaN NC, nc_defined False; the earlier layers are still measured."""
    model, train = random_network(), noisy_split()
    with torch.no_grad():
        weight_matrices(model)[2][1].zero_()
    row = measure(model, train, train, weight_decay=1e-3)
    assert row["nc_defined"] is False and row["train_error"] == pytest.approx(0.9)
    for key in (*NC_KEYS, "nc3_centred", "w_fit_k", "w_fit_residual", "nc1_layer_3", "cdnv_layer_3",
                "balance_1", "test_nc1", "test_cdnv", "test_ncc_error"):
        assert math.isnan(row[key]), key
    assert math.isfinite(row["nc1_layer_1"]) and math.isfinite(row["nc1_layer_2"])
    assert row["critical_residual"] == pytest.approx(1.0)  # f = 0, h = 0: the gradient is lambda W_L alone


def test_convnet_layers_are_the_pooled_stages_and_the_fully_connected_layer():
    torch.manual_seed(0)
    model = make_model("convnet", (3, 8, 8), C, channels=[4, 6], fc_width=9).double()
    train = noisy_split(n_per_class=3, shape=(3, 8, 8))
    row = measure(model, train, train, weight_decay=1e-3, batch_size=8)
    assert model.layer_dims() == [4 * 4 * 4, 6 * 2 * 2, 9]
    assert [k for k in row if k.startswith("nc1_layer_")] == ["nc1_layer_1", "nc1_layer_2", "nc1_layer_3"]
    assert row["nc1_layer_3"] == row["nc1"]
    with torch.no_grad():
        stage_1 = model.body[:3](train.x).flatten(1)  # conv, ReLU, max pool: what the second conv sees
    assert row["nc1_layer_1"] == pytest.approx(neural_collapse(stage_1, train.y, torch.eye(C, 64))["nc1"], rel=1e-9)
    assert all(math.isfinite(row[k]) for k in row if k.startswith(("nc1", "cdnv", "test_")))


def test_layer_columns_and_the_layer_figures_read_the_measured_rows():
    import pandas as pd

    from ncpaper.plots import figure_layers_end, figure_layers_training, figure_train_test, layer_columns

    train = noisy_split()
    rows = []
    for wd, seed in [(0.0, 0), (1e-2, 0), (0.0, 1)]:
        row = measure(random_network(seed=seed), train, train, weight_decay=wd)
        rows.append({"run_id": f"{wd}-{seed}", "weight_decay": wd, "seed": seed, "epoch": 1, "phase": "train", **row})
    table = pd.DataFrame(rows).assign(nc1_layer_9=math.nan)  # a deeper network's column, empty here
    assert layer_columns(table, "nc1") == [(1, "nc1_layer_1"), (2, "nc1_layer_2"), (3, "nc1_layer_3")]
    for fig in (figure_layers_end({"a": table, "b": table}), figure_layers_training({"a": table}),
                figure_train_test({"a": table})):
        assert all(ax.has_data() for ax in fig.axes if ax.axison)
