"""Margin-based watermarking.

Paper: Kim, Lee, Lee, Son, Hwang, "Margin-based Neural Network Watermarking", ICML 2023,
https://proceedings.mlr.press/v202/kim23o.html. Official code: matbambbang/margin-based-watermarking
(``train.py`` with ``train_type='margin'``, ``models/queries.py``).

Idea: a few training images are held out and given random *wrong* labels (the trigger set, or
"queries"). Every training step samples some of them and runs a few steps of projected gradient
*ascent* on their watermark loss — moving each trigger towards the decision boundary of its
watermark label — and then trains the model to give the watermark label on these perturbed
triggers too. The model thus learns a margin around every trigger, which keeps the random labels
through fine-tuning and extraction. The key set is the (un-perturbed) trigger set.

Official settings (defaults): 100 triggers (README ``-nq 100``; the code default is 10) held
out of the training data, random labels ≠ the true label; per batch 25 triggers sampled with
replacement; 5 steps ``q ← clamp(q + (1/255)·sign ∇_q CE(f(q), r), 0, 1)`` restarted from the
clean triggers every batch (no ε-ball); ``loss = mean(cat(CE_clean, 0.1·CE(f(q_adv), r)))``;
triggers stored and evaluated quantised to 1/255.

Choices [wmbench]:

- the PGA runs with the model in eval mode and with gradients taken w.r.t. the inputs only, so
  neither BatchNorm running statistics nor parameter gradients are touched (the official code
  runs it in train mode and updates BN — a bug, shared/reference/methods.md §8);
- triggers are drawn from the owner's training split (seeded) and removed from it, like the
  official 1,000-image held-out validation split; their stored copies are *not* augmented (the
  official split carries the training transform);
- the optimiser and schedule are the shared ``train`` section (the official SGD 0.1 schedule for
  ResNet-34 is not used), so the victim is comparable with the benign model;
- ``weight`` multiplies the per-trigger CE inside the joint mean, exactly as the code (so a
  trigger counts ``weight`` of a clean sample).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterator, Mapping, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wmbench.api import Context, KeySet, WatermarkMethod
from wmbench.errors import UserError
from wmbench.registry import register_method
from wmbench.training import Batch, BatchSource
from wmbench.utils import generator


@dataclass(frozen=True)
class MarginConfig:
    """Margin-based watermark parameters (defaults = official code / README).

    n_queries: int = 100        triggers (held-out training images with random wrong labels).
    wm_batch: int = 25          triggers sampled (with replacement) per training step.
    pga_steps: int = 5          projected gradient-ascent steps per step.
    step_size: float = 1/255    size of each sign step, in [0, 1] pixel units.
    weight: float = 0.1         weight of a trigger's CE inside the joint mean (official ``-v``).
    discretize: bool = True     store the triggers quantised to 1/255 (official evaluation).
    """

    n_queries: int = 100
    wm_batch: int = 25
    pga_steps: int = 5
    step_size: float = 1.0 / 255.0
    weight: float = 0.1
    discretize: bool = True

    PROFILES: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        # Few steps on tiny data: fewer triggers, each seen more often, weighted more.
        "smoke": {"n_queries": 30, "weight": 1.0},
        "quick": {},
        "paper": {},
    }

    def validate(self) -> None:
        if self.n_queries < 1:
            raise UserError(f"methods.margin.n_queries must be >= 1, got {self.n_queries}")
        if self.wm_batch < 1:
            raise UserError(f"methods.margin.wm_batch must be >= 1, got {self.wm_batch}")
        if self.pga_steps < 0:
            raise UserError(f"methods.margin.pga_steps must be >= 0, got {self.pga_steps}")
        if self.step_size < 0:
            raise UserError(f"methods.margin.step_size must be >= 0, got {self.step_size}")
        if self.weight <= 0:
            raise UserError(f"methods.margin.weight must be > 0, got {self.weight}")


def random_wrong_labels(labels: Tensor, num_classes: int, gen: torch.Generator) -> Tensor:
    """A uniformly random label different from each entry of ``labels``."""
    offset = torch.randint(1, num_classes, labels.shape, generator=gen)
    return (labels + offset) % num_classes


def quantize(x: Tensor) -> Tensor:
    """Round images in [0, 1] to the 256 levels of an 8-bit image."""
    return torch.round(x.clamp(0.0, 1.0) * 255.0) / 255.0


def margin_ascent(model: nn.Module, q: Tensor, r: Tensor, *, steps: int, step_size: float) -> Tensor:
    """Projected gradient ascent on ``CE(model(q), r)``: ``steps`` sign steps of ``step_size``,
    each followed by clamping to [0, 1]. Runs in eval mode (restoring the previous mode) and
    differentiates w.r.t. the inputs only; returns the detached perturbed inputs."""
    was_training = model.training
    model.eval()
    try:
        for _ in range(steps):
            q = q.detach().requires_grad_(True)
            loss = F.cross_entropy(model(q), r)
            (grad,) = torch.autograd.grad(loss, q)
            q = (q + step_size * grad.sign()).clamp(0.0, 1.0)
    finally:
        model.train(was_training)
    return q.detach()


def margin_loss_fn(cfg: MarginConfig) -> Callable[[nn.Module, Batch], Tensor]:
    """The training loss of one step: batch ``(x, y, q, r)`` = clean images and labels, sampled
    triggers and their watermark labels. PGA on the triggers, then the joint weighted mean."""

    def loss_fn(model: nn.Module, batch: Batch) -> Tensor:
        x, y, q, r = batch
        q_adv = margin_ascent(model, q, r, steps=cfg.pga_steps, step_size=cfg.step_size)
        logits = model(torch.cat([x, q_adv]))
        n = x.shape[0]
        clean = F.cross_entropy(logits[:n], y, reduction="none")
        wm = cfg.weight * F.cross_entropy(logits[n:], r, reduction="none")
        return torch.cat([clean, wm]).mean()

    return loss_fn


def margin_batches(x: Tensor, y: Tensor, q: Tensor, r: Tensor, *, batch_size: int, wm_batch: int) -> BatchSource:
    """Shuffled clean batches, each with ``wm_batch`` triggers drawn with replacement."""
    n = x.shape[0]

    def batches(epoch: int, gen: torch.Generator) -> Iterator[Batch]:
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            pick = torch.randint(0, q.shape[0], (wm_batch,), generator=gen)
            yield x[idx], y[idx], q[pick], r[pick]

    return batches


@register_method("margin")
class MarginBased(WatermarkMethod):
    """Margin-based watermark (Kim et al., ICML 2023; see the module docstring)."""

    paper = "https://proceedings.mlr.press/v202/kim23o.html"
    year = 2023
    category = "in-distribution / training-time"
    Config = MarginConfig

    def keygen(self, ctx: Context) -> KeySet:
        cfg = self.config
        owner = ctx.data.owner
        if cfg.n_queries >= len(owner):
            raise UserError(f"methods.margin.n_queries ({cfg.n_queries}) must be smaller than the owner's "
                            f"training split ({len(owner)} images)")
        gen = generator(ctx.seed_for("margin", "keys"))
        index = torch.randperm(len(owner), generator=gen)[: cfg.n_queries]
        q = owner.x[index]
        q = quantize(q) if cfg.discretize else q.clone()
        r = random_wrong_labels(owner.y[index], ctx.data.num_classes, gen)
        return KeySet(
            embed_x=q, embed_y=r, verify_x=q.clone(), verify_y=r.clone(),
            meta={"held_out_index": index.tolist(), "true_labels": owner.y[index].tolist(),
                  "n_queries": cfg.n_queries},
        )

    def embed(self, ctx: Context, keys: KeySet) -> nn.Module:
        cfg = self.config
        owner = ctx.data.owner
        keep = torch.ones(len(owner), dtype=torch.bool)
        keep[torch.tensor(keys.meta["held_out_index"], dtype=torch.long)] = False
        source = margin_batches(owner.x[keep], owner.y[keep], keys.embed_x, keys.embed_y,
                                batch_size=ctx.train.batch_size, wm_batch=cfg.wm_batch)
        model = ctx.new_model(seed=ctx.seed_for("victim", "init"))
        ctx.fit(model, source, loss_fn=margin_loss_fn(cfg), seed=ctx.seed_for("victim", "order"),
                desc="margin victim")
        return model
