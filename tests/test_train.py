"""The objective, the measurements, determinism, validation and divergence."""

import math

import pandas as pd
import pytest
import torch

from ncpaper import data
from ncpaper.metrics import neural_collapse
from ncpaper.train import (
    RunConfig,
    TrainingDivergedError,
    batch_loss,
    fit,
    measure,
    measurement_epochs,
    mse_equivalent,
    slides_from_mse,
    square_loss,
)

TINY = {"dataset": "mnist", "sizes": {"widths": [16, 16]}, "n_per_class": 4, "n_test_per_class": 2,
        "epochs": 12, "lr": 0.01, "batch_size": 16, "n_measurements": 4}


def test_square_loss_is_the_slides_data_term():
    """1/(2NC) sum_{n,c} ||y - f||^2 with N examples per class: half the mean over the examples."""
    out = torch.tensor([[0.5, 0.2, -0.1], [0.0, 1.5, 0.3], [0.1, 0.1, 0.7]])
    y = torch.tensor([0, 1, 2])  # N = 1 example per class, C = 3
    expected = ((0.5**2 + 0.2**2 + 0.1**2) + (0.0 + 0.5**2 + 0.3**2) + (0.1**2 + 0.1**2 + 0.3**2)) / (2 * 1 * 3)
    assert square_loss(out, y).item() == pytest.approx(expected)
    assert batch_loss(out, torch.nn.functional.one_hot(y, 3).float()).item() == pytest.approx(expected)
    # nn.MSELoss averages over the N C x C entries: (2/C) x the slides' term
    mse = torch.nn.functional.mse_loss(out, torch.nn.functional.one_hot(y, 3).float())
    assert mse.item() == pytest.approx(2 / 3 * expected)


@pytest.mark.parametrize(("lr", "weight_decay"), [(0.01, 5e-3), (0.3, 0.0), (1e-4, 2.5e-3)])
def test_slides_units_and_mse_units_give_the_same_sgd_steps(lr, weight_decay):
    """eta (grad D + lambda W) == lr' (grad MSE + wd' W) with lr' = C eta / 2, wd' = 2 lambda / C."""
    torch.manual_seed(0)
    x, y = torch.randn(12, 5), torch.arange(12) % 4
    ours, theirs = torch.nn.Linear(5, 4, bias=False), torch.nn.Linear(5, 4, bias=False)
    theirs.load_state_dict(ours.state_dict())
    mse = mse_equivalent(lr, weight_decay, num_classes=4)
    opt_ours = torch.optim.SGD(ours.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    opt_theirs = torch.optim.SGD(theirs.parameters(), momentum=0.9, **mse)
    for _ in range(3):
        for model, opt, loss in ((ours, opt_ours, lambda f: square_loss(f, y)),
                                 (theirs, opt_theirs, lambda f: torch.nn.functional.mse_loss(
                                     f, torch.nn.functional.one_hot(y, 4).float()))):
            opt.zero_grad()
            loss(model(x)).backward()
            opt.step()
    assert torch.allclose(ours.weight, theirs.weight, rtol=1e-5, atol=1e-7)
    assert slides_from_mse(**mse, num_classes=4) == pytest.approx({"lr": lr, "weight_decay": weight_decay})


def test_the_groups_public_setting_in_the_slides_units():
    """nn.MSELoss with lr 0.067 and weight decay 5e-4 on C = 10 classes is lambda = 2.5e-3."""
    assert slides_from_mse(0.067, 5e-4, 10) == pytest.approx({"lr": 0.0134, "weight_decay": 2.5e-3})


def test_measurement_epochs_are_log_spaced_and_end_at_the_last():
    epochs = measurement_epochs(1000, 30)
    assert epochs[0] == 1 and epochs[-1] == 1000 and epochs == sorted(set(epochs))
    assert 20 <= len(epochs) <= 31


def test_measure_agrees_with_the_metrics_on_the_features():
    train = data.load("mnist", "train", n_per_class=6, seed=0)
    torch.manual_seed(0)
    from ncpaper.models import make_model

    model = make_model("mlp", train.input_shape, 10, widths=[20, 20])
    row = measure(model, train, None, weight_decay=1e-2, batch_size=7)  # several batches
    with torch.no_grad():
        direct = neural_collapse(model.features(train.x), train.y, model.classifier.weight)
        f = model(train.x).double()
    for key, value in direct.items():
        assert row[key] == pytest.approx(value, rel=1e-5), key  # float32 forward passes, batched differently
    norms = sum(v for k, v in row.items() if k.startswith("layer_norm_sq_"))
    assert row["train_objective"] == pytest.approx(row["train_loss"] + 1e-2 / 2 * norms)
    onehot = torch.nn.functional.one_hot(train.y, 10).double()
    assert row["fit_term"] == pytest.approx(((onehot - f) * f).sum().item() / 60)  # (1/NC) sum over NC = 60
    assert row["eps"] == pytest.approx(1 - (f * onehot).sum().item() / 60)


def test_same_seed_same_numbers_and_other_seed_differs():
    a, _, _ = fit(RunConfig.from_dict({**TINY, "weight_decay": 1e-2}))
    b, _, _ = fit(RunConfig.from_dict({**TINY, "weight_decay": 1e-2}))
    c, _, _ = fit(RunConfig.from_dict({**TINY, "weight_decay": 1e-2, "seed": 1}))
    assert pd.DataFrame(a).equals(pd.DataFrame(b))  # NaN-aware; rows hold no timings
    assert a[-1]["nc1"] != c[-1]["nc1"]
    assert [r["epoch"] for r in a if r["phase"] == "train"] == measurement_epochs(12, 4)
    assert [r["phase"] for r in a][-2:] == ["train", "settled"]  # the settled point, beside the last epoch


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"dataset": "imagenet"}, "unknown dataset 'imagenet'"),
        ({"model": "vit"}, "unknown model 'vit'"),
        ({"lr": 0.0}, "lr must be positive"),
        ({"lr": -1.0}, "lr must be positive"),
        ({"epochs": 0}, "epochs must be positive"),
        ({"epochs": 2.5}, "epochs must be an integer"),
        ({"weight_decay": -1e-3}, "weight_decay \\(lambda\\) must be >= 0"),
        ({"weight_decay": math.nan}, "weight_decay"),
        ({"momentum": 1.0}, "momentum must be in"),
        ({"lr_milestones": [1.5]}, "lr_milestones are fractions"),
        ({"n_per_class": 0}, "n_per_class must be a positive integer"),
        ({"device": "tpu"}, "device must be"),
        ({"widths": [3]}, "unknown configuration key"),
    ],
)
def test_bad_configs_fail_before_any_work(change, message):
    with pytest.raises(ValueError, match=message):
        RunConfig.from_dict({**TINY, **change})


