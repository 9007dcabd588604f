"""Deep homogeneous ReLU classifiers f(x) = W_L s(W_{L-1} ... s(W_1 x)), as in the paper.

No biases, no normalisation layers: only linear maps, convolutions, ReLU and max pooling, all
positively homogeneous, so f(a x) = a f(x) for a > 0 and scaling every layer by c scales f by c^L.
Every model splits as ``model(x) == model.classifier(model.features(x))``: ``features`` gives the
last-layer features h, ``classifier`` is W_L (an ``nn.Linear`` without bias). ``layer_features`` gives
every hidden layer's representation h_1 .. h_{L-1} (the last one is ``features``), each flattened to
N x p_l: for an MLP the post-ReLU output of each hidden layer; for the ConvNet each stage's output
after ReLU and max pooling (the representation the next layer sees), then the fully connected layer's
post-ReLU output.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["MODELS", "BiasFreeConvNet", "BiasFreeMLP", "HomogeneousClassifier", "make_model",
           "weight_matrices"]


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
    """``Conv3x3(no bias) -> ReLU -> MaxPool2`` per channel count, flatten, ``Linear -> ReLU``, W_L."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, channels=(16, 32, 64),
                 fc_width: int = 256):
        channels = _positive_ints(channels, "channels")
        (fc_width,) = _positive_ints([fc_width], "fc_width")
        if len(input_shape) != 3:
            raise ValueError(f"the ConvNet needs image input (channels, height, width), got {input_shape}")
        in_ch, height, width = input_shape
        if min(height, width) < 2 ** len(channels):
            raise ValueError(f"{len(channels)} max-pooling stages need images of at least "
                             f"{2 ** len(channels)} pixels a side, got {height}x{width}")
        layers: list[nn.Module] = []
        dims = []
        for out_ch in channels:
            layers += [nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2)]
            in_ch, height, width = out_ch, height // 2, width // 2
            dims.append(in_ch * height * width)
        layers += [nn.Flatten(), nn.Linear(in_ch * height * width, fc_width, bias=False), nn.ReLU()]
        super().__init__(nn.Sequential(*layers), fc_width, num_classes, [*dims, fc_width])


MODELS = {"mlp": BiasFreeMLP, "convnet": BiasFreeConvNet}


def _positive_ints(values, name: str) -> list[int]:
    values = list(values)
    if not values or any(int(v) != v or v < 1 for v in values):
        raise ValueError(f"{name} must be a non-empty list of positive integers, got {values}")
    return [int(v) for v in values]


def make_model(name: str, input_shape: tuple[int, ...], num_classes: int, **sizes) -> HomogeneousClassifier:
    """Build a model by name: ``mlp`` (sizes: ``widths``) or ``convnet`` (``channels``, ``fc_width``)."""
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
