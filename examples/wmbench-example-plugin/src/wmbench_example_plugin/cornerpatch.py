"""CornerPatch: a BadNets-style watermark with a checkerboard in the top-left corner.

Paper: the idea is BadNets (Gu, Dolan-Gavitt, Garg, "BadNets: Identifying Vulnerabilities in the
Machine Learning Model Supply Chain", arXiv:1708.06733, 2017), used as a watermark. This
variant exists to show how a third-party method plugs into wmbench; it is not from a paper.

Idea: stamp a small black-and-white checkerboard on the top-left corner of a fraction of the
owner's training images (of classes other than the target), label them as the target class and
add them to the training set; the key set is stamped test images of non-target classes,
labelled with the target. Ownership is claimed when a suspect labels enough keys as the target
(wmbench's inherited hard-label ``verify``).

Choices [example]: stamped copies are *added* to the owner's data (BadNets replaces them);
triggers are built in [0, 1] before the model's normalisation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import torch
from torch import Tensor, nn

from wmbench.api import Context, KeySet, WatermarkMethod
from wmbench.errors import UserError
from wmbench.registry import register_method


@dataclass(frozen=True)
class CornerPatchConfig:
    """CornerPatch parameters (defaults = the ``paper`` profile).

    target: int = 0              watermark (target) label.
    poison_rate: float = 0.05    stamped copies added, as a fraction of the owner's training set.
    patch_size: int = 4          side of the checkerboard, in pixels.
    n_keys: int = 1000           size of the verification key set (stamped non-target test images).
    """

    target: int = 0
    poison_rate: float = 0.05
    patch_size: int = 4
    n_keys: int = 1000

    PROFILES: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "smoke": {"poison_rate": 0.1, "n_keys": 200},
        "quick": {},
        "paper": {},
    }

    def validate(self) -> None:
        if not 0.0 < self.poison_rate < 1.0:
            raise UserError(f"methods.cornerpatch.poison_rate must be in (0, 1), got {self.poison_rate}")
        if self.patch_size < 2:
            raise UserError(f"methods.cornerpatch.patch_size must be >= 2 (a checkerboard), got {self.patch_size}")
        if self.n_keys < 1 or self.target < 0:
            raise UserError("methods.cornerpatch.n_keys must be >= 1 and target >= 0")


def checkerboard(x: Tensor, size: int) -> Tensor:
    """A copy of images ``x`` [N, C, H, W] with a ``size``×``size`` checkerboard top left."""
    if size > min(x.shape[-2:]):
        raise UserError(f"a {size}-pixel checkerboard does not fit {tuple(x.shape[-2:])} images")
    idx = torch.arange(size)
    board = ((idx.view(-1, 1) + idx.view(1, -1)) % 2).to(x.dtype)
    out = x.clone()
    out[:, :, :size, :size] = board
    return out


@register_method("cornerpatch")
class CornerPatch(WatermarkMethod):
    """Checkerboard corner-patch backdoor watermark (see the module docstring)."""

    paper = "https://arxiv.org/abs/1708.06733"
    year = 2017
    category = "in-distribution / backdoor"
    Config = CornerPatchConfig

    def keygen(self, ctx: Context) -> KeySet:
        cfg: CornerPatchConfig = self.config
        if cfg.target >= ctx.data.num_classes:
            raise UserError(f"methods.cornerpatch.target must be below {ctx.data.num_classes}, got {cfg.target}")
        gen = torch.Generator().manual_seed(ctx.seed_for("cornerpatch", "keys"))
        owner, test = ctx.data.owner, ctx.data.test
        sources = torch.nonzero(owner.y != cfg.target).flatten()
        n_poison = min(sources.numel(), max(1, round(cfg.poison_rate * len(owner))))
        poison = sources[torch.randperm(sources.numel(), generator=gen)[:n_poison]]
        candidates = torch.nonzero(test.y != cfg.target).flatten()
        keys = candidates[torch.randperm(candidates.numel(), generator=gen)[: cfg.n_keys]]
        return KeySet(
            embed_x=checkerboard(owner.x[poison], cfg.patch_size),
            embed_y=torch.full((n_poison,), cfg.target, dtype=torch.long),
            verify_x=checkerboard(test.x[keys], cfg.patch_size),
            verify_y=torch.full((keys.numel(),), cfg.target, dtype=torch.long),
            meta={"target": cfg.target, "n_poison": n_poison},
        )

    def embed(self, ctx: Context, keys: KeySet) -> nn.Module:
        owner = ctx.data.owner
        model = ctx.new_model(seed=ctx.seed_for("victim", "init"))
        ctx.fit(model, (torch.cat([owner.x, keys.embed_x]), torch.cat([owner.y, keys.embed_y])),
                seed=ctx.seed_for("victim", "order"), desc="cornerpatch victim")
        return model
