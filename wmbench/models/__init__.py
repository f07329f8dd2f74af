"""Model zoo: every architecture is a :class:`Classifier` built by name through ``MODELS``.

Built-in architectures (see ``wmbench.registry.MODELS``): ``naivenet``, ``tinycnn``, ``cwnet``,
``alexnet_cifar``, ``resnet18_cifar`` and the torchvision models ``resnet50``,
``densenet161``, ``efficientnet_b2``, ``vgg16``, ``mobilenet_v2``, ``vit_b_16`` (always
randomly initialised, never downloaded).

A model factory is a callable taking the keyword arguments ``in_channels``, ``num_classes``,
``input_size``, ``mean`` and ``std`` and returning a :class:`Classifier`; register a new one
with ``@wmbench.registry.register_model("name")``.
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence, Union

from torch import nn

from wmbench.errors import UserError
from wmbench.models.base import Classifier
from wmbench.registry import MODELS

__all__ = ["Classifier", "build_model", "model_from_spec", "count_parameters"]

_Stats = Union[float, Sequence[float], None]


def _per_channel(name: str, values: _Stats, in_channels: int) -> List[float]:
    """Expand ``values`` (None -> 0.5, a scalar or a length-1 list -> repeated) to ``in_channels`` floats."""
    if values is None:
        values = 0.5
    if isinstance(values, (int, float)):
        return [float(values)] * in_channels
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        raise UserError(f"{name} must be a number or a list of numbers, got {values!r}") from None
    if len(out) == 1:
        out = out * in_channels
    if len(out) != in_channels:
        raise UserError(f"{name} needs {in_channels} values (one per channel), got {len(out)}: {out}")
    return out


def build_model(
    arch: str,
    *,
    in_channels: int,
    num_classes: int,
    input_size: int,
    mean: _Stats = None,
    std: _Stats = None,
) -> Classifier:
    """Build a randomly initialised model by registry name.

    Parameters
    ----------
    arch: str
        A name in ``MODELS`` (or a ``package.module:factory`` path).
    in_channels: int
        Image channels (1 for grey-scale, 3 for RGB).
    num_classes: int
        Number of output logits.
    input_size: int
        Side of the square input images (some architectures need a minimum or a multiple).
    mean, std: float or sequence of float, optional
        Per-channel normalisation applied inside the model; default 0.5 for every channel.
        A scalar or a length-1 list is repeated for every channel.

    Returns
    -------
    Classifier
        With ``model.spec`` set so :func:`model_from_spec` can rebuild it.

    Raises
    ------
    UserError
        For an unknown ``arch`` (the message lists the available names) or an unsupported shape.
    """
    if not isinstance(arch, str) or not arch:
        raise UserError(f"model architecture must be a non-empty name, got {arch!r}; available: {', '.join(MODELS.names())}")
    for key, value in (("in_channels", in_channels), ("num_classes", num_classes), ("input_size", input_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"{key} must be a positive integer, got {value!r}")
    mean_l = _per_channel("mean", mean, in_channels)
    std_l = _per_channel("std", std, in_channels)
    factory = MODELS.get(arch)
    model = factory(
        in_channels=in_channels, num_classes=num_classes, input_size=input_size, mean=mean_l, std=std_l
    )
    if not isinstance(model, Classifier):
        raise UserError(f"model factory {arch!r} returned {type(model).__name__}, expected a wmbench Classifier")
    model.spec = {
        "arch": arch,
        "in_channels": in_channels,
        "num_classes": num_classes,
        "input_size": input_size,
        "mean": mean_l,
        "std": std_l,
    }
    return model


def model_from_spec(spec: Dict[str, Any]) -> Classifier:
    """Rebuild a (randomly initialised) model from a ``model.spec`` dict.

    Parameters
    ----------
    spec: dict
        ``{"arch", "in_channels", "num_classes", "input_size"}`` plus optional ``"mean"``/``"std"``.
    """
    required = ("arch", "in_channels", "num_classes", "input_size")
    missing = [k for k in required if k not in spec]
    if missing:
        raise UserError(f"model spec is missing {', '.join(missing)}; needs {', '.join(required)} (and optionally mean, std)")
    return build_model(
        spec["arch"],
        in_channels=int(spec["in_channels"]),
        num_classes=int(spec["num_classes"]),
        input_size=int(spec["input_size"]),
        mean=spec.get("mean"),
        std=spec.get("std"),
    )


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``model`` (only those with ``requires_grad`` when ``trainable_only``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)

