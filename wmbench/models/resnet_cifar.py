"""ResNet-18 for CIFAR-sized inputs.

Reference: K. He, X. Zhang, S. Ren and J. Sun, "Deep Residual Learning for Image
Recognition" (CVPR 2016). The CIFAR variant used throughout the watermarking literature
replaces the ImageNet stem (7x7 stride-2 conv + max-pool) with a 3x3 stride-1 conv and keeps
the four ImageNet stages of BasicBlocks ([2, 2, 2, 2], widths 64/128/256/512).
"""
from __future__ import annotations

from typing import List, Sequence

import torch
from torch import nn

from wmbench.models.base import Classifier, require_input_size
from wmbench.registry import register_model


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 conv-BN projection) shortcut.

    Parameters
    ----------
    in_planes: int
        Input channels.
    planes: int
        Output channels.
    stride: int
        Stride of the first conv and of the projection shortcut.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNetCifarBackbone(nn.Module):
    """Stem + four BasicBlock stages + global average pooling; returns ``[B, 512]`` features.

    Parameters
    ----------
    in_channels: int
        Image channels.
    blocks: Sequence[int]
        Number of blocks per stage (``[2, 2, 2, 2]`` for ResNet-18).
    widths: Sequence[int]
        Channels per stage.
    """

    def __init__(self, in_channels: int, blocks: Sequence[int] = (2, 2, 2, 2),
                 widths: Sequence[int] = (64, 128, 256, 512)) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            _conv3x3(in_channels, widths[0]), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)
        )
        stages: List[nn.Module] = []
        in_planes = widths[0]
        for index, (count, planes) in enumerate(zip(blocks, widths)):
            stride = 1 if index == 0 else 2
            layers = []
            for b in range(count):
                layers.append(BasicBlock(in_planes, planes, stride if b == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.stages(self.stem(x))), 1)


@register_model("resnet18_cifar")
def resnet18_cifar(
    *, in_channels: int, num_classes: int, input_size: int, mean: Sequence[float], std: Sequence[float]
) -> Classifier:
    """CIFAR ResNet-18: 3x3 stride-1 stem (64) + BN + ReLU, no max-pool, BasicBlocks [2, 2, 2, 2]
    with widths 64/128/256/512, global average pooling (penultimate, ``feature_dim`` 512),
    head FC(512 -> K). 11,173,962 parameters at K=10.

    Parameters
    ----------
    in_channels: int
        Image channels.
    num_classes: int
        Number of classes K.
    input_size: int
        Side of the square input; any side >= 1 works (strided 3x3 convs are padded).
    mean, std: Sequence[float]
        Per-channel normalisation (see :class:`Classifier`).
    """
    require_input_size("resnet18_cifar", input_size, 1)
    backbone = ResNetCifarBackbone(in_channels)
    return Classifier(backbone, backbone.out_dim, num_classes, mean, std)
