"""Distillation-based model stealing (Hinton-style KD with no ground-truth term).

Paper: DeepTracer (AAAI 2026), App. "Distillation-Based Model Stealing Attacks" and Fig. 8:
knowledge distillation (Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network",
2015, https://arxiv.org/abs/1503.02531) with the weight of the hard-label term set to zero, on
the training data *without labels*, using the victim's soft labels and a KL loss; accuracy and
WSR are reported over the temperature T (values not listed).

Idea: query the victim once on the attacker's images, then train a student to match the
victim's temperature-softened outputs: ``loss = T²·KL(q_T ‖ softmax(z_s / T))`` where
``q_T = softmax(log p / T) ∝ p^(1/T)`` is computed from the victim's *probabilities* (a
black-box attacker never sees logits; softmax(log p / T) equals softmax(z / T) exactly).

Settings. The paper names neither T nor the schedule; defaults (``paper`` profile) follow the
MEA-Defender distillation script (Adam 1e-3, 100 epochs, batch 128, same architecture) with
T = 3 (WRT's distillation attack) and Hinton's T² factor (``t2_scale``; MEA-Defender omits it).
The paper's Figure 8 sweep is ``--sweep attacks.distill.temperature=1,3,5,7``. The ``quick``
profile (fixed before any watermark result was seen; shared/reference/attacks.md §2.6) trains
20 epochs on the attacker's split.

Choices where the paper is silent [wmbench]: the data are the attacker's split (the paper's
"full training set" would include the owner's data, which wmbench never gives an attacker;
``query_set`` can name any registered dataset instead); each image is queried once (label-once
transfer set, ``budget=None`` = the whole pool once); no augmentation. Scenario options as in
Knockoff: ``classes``, ``query_noise``, ``adv_eps``/``adv_fraction``, ``arch``, ``optimizer``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Optional, Tuple

from torch import nn

from wmbench.api import Attack, AttackContext, AttackOutcome
from wmbench.attacks._stealing import (
    FGSMAugment, TransferSet, check_access, cycled_order, distillation_loss, pool_metrics, query_pool, query_rows,
    student_model, train_config, train_student, validate_stealing,
)
from wmbench.augment import compose as pool_transform
from wmbench.blackbox import Blackbox
from wmbench.config import NEW_SETTING
from wmbench.errors import UserError
from wmbench.registry import register_attack
from wmbench.utils import generator


@dataclass(frozen=True)
class DistillConfig:
    """Distillation-stealing parameters (see the module docstring).

    labels: str = "soft"           distillation needs probabilities (only "soft").
    temperature: float = 3.0       T > 0; the paper's Fig. 8 sweeps it.
    t2_scale: bool = True          multiply the KL by T² (Hinton).
    budget: int | None = None      queries; None = the whole pool once.
    query_set: str | None = None   None = attacker split of the victim's dataset, else a dataset name.
    classes: tuple | None = None   keep only pool images of these classes (partial functionality).
    query_noise: float = 0.0       std of Gaussian noise added to every query.
    pool_transforms: tuple = ()    transformations of each query batch: flip, crop, mixup, cutmix
                                   (:mod:`wmbench.augment`); the transformed images are sent.
    adv_eps: float = 0.0           FGSM step of adversarial-training stealing; 0 = off.
    adv_fraction: float = 0.1      share of the transfer set turned into FGSM queries each epoch.
    arch: str | None = None        student architecture; None = the victim's.
    epochs: int = 100
    batch_size: int = 128
    optimizer: str = "adam"        adam, sgd, adagrad, adamax or rmsprop.
    lr: float = 1e-3
    momentum: float = 0.9          SGD only.
    weight_decay: float = 0.0
    lr_step: int = 0               StepLR period; 0 = constant lr.
    lr_gamma: float = 0.1
    query_batch_size: int = 256    images per victim call (does not change the count).
    """

    labels: str = "soft"
    temperature: float = 3.0
    t2_scale: bool = True
    budget: Optional[int] = None
    query_set: Optional[str] = None
    classes: Optional[Tuple[int, ...]] = None
    query_noise: float = 0.0
    pool_transforms: Tuple[str, ...] = field(default=(), metadata=NEW_SETTING)
    adv_eps: float = 0.0
    adv_fraction: float = 0.1
    arch: Optional[str] = None
    epochs: int = 100
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_step: int = 0
    lr_gamma: float = 0.1
    query_batch_size: int = 256

    PROFILES: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "smoke": {"budget": 1000, "epochs": 3},
        "quick": {"epochs": 20},
        "paper": {},
    }

    def validate(self) -> None:
        if self.labels != "soft":
            raise UserError(f"attacks.distill.labels must be 'soft' (distillation needs probabilities), got {self.labels!r}")
        if not self.temperature > 0:
            raise UserError(f"attacks.distill.temperature must be > 0, got {self.temperature}")
        validate_stealing("attacks.distill", self)


@register_attack("distill")
class Distill(Attack):
    """Distillation stealing at temperature T, soft labels only (see the module docstring)."""

    paper = "https://arxiv.org/abs/1503.02531"
    year = 2015
    category = "stealing"
    needs = frozenset({"probs"})
    Config = DistillConfig

    def run(self, target: Blackbox | nn.Module, ctx: AttackContext) -> AttackOutcome:
        cfg: DistillConfig = self.config
        target = check_access(target, "soft", "distillation")
        started = time.perf_counter()
        pool = query_pool(ctx, cfg.query_set, cfg.classes)
        budget = cfg.budget or len(pool)
        order = cycled_order(len(pool), budget, generator(ctx.seed_for("distill", "sampling")))
        noise_gen = generator(ctx.seed_for("distill", "noise"))
        transform = pool_transform(cfg.pool_transforms, generator(ctx.seed_for("distill", "pool_transforms")))
        sent, probs = query_rows(target, pool.x, order, labels="soft", noise=cfg.query_noise, gen=noise_gen,
                                 batch_size=cfg.query_batch_size, transform=transform)
        transfer = TransferSet()
        if sent is None:
            transfer.add(pool.x, probs, index=order)
        else:
            transfer.add(sent, probs)
        student = student_model(ctx, cfg.arch, "distill", "init")
        augment = None
        if cfg.adv_eps > 0:
            augment = FGSMAugment(target, transfer, student, eps=cfg.adv_eps, fraction=cfg.adv_fraction, labels="soft",
                                  device=ctx.device, gen=noise_gen, noise=cfg.query_noise,
                                  query_batch_size=cfg.query_batch_size)
        history = train_student(ctx, student, transfer, train_config(cfg),
                                loss_fn=distillation_loss(cfg.temperature, cfg.t2_scale),
                                seed=ctx.seed_for("distill", "order"), desc=f"distill-T{cfg.temperature:g}",
                                augment=augment)
        return AttackOutcome(model=student, queries=target.queries, metrics={
            **pool_metrics(pool, cfg.query_set),
            "temperature": float(cfg.temperature),
            "transfer_size": float(len(transfer)),
            "adv_queries": float(augment.queries if augment else 0),
            "attack_wall_s": time.perf_counter() - started,
            "final_loss": history[-1]["loss"],
        })
