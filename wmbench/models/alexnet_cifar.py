"""The CIFAR AlexNet of Knockoff Nets.

Reference: T. Orekondy, B. Schiele and M. Fritz, "Knockoff Nets: Stealing Functionality of
Black-Box Models" (CVPR 2019); the architecture follows the ``cifar/alexnet`` model of
their public code (a 5-conv AlexNet with a single linear classifier), re-implemented here.

Deviations, both the identity at 32x32: the max-pools use ``ceil_mode=True`` and the
features are flattened through ``AdaptiveAvgPool2d(1)``, so odd intermediate sizes (e.g. a
28x28 input: 7 -> 4 -> 2 -> 1) keep every feature map non-empty.
"""
from __future__ import annotations

from typing import Sequence

from torch import nn

from wmbench.models.base import Classifier, MaxPool2d, require_input_size
from wmbench.registry import register_model


@register_model("alexnet_cifar")
def alexnet_cifar(
    *, in_channels: int, num_classes: int, input_size: int, mean: Sequence[float], std: Sequence[float]
) -> Classifier:
    """Knockoff Nets' CIFAR AlexNet.

    Layers: Conv(in->64, 11x11, stride 4, pad 5)-ReLU-MaxPool(2), Conv(64->192, 5x5, pad 2)-ReLU-MaxPool(2),
    Conv(192->384, 3x3, pad 1)-ReLU, Conv(384->256, 3x3, pad 1)-ReLU, Conv(256->256, 3x3, pad 1)-ReLU-MaxPool(2),
    AdaptiveAvgPool(1), Flatten (penultimate, ``feature_dim`` 256), head FC(256 -> K).
    2,472,266 parameters at 3x32x32, K=10.

    Parameters
    ----------
    in_channels: int
        Image channels.
    num_classes: int
        Number of classes K.
    input_size: int
        Side of the square input; any side >= 1 works.
    mean, std: Sequence[float]
        Per-channel normalisation (see :class:`Classifier`).
    """
    require_input_size("alexnet_cifar", input_size, 1)
    backbone = nn.Sequential(
        nn.Conv2d(in_channels, 64, kernel_size=11, stride=4, padding=5),
        nn.ReLU(inplace=True),
        MaxPool2d(2, ceil_mode=True),
        nn.Conv2d(64, 192, kernel_size=5, padding=2),
        nn.ReLU(inplace=True),
        MaxPool2d(2, ceil_mode=True),
        nn.Conv2d(192, 384, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        MaxPool2d(2, ceil_mode=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    return Classifier(backbone, 256, num_classes, mean, std)
