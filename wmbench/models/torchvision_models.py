"""ImageNet architectures from torchvision, adapted to wmbench's :class:`Classifier`.

Source: ``torchvision.models`` (always ``weights=None``: random initialisation, nothing is
downloaded). Each model is adapted in the same two ways:

* when ``in_channels != 3`` the stem convolution (the first ``nn.Conv2d``; ``conv_proj`` for
  ViT) is replaced by a conv with identical hyper-parameters and ``in_channels`` inputs,
  initialised the way torchvision initialises that model's convolutions;
* the final ``nn.Linear`` of the classifier is replaced by ``nn.Identity`` so the torchvision
  network returns penultimate features and :attr:`Classifier.head` is the last layer.

References: ResNet-50 (He et al., CVPR 2016), DenseNet-161 (Huang et al., CVPR 2017),
EfficientNet-B2 (Tan & Le, ICML 2019), VGG-16 (Simonyan & Zisserman, ICLR 2015),
MobileNetV2 (Sandler et al., CVPR 2018), ViT-B/16 (Dosovitskiy et al., ICLR 2021).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Sequence, Tuple

import torchvision
from torch import nn

from wmbench.models.base import Classifier, require_input_size
from wmbench.registry import register_model

_Init = Callable[[nn.Conv2d], None]


def _kaiming_fan_out(conv: nn.Conv2d) -> None:
    """ResNet / VGG / MobileNetV2 / EfficientNet conv init."""
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def _kaiming_fan_in(conv: nn.Conv2d) -> None:
    """DenseNet conv init."""
    nn.init.kaiming_normal_(conv.weight)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def _vit_patch_init(conv: nn.Conv2d) -> None:
    """ViT ``conv_proj`` init: truncated normal with std sqrt(1 / fan_in)."""
    fan_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
    nn.init.trunc_normal_(conv.weight, std=math.sqrt(1.0 / fan_in))
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def replace_stem_conv(net: nn.Module, in_channels: int, init: _Init) -> None:
    """Replace the first ``nn.Conv2d`` of ``net`` by one taking ``in_channels`` inputs.

    Parameters
    ----------
    net: nn.Module
        The torchvision network, modified in place.
    in_channels: int
        New number of input channels.
    init: callable
        Initialises the new conv's weight and bias.
    """
    name, old = next((n, m) for n, m in net.named_modules() if isinstance(m, nn.Conv2d))
    if old.in_channels == in_channels:
        return
    new = nn.Conv2d(
        in_channels,
        old.out_channels,
        kernel_size=old.kernel_size,  # type: ignore[arg-type]
        stride=old.stride,  # type: ignore[arg-type]
        padding=old.padding,  # type: ignore[arg-type]
        dilation=old.dilation,  # type: ignore[arg-type]
        groups=old.groups,
        bias=old.bias is not None,
        padding_mode=old.padding_mode,
    )
    init(new)
    _set_submodule(net, name, new)


def strip_final_linear(net: nn.Module) -> int:
    """Replace the last ``nn.Linear`` of ``net`` (its classifier output) by ``nn.Identity``.

    Returns the removed layer's ``in_features``: the width of the features ``net`` now returns.
    """
    linears = [(n, m) for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise TypeError(f"{type(net).__name__} has no nn.Linear to strip")
    name, last = linears[-1]
    _set_submodule(net, name, nn.Identity())
    return int(last.in_features)


def _build(
    tv_name: str,
    *,
    in_channels: int,
    num_classes: int,
    input_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    **tv_kwargs: Any,
) -> Classifier:
    """Build ``torchvision.models.<tv_name>`` and wrap it as a :class:`Classifier`."""
    min_size, multiple_of, init = _ADAPT[tv_name]
    require_input_size(tv_name, input_size, min_size, multiple_of)
    net = getattr(torchvision.models, tv_name)(weights=None, num_classes=num_classes, **tv_kwargs)
    if in_channels != 3:
        replace_stem_conv(net, in_channels, init)
    feature_dim = strip_final_linear(net)
    return Classifier(net, feature_dim, num_classes, mean, std)


#: torchvision name -> (smallest input side, required divisor of the side, stem conv init).
#: The minimum sides keep every feature map non-empty (VGG's five 2x2 max-pools need 32;
#: DenseNet's stem and three 2x2 average-pool transitions need 29).
_ADAPT: Dict[str, Tuple[int, int, _Init]] = {
    "resnet50": (1, 1, _kaiming_fan_out),
    "densenet161": (29, 1, _kaiming_fan_in),
    "efficientnet_b2": (1, 1, _kaiming_fan_out),
    "vgg16": (32, 1, _kaiming_fan_out),
    "mobilenet_v2": (1, 1, _kaiming_fan_out),
    "vit_b_16": (16, 16, _vit_patch_init),
}

_DOC = """torchvision ``{name}`` adapted to a :class:`Classifier` (random init, see the module docstring).

    Parameters
    ----------
    in_channels: int
        Image channels (the stem conv is replaced when not 3).
    num_classes: int
        Number of classes K (the size of ``head``).
    input_size: int
        Side of the square input; {size_rule}.
    mean, std: Sequence[float]
        Per-channel normalisation (see :class:`Classifier`).
    """


def _size_rule(name: str) -> str:
    minimum, multiple_of, _ = _ADAPT[name]
    if multiple_of > 1:
        return f"a multiple of the patch size {multiple_of}"
    return f">= {minimum}" if minimum > 1 else "any side >= 1"


@register_model("resnet50")
def resnet50(*, in_channels: int, num_classes: int, input_size: int,
             mean: Sequence[float], std: Sequence[float]) -> Classifier:
    return _build("resnet50", in_channels=in_channels, num_classes=num_classes,
                  input_size=input_size, mean=mean, std=std)


@register_model("densenet161")
def densenet161(*, in_channels: int, num_classes: int, input_size: int,
                mean: Sequence[float], std: Sequence[float]) -> Classifier:
    return _build("densenet161", in_channels=in_channels, num_classes=num_classes,
                  input_size=input_size, mean=mean, std=std)


@register_model("efficientnet_b2")
def efficientnet_b2(*, in_channels: int, num_classes: int, input_size: int,
                    mean: Sequence[float], std: Sequence[float]) -> Classifier:
    return _build("efficientnet_b2", in_channels=in_channels, num_classes=num_classes,
                  input_size=input_size, mean=mean, std=std)


@register_model("vgg16")
def vgg16(*, in_channels: int, num_classes: int, input_size: int,
          mean: Sequence[float], std: Sequence[float]) -> Classifier:
    return _build("vgg16", in_channels=in_channels, num_classes=num_classes,
                  input_size=input_size, mean=mean, std=std)


@register_model("mobilenet_v2")
def mobilenet_v2(*, in_channels: int, num_classes: int, input_size: int,
                 mean: Sequence[float], std: Sequence[float]) -> Classifier:
    return _build("mobilenet_v2", in_channels=in_channels, num_classes=num_classes,
                  input_size=input_size, mean=mean, std=std)


@register_model("vit_b_16")
def vit_b_16(*, in_channels: int, num_classes: int, input_size: int,
             mean: Sequence[float], std: Sequence[float]) -> Classifier:
    return _build("vit_b_16", in_channels=in_channels, num_classes=num_classes,
                  input_size=input_size, mean=mean, std=std, image_size=input_size)


for _factory in (resnet50, densenet161, efficientnet_b2, vgg16, mobilenet_v2, vit_b_16):
    _factory.__doc__ = _DOC.format(name=_factory.__name__, size_rule=_size_rule(_factory.__name__))
del _factory
