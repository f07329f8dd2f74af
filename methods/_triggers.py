"""Trigger construction and batching helpers shared by the data-poisoning baselines.

Every helper works on images in ``[0, 1]`` with shape ``[N, C, H, W]`` (normalisation happens
inside the model) and draws its randomness from an explicit ``torch.Generator`` or seed, so a
trigger set is a pure function of its inputs and seed.

Contents
--------
- class helpers: :func:`check_class`, :func:`class_index`, :func:`sample_index`
- mixing (Composite, Function-coupled): :func:`half_mix` (Lin et al.'s ``HalfMixer``),
  :func:`blend` (invisible fusion), :func:`direct_fusion` (Wen et al.'s 2×2 canvas)
- stamps (Zhang et al.): :func:`text_mask`, :func:`stamp_mask`, :func:`gaussian_pattern`,
  :func:`add_pattern`
- abstract images (Adi et al. fallback): :func:`render_abstract`
- batch sources for :func:`wmbench.training.fit`: :func:`appended_batches`
"""
from __future__ import annotations

import math
from typing import Iterator, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from wmbench.data import Split, conform
from wmbench.errors import UserError
from wmbench.training import Batch, BatchSource


# -------------------------------------------------------------------------------------------
# Classes and sampling
# -------------------------------------------------------------------------------------------
def check_class(section: str, name: str, value: int, num_classes: int) -> None:
    """Raise :class:`UserError` unless ``0 <= value < num_classes``."""
    if not 0 <= int(value) < num_classes:
        raise UserError(f"{section}.{name} must be a class in [0, {num_classes - 1}], got {value}")


def class_index(y: Tensor, classes: Sequence[int]) -> Tensor:
    """Indices of the rows of ``y`` whose label is in ``classes`` (ascending)."""
    wanted = torch.as_tensor(list(classes), dtype=y.dtype)
    return torch.nonzero(torch.isin(y, wanted)).flatten()


def sample_index(index: Tensor, n: int, gen: torch.Generator, *, replace: bool = False) -> Tensor:
    """``n`` entries of ``index`` drawn with ``gen``: without replacement (at most all of them)
    unless ``replace``, in which case exactly ``n`` are drawn uniformly with replacement."""
    if index.numel() == 0:
        return index[:0]
    if replace:
        return index[torch.randint(index.numel(), (n,), generator=gen)]
    return index[torch.randperm(index.numel(), generator=gen)[:n]]


# -------------------------------------------------------------------------------------------
# Mixing two images
# -------------------------------------------------------------------------------------------
def _half_mix_columns(a: Tensor, b: Tensor, gen: torch.Generator, jitter: int, shake: bool) -> Tensor:
    """Left part from ``a``, right part from ``b`` (the ``vertical`` branch of ``HalfMixer``)."""
    n, c, h, w = a.shape
    half = w // 2
    j_max = max(0, min(int(jitter), half - 1))
    jit = torch.randint(-j_max, j_max + 1, (n,), generator=gen)
    split = half + jit  # columns taken from a
    if shake:
        # pivot_a in [0, half - jit), pivot_b in [-jit, half): a random window of each image.
        pivot_a = (torch.rand(n, generator=gen) * (half - jit)).floor().long()
        pivot_b = (torch.rand(n, generator=gen) * (half + jit)).floor().long() - jit
    else:
        centre = w // 4 - torch.div(jit, 2, rounding_mode="floor")
        pivot_a, pivot_b = centre, centre
    cols = torch.arange(w).view(1, w)
    from_a = cols < split.view(n, 1)
    src_a = (pivot_a.view(n, 1) + cols).clamp(0, w - 1)
    src_b = (pivot_b.view(n, 1) + cols - half).clamp(0, w - 1)
    expand = lambda idx: idx.view(n, 1, 1, w).expand(n, c, h, w)  # noqa: E731
    out_a = a.gather(3, expand(src_a))
    out_b = b.gather(3, expand(src_b))
    return torch.where(expand(from_a), out_a, out_b)