def test_too_many_images_per_class_fails_with_the_available_count():
    with pytest.raises(ValueError, match="has only 5421"):
        fit(RunConfig.from_dict({**TINY, "n_per_class": 10_000}))


def corrupted_mnist():
    train = data.load("mnist", "train", n_per_class=4, seed=0)
    train.x[3, 0, 5, 5] = math.inf  # one corrupt pixel: the loss becomes NaN or infinite
    return train


def test_divergence_stops_with_the_epoch_and_the_config():
    with pytest.raises(TrainingDivergedError, match=r"diverged at epoch 1 .*mnist/mlp lambda=0.01"):
        fit(RunConfig.from_dict({**TINY, "weight_decay": 1e-2}), train=corrupted_mnist())


def test_a_network_killed_by_the_step_size_is_recorded_as_undefined_not_as_numbers():
    """Too large a step kills every ReLU (f = 0): NC is undefined, and the row says so."""
    rows, _, _ = fit(RunConfig.from_dict({**TINY, "lr": 0.5}))
    last = rows[-1]
    assert last["nc_defined"] is False and math.isnan(last["nc1"]) and math.isnan(last["nc3"])
    assert last["train_error"] == pytest.approx(0.9) and last["eps"] == pytest.approx(1.0)
    assert rows[0]["nc_defined"] is True


def test_bfloat16_autocast_trains_close_to_float32_and_keys_apart():
    """bf16 only in the forward pass: weights stay float32, the run lands near float32's, its key differs."""
    from ncpaper.results import config_key

    f32 = RunConfig.from_dict(TINY)
    bf16 = RunConfig.from_dict({**TINY, "precision": "bfloat16"})
    assert "precision" not in f32.to_dict()  # earlier float32 results keep their cache keys
    assert config_key(f32, {"train": "x"}) != config_key(bf16, {"train": "x"})
    rows32, _, _ = fit(f32)
    rows16, model16, _ = fit(bf16)
    assert all(p.dtype == torch.float32 for p in model16.parameters())
    assert rows16[-1]["train_loss"] == pytest.approx(rows32[-1]["train_loss"], rel=0.1)
    assert math.isfinite(rows16[-1]["nc1"])


