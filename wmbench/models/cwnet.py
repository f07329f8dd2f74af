"""The VGG-like CIFAR-10 network of Carlini & Wagner, as used by Lin et al. and DeepTracer.

References: N. Carlini and D. Wagner, "Towards Evaluating the Robustness of Neural Networks"
(IEEE S&P 2017) introduced this CIFAR-10 architecture; J. Lin et al., "Composite Backdoor
Attack for Deep Neural Network by Mixing Existing Benign Features" (ACM CCS 2020) use it, and
the DeepTracer (Yang et al., AAAI 2026, arXiv:2511.08985) and MEA-Defender (IEEE S&P 2024) watermark evaluations
follow them. There is no batch normalisation.
"""
from __future__ import annotations

from typing import Sequence

from torch import nn

from wmbench.models.base import Classifier, MaxPool2d, require_input_size
from wmbench.registry import register_model

#: Smallest input side for which every feature map stays non-empty:
#: s -> s-4 -> (s-4)//2 -> (s-4)//2-4 -> ((s-4)//2-4)//2 >= 1.
MIN_INPUT_SIZE = 16


@register_model("cwnet")
def cwnet(
    *, in_channels: int, num_classes: int, input_size: int, mean: Sequence[float], std: Sequence[float]
) -> Classifier:
    """Carlini-Wagner CIFAR net.

    Layers: Conv(in->64, 3x3, no pad)-ReLU, Conv(64->64, 3x3)-ReLU, MaxPool(2),
    Conv(64->128, 3x3)-ReLU, Conv(128->128, 3x3)-ReLU, MaxPool(2), AdaptiveAvgPool(5x5)
    (the identity at 32x32), Flatten (3200), Dropout(0.5), FC(3200->256)-ReLU,
    FC(256->256)-ReLU (penultimate, ``feature_dim`` 256), head FC(256 -> K).
    1,147,978 parameters at 3x32x32, K=10.

    Parameters
    ----------
    in_channels: int
        Image channels.
    num_classes: int
        Number of classes K.
    input_size: int
        Side of the square input; >= 16.
    mean, std: Sequence[float]
        Per-channel normalisation (see :class:`Classifier`).
    """
    require_input_size("cwnet", input_size, MIN_INPUT_SIZE)
    backbone = nn.Sequential(
        nn.Conv2d(in_channels, 64, kernel_size=3),
        nn.ReLU(inplace=True),
        nn.Conv2d(64, 64, kernel_size=3),
        nn.ReLU(inplace=True),
        MaxPool2d(2),
        nn.Conv2d(64, 128, kernel_size=3),
        nn.ReLU(inplace=True),
        nn.Conv2d(128, 128, kernel_size=3),
        nn.ReLU(inplace=True),
        MaxPool2d(2),
        nn.AdaptiveAvgPool2d((5, 5)),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(128 * 5 * 5, 256),
        nn.ReLU(inplace=True),
        nn.Linear(256, 256),
        nn.ReLU(inplace=True),
    )
    return Classifier(backbone, 256, num_classes, mean, std)