def half_mix(
    a: Tensor,
    b: Tensor,
    gen: torch.Generator,
    *,
    jitter: int = 3,
    shake: bool = True,
    split: str = "random",
    swap: bool = True,
) -> Tensor:
    """Lin et al.'s ``HalfMixer`` (composite-attack ``utils/mixer.py``), vectorised over a batch.

    Each output image is one part of ``a[i]`` next to one part of ``b[i]``: with probability 1/2
    the two are swapped (``swap``); the split is vertical (left | right) or horizontal
    (top / bottom) at random (``split="random"``, or fixed ``"vertical"`` / ``"horizontal"``);
    the boundary moves by a jitter drawn from ``[-jitter, jitter]``; with ``shake`` each part is a
    window taken at a random offset of its image, otherwise the centred window. Gap 0 (the
    reference default), so every pixel comes from ``a`` or ``b``. The jitter is capped at
    ``side // 2 - 1`` for very small images.
    """
    if a.shape != b.shape:
        raise ValueError(f"half_mix: images differ in shape, {tuple(a.shape)} vs {tuple(b.shape)}")
    if split not in ("random", "vertical", "horizontal"):
        raise UserError(f"split must be random, vertical or horizontal, got {split!r}")
    n = a.shape[0]
    if n == 0:
        return a.clone()
    if swap:
        flip = (torch.rand(n, generator=gen) < 0.5).view(n, 1, 1, 1)
        a, b = torch.where(flip, b, a), torch.where(flip, a, b)
    if split == "random":
        vertical = torch.rand(n, generator=gen) < 0.5
    else:
        vertical = torch.full((n,), split == "vertical", dtype=torch.bool)
    out = torch.empty_like(a)
    v = torch.nonzero(vertical).flatten()
    hz = torch.nonzero(~vertical).flatten()
    if v.numel():
        out[v] = _half_mix_columns(a[v], b[v], gen, jitter, shake)
    if hz.numel():
        t = lambda x: x.transpose(2, 3)  # noqa: E731  rows become columns
        out[hz] = t(_half_mix_columns(t(a[hz]), t(b[hz]), gen, jitter, shake))
    return out


def blend(a: Tensor, b: Tensor, alpha: float = 0.5) -> Tensor:
    """Invisible fusion (Wen et al.): ``alpha * a + (1 - alpha) * b``."""
    return (alpha * a + (1.0 - alpha) * b).clamp(0.0, 1.0)


def direct_fusion(a: Tensor, b: Tensor, fill: float = 1.0) -> Tensor:
    """Direct fusion (Wen et al.): a canvas of twice the side with ``a`` top-left, ``b``
    bottom-right and the other two quadrants ``fill`` (white), downsized back to the input size
    (bilinear with antialias)."""
    n, c, h, w = a.shape
    canvas = torch.full((n, c, 2 * h, 2 * w), float(fill), dtype=a.dtype)
    canvas[:, :, :h, :w] = a
    canvas[:, :, h:, w:] = b
    return F.interpolate(canvas, size=(h, w), mode="bilinear", align_corners=False, antialias=True).clamp(0.0, 1.0)


# -------------------------------------------------------------------------------------------
# Stamps
# -------------------------------------------------------------------------------------------
def _default_font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: scalable default font
    except TypeError:  # older Pillow: the fixed bitmap font
        return ImageFont.load_default()


def text_mask(text: str, size: int, *, xy: Optional[Tuple[int, int]] = None, font_size: int = 10) -> Tensor:
    """A ``[size, size]`` boolean mask of ``text`` drawn with Pillow's default font.

    ``xy`` is the top-left anchor of the text; ``None`` puts it at the bottom-left corner (one
    pixel from the bottom edge), where it fits. Antialiased edges are binarised at half
    intensity so the stamped text is pure colour.
    """
    from PIL import Image, ImageDraw

    font = _default_font(font_size)
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    if xy is None:
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        xy = (-left, max(0, size - 1 - bottom))
    draw.text(tuple(xy), text, fill=255, font=font)
    mask = torch.from_numpy(np.asarray(canvas, dtype=np.uint8).copy()) >= 128
    if not bool(mask.any()):
        raise UserError(f"text {text!r} at {tuple(xy)} leaves no visible pixel on a {size}×{size} image")
    return mask


def stamp_mask(x: Tensor, mask: Tensor, color: Sequence[float] = (1.0,)) -> Tensor:
    """A copy of ``x`` with the pixels of ``mask`` (``[H, W]`` bool) set to ``color`` (per channel,
    one value = all channels)."""
    c = x.shape[1]
    colour = torch.as_tensor(list(color), dtype=x.dtype)
    if colour.numel() == 1:
        colour = colour.repeat(c)
    if colour.numel() != c:
        raise UserError(f"color has {colour.numel()} values but images have {c} channels")
    m = mask.to(torch.bool).view(1, 1, *mask.shape)
    return torch.where(m, colour.view(1, c, 1, 1), x)


