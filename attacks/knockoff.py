"""Knockoff Nets model stealing (random and adaptive policies) and the paper's Knockoff scenarios.

Paper: Orekondy, Schiele, Fritz, "Knockoff Nets: Stealing Functionality of Black-Box Models",
CVPR 2019, https://arxiv.org/abs/1812.02766. Official code: tribhuvanesh/knockoffnets
(``transfer.py`` random adversary, ``train.py``); the adaptive policy follows IBM ART
(``art/attacks/extraction/knockoff_nets.py``), the only public implementation.

Idea: sample a transfer set from a query pool, label it with the victim's outputs (soft
probabilities, or only the top-1 label for the hard-label variant) and train a student on it.

Settings. The dataclass defaults follow the official code (``paper`` profile): random sampling
without replacement (repeating the pool once exhausted), SGD lr 0.01, momentum 0.5, no weight
decay, StepLR(60, 0.1), 100 epochs, batch 64, soft cross-entropy (hard: CE on the argmax). The
budget Table 2 of DeepTracer used is not stated; ``budget=None`` queries every pool image once.
The ``quick`` profile (fixed before any watermark result was seen; shared/reference/attacks.md
§2.2 CPU default) trains 10 epochs with Adam 1e-3, batch 128. Checkpoints are never selected
by victim test accuracy: the last epoch is returned.

Adaptive policy (``policy="adaptive"``, a gradient bandit). Actions are the classes of the
attacker-supplied pool labels (``pool.y``; the paper uses a label hierarchy of its pool). Each
step samples an action ``a ~ softmax(H)``, queries a mini-batch of ``adaptive_batch`` pool images
of that class (without replacement within the class, reshuffled once exhausted), takes one
training step of an online student on them and computes a reward from the victim's outputs
``y`` and the student's post-step softmax ``ŷ`` (as ART): ``cert`` = top-1 − top-2 of ``y``;
``div`` = Σ_k max(0, y_k − ȳ_k) with ȳ the running mean of the victim's outputs; ``loss`` =
CE(y, ŷ); ``all`` = the mean of the three, each z-normalised by its running mean and standard
deviation. Mini-batch rewards are batch means. ``H_a += (r − r̄)(1 − π_a)/N_a`` and ``H_b −=
(r − r̄)π_b/N_a`` with r̄ the running mean reward and N_a the times ``a`` was chosen.
Choices where the sources are silent [wmbench]: mini-batches per action instead of single
images (``adaptive_batch``), a variance floor ``var_floor`` for the z-normalisation of ``all``
(ART divides by a zero variance on its second step), H capped to ``[-h_cap, h_cap]``, and the
final student trained *fresh* on all queried pairs with the same schedule as the random policy
(ART continues the online student), so the two policies differ only in their transfer sets.

Scenarios (all options of this one attack, see :mod:`wmbench.attacks._stealing`):
``query_set`` (cross-dataset), ``arch`` (cross-architecture), ``classes`` (partial
functionality: the pool holds only these classes), ``query_noise`` (Gaussian noise on every
query; the student trains on the noisy images it sent), ``adv_eps`` (adversarial-training
stealing: each epoch from the second on, FGSM examples of the current student for
``adv_fraction`` of the transfer set are queried and added — these queries come on top of
``budget`` and are counted), ``optimizer``/``lr`` (adam, sgd, adagrad, adamax, rmsprop), and
``query_sets`` (continuous distribution shift: the sets are queried in that order, one round
each, ``budget`` split evenly; the student keeps training across rounds for ``epochs``/rounds
epochs each, on all pairs so far when ``shift_replay`` else on the round's pairs only; one
snapshot per round). Double-stage stealing is the chain ``knockoff+knockoff``.

Memory: queries are streamed in batches of ``query_batch_size``; the transfer set references
pool rows instead of copying images, so a run holds the pool, the victim outputs (budget × K)
and one batch (see benchmarks/stealing.py). Every image sent to the victim counts as one query.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, Iterator, List, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wmbench.api import Attack, AttackContext, AttackOutcome
from wmbench.attacks._stealing import (
    FGSMAugment, TransferSet, check_access, cycled_order, pool_metrics, query_pool, query_rows,
    snapshot, student_model, train_config, train_student, validate_stealing,
)
from wmbench.blackbox import Blackbox
from wmbench.augment import compose as pool_transform
from wmbench.config import NEW_SETTING, TrainConfig
from wmbench.data import Split
from wmbench.errors import UserError
from wmbench.registry import register_attack
from wmbench.training import Batch
from wmbench.utils import generator

__all__ = ["Knockoff", "KnockoffConfig", "query_pool", "GradientBandit", "REWARDS"]

log = logging.getLogger(__name__)

POLICIES = ("random", "adaptive")
REWARDS = ("cert", "div", "loss", "all")


@dataclass(frozen=True)
class KnockoffConfig:
    """Knockoff parameters (defaults = official code; see the module docstring).

    labels: str = "soft"           "soft" (probabilities) or "hard" (top-1 label only).
    budget: int | None = None      queries; None = the whole pool once.
    query_set: str | None = None   None = attacker split of the victim's dataset, else a dataset name.
    arch: str | None = None        stolen architecture; None = the victim's.
    policy: str = "random"         "random" or "adaptive" (gradient bandit over pool classes).
    reward: str = "all"            adaptive reward: "cert", "div", "loss" or "all".
    adaptive_batch: int = 8        images queried per bandit step (one action).
    var_floor: float = 1e-4        floor of the running reward variances used by reward "all".
    h_cap: float = 20.0            bandit preferences H are clipped to [-h_cap, h_cap].
    classes: tuple | None = None   keep only pool images of these (pool) classes (partial functionality).
    query_noise: float = 0.0       std of Gaussian noise added to every query (pixel space).
    pool_transforms: tuple = ()    transformations of each query batch, in order: flip, crop, mixup,
                                   cutmix (:mod:`wmbench.augment`); the transformed images are sent.
    adv_eps: float = 0.0           FGSM step of adversarial-training stealing; 0 = off.
    adv_fraction: float = 0.1      share of the transfer set turned into FGSM queries each epoch.
    query_sets: tuple = ()         distribution shift: datasets queried in rounds ("attacker" = the split).
    shift_replay: bool = True      distribution shift: keep training on earlier rounds' pairs.
    epochs: int = 100
    batch_size: int = 64
    optimizer: str = "sgd"         adam, sgd, adagrad, adamax or rmsprop.
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
    reward: str = "all"
    adaptive_batch: int = 8
    var_floor: float = 1e-4
    h_cap: float = 20.0
    classes: Optional[Tuple[int, ...]] = None
    query_noise: float = 0.0
    pool_transforms: Tuple[str, ...] = field(default=(), metadata=NEW_SETTING)
    adv_eps: float = 0.0
    adv_fraction: float = 0.1
    query_sets: Tuple[str, ...] = ()
    shift_replay: bool = True
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
        validate_stealing("attacks.knockoff", self)
        if self.policy not in POLICIES:
            raise UserError(f"attacks.knockoff.policy must be 'random' or 'adaptive', got {self.policy!r}")
        if self.reward not in REWARDS:
            raise UserError(f"attacks.knockoff.reward must be one of {', '.join(REWARDS)}, got {self.reward!r}")
        if self.adaptive_batch < 1 or not self.var_floor > 0 or not self.h_cap > 0:
            raise UserError("attacks.knockoff: adaptive_batch must be >= 1, var_floor > 0 and h_cap > 0")
        if self.query_sets and self.policy != "random":
            raise UserError("attacks.knockoff.query_sets (distribution shift) needs policy 'random'")
        if self.query_sets and self.epochs < len(self.query_sets):
            raise UserError(f"attacks.knockoff: distribution shift needs epochs >= the number of query_sets "
                            f"({len(self.query_sets)}), got {self.epochs}")

    def train_config(self) -> TrainConfig:
        return train_config(self)


