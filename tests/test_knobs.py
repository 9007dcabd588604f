"""The run configuration's initialisation scale and loss (issue 32): what they do, their keys, their errors."""

import math

import pytest
import torch

from ncpaper.measure import data_term, gradient_norms, negative_output_gradient
from ncpaper.models import make_model, weight_matrices
from ncpaper.results import config_key
from ncpaper.train import RunConfig, batch_loss, initial_model, mlp_backward, output_gradient, scale_weights

TINY = {"dataset": "mnist", "sizes": {"widths": [16, 16]}, "n_per_class": 4, "n_test_per_class": 2,
        "epochs": 12, "lr": 0.01, "batch_size": 16, "n_measurements": 4}


class _Images:  # what initial_model reads of a split
    input_shape, num_classes = (1, 28, 28), 10


@pytest.mark.parametrize("model, sizes, depth", [("mlp", {"widths": [16, 8]}, 3),
                                                 ("convnet", {"channels": [4, 8], "fc_width": 8}, 4)])
@pytest.mark.parametrize("scale", [0.1, 0.3, 2.0])
def test_init_scale_scales_every_weight_by_s_and_the_outputs_by_s_to_the_depth(model, sizes, depth, scale):
    base = RunConfig.from_dict({**TINY, "model": model, "sizes": sizes})
    scaled = RunConfig.from_dict({**TINY, "model": model, "sizes": sizes, "init_scale": scale})
    net, net_s = initial_model(base, _Images), initial_model(scaled, _Images)
    weights = weight_matrices(net)
    assert len(weights) == depth
    for (_, w), (_, w_s) in zip(weights, weight_matrices(net_s), strict=True):
        torch.testing.assert_close(w_s, scale * w, rtol=0, atol=0)
    x = torch.randn(5, 1, 28, 28, dtype=torch.float64)
    with torch.no_grad():  # the scaled weights are rounded to float32: agreement to float32's precision
        expected = scale ** depth * net.double()(x)
        torch.testing.assert_close(net_s.double()(x), expected, rtol=1e-5, atol=1e-6 * float(expected.abs().max()))


