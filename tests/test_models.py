"""Homogeneity of the bias-free networks, and their construction errors."""

import pytest
import torch

from ncpaper.models import make_model, weight_matrices
from ncpaper.theory import homogeneity_residual

CASES = [
    ("mlp", (1, 8, 8), {"widths": [16, 12, 10]}),
    ("convnet", (3, 8, 8), {"channels": [4, 6], "fc_width": 10}),
]


@pytest.fixture(params=CASES, ids=[c[0] for c in CASES])
def model_and_input(request):
    name, shape, sizes = request.param
    torch.manual_seed(0)
    model = make_model(name, shape, 5, **sizes).double()
    return model, torch.randn(7, *shape, dtype=torch.float64)


def test_no_biases_and_feature_classifier_split(model_and_input):
    model, x = model_and_input
    assert model.classifier.bias is None
    assert all("bias" not in name for name, _ in model.named_parameters())
    assert torch.equal(model(x), model.classifier(model.features(x)))
    assert model.features(x).shape == (7, model.feature_dim)


def test_layer_features_are_the_l_minus_1_hidden_layers_ending_with_the_features(model_and_input):
    model, x = model_and_input
    layers = model.layer_features(x)
    assert len(layers) == len(weight_matrices(model)) - 1
    assert [h.shape for h in layers] == [(7, p) for p in model.layer_dims()]
    assert torch.equal(layers[-1], model.features(x))
    assert all((h >= 0).all() for h in layers)  # after ReLU (and max pooling): non-negative


@pytest.mark.parametrize("a", [0.01, 0.5, 3.0, 1e3])
def test_positively_homogeneous_in_the_input(model_and_input, a):
    model, x = model_and_input
    torch.testing.assert_close(model(a * x), a * model(x), rtol=1e-12, atol=1e-12 * a)


@pytest.mark.parametrize("c", [0.3, 2.0])
def test_scaling_every_layer_by_c_scales_output_by_c_to_the_depth(model_and_input, c):
    model, x = model_and_input
    depth = len(weight_matrices(model))
    before = model(x)
    with torch.no_grad():
        for _, w in weight_matrices(model):
            w.mul_(c)
    torch.testing.assert_close(model(x), c**depth * before, rtol=1e-11, atol=1e-12)


def test_euler_identity_for_every_layer(model_and_input):
    """<W_l, df/dW_l> = f for every layer: the identity behind Lemma 2."""
    model, x = model_and_input
    assert homogeneity_residual(model, x) < 1e-12


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("resnet", (1, 8, 8), 10), "unknown model 'resnet'"),
        (("mlp", (1, 8, 8), 1), "at least 2 classes"),
        (("mlp", (1, 8, 8), 10, {"widths": []}), "non-empty list of positive integers"),
        (("mlp", (1, 8, 8), 10, {"depth": 3}), "bad sizes for model 'mlp'"),
        (("convnet", (1, 4, 4), 10, {"channels": [4, 4, 4]}), "at least 8 pixels"),
        (("convnet", (64,), 10), "needs image input"),
    ],
)
def test_bad_model_requests(args, message):
    sizes = args[3] if len(args) > 3 else {}
    with pytest.raises(ValueError, match=message):
        make_model(*args[:3], **sizes)
