"""JBDA: Jacobian-based dataset augmentation (Papernot et al.) as a model-stealing attack.

Paper: Papernot, McDaniel, Goodfellow, Jha, Celik, Swami, "Practical Black-Box Attacks against
Machine Learning", AsiaCCS 2017, https://arxiv.org/abs/1602.02697. Reference implementation:
tribhuvanesh/prediction-poisoning ``defenses/adversary/jacobian.py`` (the knockoffnets stub is
empty; MAZE's port is not used, see shared/reference/attacks.md §2.1).

Idea: start from a small labelled-by-the-victim seed set ``D`` of the attacker's data and grow
it by Jacobian-based augmentation. Each round ``r``: train a **fresh** substitute on ``D``; take
``κ`` random elements of ``D`` (all of ``D`` before round ``σ`` or without a reservoir), move each
by ``λ_r·sign ∇x CE(S(x), argmax y)`` (clamped to [0, 1]), query the new points and append
them. After ``rounds`` augmentations (or when the budget is spent) a fresh substitute is trained
on the final ``D`` for ``final_epochs`` at ``final_lr``: that is the stolen model.

Settings (``paper`` profile = the reference implementation, with Papernot et al.'s reservoir
and periodic step values): seed 100, ρ = 6 rounds, λ = 0.1, reservoir κ = 400 from round
σ = 3, sign period τ = 3; substitutes 20 epochs SGD lr 0.1, momentum 0.9, batch 64; final
100 epochs at lr 0.01 with StepLR(30, 0.1) as in knockoffnets' ``train_model``. Queries:
100·2³ + 3·400 = 2,000. The ``quick`` profile (fixed before any watermark result was seen;
shared/reference/attacks.md §2.1 CPU default): ρ = 5, κ = 1,000 from σ = 3, 10 epochs per
round, 30 final epochs: 100·2⁴ + 1,000 = 2,600 queries (round 3 takes all 800 of D).

Choices where the sources are silent or disagree [wmbench]:
- the step uses the gradient of the substitute's cross-entropy at the victim's label (the
  reference's ``fgsm_untargeted``; Papernot's Jacobian row of the label moves the other way —
  the periodic sign covers both). ``λ_r = λ·(-1)^⌊r/τ⌋`` (Papernot; the reference rounds r/τ);
  ``tau=None`` never flips;
- the reservoir draws ``min(κ, |D|)`` elements uniformly from the whole of ``D`` (every element
  with probability κ/|D|, as the reference notes), truncated to the remaining budget;
- the seed set is a seeded random sample of the pool (``query_set``/``classes`` as in
  Knockoff); hard labels are kept as int labels (CE on the argmax);
- snapshots: the substitute of every round, keyed by the queries it was trained on.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Tuple

import torch
from torch import Tensor, nn

from wmbench.api import Attack, AttackContext, AttackOutcome
from wmbench.attacks._stealing import (
    TransferSet, check_access, fgsm, pool_metrics, query_pool, query_victim, snapshot, student_model, train_config,
    train_student, validate_stealing,
)
from wmbench.blackbox import Blackbox
from wmbench.errors import UserError
from wmbench.registry import register_attack
from wmbench.utils import generator

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JBDAConfig:
    """JBDA parameters (defaults = the reference implementation / Papernot et al.; see the module docstring).

    labels: str = "soft"           "soft" (probabilities) or "hard" (top-1 label only).
    seed_size: int = 100           seed images drawn from the pool and queried first.
    rounds: int = 6                ρ, augmentation rounds (one fresh substitute each).
    step: float = 0.1              λ, pixel step of the augmentation.
    tau: int | None = 3            sign flip period τ in rounds; None = never flip.
    kappa: int | None = 400        reservoir size κ; None = augment all of D (D doubles each round).
    sigma: int = 3                 σ, first round that uses the reservoir.
    budget: int | None = None      query cap (seed included); None = no cap beyond the rounds.
    query_set: str | None = None   pool of the seed set: None = attacker split, else a dataset name.
    classes: tuple | None = None   keep only pool images of these classes (partial functionality).
    query_noise: float = 0.0       std of Gaussian noise added to every query.
    arch: str | None = None        substitute architecture; None = the victim's.
    epochs: int = 20               substitute epochs per round.
    final_epochs: int = 100        epochs of the final substitute.
    batch_size: int = 64
    optimizer: str = "sgd"         adam, sgd, adagrad, adamax or rmsprop.
    lr: float = 0.1                substitute lr in the rounds.
    final_lr: float = 0.01         lr of the final substitute.
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_step: int = 30              StepLR period; 0 = constant.
    lr_gamma: float = 0.1
    query_batch_size: int = 256    images per victim call (does not change the count).
    """

    labels: str = "soft"
    seed_size: int = 100
    rounds: int = 6
    step: float = 0.1
    tau: Optional[int] = 3
    kappa: Optional[int] = 400
    sigma: int = 3
    budget: Optional[int] = None
    query_set: Optional[str] = None
    classes: Optional[Tuple[int, ...]] = None
    query_noise: float = 0.0
    arch: Optional[str] = None
    epochs: int = 20
    final_epochs: int = 100
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 0.1
    final_lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_step: int = 30
    lr_gamma: float = 0.1
    query_batch_size: int = 256

    PROFILES: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "smoke": {"seed_size": 100, "rounds": 3, "kappa": 200, "sigma": 2, "epochs": 3, "final_epochs": 8,
                  "optimizer": "adam", "lr": 1e-3, "final_lr": 1e-3, "lr_step": 0},
        "quick": {"rounds": 5, "kappa": 1000, "sigma": 3, "epochs": 10, "final_epochs": 30},
        "paper": {},
    }

    def validate(self) -> None:
        validate_stealing("attacks.jbda", self)
        if self.seed_size < 1 or self.rounds < 0:
            raise UserError(f"attacks.jbda: seed_size must be >= 1 and rounds >= 0, got {self.seed_size}, {self.rounds}")
        if not self.step > 0:
            raise UserError(f"attacks.jbda.step must be > 0, got {self.step}")
        if self.tau is not None and self.tau < 1:
            raise UserError(f"attacks.jbda.tau must be >= 1 or null, got {self.tau}")
        if self.kappa is not None and self.kappa < 1:
            raise UserError(f"attacks.jbda.kappa must be >= 1 or null, got {self.kappa}")
        if self.sigma < 0 or self.final_epochs < 1 or not self.final_lr > 0:
            raise UserError("attacks.jbda: sigma must be >= 0, final_epochs >= 1 and final_lr > 0")


def step_size(step: float, round_index: int, tau: Optional[int]) -> float:
    """``λ_r = λ·(-1)^⌊r/τ⌋`` (Papernot's periodic step); ``tau=None`` keeps ``+λ``."""
    if tau is None:
        return step
    return step * (-1) ** (round_index // tau)


@register_attack("jbda")
class JBDA(Attack):
    """JBDA stealing, soft or hard labels (see the module docstring)."""

    paper = "https://arxiv.org/abs/1602.02697"
    year = 2017
    category = "stealing"
    needs = frozenset({"probs"})
    label_modes = ("soft", "hard")
    Config = JBDAConfig

    def run(self, target: Blackbox | nn.Module, ctx: AttackContext) -> AttackOutcome:
        cfg: JBDAConfig = self.config
        target = check_access(target, cfg.labels, "JBDA")
        started = time.perf_counter()
        budget = cfg.budget if cfg.budget is not None else float("inf")
        pool = query_pool(ctx, cfg.query_set, cfg.classes)
        gen = generator(ctx.seed_for("jbda", "sampling"))
        noise_gen = generator(ctx.seed_for("jbda", "noise"))
        qkw = dict(labels=cfg.labels, noise=cfg.query_noise, gen=noise_gen, batch_size=cfg.query_batch_size)
        n_seed = int(min(cfg.seed_size, len(pool), budget))
        seed_x = pool.x[torch.randperm(len(pool), generator=gen)[:n_seed]]
        dx, dy = query_victim(target, seed_x, **qkw)
        xs: List[Tensor] = [dx]
        ys: List[Tensor] = [dy]
        snapshots = []
        round_cfg = train_config(cfg)
        for r in range(cfg.rounds):
            if target.queries >= budget:
                break
            d_x, d_y = torch.cat(xs), torch.cat(ys)
            substitute = student_model(ctx, cfg.arch, "jbda", "substitute", r)
            transfer = TransferSet()
            transfer.add(d_x, d_y)
            train_student(ctx, substitute, transfer, round_cfg, seed=ctx.seed_for("jbda", "order", r),
                          desc=f"jbda-{cfg.labels}-round{r}")
            snapshots.append(("queries", float(target.queries), snapshot(substitute)))
            # Jacobian-based augmentation of (a reservoir of) D
            if cfg.kappa is not None and r >= cfg.sigma:
                chosen = torch.randperm(d_x.shape[0], generator=gen)[:cfg.kappa]
            else:
                chosen = torch.arange(d_x.shape[0])
            remaining = budget - target.queries
            if chosen.numel() > remaining:
                chosen = chosen[: int(remaining)]
            lam = step_size(cfg.step, r, cfg.tau)
            labels = d_y[chosen].argmax(1) if d_y.is_floating_point() else d_y[chosen]
            new_x = torch.cat([fgsm(substitute, d_x[chosen[i:i + 512]], labels[i:i + 512], lam, device=ctx.device)
                               for i in range(0, chosen.numel(), 512)]) if chosen.numel() else d_x[:0]
            sent, out = query_victim(target, new_x, **qkw)
            xs.append(sent)
            ys.append(out)
            log.info("jbda round %d: lambda %+.3f, %d new points, |D| = %d, %d queries", r, lam, chosen.numel(),
                     sum(x.shape[0] for x in xs), target.queries)
        final = student_model(ctx, cfg.arch, "jbda", "final")
        transfer = TransferSet()
        transfer.add(torch.cat(xs), torch.cat(ys))
        history = train_student(ctx, final, transfer, train_config(cfg, epochs=cfg.final_epochs, lr=cfg.final_lr),
                                seed=ctx.seed_for("jbda", "order", "final"), desc=f"jbda-{cfg.labels}-final")
        metrics: Dict[str, float] = {
            **pool_metrics(pool, cfg.query_set),
            "seed_size": float(n_seed),
            "transfer_size": float(len(transfer)),
            "attack_wall_s": time.perf_counter() - started,
            "final_loss": history[-1]["loss"],
        }
        return AttackOutcome(model=final, queries=target.queries, metrics=metrics, snapshots=snapshots)
