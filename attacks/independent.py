"""Independent clean models: the null hypothesis for false-positive rates (DeepTracer Table 17).

Not an attack on the victim: the "suspect" is a model trained *without any access* to the victim,
on the attacker's split (same distribution as the owner's data), with its own seed. Verifying it
with a method's key set measures how often an innocent model is wrongly flagged; across seeds and
variants the share of detected suspects is the false-positive rate at the threshold.

Variants (``variant``): ``clean`` (plain training), ``mixup`` (Zhang et al., ICLR 2018,
α = ``alpha``), ``cutmix`` (Yun et al., ICCV 2019, β = ``alpha``), or ``method:NAME`` — a model
watermarked with another registered method (e.g. ``method:badnets``), an in-distribution
watermark that is *not* the one being verified. ``arch`` None = the victim's architecture.
``epochs`` None = the training schedule's (``train.epochs``; fewer epochs is another recipe), and
``null_seed`` tells apart several null models of one recipe verified against one victim.
Run e.g. ``--attacks independent --seeds 0,1,2,3,4 --sweep attacks.independent.variant=clean,mixup,cutmix``,
or ``wmbench calibrate`` for a calibrated false-positive study.

The null model never queries the victim and knows nothing of its watermark, so its store spec
leaves the victim out (:func:`wmbench.artifacts.victim_free`): one null model serves the cells of
every method of the same data, architecture and seed.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from wmbench.api import Attack, AttackContext, AttackOutcome
from wmbench.blackbox import Blackbox
from wmbench.config import resolve
from wmbench.errors import UserError
from wmbench.registry import METHODS, register_attack
from wmbench.training import tensor_batches
from wmbench.utils import generator


@dataclass(frozen=True)
class IndependentConfig:
    """variant: str = "clean"   clean | mixup | cutmix | method:NAME.
    alpha: float = 1.0          Beta(α, α) mixing parameter for mixup / cutmix.
    arch: str | None = None     None = the victim's architecture.
    epochs: int | None = None   None = train.epochs.
    null_seed: int = 0          mixed into the null model's seeds (several models per recipe).
    """

    variant: str = "clean"
    alpha: float = 1.0
    arch: Optional[str] = None
    epochs: Optional[int] = None
    null_seed: int = 0

    PROFILES: ClassVar[Mapping[str, Mapping[str, Any]]] = {"smoke": {}, "quick": {}, "paper": {}}

    def validate(self) -> None:
        if self.variant not in ("clean", "mixup", "cutmix") and not self.variant.startswith("method:"):
            raise UserError(f"attacks.independent.variant must be clean, mixup, cutmix or method:NAME, got {self.variant!r}")
        if self.variant.startswith("method:"):
            METHODS.get(self.variant.split(":", 1)[1])
        if not self.alpha > 0:
            raise UserError(f"attacks.independent.alpha must be > 0, got {self.alpha}")
        if self.epochs is not None and self.epochs < 1:
            raise UserError(f"attacks.independent.epochs must be 1 or more (or none), got {self.epochs}")
        if self.null_seed < 0:
            raise UserError(f"attacks.independent.null_seed must be 0 or more, got {self.null_seed}")


def _mix_loss(kind: str, alpha: float, num_classes: int, seed: int):
    beta = torch.distributions.Beta(torch.tensor(alpha), torch.tensor(alpha))
    torch.manual_seed(seed)

    def loss_fn(model: nn.Module, batch) -> torch.Tensor:
        x, y = batch
        lam = float(beta.sample())
        perm = torch.randperm(x.shape[0], device=x.device)
        if kind == "mixup":
            mixed = lam * x + (1 - lam) * x[perm]
        else:
            h, w = x.shape[2:]
            ch, cw = int(h * (1 - lam) ** 0.5), int(w * (1 - lam) ** 0.5)
            cy, cx = int(torch.randint(h, (1,))), int(torch.randint(w, (1,)))
            y0, y1, x0, x1 = max(cy - ch // 2, 0), min(cy + ch // 2, h), max(cx - cw // 2, 0), min(cx + cw // 2, w)
            mixed = x.clone()
            mixed[:, :, y0:y1, x0:x1] = x[perm, :, y0:y1, x0:x1]
            lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)
        logits = model(mixed)
        return lam * F.cross_entropy(logits, y) + (1 - lam) * F.cross_entropy(logits, y[perm])

    return loss_fn


@register_attack("independent")
class Independent(Attack):
    """An independently trained model (see the module docstring); never queries the victim."""

    paper = "https://arxiv.org/abs/2511.08985"
    year = 2026
    category = "null model (false positives)"
    needs = frozenset()
    Config = IndependentConfig

    def run(self, target: Blackbox | nn.Module, ctx: AttackContext) -> AttackOutcome:
        cfg = self.config
        data = ctx.data.attacker
        if cfg.epochs is not None:
            ctx = dataclasses.replace(ctx, train=dataclasses.replace(ctx.train, epochs=cfg.epochs))
        tag = ("independent",) if cfg.null_seed == 0 else ("independent", f"null{cfg.null_seed}")
        if cfg.variant.startswith("method:"):
            name = cfg.variant.split(":", 1)[1]
            method_cls = METHODS.get(name)
            method = method_cls(resolve(method_cls.Config, ctx.profile, section=f"methods.{name}"))
            own = dataclasses.replace(ctx, data=dataclasses.replace(ctx.data, owner=data, test=data),
                                      arch=cfg.arch or ctx.victim_arch,
                                      seed=ctx.seed if cfg.null_seed == 0 else ctx.seed_for(*tag))
            own.benign_provider = None
            model = method.embed(own, method.keygen(own))
            return AttackOutcome(model=model, queries=0)
        model = ctx.new_model(cfg.arch or ctx.victim_arch, seed=ctx.seed_for(*tag, "init"))
        loss = _mix_loss(cfg.variant, cfg.alpha, ctx.data.num_classes, ctx.seed_for(*tag, "mix")) \
            if cfg.variant != "clean" else None
        kwargs = {"loss_fn": loss} if loss is not None else {}
        ctx.fit(model, tensor_batches(data.x, data.y, batch_size=ctx.train.batch_size), seed=ctx.seed_for(*tag),
                desc=f"independent-{cfg.variant}", **kwargs)
        return AttackOutcome(model=model, queries=0)
