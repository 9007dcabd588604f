"""Settling onto a critical point: f is kept by unit rescaling, J never increases, the identities hold."""

import copy

import pytest
import torch

from ncpaper import settle as settle_module
from ncpaper.models import make_model, weight_matrices
from ncpaper.settle import readout_decomposition, settle, stationarity


def balance_ratios(model, x, y_onehot, weight_decay):
    """lambda ||W_l||_F^2 / ((1/NC) sum <y - f, f>) for every layer l, computed directly in float64."""
    with torch.no_grad():
        f = model(x)
        fit = float(((y_onehot - f) * f).sum(1).mean())
    return [weight_decay * float(w.detach().pow(2).sum()) / fit for _, w in weight_matrices(model)]


def small_problem(model_name="mlp"):
    torch.manual_seed(0)
    shape = (1, 8, 8)
    x = torch.rand(40, *shape)
    labels = torch.arange(40) % 4
    sizes = {"widths": [16, 12]} if model_name == "mlp" else {"channels": [3, 5], "fc_width": 7}
    model = make_model(model_name, shape, 4, **sizes)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-2)
    y = torch.nn.functional.one_hot(labels, 4).float()
    for _ in range(200):
        opt.zero_grad()
        ((model(x) - y).pow(2).sum(1).mean() / 2).backward()
        opt.step()
    return model, x, labels


@pytest.mark.parametrize("model_name", ["mlp", "convnet"])
def test_unit_rescaling_keeps_f_and_equalises_layer_norms(model_name):
    model, x, _ = small_problem(model_name)
    net = copy.deepcopy(model).double()
    before = net(x.double())
    weights = [w.data for _, w in weight_matrices(net)]
    settle_module._balance_units(weights)
    assert torch.allclose(net(x.double()), before, atol=1e-10)
    norms = [float(w.pow(2).sum()) for w in weights]
    assert max(norms) == pytest.approx(min(norms), rel=1e-6)


@pytest.mark.parametrize("model_name", ["mlp", "convnet"])
def test_settling_lowers_the_objective_and_reaches_the_balance(model_name):
    model, x, labels = small_problem(model_name)
    result = settle(model, x, labels, weight_decay=1e-2)
    assert result.converged and result.objective_after <= result.objective_before
    y = torch.nn.functional.one_hot(labels, 4).double()
    ratios = balance_ratios(result.model.double(), x.double(), y, 1e-2)
    assert ratios == pytest.approx([1.0] * len(ratios), abs=2e-3)
    assert result.readout_residual < 1e-3


def test_a_dead_network_settles_to_zero_and_stops_there():
    """Every output zero (a layer of dead units): the rounds reach W = 0, where J = 1/2 is as low as these steps
    go and every further round repeats it, so settling stops within a few rounds instead of max_rounds."""
    model, x, labels = small_problem()
    with torch.no_grad():
        model.body[3].weight.clamp_(max=0)  # the second hidden layer's units never fire on x >= 0 features
    result = settle(model, x, labels, weight_decay=0.5, max_rounds=200)
    assert result.rounds <= 4 and not result.converged and result.objective_after == 0.5
    assert not any(w.any() for _, w in weight_matrices(result.model))
    again = settle(result.model, x, labels, weight_decay=0.5)
    assert again.rounds == 1 and again.objective_before == again.objective_after == 0.5


def test_stationarity_is_zero_for_the_readout_after_settling():
    model, x, labels = small_problem()
    result = settle(model, x, labels, weight_decay=1e-2)

    class Split:
        pass

    split = Split()
    split.x, split.y = x, labels
    gradients = stationarity(result.model, split, 1e-2)
    assert gradients[-1] < 1e-3 and all(g >= 0 for g in gradients)


def test_readout_decomposition_has_no_covariance_part_on_collapsed_features():
    from ncpaper import theory

    s = theory.two_parameter_critical_point(0.1, 0.005, 1e-2, 5, n_per_class=4)

    class Readout(torch.nn.Module):  # a classifier on fixed features: features(x) = x
        num_classes = 5

        def __init__(self, w):
            super().__init__()
            self.classifier = torch.nn.Linear(w.shape[1], 5, bias=False)
            self.classifier.weight.data = w.clone()

        def features(self, x):
            return x

    parts = readout_decomposition(Readout(s["weights"]), s["features"], s["labels"])
    assert parts["readout_within_class_share"] < 1e-10
    assert parts["off_class_asymmetry"] < 1e-10


def test_settling_without_weight_decay_is_refused():
    model, x, labels = small_problem()
    with pytest.raises(ValueError, match="needs weight decay"):
        settle(model, x, labels, weight_decay=0.0)
