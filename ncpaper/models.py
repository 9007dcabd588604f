"""Deep homogeneous ReLU classifiers f(x) = W_L s(W_{L-1} ... s(W_1 x)), as in the paper.

No biases, no normalisation layers: only linear maps, convolutions, ReLU and max pooling, all
positively homogeneous, so f(a x) = a f(x) for a > 0 and scaling every layer by c scales f by c^L.
Every model splits as ``model(x) == model.classifier(model.features(x))``: ``features`` gives the
last-layer features h, ``classifier`` is W_L (an ``nn.Linear`` without bias). ``layer_features`` gives
every hidden layer's representation h_1 .. h_{L-1} (the last one is ``features``), each flattened to
N x p_l: for an MLP the post-ReLU output of each hidden layer; for the ConvNet each stage's output
after ReLU and max pooling (the representation the next layer sees), then the fully connected layer's
post-ReLU output.

:func:`multiply_adds` counts each layer's multiply-adds per example (the forward pass); :func:`training_flops`
turns them into the floating-point operations of one SGD step per example.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["INITS", "MODELS", "BiasFreeConvNet", "BiasFreeMLP", "HomogeneousClassifier", "make_model",
           "multiply_adds", "training_flops", "weight_matrices"]

# How a ConvNet's weights are drawn: "torch" (PyTorch's default for Conv2d and Linear, U(-b, b) with
# b^2 = 1/fan_in, so Var w = 1/(3 fan_in)) or "he" (He et al. 2015: hidden layers N(0, 2/fan_in), which keeps
# E||h_l||^2 the same from layer to layer through ReLU, and the readout W_L N(0, 1/fan_in)).
INITS = ("torch", "he")


class HomogeneousClassifier(nn.Module):
    """A feature extractor followed by a bias-free linear classifier."""

    def __init__(self, body: nn.Sequential, feature_dim: int, num_classes: int, layer_dims: list[int]):
        super().__init__()
        self.body = body
        self._layer_dims = tuple(layer_dims)
        self.classifier = nn.Linear(feature_dim, num_classes, bias=False)

    @property
    def feature_dim(self) -> int:
        return self.classifier.in_features

    @property
    def num_classes(self) -> int:
        return self.classifier.out_features

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def layer_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[h_1, ..., h_{L-1}]: each hidden layer's representation, flattened (N x p_l); h_{L-1} = features(x).

        A layer ends after its ReLU, or after the max pooling that follows the ReLU.
        """
        modules = list(self.body)
        outputs = []
        for k, module in enumerate(modules):
            x = module(x)
            pooled_next = k + 1 < len(modules) and isinstance(modules[k + 1], nn.MaxPool2d)
            if isinstance(module, nn.MaxPool2d) or (isinstance(module, nn.ReLU) and not pooled_next):
                outputs.append(x.flatten(1))
        return outputs

    def layer_dims(self) -> list[int]:
        """p_1 .. p_{L-1}, the widths of :meth:`layer_features` (for the ConvNet, channels x height x width)."""
        return list(self._layer_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BiasFreeMLP(HomogeneousClassifier):
    """Flatten, then ``Linear(no bias) -> ReLU`` for each hidden width, then W_L."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, widths=(512, 512, 512)):
        widths = _positive_ints(widths, "widths")
        layers: list[nn.Module] = [nn.Flatten()]
        fan_in = math.prod(input_shape)
        for width in widths:
            layers += [nn.Linear(fan_in, width, bias=False), nn.ReLU()]
            fan_in = width
        super().__init__(nn.Sequential(*layers), fan_in, num_classes, widths)


class BiasFreeConvNet(HomogeneousClassifier):
    """Stages of ``Conv3x3(no bias) -> ReLU``, each stage ending in ``MaxPool2``; flatten, ``Linear -> ReLU``, W_L.

    ``channels = (c_1, ..., c_S)``: stage s has ``convs_per_stage`` convolutions with c_s output channels (3x3,
    padding 1, so they keep the image size), each followed by ReLU, and ends with 2x2 max pooling. With
    ``convs_per_stage = 1`` this is conv -> ReLU -> pool per stage; 2 is the VGG pattern. The depth (the degree
    of homogeneity) is L = S x convs_per_stage + 2: ReLU and max pooling commute with a positive scale, so
    f(a x) = a f(x) for a > 0 and scaling every layer by c scales f by c^L. No biases, no normalisation.

    ``init``: one of :data:`INITS`. ``channels_last``: the input of the convolutions is laid out channels-last
    (N, H, W, C in memory; the layout of tensor cores' convolution kernels on a GPU). It changes how the
    products are computed, not what they are: the logical tensors, the weights (kept in the usual layout,
    which :mod:`ncpaper.settle` reshapes) and :meth:`layer_features` are the same; on a GPU the last bits
    may differ (a different kernel), so it is part of a run's sizes and hence of its key.
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, channels=(16, 32, 64),
                 fc_width: int = 256, convs_per_stage: int = 1, init: str = "torch", channels_last: bool = False):
        channels = _positive_ints(channels, "channels")
        (fc_width,) = _positive_ints([fc_width], "fc_width")
        (convs_per_stage,) = _positive_ints([convs_per_stage], "convs_per_stage")
        if init not in INITS:
            raise ValueError(f"init must be one of {list(INITS)}, got {init!r}")
        if not isinstance(channels_last, bool):
            raise ValueError(f"channels_last must be true or false, got {channels_last!r}")
        if len(input_shape) != 3:
            raise ValueError(f"the ConvNet needs image input (channels, height, width), got {input_shape}")
        in_ch, height, width = input_shape
        if min(height, width) < 2 ** len(channels):
            raise ValueError(f"{len(channels)} max-pooling stages need images of at least "
                             f"{2 ** len(channels)} pixels a side, got {height}x{width}")
        layers: list[nn.Module] = []
        dims = []
        for out_ch in channels:
            for k in range(convs_per_stage):
                layers += [nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.ReLU()]
                in_ch = out_ch
                if k + 1 < convs_per_stage:
                    dims.append(in_ch * height * width)
            layers.append(nn.MaxPool2d(2))
            height, width = height // 2, width // 2
            dims.append(in_ch * height * width)
        layers += [nn.Flatten(), nn.Linear(in_ch * height * width, fc_width, bias=False), nn.ReLU()]
        super().__init__(nn.Sequential(*layers), fc_width, num_classes, [*dims, fc_width])
        self.channels_last = channels_last
        if init == "he":
            for _, weight in weight_matrices(self)[:-1]:
                nn.init.kaiming_normal_(weight, mode="fan_in", nonlinearity="relu")
            nn.init.kaiming_normal_(self.classifier.weight, mode="fan_in", nonlinearity="linear")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self._layout(x))

    def layer_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return super().layer_features(self._layout(x))

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x


