"""The common model wrapper: input normalisation + backbone + a linear ``head``.

Every model in wmbench is a :class:`Classifier`. Inputs are images in ``[0, 1]`` of shape
``[B, C, H, W]``; the per-channel normalisation ``(x - mean) / std`` happens inside the model,
so attacks and watermark methods never need to know a data set's statistics. The last layer
is always ``self.head`` (an :class:`torch.nn.Linear`), which is what the fine-tuning attacks
FTLL / RTLL replace or re-initialise.
"""
from __future__ import annotations

from typing import Any, Dict, Sequence

import torch
from torch import nn

from wmbench.errors import UserError


class Classifier(nn.Module):
    """Normalise, extract penultimate features with ``backbone``, classify with ``head``.

    Parameters
    ----------
    backbone: nn.Module
        Maps normalised images ``[B, C, H, W]`` to penultimate features ``[B, feature_dim]``.
    feature_dim: int
        Width of the backbone's output (the ``in_features`` of ``head``).
    num_classes: int
        Number of output logits.
    mean: Sequence[float]
        Per-channel mean subtracted from the ``[0, 1]`` input (length ``C``).
    std: Sequence[float]
        Per-channel standard deviation the centred input is divided by (length ``C``).

    Attributes
    ----------
    spec: dict
        ``{"arch", "in_channels", "num_classes", "input_size", "mean", "std"}``; filled in by
        :func:`wmbench.models.build_model` so :func:`wmbench.models.model_from_spec` can
        rebuild the architecture. Empty for a hand-built ``Classifier``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        num_classes: int,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        super().__init__()
        mean_t = torch.as_tensor(list(mean), dtype=torch.float32)
        std_t = torch.as_tensor(list(std), dtype=torch.float32)
        if mean_t.ndim != 1 or mean_t.shape != std_t.shape:
            raise UserError(
                f"mean and std must be per-channel lists of equal length, got {list(mean)} and {list(std)}"
            )
        if bool((std_t <= 0).any()):
            raise UserError(f"std must be positive per channel, got {list(std)}")
        self.backbone = backbone
        self.head = nn.Linear(feature_dim, num_classes)
        self.feature_dim = int(feature_dim)
        self.num_classes = int(num_classes)
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1))
        self.register_buffer("std", std_t.view(1, -1, 1, 1))
        self.spec: Dict[str, Any] = {}

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - mean) / std`` for ``x`` in ``[0, 1]`` of shape ``[B, C, H, W]``."""
        return (x - self.mean) / self.std

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features ``[B, feature_dim]`` of images ``x`` in ``[0, 1]``."""
        return self.backbone(self.normalize(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_classes]`` of images ``x`` in ``[0, 1]``."""
        return self.head(self.features(x))


class MaxPool2d(nn.MaxPool2d):
    """:class:`torch.nn.MaxPool2d` with the same outputs and gradients, faster on CPU.

    PyTorch's CPU kernel for a contiguous NCHW input is several times slower than its
    channels-last kernel: NaiveNet's first pool (128×32×28×28) takes 14.0 ms forward against
    3.3 ms for the channels-last round trip on one thread (BENCHMARKS.md,
    ``benchmarks/cpu_pooling.py``). A maximum is exact, so this module pools a CPU input that is
    NCHW-contiguous and needs no gradient in channels-last layout and hands it back
    NCHW-contiguous, as the plain module would: the outputs are bit-identical
    (``tests/test_models.py``). Where a gradient flows the plain kernel runs (the round trip was
    no faster in training), as it does for any other input (a GPU tensor, a channels-last one,
    ``return_indices``). It has no parameters or buffers, so state dicts are those of
    ``nn.MaxPool2d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type == "cpu" and x.dim() == 4 and not self.return_indices and x.is_contiguous()
                and not x.is_contiguous(memory_format=torch.channels_last)
                and not (torch.is_grad_enabled() and x.requires_grad)):
            return super().forward(x.contiguous(memory_format=torch.channels_last)).contiguous()
        return super().forward(x)


def require_input_size(arch: str, input_size: int, minimum: int, multiple_of: int = 1) -> None:
    """Raise :class:`UserError` when ``input_size`` is unsupported by ``arch``.

    Parameters
    ----------
    arch: str
        Architecture name used in the message.
    input_size: int
        Side of the square input images.
    minimum: int
        Smallest side for which every feature map stays non-empty.
    multiple_of: int
        The side must be divisible by this (e.g. the ViT patch size).
    """
    if input_size < minimum:
        raise UserError(f"model {arch!r} needs input_size >= {minimum}, got {input_size}")
    if input_size % multiple_of:
        raise UserError(f"model {arch!r} needs input_size divisible by {multiple_of}, got {input_size}")