# --------------------------------------------------------------------------------------------
# Adaptive policy
# --------------------------------------------------------------------------------------------
class GradientBandit:
    """The Knockoff adaptive policy: a gradient bandit over ``n_actions`` with rewards from the
    victim's and the online student's outputs (see the module docstring)."""

    def __init__(self, n_actions: int, num_classes: int, *, reward: str = "all", var_floor: float = 1e-4,
                 h_cap: float = 20.0) -> None:
        self.h = torch.zeros(n_actions, dtype=torch.float64)
        self.counts = torch.zeros(n_actions, dtype=torch.float64)
        self.reward_kind = reward
        self.var_floor = var_floor
        self.h_cap = h_cap
        self.steps = 0
        self.avg_reward = 0.0
        self.y_avg = torch.zeros(num_classes, dtype=torch.float64)
        self.y_seen = 0
        self.r_avg = torch.zeros(3, dtype=torch.float64)
        self.r_var = torch.zeros(3, dtype=torch.float64)

    @property
    def probs(self) -> Tensor:
        return torch.softmax(self.h, dim=0)

    def choose(self, gen: torch.Generator) -> int:
        return int(torch.multinomial(self.probs, 1, generator=gen).item())

    # -- rewards (batch means) -----------------------------------------------------------------
    @staticmethod
    def reward_cert(y: Tensor) -> float:
        top = y.topk(2, dim=1).values
        return float((top[:, 0] - top[:, 1]).mean())

    def reward_div(self, y: Tensor) -> float:
        total = 0.0
        for row in y.double():
            self.y_seen += 1
            self.y_avg += (row - self.y_avg) / self.y_seen
            total += float((row - self.y_avg).clamp_min(0).sum())
        return total / y.shape[0]

    @staticmethod
    def reward_loss(y: Tensor, y_hat: Tensor) -> float:
        return float(-(y * y_hat.clamp_min(1e-12).log()).sum(dim=1).mean())

    def reward(self, y: Tensor, y_hat: Tensor) -> float:
        """Reward of one step from victim outputs ``y`` and student softmax ``y_hat`` ([B, K])."""
        if self.reward_kind == "cert":
            return self.reward_cert(y)
        if self.reward_kind == "div":
            return self.reward_div(y)
        if self.reward_kind == "loss":
            return self.reward_loss(y, y_hat)
        r = torch.tensor([self.reward_cert(y), self.reward_div(y), self.reward_loss(y, y_hat)], dtype=torch.float64)
        n = self.steps + 1
        self.r_avg += (r - self.r_avg) / n
        self.r_var += ((r - self.r_avg) ** 2 - self.r_var) / n
        if n > 1:
            r = (r - self.r_avg) / self.r_var.clamp_min(self.var_floor).sqrt()
        else:
            r = r.clamp(0.0, 1.0)
        return float(r.mean())

    def update(self, action: int, reward: float) -> None:
        self.steps += 1
        self.avg_reward += (reward - self.avg_reward) / self.steps
        self.counts[action] += 1
        probs = self.probs
        step = (reward - self.avg_reward) / float(self.counts[action])
        grad = -step * probs
        grad[action] = step * (1 - probs[action])
        self.h = (self.h + grad).clamp(-self.h_cap, self.h_cap)


