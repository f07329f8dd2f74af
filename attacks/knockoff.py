"""Knockoff Nets model stealing (random policy).

Paper: Orekondy, Schiele, Fritz, "Knockoff Nets: Stealing Functionality of Black-Box Models",
CVPR 2019, https://arxiv.org/abs/1812.02766. Official code: tribhuvanesh/knockoffnets
(``transfer.py`` random adversary, ``train.py``).

Idea: sample a transfer set from a query pool, label it with the victim's outputs (soft
probabilities, or only the top-1 label for the hard-label variant) and train a student on it.

Settings. The dataclass defaults follow the official code (``paper`` profile): random sampling
without replacement (repeating the pool once exhausted), SGD lr 0.01, momentum 0.5, no weight
decay, StepLR(60, 0.1), 100 epochs, batch 64, soft cross-entropy (hard: CE on the argmax). The
budget Table 2 of DeepTracer used is not stated; ``budget=None`` queries every pool image once.
The ``quick`` profile (fixed before any watermark result was seen; shared/reference/attacks.md
§2.2 CPU default) trains 10 epochs with Adam 1e-3, batch 128. Checkpoints are never selected
by victim test accuracy: the last epoch is returned.

The query pool is always explicit: ``query_set=None`` is the attacker's split of the victim's
dataset (disjoint from the owner's data); any registered dataset name uses that dataset's
training split, converted to the victim's channels and size. Every image sent to the victim
counts as one query. The adaptive (gradient-bandit) policy arrives with the stealing issue.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Optional

import torch
from torch import nn

from wmbench.api import Attack, AttackContext, AttackOutcome
from wmbench.blackbox import Blackbox
from wmbench.config import TrainConfig
from wmbench.data import Split, conform, load_data
from wmbench.errors import UserError
from wmbench.registry import DATASETS, MODELS, register_attack
from wmbench.utils import generator


@dataclass(frozen=True)
class KnockoffConfig:
    """Knockoff parameters (defaults = official code; see the module docstring).

    labels: str = "soft"           "soft" (probabilities) or "hard" (top-1 label only).
    budget: int | None = None      queries; None = the whole pool once.
    query_set: str | None = None   None = attacker split of the victim's dataset, else a dataset name.
    arch: str | None = None        stolen architecture; None = the victim's.
    policy: str = "random"         sampling policy (only "random" for now).
    epochs: int = 100
    batch_size: int = 64
    optimizer: str = "sgd"         "sgd" or "adam".
    lr: float = 0.01
    momentum: float = 0.5
    weight_decay: float = 0.0
    lr_step: int = 60              StepLR period; 0 = constant lr.
    lr_gamma: float = 0.1
    query_batch_size: int = 256    images per victim call (does not change the count).
    """

    labels: str = "soft"
    budget: Optional[int] = None
    query_set: Optional[str] = None
    arch: Optional[str] = None
    policy: str = "random"
    epochs: int = 100
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.5
    weight_decay: float = 0.0
    lr_step: int = 60
    lr_gamma: float = 0.1
    query_batch_size: int = 256

    PROFILES: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "smoke": {"budget": 1000, "epochs": 3, "optimizer": "adam", "lr": 1e-3, "lr_step": 0},
        "quick": {"epochs": 10, "batch_size": 128, "optimizer": "adam", "lr": 1e-3, "lr_step": 0},
        "paper": {},
    }

    def validate(self) -> None:
        if self.labels not in ("soft", "hard"):
            raise UserError(f"attacks.knockoff.labels must be 'soft' or 'hard', got {self.labels!r}")
        if self.budget is not None and self.budget < 1:
            raise UserError(f"attacks.knockoff.budget must be a positive integer or null, got {self.budget}")
        if self.policy != "random":
            raise UserError(f"attacks.knockoff.policy must be 'random', got {self.policy!r}")
        if self.query_set is not None and self.query_set not in DATASETS.names():
            raise UserError(f"unknown attacks.knockoff.query_set {self.query_set!r}; available: {', '.join(DATASETS.names())}")
        if self.arch is not None:
            MODELS.get(self.arch)
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise UserError("attacks.knockoff: epochs and batch_size must be >= 1 and lr > 0")

    def train_config(self) -> TrainConfig:
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, optimizer=self.optimizer, lr=self.lr,
                           momentum=self.momentum, weight_decay=self.weight_decay, lr_step=self.lr_step,
                           lr_gamma=self.lr_gamma)


def query_pool(ctx: AttackContext, query_set: Optional[str]) -> Split:
    """The attacker's query pool, shaped like the victim's inputs."""
    if query_set is None:
        return ctx.data.attacker
    bundle = load_data(query_set, root=ctx.data_root, download=ctx.download)
    pool = Split(torch.cat([bundle.owner.x, bundle.attacker.x]), torch.cat([bundle.owner.y, bundle.attacker.y]))
    return conform(pool, ctx.data.channels, ctx.data.size)


@register_attack("knockoff")
class Knockoff(Attack):
    """Knockoff Nets, random policy, soft or hard labels (see the module docstring)."""

    paper = "https://arxiv.org/abs/1812.02766"
    year = 2019
    category = "stealing"
    needs = frozenset({"probs"})
    label_modes = ("soft", "hard")
    Config = KnockoffConfig

    def run(self, target: Blackbox | nn.Module, ctx: AttackContext) -> AttackOutcome:
        if not isinstance(target, Blackbox):
            raise TypeError("Knockoff needs black-box query access (a Blackbox)")
        cfg = self.config
        started = time.perf_counter()
        pool = query_pool(ctx, cfg.query_set)
        budget = cfg.budget or len(pool)
        gen = generator(ctx.seed_for("knockoff", "sampling"))
        repeats = -(-budget // len(pool))
        order = torch.cat([torch.randperm(len(pool), generator=gen) for _ in range(repeats)])[:budget]
        x = pool.x[order]
        outputs = [target(x[i : i + cfg.query_batch_size]) for i in range(0, budget, cfg.query_batch_size)]
        y = torch.cat(outputs)
        if cfg.labels == "soft" and not y.is_floating_point():
            raise RuntimeError("soft-label Knockoff received labels; the blackbox must be in probs mode")
        student = ctx.new_model(cfg.arch or ctx.victim_arch, seed=ctx.seed_for("knockoff", "init"))
        history = ctx.fit(student, (x, y), cfg=cfg.train_config(), seed=ctx.seed_for("knockoff", "order"),
                          desc=f"knockoff-{cfg.labels}")
        return AttackOutcome(
            model=student,
            queries=target.queries,
            metrics={"attack_wall_s": time.perf_counter() - started, "pool_size": float(len(pool)),
                     "final_loss": history[-1]["loss"]},
        )