def test_scale_weights_is_homogeneous_of_degree_depth():
    torch.manual_seed(1)
    net = make_model("mlp", (3, 4, 4), 5, widths=[7, 6, 5]).double()
    x = torch.randn(3, 3, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        before = net(x)
        torch.testing.assert_close(scale_weights(net, 0.5)(x), 0.5 ** 4 * before, rtol=1e-12, atol=0)


def test_the_default_knobs_keep_every_existing_key():
    """init_scale 1 and the square loss are left out of the key, so the published runs stay found."""
    config = RunConfig.from_dict(TINY)
    assert "init_scale" not in config.to_dict() and "loss" not in config.to_dict()
    explicit = RunConfig.from_dict({**TINY, "init_scale": 1.0, "loss": "square"})
    assert config_key(explicit, {"d": "x"}) == config_key(config, {"d": "x"})
    moved = [RunConfig.from_dict({**TINY, "init_scale": 0.3}), RunConfig.from_dict({**TINY, "loss": "cross_entropy"})]
    keys = {config_key(c, {"d": "x"}) for c in [config, *moved]}
    assert len(keys) == 3
    assert moved[0].to_dict()["init_scale"] == 0.3 and moved[1].to_dict()["loss"] == "cross_entropy"


@pytest.mark.parametrize("values, message", [
    ({"init_scale": 0}, "init_scale must be a positive number"),
    ({"init_scale": float("nan")}, "init_scale must be a positive number"),
    ({"loss": "hinge"}, "loss must be one of"),
    ({"loss": "cross_entropy", "weight_decay": 0.01, "settle": True}, "set settle to false"),
])
def test_bad_knobs_are_refused_with_what_to_do(values, message):
    with pytest.raises(ValueError, match=message):
        RunConfig.from_dict({**TINY, **values})


def test_cross_entropy_batch_loss_is_torchs_mean_cross_entropy():
    torch.manual_seed(0)
    out, labels = torch.randn(9, 4), torch.arange(9) % 4
    onehot = torch.nn.functional.one_hot(labels, 4).float()
    torch.testing.assert_close(batch_loss(out, onehot, "cross_entropy"),
                               torch.nn.functional.cross_entropy(out, labels))
    torch.testing.assert_close(data_term(out.double(), labels, "cross_entropy"),
                               torch.nn.functional.cross_entropy(out.double(), labels))


@pytest.mark.parametrize("loss", ["square", "cross_entropy"])
def test_output_gradient_is_autograds(loss):
    torch.manual_seed(0)
    out = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    onehot = torch.nn.functional.one_hot(torch.arange(6) % 3, 3).double()
    (grad,) = torch.autograd.grad(batch_loss(out, onehot, loss).double(), out)
    torch.testing.assert_close(output_gradient(out.detach(), onehot, loss), grad)
    torch.testing.assert_close(negative_output_gradient(out.detach(), onehot, loss), -6 * grad)


@pytest.mark.parametrize("loss", ["square", "cross_entropy"])
def test_hand_written_gradient_matches_autograd_on_a_small_batch(loss):
    """fit's by-hand gradient of a bias-free MLP (float32) against autograd's, for both data terms."""
    torch.manual_seed(0)
    model = make_model("mlp", (1, 6, 6), 4, widths=[12, 9])
    x = torch.randn(10, 1, 6, 6)
    targets = torch.nn.functional.one_hot(torch.arange(10) % 4, 4).float()
    value = mlp_backward(model, x, targets, loss)
    by_hand = [w.grad.clone() for _, w in weight_matrices(model)]
    model.zero_grad()
    reference = batch_loss(model(x), targets, loss)
    reference.backward()
    torch.testing.assert_close(value, reference.detach())
    for mine, theirs in zip(by_hand, [w.grad for _, w in weight_matrices(model)], strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-7)


def test_measured_gradient_norm_is_that_of_the_runs_own_loss():
    """With lambda = 0, gradient_norms' grad_norm is || d(mean cross-entropy)/dW || for a cross-entropy run."""
    from ncpaper.data import LabelledImages

    torch.manual_seed(0)
    model = make_model("mlp", (1, 4, 4), 3, widths=[5]).double()
    x, y = torch.randn(9, 1, 4, 4, dtype=torch.float64), torch.arange(9) % 3
    split = LabelledImages(x, y, ("a", "b", "c"))
    loss = torch.nn.functional.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    expected = math.sqrt(sum(float(g.pow(2).sum()) for g in grads))
    assert gradient_norms(model, split, 0.0, loss="cross_entropy")["grad_norm"] == pytest.approx(expected, rel=1e-12)


def test_the_cli_trains_with_both_knobs_and_records_them_in_meta_json(tmp_path, capsys):
    import json

    from ncpaper.cli import main

    small = ["--dataset", "mnist", "--widths", "8", "--n-per-class", "2", "--n-test-per-class", "1", "--epochs", "2",
             "--batch-size", "8", "--n-measurements", "2", "--quiet"]
    assert main(["--results", str(tmp_path), "train", *small, "--init-scale", "0.3", "--loss", "cross_entropy",
                 "--weight-decay", "0.01"]) == 0
    assert "init x0.3" in capsys.readouterr().out
    (meta,) = [json.loads(p.read_text()) for p in tmp_path.glob("*/meta.json")]
    assert meta["config"]["init_scale"] == 0.3 and meta["config"]["loss"] == "cross_entropy"
    assert meta["config"]["settle"] is False  # settling is for the square loss
    with pytest.raises(SystemExit):  # argparse's own one-line refusal, naming the choices
        main(["--results", str(tmp_path), "train", *small, "--loss", "hinge"])
    assert "invalid choice: 'hinge'" in capsys.readouterr().err
    assert main(["--results", str(tmp_path), "train", *small, "--init-scale", "-1"]) == 2
    assert "init_scale must be a positive number" in capsys.readouterr().err
