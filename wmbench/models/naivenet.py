"""Small CNNs for Fashion-MNIST-sized inputs: ``naivenet`` (DeepTracer) and ``tinycnn`` (tests).

Reference: "DeepTracer: Tracing Stolen Model via Deep Coupled Watermarks" (Yang et al., AAAI
2026, arXiv:2511.08985) trains a "NaiveNet" of two convolutional and two fully connected layers on
Fashion-MNIST. The paper names the layer types but not their widths, kernel sizes or
pooling; the widths below (32/64 filters, 3x3 kernels, 2x2 max-pooling, 128 hidden units)
are our documented choice.
"""
from __future__ import annotations

from typing import Sequence

from torch import nn

from wmbench.models.base import Classifier, MaxPool2d, require_input_size
from wmbench.registry import register_model


@register_model("naivenet")
def naivenet(
    *, in_channels: int, num_classes: int, input_size: int, mean: Sequence[float], std: Sequence[float]
) -> Classifier:
    """DeepTracer's NaiveNet (2 conv + 2 FC).

    Layers: Conv(in->32, 3x3, pad 1)-ReLU-MaxPool(2), Conv(32->64, 3x3, pad 1)-ReLU-MaxPool(2),
    Flatten, FC(64*(s//4)^2 -> 128)-ReLU (penultimate, ``feature_dim`` 128), head FC(128 -> K).
    Widths are not stated in the paper (our choice). 421,642 parameters at 1x28x28, K=10.

    Parameters
    ----------
    in_channels: int
        Image channels.
    num_classes: int
        Number of classes K.
    input_size: int
        Side s of the square input; s >= 4. The first FC layer is sized for exactly this side.
    mean, std: Sequence[float]
        Per-channel normalisation (see :class:`Classifier`).
    """
    require_input_size("naivenet", input_size, 4)
    side = input_size // 4
    backbone = nn.Sequential(
        nn.Conv2d(in_channels, 32, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        MaxPool2d(2),
        nn.Conv2d(32, 64, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * side * side, 128),
        nn.ReLU(inplace=True),
    )
    return Classifier(backbone, 128, num_classes, mean, std)


@register_model("tinycnn")
def tinycnn(
    *, in_channels: int, num_classes: int, input_size: int, mean: Sequence[float], std: Sequence[float]
) -> Classifier:
    """A very small, fast CNN for tests and smoke runs (not from any paper).

    Layers: Conv(in->8, 3x3, pad 1)-ReLU-MaxPool(2), Conv(8->16, 3x3, pad 1)-ReLU-AdaptiveAvgPool(4),
    Flatten, FC(256 -> 32)-ReLU (penultimate, ``feature_dim`` 32), head FC(32 -> K).

    Parameters
    ----------
    in_channels: int
        Image channels.
    num_classes: int
        Number of classes K.
    input_size: int
        Side of the square input; any side >= 2 works (the adaptive pooling fixes the FC size).
    mean, std: Sequence[float]
        Per-channel normalisation (see :class:`Classifier`).
    """
    require_input_size("tinycnn", input_size, 2)
    backbone = nn.Sequential(
        nn.Conv2d(in_channels, 8, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        MaxPool2d(2),
        nn.Conv2d(8, 16, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 32),
        nn.ReLU(inplace=True),
    )
    return Classifier(backbone, 32, num_classes, mean, std)