def gaussian_pattern(shape: Tuple[int, int, int], sigma: float, seed: int) -> Tensor:
    """One fixed noise pattern ``N(0, sigma^2)`` of shape ``(C, H, W)``, drawn from ``seed``."""
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randn(tuple(shape), generator=gen) * float(sigma)


def add_pattern(x: Tensor, pattern: Tensor) -> Tensor:
    """``clip(x + pattern, 0, 1)`` for every image of ``x``."""
    return (x + pattern.unsqueeze(0).to(x.dtype)).clamp(0.0, 1.0)


# -------------------------------------------------------------------------------------------
# Abstract images (offline fallback for Adi et al.)
# -------------------------------------------------------------------------------------------
def render_abstract(n: int, channels: int, size: int, seed: int, *, shapes: Tuple[int, int] = (3, 8),
                    oversample: int = 4) -> Tensor:
    """``n`` seeded abstract images ``[n, channels, size, size]`` in ``[0, 1]``.

    Each is a smooth two-colour linear gradient in a random direction overlaid with
    ``shapes[0]..shapes[1]`` random translucent ellipses and polygons (3–6 vertices) of random
    colours, rendered in RGB at ``oversample`` times the side with Pillow, then reduced to
    ``size`` (antialiased) and to ``channels`` with :func:`wmbench.data.conform`.
    """
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(int(seed))
    side = max(size, 8) * int(oversample)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / max(side - 1, 1)
    images = np.empty((n, side, side, 3), dtype=np.uint8)
    for i in range(n):
        angle = rng.uniform(0.0, 2.0 * math.pi)
        t = math.cos(angle) * xx + math.sin(angle) * yy
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        c0, c1 = rng.random(3), rng.random(3)
        background = (1.0 - t)[..., None] * c0 + t[..., None] * c1
        img = Image.fromarray((background * 255).round().astype(np.uint8), "RGB").convert("RGBA")
        for _ in range(int(rng.integers(shapes[0], shapes[1] + 1))):
            layer = Image.new("RGBA", (side, side), (0, 0, 0, 0))
            draw = ImageDraw.Draw(layer)
            fill = tuple(int(v) for v in rng.integers(0, 256, 3)) + (int(rng.integers(120, 256)),)
            if rng.random() < 0.5:
                x0, x1 = sorted(rng.uniform(-0.2, 1.2, 2) * side)
                y0, y1 = sorted(rng.uniform(-0.2, 1.2, 2) * side)
                draw.ellipse((x0, y0, max(x1, x0 + 2), max(y1, y0 + 2)), fill=fill)
            else:
                k = int(rng.integers(3, 7))
                points = [tuple(p) for p in (rng.uniform(-0.1, 1.1, (k, 2)) * side).tolist()]
                draw.polygon(points, fill=fill)
            img = Image.alpha_composite(img, layer)
        images[i] = np.asarray(img.convert("RGB"))
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255.0)
    return conform(Split(x, torch.zeros(n, dtype=torch.long)), channels, size).x


# -------------------------------------------------------------------------------------------
# Batch sources
# -------------------------------------------------------------------------------------------
def appended_batches(x: Tensor, y: Tensor, wm_x: Tensor, wm_y: Tensor, *, batch_size: int,
                     per_batch: int) -> BatchSource:
    """Clean batches of ``batch_size`` (reshuffled every epoch), each followed by ``per_batch``
    watermark samples taken in turn from a per-epoch shuffled cycle through ``wm_x`` (Adi et al.'s
    "2 trigger images appended to every batch"; Wen et al.'s "10 triggers per batch")."""
    n, m = x.shape[0], wm_x.shape[0]

    def batches(epoch: int, gen: torch.Generator) -> Iterator[Batch]:
        order = torch.randperm(n, generator=gen)
        cycle = torch.randperm(m, generator=gen) if m else torch.empty(0, dtype=torch.long)
        pos = 0
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            if m and per_batch > 0:
                take = torch.arange(pos, pos + per_batch) % m
                pos = (pos + per_batch) % m
                w = cycle[take]
                yield torch.cat([x[idx], wm_x[w]]), torch.cat([y[idx], wm_y[w]])
            else:
                yield x[idx], y[idx]

    return batches