def test_fused_sgd_gives_the_plain_loops_weights_bit_for_bit():
    """The optimiser fit uses on the CPU (fused) against torch's plain per-tensor loop, 30 steps."""
    from ncpaper.models import make_model
    from ncpaper.train import sgd

    config = RunConfig.from_dict({**TINY, "weight_decay": 3e-3, "lr": 0.05})
    x, y = torch.randn(64, 1, 28, 28), torch.nn.functional.one_hot(torch.arange(64) % 10, 10).float()
    weights = []
    for make_optimizer in (lambda p: sgd(p, config),
                           lambda p: torch.optim.SGD(p, lr=0.05, momentum=config.momentum, weight_decay=3e-3,
                                                     foreach=False)):
        torch.manual_seed(0)
        model = make_model("mlp", (1, 28, 28), 10, widths=[24, 16])
        optimizer = make_optimizer(model.parameters())
        for step in range(30):
            batch = slice(step % 4 * 16, step % 4 * 16 + 16)
            optimizer.zero_grad()
            batch_loss(model(x[batch]), y[batch]).backward()
            optimizer.step()
        weights.append([p.detach().clone() for p in model.parameters()])
    assert sgd(model.parameters(), config).defaults["fused"]
    assert all(torch.equal(a, b) for a, b in zip(*weights, strict=True))


@pytest.mark.parametrize("widths, shape, batch", [([24, 16], (1, 28, 28), 16), ([32, 8, 16], (3, 8, 8), 20)])
def test_hand_written_mlp_gradient_gives_autograds_weights_bit_for_bit(widths, shape, batch):
    """sgd_step's hand-written backward pass (fit's default for MLPs on the CPU) against autograd, 40 steps
    with batches of two sizes (the last batch of an epoch is smaller)."""
    from ncpaper.models import make_model
    from ncpaper.train import sgd, sgd_step

    config = RunConfig.from_dict({**TINY, "weight_decay": 3e-3, "lr": 0.05})
    x = torch.randn(70, *shape)
    y = torch.nn.functional.one_hot(torch.arange(70) % 10, 10).float()
    weights, losses = [], []
    for by_hand in (True, False):
        torch.manual_seed(0)
        model = make_model("mlp", shape, 10, widths=widths)
        optimizer = sgd(model.parameters(), config)
        steps = [sgd_step(model, optimizer, x[i % 4 * batch:][:batch + i % 2], y[i % 4 * batch:][:batch + i % 2],
                          by_hand=by_hand) for i in range(40)]
        weights.append([p.detach().clone() for p in model.parameters()])
        losses.append(torch.stack(steps))
    assert torch.equal(*losses) and losses[0][-1] < losses[0][0]
    assert all(torch.equal(a, b) for a, b in zip(*weights, strict=True))


def test_fit_takes_the_hand_written_gradient_only_where_it_applies():
    from ncpaper.models import make_model
    from ncpaper.train import sgd, sgd_step

    config = RunConfig.from_dict({**TINY, "model": "convnet", "sizes": {"channels": [4], "fc_width": 8}})
    model = make_model("convnet", (1, 28, 28), 10, channels=[4], fc_width=8)
    x, y = torch.randn(8, 1, 28, 28), torch.nn.functional.one_hot(torch.arange(8), 10).float()
    with pytest.raises(TypeError, match="bias-free MLP"):
        sgd_step(model, sgd(model.parameters(), config), x, y, by_hand=True)
    assert math.isfinite(sgd_step(model, sgd(model.parameters(), config), x, y))  # the default: autograd


def test_pooled_run_trains_on_pooled_images_and_refuses_unpooled_ones():
    config = RunConfig.from_dict({**TINY, "dataset": "cifar10", "input_pool": 4, "n_test_per_class": 2})
    rows, model, _ = fit(config)
    assert model.body[1].in_features == 3 * 8 * 8 and math.isfinite(rows[-1]["test_nc1"])
    assert "pooled 4x4" in config.describe() and config.to_dict()["input_pool"] == 4
    assert "input_pool" not in RunConfig.from_dict(TINY).to_dict()  # older results keep their keys
    with pytest.raises(ValueError, match=r"load them with config\.load_data"):
        fit(config, train=data.load("cifar10", "train", 2, 0))