class _ClassSampler:
    """Pool indices of each action (class), drawn without replacement and reshuffled when exhausted."""

    def __init__(self, labels: Tensor, actions: Tensor, gen: torch.Generator) -> None:
        self.members = [torch.nonzero(labels == a).flatten() for a in actions.tolist()]
        self.gen = gen
        self.queues: List[List[int]] = [[] for _ in self.members]

    def take(self, action: int, k: int) -> Tensor:
        out: List[int] = []
        while len(out) < k:
            if not self.queues[action]:
                members = self.members[action]
                self.queues[action] = members[torch.randperm(members.numel(), generator=self.gen)].tolist()
            need = k - len(out)
            out += self.queues[action][:need]
            del self.queues[action][:need]
        return torch.tensor(out, dtype=torch.long)


def _one_hot(y: Tensor, k: int) -> Tensor:
    return F.one_hot(y, k).double() if not y.is_floating_point() else y.double()


# --------------------------------------------------------------------------------------------
# The attack
# --------------------------------------------------------------------------------------------
@register_attack("knockoff")
class Knockoff(Attack):
    """Knockoff Nets, random or adaptive policy, soft or hard labels (see the module docstring)."""

    paper = "https://arxiv.org/abs/1812.02766"
    year = 2019
    category = "stealing"
    needs = frozenset({"probs"})
    label_modes = ("soft", "hard")
    Config = KnockoffConfig

    def run(self, target: Blackbox | nn.Module, ctx: AttackContext) -> AttackOutcome:
        cfg: KnockoffConfig = self.config
        target = check_access(target, cfg.labels, "Knockoff")
        started = time.perf_counter()
        if cfg.query_sets:
            return self._run_shift(target, ctx, started)
        pool = query_pool(ctx, cfg.query_set, cfg.classes)
        budget = cfg.budget or len(pool)
        noise_gen = generator(ctx.seed_for("knockoff", "noise"))
        metrics: Dict[str, float] = {}
        if cfg.policy == "adaptive":
            transfer, metrics = self._adaptive_transfer(target, ctx, pool, budget, noise_gen)
        else:
            order = cycled_order(len(pool), budget, generator(ctx.seed_for("knockoff", "sampling")))
            sent, y = query_rows(target, pool.x, order, labels=cfg.labels, noise=cfg.query_noise, gen=noise_gen,
                                 batch_size=cfg.query_batch_size, transform=self._transform(ctx))
            transfer = TransferSet()
            if sent is None:
                transfer.add(pool.x, y, index=order)
            else:
                transfer.add(sent, y)
        student = student_model(ctx, cfg.arch, "knockoff", "init")
        augment = self._augment(target, ctx, transfer, student, noise_gen)
        history = train_student(ctx, student, transfer, cfg.train_config(), seed=ctx.seed_for("knockoff", "order"),
                                desc=f"knockoff-{cfg.labels}", augment=augment)
        metrics.update(pool_metrics(pool, cfg.query_set))
        metrics.update(attack_wall_s=time.perf_counter() - started, final_loss=history[-1]["loss"],
                       transfer_size=float(len(transfer)), adv_queries=float(augment.queries if augment else 0))
        return AttackOutcome(model=student, queries=target.queries, metrics=metrics)

    # -- scenario helpers ------------------------------------------------------------------------
    def _transform(self, ctx: AttackContext, *labels: object):
        return pool_transform(self.config.pool_transforms, generator(ctx.seed_for("knockoff", "pool_transforms",
                                                                                  *labels)))

    def _augment(self, target: Blackbox, ctx: AttackContext, transfer: TransferSet, student: nn.Module,
                 gen: torch.Generator) -> Optional[FGSMAugment]:
        cfg = self.config
        if cfg.adv_eps <= 0:
            return None
        return FGSMAugment(target, transfer, student, eps=cfg.adv_eps, fraction=cfg.adv_fraction, labels=cfg.labels,
                           device=ctx.device, gen=gen, noise=cfg.query_noise, query_batch_size=cfg.query_batch_size)

    def _run_shift(self, target: Blackbox, ctx: AttackContext, started: float) -> AttackOutcome:
        """Continuous distribution shift: one query round per entry of ``query_sets``."""
        cfg: KnockoffConfig = self.config
        rounds = len(cfg.query_sets)
        pools = [query_pool(ctx, name, cfg.classes) for name in cfg.query_sets]
        total = cfg.budget or sum(len(p) for p in pools)
        shares = [total // rounds + (1 if r < total % rounds else 0) for r in range(rounds)]
        epochs = [cfg.epochs // rounds + (1 if r < cfg.epochs % rounds else 0) for r in range(rounds)]
        noise_gen = generator(ctx.seed_for("knockoff", "noise"))
        student = student_model(ctx, cfg.arch, "knockoff", "init")
        transfer = TransferSet()
        snapshots = []
        history: List[Dict[str, float]] = []
        adv_queries = 0
        metrics: Dict[str, float] = {}
        for r, (name, pool) in enumerate(zip(cfg.query_sets, pools)):
            order = cycled_order(len(pool), shares[r], generator(ctx.seed_for("knockoff", "sampling", r)))
            sent, y = query_rows(target, pool.x, order, labels=cfg.labels, noise=cfg.query_noise, gen=noise_gen,
                                 batch_size=cfg.query_batch_size, transform=self._transform(ctx, r))
            if not cfg.shift_replay:
                transfer = TransferSet()
            if sent is None:
                transfer.add(pool.x, y, index=order)
            else:
                transfer.add(sent, y)
            augment = self._augment(target, ctx, transfer, student, noise_gen)
            history += train_student(ctx, student, transfer, train_config(cfg, epochs=epochs[r]),
                                     seed=ctx.seed_for("knockoff", "order", r), desc=f"knockoff-shift-{name}",
                                     augment=augment)
            adv_queries += augment.queries if augment else 0
            snapshots.append(("round", float(r + 1), snapshot(student)))
            metrics.update(pool_metrics(pool, name, prefix=f"round{r + 1}_pool"))
            log.info("distribution shift round %d/%d (%s): %d queries so far", r + 1, rounds, name, target.queries)
        metrics.update(pool_size=float(sum(len(p) for p in pools)), rounds=float(rounds),
                       attack_wall_s=time.perf_counter() - started, final_loss=history[-1]["loss"],
                       transfer_size=float(len(transfer)), adv_queries=float(adv_queries))
        return AttackOutcome(model=student, queries=target.queries, metrics=metrics, snapshots=snapshots)

    def _adaptive_transfer(self, target: Blackbox, ctx: AttackContext, pool: Split, budget: int,
                           noise_gen: torch.Generator) -> Tuple[TransferSet, Dict[str, float]]:
        """Run the gradient bandit for ``budget`` queries; returns the queried pairs."""
        cfg: KnockoffConfig = self.config
        k = ctx.data.num_classes
        actions = torch.unique(pool.y)
        bandit = GradientBandit(int(actions.numel()), k, reward=cfg.reward, var_floor=cfg.var_floor, h_cap=cfg.h_cap)
        gen = generator(ctx.seed_for("knockoff", "adaptive"))
        sampler = _ClassSampler(pool.y, actions, gen)
        xs: List[Tensor] = []
        ys: List[Tensor] = []
        chosen: List[int] = []
        device = ctx.device
        transform = self._transform(ctx)

        def bandit_batches(epoch: int, _gen: torch.Generator) -> Iterator[Batch]:
            used = 0
            while used < budget:
                n = min(cfg.adaptive_batch, budget - used)
                action = bandit.choose(gen)
                rows = sampler.take(action, n)
                sent, y = query_rows(target, pool.x, rows, labels=cfg.labels, noise=cfg.query_noise, gen=noise_gen,
                                     batch_size=cfg.query_batch_size, transform=transform)
                x = pool.x[rows] if sent is None else sent
                used += n
                xs.append(x if sent is not None else rows)
                ys.append(y)
                chosen.append(action)
                yield x, y
                # after the online student's step (ART: predict after fit, then reward)
                online.eval()
                with torch.no_grad():
                    y_hat = F.softmax(online(x.to(device)).float(), dim=1).cpu().double()
                online.train()
                bandit.update(action, bandit.reward(_one_hot(y, k), y_hat))

        online = student_model(ctx, cfg.arch, "knockoff", "online")
        ctx.fit(online, bandit_batches, cfg=train_config(cfg, epochs=1, lr_step=0),
                seed=ctx.seed_for("knockoff", "online"), desc="knockoff-adaptive")
        transfer = TransferSet()
        y_all = torch.cat(ys)
        if cfg.query_noise > 0 or transform is not None:
            transfer.add(torch.cat(xs), y_all)
        else:
            transfer.add(pool.x, y_all, index=torch.cat(xs))
        counts = torch.bincount(torch.tensor(chosen), minlength=int(actions.numel())).double()
        probs = bandit.probs
        top = int(counts.argmax())
        log.info("adaptive knockoff: action counts %s, final policy %s",
                 dict(zip(actions.tolist(), counts.long().tolist())), [round(float(p), 3) for p in probs])
        metrics = {
            "adaptive_steps": float(len(chosen)),
            "adaptive_top_action": float(actions[top]),
            "adaptive_top_share": float(counts[top] / counts.sum()),
            "adaptive_policy_entropy": float(-(probs * probs.clamp_min(1e-12).log()).sum() / math.log(max(2, len(probs)))),
        }
        return transfer, metrics
