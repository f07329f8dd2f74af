"""Batched image transformations: one tensor operation per batch, seeded, on any device.

Used twice: as the training augmentation of the owner's models (``train.augment``: the CIFAR
recipe, random crop with padding and horizontal flip, applied by :func:`wmbench.training.fit`)
and as transformations of an attacker's query pool (``pool_transforms`` of the stealing attacks).
Every function takes a batch ``x`` (``float [N, C, H, W]`` in ``[0, 1]``, on any device) and a
CPU ``torch.Generator`` from which all of its randomness is drawn — the same seed gives the same
images on CPU and GPU — and returns a new batch of the same shape, still in ``[0, 1]``. There is no
per-image Python loop.

- ``flip``: each image mirrored left-right with probability 1/2.
- ``crop``: each image replaced by a random window of itself zero-padded by ``CROP_PADDING`` (4)
  pixels on every side (the CIFAR recipe of He et al., "Deep Residual Learning for Image
  Recognition", CVPR 2016).
- ``mixup``: each image blended with another image of the batch, ``λ x_i + (1 − λ) x_j`` with λ
  uniform in (0, 1) per image — mixup's Beta(α, α) with α = 1 (Zhang et al., "mixup: Beyond
  Empirical Risk Minimization", ICLR 2018). Pool transformation only (it would need mixed labels).
- ``cutmix``: a box of another image of the batch pasted into each image; its area is a uniform
  fraction of the image and its centre uniform, clipped at the border (Yun et al., "CutMix",
  ICCV 2019). Pool transformation only.

The partner image of ``mixup`` and ``cutmix`` is a random permutation of the batch (with one
image in a batch, the image itself). Query-pool transformations are common practice for
Knockoff-style attackers short of data (e.g. ActiveThief, Pal et al., AAAI 2020; DFMS-HL, Sanyal
et al., CVPR 2022, query augmented natural images).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from wmbench.errors import UserError

TRANSFORMS = ("flip", "crop", "mixup", "cutmix")
#: The transformations that keep an image's label (usable as training augmentation).
LABEL_PRESERVING = ("flip", "crop")
#: Zero padding of ``crop`` on every side, in pixels.
CROP_PADDING = 4

Transform = Callable[[Tensor], Tensor]


def _uniform(n: int, gen: torch.Generator, like: Tensor) -> Tensor:
    return torch.rand(n, generator=gen).to(device=like.device, dtype=like.dtype)


def flip(x: Tensor, gen: torch.Generator) -> Tensor:
    mask = (_uniform(x.shape[0], gen, x) < 0.5).view(-1, 1, 1, 1)
    return torch.where(mask, x.flip(3), x)


def crop(x: Tensor, gen: torch.Generator, padding: int = CROP_PADDING) -> Tensor:
    n, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=gen).to(x.device)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=gen).to(x.device)
    rows = (dy.view(n, 1, 1, 1) + torch.arange(h, device=x.device).view(1, 1, h, 1)).expand(n, c, h, padded.shape[3])
    cols = (dx.view(n, 1, 1, 1) + torch.arange(w, device=x.device).view(1, 1, 1, w)).expand(n, c, h, w)
    return padded.gather(2, rows).gather(3, cols)  # rows, then columns: two tensor gathers


def mixup(x: Tensor, gen: torch.Generator) -> Tensor:
    n = x.shape[0]
    partner = torch.randperm(n, generator=gen).to(x.device)
    lam = _uniform(n, gen, x).view(-1, 1, 1, 1)
    return (lam * x + (1 - lam) * x[partner]).clamp_(0.0, 1.0)


def cutmix(x: Tensor, gen: torch.Generator) -> Tensor:
    n, _, h, w = x.shape
    partner = torch.randperm(n, generator=gen).to(x.device)
    side = (1 - _uniform(n, gen, x)).sqrt()  # box side fraction: area fraction uniform in (0, 1]
    cy, cx = _uniform(n, gen, x) * h, _uniform(n, gen, x) * w
    half_h, half_w = (side * h / 2).view(n, 1, 1), (side * w / 2).view(n, 1, 1)
    ys = torch.arange(h, device=x.device, dtype=x.dtype).view(1, h, 1) + 0.5
    xs = torch.arange(w, device=x.device, dtype=x.dtype).view(1, 1, w) + 0.5
    inside = ((ys - cy.view(n, 1, 1)).abs() < half_h) & ((xs - cx.view(n, 1, 1)).abs() < half_w)
    return torch.where(inside.unsqueeze(1), x[partner], x)


_BY_NAME = {"flip": flip, "crop": crop, "mixup": mixup, "cutmix": cutmix}


def check_transforms(setting: str, names: Sequence[str], accepted: Sequence[str] = TRANSFORMS, note: str = "") -> None:
    """:class:`UserError` unless ``names`` are distinct names among ``accepted``; ``setting`` is the
    option named in the message (``note`` is added after the accepted names)."""
    if any(n not in accepted for n in names) or len(set(names)) != len(names):
        raise UserError(f"{setting} must be distinct names among {', '.join(accepted)}{note}, got {list(names)}")


def compose(names: Sequence[str], gen: torch.Generator) -> Optional[Transform]:
    """One function applying ``names`` in order with ``gen``'s randomness, or None for none."""
    if not names:
        return None
    unknown = [n for n in names if n not in _BY_NAME]
    if unknown:
        raise ValueError(f"unknown image transformation(s) {', '.join(unknown)}; accepted: {', '.join(TRANSFORMS)}")
    steps = [_BY_NAME[name] for name in names]

    def apply(x: Tensor) -> Tensor:
        for step in steps:
            x = step(x, gen)
        return x

    return apply
