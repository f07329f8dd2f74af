"""WeightNoise: a white-box removal attack that perturbs every weight, then fine-tunes briefly.

Paper: none; a textbook perturbation baseline, written to show how a third-party attack plugs
into wmbench.

Idea: a watermark that lives in a few fragile directions of weight space may not survive
random perturbation. Add Gaussian noise to every weight tensor (standard deviation ``sigma``
times that tensor's own standard deviation), then fine-tune on the attacker's labelled split
for ``finetune_epochs`` epochs to win back the accuracy the noise cost.

Choices [example]: biases and normalisation parameters (tensors of one dimension) are left
alone; fine-tuning uses the run's training schedule with this attack's ``lr``; the input model
is never modified (``private_copy``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import torch
from torch import nn

from wmbench.api import Attack, AttackContext, AttackOutcome, private_copy
from wmbench.errors import UserError
from wmbench.registry import register_attack


@dataclass(frozen=True)
class WeightNoiseConfig:
    """WeightNoise parameters (defaults = the ``paper`` profile).

    sigma: float = 0.5           noise standard deviation, relative to each weight tensor's.
    finetune_epochs: int = 5     fine-tuning epochs on the attacker's split afterwards (0 = none).
    lr: float = 1e-3             fine-tuning learning rate.
    """

    sigma: float = 0.5
    finetune_epochs: int = 5
    lr: float = 1e-3

    PROFILES: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "smoke": {"finetune_epochs": 1},
        "quick": {"finetune_epochs": 2},
        "paper": {},
    }

    def validate(self) -> None:
        if self.sigma <= 0:
            raise UserError(f"attacks.weightnoise.sigma must be > 0, got {self.sigma}")
        if self.finetune_epochs < 0:
            raise UserError(f"attacks.weightnoise.finetune_epochs must be >= 0, got {self.finetune_epochs}")
        if self.lr <= 0:
            raise UserError(f"attacks.weightnoise.lr must be > 0, got {self.lr}")


@register_attack("weightnoise")
class WeightNoise(Attack):
    """Gaussian weight noise plus short fine-tuning (see the module docstring)."""

    paper = "none (example plugin: a perturbation baseline)"
    year = 2025
    category = "removal / weight noise"
    needs = frozenset({"weights"})
    Config = WeightNoiseConfig

    def run(self, target: nn.Module, ctx: AttackContext) -> AttackOutcome:
        cfg: WeightNoiseConfig = self.config
        model = private_copy(target)
        gen = torch.Generator().manual_seed(ctx.seed_for("weightnoise", "noise"))
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() > 1:
                    p.add_(torch.randn(p.shape, generator=gen).to(p) * cfg.sigma * p.std())
        if cfg.finetune_epochs:
            attacker = ctx.data.attacker
            ctx.fit(model, (attacker.x, attacker.y), seed=ctx.seed_for("weightnoise", "order"), desc="weightnoise",
                    cfg=dataclasses.replace(ctx.train, epochs=cfg.finetune_epochs, lr=cfg.lr))
        return AttackOutcome(model=model, queries=0, metrics={"sigma": cfg.sigma})
