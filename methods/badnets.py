"""BadNets as a watermark.

Paper: Gu, Dolan-Gavitt, Garg, "BadNets: Identifying Vulnerabilities in the Machine Learning
Model Supply Chain", arXiv:1708.06733 (2017); used as a watermark baseline by DeepTracer
(AAAI 2026, App. "Compared Watermarking Methods": "a small pixel block in the bottom-right
corner"). Reference settings: BackdoorBox ``core/attacks/BadNets.py`` (3×3 white square at
the bottom right, x' = (1 - w)·x + w·pattern, poisoned rate 0.05, target 1).

Idea: stamp a fixed patch on a fraction of the owner's training images (of other classes than
the target) and relabel them as the target class; the key set is the stamped test images of
non-target classes, labelled with the target.

Choices where the sources are silent [wmbench]: poisoned images *replace* their clean originals
(BackdoorBox) — ``mode="append"`` adds them instead; triggers are built in [0, 1] before
normalisation; the key set holds up to ``n_keys`` stamped test images.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Tuple

import torch
from torch import Tensor, nn

from wmbench.api import Context, KeySet, WatermarkMethod
from wmbench.errors import UserError
from wmbench.registry import register_method
from wmbench.utils import generator

POSITIONS = ("bottom_right", "bottom_left", "top_right", "top_left", "center")


@dataclass(frozen=True)
class BadNetsConfig:
    """BadNets parameters (defaults = reference settings).

    target: int = 1              watermark (target) label.
    poison_rate: float = 0.05    fraction of the owner's training set stamped and relabelled
                                 (the issue's 1 % / 10 % settings are ``--set`` values).
    patch_size: int = 3          side of the square patch, in pixels.
    position: str = "bottom_right"   one of bottom_right, bottom_left, top_right, top_left, center.
    margin: int = 0              distance of the patch from the chosen corner, in pixels.
    color: tuple = (1.0,)        patch intensity per channel in [0, 1] (one value = all channels).
    n_keys: int = 2000           size of the verification key set (stamped non-target test images).
    mode: str = "replace"        "replace" the poisoned originals or "append" the stamped copies.
    """

    target: int = 1
    poison_rate: float = 0.05
    patch_size: int = 3
    position: str = "bottom_right"
    margin: int = 0
    color: Tuple[float, ...] = (1.0,)
    n_keys: int = 2000
    mode: str = "replace"

    PROFILES: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "smoke": {"poison_rate": 0.1, "n_keys": 300},
        "quick": {},
        "paper": {},
    }

    def validate(self) -> None:
        if not 0.0 < self.poison_rate < 1.0:
            raise UserError(f"methods.badnets.poison_rate must be in (0, 1), got {self.poison_rate}")
        if self.patch_size < 1:
            raise UserError(f"methods.badnets.patch_size must be >= 1, got {self.patch_size}")
        if self.margin < 0:
            raise UserError(f"methods.badnets.margin must be >= 0 (pixels from the corner), got {self.margin}")
        if self.position not in POSITIONS:
            raise UserError(f"methods.badnets.position must be one of {', '.join(POSITIONS)}, got {self.position!r}")
        if self.mode not in ("replace", "append"):
            raise UserError(f"methods.badnets.mode must be 'replace' or 'append', got {self.mode!r}")
        if not self.color or any(not 0.0 <= c <= 1.0 for c in self.color):
            raise UserError(f"methods.badnets.color must be values in [0, 1], got {self.color}")
        if self.n_keys < 1:
            raise UserError(f"methods.badnets.n_keys must be >= 1, got {self.n_keys}")


def stamp_patch(x: Tensor, *, size: int, position: str, color: Tuple[float, ...], margin: int = 0) -> Tensor:
    """Return a copy of images ``x`` [N, C, H, W] with a ``size``×``size`` patch of ``color``."""
    n, c, h, w = x.shape
    if size + margin > min(h, w):
        raise UserError(f"patch of {size} px (margin {margin}) does not fit a {h}×{w} image")
    if position == "center":
        top, left = (h - size) // 2, (w - size) // 2
    else:
        vertical, horizontal = position.split("_")
        top = margin if vertical == "top" else h - size - margin
        left = margin if horizontal == "left" else w - size - margin
    colour = torch.tensor(color, dtype=x.dtype)
    if colour.numel() == 1:
        colour = colour.repeat(c)
    if colour.numel() != c:
        raise UserError(f"patch color has {colour.numel()} values but images have {c} channels")
    out = x.clone()
    out[:, :, top : top + size, left : left + size] = colour.view(1, c, 1, 1)
    return out


@register_method("badnets")
class BadNets(WatermarkMethod):
    """BadNets patch watermark (see the module docstring)."""

    paper = "https://arxiv.org/abs/1708.06733"
    year = 2017
    category = "in-distribution / backdoor"
    Config = BadNetsConfig

    def _stamp(self, x: Tensor) -> Tensor:
        cfg = self.config
        return stamp_patch(x, size=cfg.patch_size, position=cfg.position, color=cfg.color, margin=cfg.margin)

    def keygen(self, ctx: Context) -> KeySet:
        cfg = self.config
        if not 0 <= cfg.target < ctx.data.num_classes:
            raise UserError(f"methods.badnets.target must be in [0, {ctx.data.num_classes - 1}], got {cfg.target}")
        gen = generator(ctx.seed_for("badnets", "keys"))
        owner, test = ctx.data.owner, ctx.data.test
        candidates = torch.nonzero(owner.y != cfg.target).flatten()
        n_poison = max(1, round(cfg.poison_rate * len(owner)))
        n_poison = min(n_poison, candidates.numel())
        poison_index = candidates[torch.randperm(candidates.numel(), generator=gen)[:n_poison]]
        key_candidates = torch.nonzero(test.y != cfg.target).flatten()
        key_index = key_candidates[torch.randperm(key_candidates.numel(), generator=gen)[: cfg.n_keys]]
        embed_x = self._stamp(owner.x[poison_index])
        verify_x = self._stamp(test.x[key_index])
        target = torch.full((n_poison,), cfg.target, dtype=torch.long)
        return KeySet(
            embed_x=embed_x,
            embed_y=target,
            verify_x=verify_x,
            verify_y=torch.full((verify_x.shape[0],), cfg.target, dtype=torch.long),
            meta={"target": cfg.target, "n_poison": n_poison, "replaced_index": poison_index.tolist()
                  if cfg.mode == "replace" else []},
        )

    def embed(self, ctx: Context, keys: KeySet) -> nn.Module:
        owner = ctx.data.owner
        keep = torch.ones(len(owner), dtype=torch.bool)
        if self.config.mode == "replace":
            keep[torch.tensor(keys.meta["replaced_index"], dtype=torch.long)] = False
        x = torch.cat([owner.x[keep], keys.embed_x])
        y = torch.cat([owner.y[keep], keys.embed_y])
        model = ctx.new_model(seed=ctx.seed_for("victim", "init"))
        ctx.fit(model, (x, y), seed=ctx.seed_for("victim", "order"), desc="badnets victim")
        return model
