"""Homogeneity of the bias-free networks, and their construction errors."""

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ncpaper.models import make_model, multiply_adds, training_flops, weight_matrices
from ncpaper.theory import homogeneity_residual

# The VGG-like case is the convnet profile's network at toy size: two convolutions a stage, He's
# initialisation, channels-last convolutions.
VGG_SIZES = {"channels": [4, 6], "fc_width": 10, "convs_per_stage": 2, "init": "he", "channels_last": True}
CASES = [
    ("mlp", (1, 8, 8), {"widths": [16, 12, 10]}),
    ("convnet", (3, 8, 8), {"channels": [4, 6], "fc_width": 10}),
    ("convnet", (3, 8, 8), VGG_SIZES),
]


@pytest.fixture(params=CASES, ids=["mlp", "convnet", "vgg"])
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
        (("convnet", (3, 8, 8), 10, {"init": "xavier"}), "init must be one of"),
        (("convnet", (3, 8, 8), 10, {"convs_per_stage": 0}), "convs_per_stage must be"),
        (("convnet", (3, 8, 8), 10, {"channels_last": "yes"}), "channels_last must be true or false"),
    ],
)
def test_bad_model_requests(args, message):
    sizes = args[3] if len(args) > 3 else {}
    with pytest.raises(ValueError, match=message):
        make_model(*args[:3], **sizes)


def test_the_convnet_is_conv_relu_maxpool_only_without_biases_or_normalisation():
    model = make_model("convnet", (3, 32, 32), 10, channels=[64, 128, 256, 512], fc_width=512, convs_per_stage=2)
    kinds = {type(m) for m in model.modules()} - {type(model), nn.Sequential}
    assert kinds == {nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.Flatten, nn.Linear}
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear))
    assert len(model.body) == 4 * (2 * 2 + 1) + 3  # stages of (conv, ReLU) x 2 + pool; flatten, linear, ReLU


@pytest.mark.parametrize(("channels", "per_stage"), [([4, 6], 1), ([4, 6], 2), ([3, 4, 5], 3)])
def test_convnet_depth_is_stages_times_convolutions_plus_two(channels, per_stage):
    """L = S x convs_per_stage + 2 (the fully connected layer and W_L): f scales as c^L, checked directly."""
    torch.manual_seed(0)
    model = make_model("convnet", (3, 8, 8), 5, channels=channels, fc_width=7, convs_per_stage=per_stage).double()
    depth = len(channels) * per_stage + 2
    assert len(weight_matrices(model)) == depth
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    before = model(x)
    with torch.no_grad():
        for _, w in weight_matrices(model):
            w.mul_(1.5)
    torch.testing.assert_close(model(x), 1.5**depth * before, rtol=1e-11, atol=1e-12)
    assert len(model.layer_dims()) == depth - 1


def test_channels_last_changes_the_layout_not_the_function():
    """Same weights, usual and channels-last layouts: the same outputs and layer features; the convolutions run
    on channels-last tensors; the weights stay in the usual layout (settling reshapes them with view)."""
    sizes = {k: v for k, v in VGG_SIZES.items() if k != "channels_last"}
    torch.manual_seed(0)
    usual = make_model("convnet", (3, 8, 8), 5, **sizes).double()
    torch.manual_seed(0)
    last = make_model("convnet", (3, 8, 8), 5, **sizes, channels_last=True).double()
    assert all(torch.equal(a, b) for a, b in zip(usual.parameters(), last.parameters(), strict=True))
    assert all(w.is_contiguous() for w in last.parameters())
    layouts = []
    for conv in (m for m in last.modules() if isinstance(m, nn.Conv2d)):
        conv.register_forward_hook(lambda m, i, o: layouts.append(o.is_contiguous(memory_format=torch.channels_last)))
    x = torch.randn(6, 3, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(last(x), usual(x), rtol=1e-12, atol=1e-13)
    assert layouts and all(layouts)
    for a, b in zip(last.layer_features(x), usual.layer_features(x), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)
    for _, w in weight_matrices(last):
        w.view(w.shape[0], -1)  # what ncpaper.settle does to every layer


def test_he_initialisation_variances_and_torch_default_bound():
    """He: hidden layers Var w = 2/fan_in, W_L 1/fan_in; torch's default: |w| <= 1/sqrt(fan_in), Var = 1/(3 fan_in)."""
    torch.manual_seed(0)
    he = make_model("convnet", (3, 32, 32), 10, channels=[64, 128], fc_width=512, init="he")
    torch.manual_seed(0)
    default = make_model("convnet", (3, 32, 32), 10, channels=[64, 128], fc_width=512)
    for (_, w), (_, d) in zip(weight_matrices(he), weight_matrices(default), strict=True):
        fan_in = w[0].numel()
        gain = 1.0 if w is he.classifier.weight else 2.0
        assert abs(w.var().item() * fan_in / gain - 1) < 0.1
        assert d.abs().max().item() <= fan_in**-0.5
        assert abs(d.var().item() * fan_in * 3 - 1) < 0.1


def test_training_flops_are_what_torch_counts_for_a_forward_and_backward_pass(model_and_input):
    """6 sum_l M_l - 2 M_1 per example equals torch's own count (FlopCounterMode) of a forward and backward pass."""
    model, x = model_and_input
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    assert counter.get_total_flops() == len(x) * training_flops(model, x.shape[1:])


def test_multiply_adds_of_the_paper_and_convnet_profiles_networks():
    mlp = make_model("mlp", (3, 32, 32), 10, widths=[2048, 2048, 2048])
    assert multiply_adds(mlp, (3, 32, 32)) == [3072 * 2048, 2048 * 2048, 2048 * 2048, 2048 * 10]
    net = make_model("convnet", (3, 32, 32), 10, channels=[64, 128], fc_width=32)
    # conv 3->64 at 32x32, pool to 16x16, conv 64->128 at 16x16, pool to 8x8, 128*8*8 -> 32, 32 -> 10
    assert multiply_adds(net, (3, 32, 32)) == [3 * 64 * 9 * 1024, 64 * 128 * 9 * 256, 128 * 64 * 32, 32 * 10]