MODELS = {"mlp": BiasFreeMLP, "convnet": BiasFreeConvNet}


def _positive_ints(values, name: str) -> list[int]:
    values = list(values)
    if not values or any(int(v) != v or v < 1 for v in values):
        raise ValueError(f"{name} must be a non-empty list of positive integers, got {values}")
    return [int(v) for v in values]


def make_model(name: str, input_shape: tuple[int, ...], num_classes: int, **sizes) -> HomogeneousClassifier:
    """Build a model by name: ``mlp`` (sizes: ``widths``) or ``convnet`` (``channels``, ``fc_width``,
    ``convs_per_stage``, ``init``, ``channels_last``)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    if num_classes < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
    try:
        return MODELS[name](tuple(input_shape), num_classes, **sizes)
    except TypeError as err:
        raise ValueError(f"bad sizes for model {name!r}: {err}") from None


def weight_matrices(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The layers W_1 .. W_L in order (every parameter of the model is one of them)."""
    return [(name, p) for name, p in model.named_parameters()]


def multiply_adds(model: HomogeneousClassifier, input_shape: tuple[int, ...]) -> list[int]:
    """Multiply-adds per example of each layer W_1 .. W_L in the forward pass, from the shapes alone.

    A linear layer p_in -> p_out: p_in p_out. A k x k convolution c_in -> c_out whose output is H x W:
    c_in c_out k^2 H W. ReLU, max pooling and flattening do no multiply-adds.
    """
    shape = tuple(input_shape)
    counts = []
    for module in [*model.body, model.classifier]:
        if isinstance(module, nn.Flatten):
            shape = (math.prod(shape),)
        elif isinstance(module, nn.Linear):
            counts.append(module.in_features * module.out_features)
            shape = (module.out_features,)
        elif isinstance(module, nn.Conv2d):
            if module.stride != (1, 1) or module.dilation != (1, 1) or module.groups != 1:
                raise ValueError(f"multiply_adds counts plain stride-1 convolutions only, not {module}")
            (kh, kw), (ph, pw) = module.kernel_size, module.padding
            height, width = shape[1] + 2 * ph - kh + 1, shape[2] + 2 * pw - kw + 1
            counts.append(module.in_channels * module.out_channels * kh * kw * height * width)
            shape = (module.out_channels, height, width)
        elif isinstance(module, nn.MaxPool2d):
            shape = (shape[0], shape[1] // 2, shape[2] // 2)
        elif not isinstance(module, nn.ReLU):
            raise ValueError(f"multiply_adds does not know the layer {module}")
    return counts


def training_flops(model: HomogeneousClassifier, input_shape: tuple[int, ...]) -> int:
    """Floating-point operations of one SGD step per example: 6 sum_l M_l - 2 M_1 (M_l: :func:`multiply_adds`).

    The forward pass costs 2 M_l per layer (a multiply and an add); the backward pass 2 M_l for the gradient
    in W_l and 2 M_l for the gradient in the layer's input, except at the first layer, whose input (the
    images) needs none. Elementwise work (ReLU, pooling, the loss, the optimiser) is left out: a few per cent
    at most for these networks. The usual "6 x weights" count of an MLP is 6 sum_l M_l.
    """
    counts = multiply_adds(model, input_shape)
    return 6 * sum(counts) - 2 * counts[0]
