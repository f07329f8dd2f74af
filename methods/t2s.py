"""T2S (reimpl.): rehearsal-based fine-tuning for extraction-resistant watermarks.

**A reconstruction from the abstract only.** Paper: Mei, Zhang, Yao, Zhu, Xiao, "T2S: A
Rehearsal-Based Approach for Extraction-Resistant Model Watermarking", ICASSP 2026,
pp. 13967–13971, https://doi.org/10.1109/ICASSP55912.2026.11463710 (arXiv 2606.11698). No code,
method text or hyper-parameters are available; the abstract (shared/seeds/t2s-abstract.txt) says
the method "simulat[es] the extraction process" and "leverages the loss of a *simulated stolen
model* on a trigger set as a training signal to fine-tune the watermark knowledge within the
target model". Everything below is our design [recon]; results are labelled "T2S (reimpl.)".

Idea. Start from a model watermarked by any registered method (``trigger_method``; its
training watermark samples are the trigger set). Fine-tune it with the task loss, the watermark
loss and a **rehearsal** loss: a simulated thief S (parameters φ) distils the target T on owner
images q, and T is trained so that the *distilled* thief classifies the triggers as their
watermark labels. The thief's trigger loss reaches T only through the soft labels S learns from,
so a naive alternating scheme has ∂L_trig/∂θ_T = 0; two ways around it are offered (``mode``):

- ``"unrolled"`` (differentiable; a MetaDistil-style pilot update): with p_T = softmax(T(q)/τ)
  *not* detached, take ``inner_steps`` steps φ' = φ − η∇_φ τ²·KL(p_T ‖ softmax(S_φ(q)/τ)) with the
  graph kept (``torch.func.functional_call``), and add λ_reh·CE(S_φ'(x_w), y_w) to T's loss —
  second-order gradients through the unrolled distillation.
- ``"alternating"`` (first order): S and T alternate updates and no graph is unrolled. For one
  SGD distillation step the hypergradient factorises exactly: dL_trig(φ')/dp_T(q) =
  (ητ/B)·J_S(q)·∇_φ L_trig — the thief's logit change on q along its trigger-loss gradient, a
  Jacobian-vector product (``torch.func.jvp``, forward mode). T's rehearsal term is then
  (ητ/B)·Σ_q ⟨p_T(q), sg[J_S(q)·∇_φ L_trig(φ)]⟩, i.e. the unrolled k = 1 gradient evaluated at φ
  instead of φ' — first order and cheaper (no double backward).

The thief is real, too: after every step of T it takes one Adam step (``thief_lr``) of
distillation on T's current outputs (the gradient is reused from the step, no extra pass), is
re-initialised every ``reset_every`` steps (a fresh attacker), and the rehearsal term is off
during its first ``warmup_steps`` steps (a random thief's trigger loss says nothing).
``rehearsal_weight=0`` runs the *same* fine-tuning schedule without any thief: the ablation
baseline for "same trigger set without rehearsal".

Centering [recon, ``center``]: the cheapest way to lower the thief's trigger loss is to raise the
target's probability on *every* query (the thief's bias then drifts to the target) — a uniform
shift that costs T accuracy and carries no trigger information (without it, λ_reh = 0.1 already
collapsed a Fashion-MNIST victim to 63 % accuracy in our trials). ``center=True`` subtracts the
query-batch mean from the rehearsal gradient w.r.t. T's soft labels, so T can only move
probability mass *between* queries: its soft labels are made to correlate with what the thief
associates with the triggers.

Starting values [recon, shared/reference/methods.md §11]: fine-tune with Adam 1e-4, 128 clean + 32
triggers per step, λ_wm 1, η 0.05, k 1, τ 1, thief = the victim's architecture, queries = owner
images. λ_reh = 0.1: on Fashion-MNIST BadNets triggers (6,000 images, 3 fine-tuning epochs,
first-order mode) λ_reh 0 / 0.03 / 0.1 / 0.3 gave victim accuracy 83.1 / 83.3 / 80.5 / 71.3 % and
Knockoff-style soft-label stolen WSR 0.8 / 1.0 / 9.6 / 38.6 % (hard labels 0.3 / 0.2 / 15.8 /
28.7 %): the rehearsal signal is real and trades accuracy for transfer. The trigger method's own config is its profile's (``resolve(Config, profile)``).
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, Iterator, List, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, jvp

from wmbench.api import Context, KeySet, WatermarkMethod
from wmbench.config import resolve
from wmbench.errors import UserError
from wmbench.registry import METHODS, MODELS, register_method
from wmbench.training import Batch, BatchSource

log = logging.getLogger(__name__)

RECONSTRUCTION_NOTE = "T2S (reimpl.): reconstructed from the ICASSP 2026 abstract only; not the authors' method text or code"


@dataclass(frozen=True)
class T2SConfig:
    """T2S (reimpl.) parameters — all [recon]; see the module docstring.

    trigger_method: str = "content"  registered method whose watermarked model and trigger set
                                     are fine-tuned (its ``embed_x/embed_y`` are the triggers).
    mode: str = "unrolled"           "unrolled" (second order) or "alternating" (first order).
    epochs: int = 20                 fine-tuning epochs (passes over the owner's data).
    lr: float = 1e-4                 fine-tuning learning rate (the shared optimiser, no schedule).
    wm_batch: int = 32               triggers per step (drawn with replacement).
    wm_weight: float = 1.0           λ_wm, weight of T's own watermark CE.
    rehearsal_weight: float = 0.1    λ_reh (0 = fine-tuning without rehearsal, no thief).
    inner_steps: int = 1             k, unrolled distillation steps of the thief ("unrolled" only).
    inner_lr: float = 0.05           η, learning rate of the simulated distillation step.
    temperature: float = 1.0         τ of the distillation (loss scaled by τ²).
    query_batch: int = 128           owner images per step on which the thief distils T.
    thief_arch: str | None = None    thief architecture (None = the victim's).
    thief_lr: float = 1e-3           Adam learning rate of the thief's real distillation steps.
    reset_every: int = 400           re-initialise the thief every this many steps (0 = never).
    warmup_steps: int = 100          steps after each (re-)initialisation without rehearsal.
    """

    trigger_method: str = "content"
    mode: str = "unrolled"
    epochs: int = 20
    lr: float = 1e-4
    wm_batch: int = 32
    wm_weight: float = 1.0
    rehearsal_weight: float = 0.1
    inner_steps: int = 1
    inner_lr: float = 0.05
    temperature: float = 1.0
    query_batch: int = 128
    thief_arch: Optional[str] = None
    thief_lr: float = 1e-3
    reset_every: int = 400
    warmup_steps: int = 100
    center: bool = True

    PROFILES: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        # Smoke runs do not depend on another method's smoke tuning: BadNets triggers.
        "smoke": {"trigger_method": "badnets", "epochs": 2, "lr": 1e-3, "reset_every": 0, "warmup_steps": 5,
                  "query_batch": 64},
        "quick": {"epochs": 3},
        "paper": {},
    }

    def validate(self) -> None:
        name = "methods.t2s"
        if not self.trigger_method or self.trigger_method == "t2s":
            raise UserError(f"{name}.trigger_method must name another registered method, got {self.trigger_method!r}")
        if self.mode not in ("unrolled", "alternating"):
            raise UserError(f"{name}.mode must be 'unrolled' or 'alternating', got {self.mode!r}")
        if self.epochs < 1 or self.wm_batch < 1 or self.query_batch < 1 or self.inner_steps < 1:
            raise UserError(f"{name}: epochs, wm_batch, query_batch and inner_steps must be >= 1")
        if self.lr <= 0 or self.thief_lr <= 0 or self.inner_lr <= 0 or self.temperature <= 0:
            raise UserError(f"{name}: lr, thief_lr, inner_lr and temperature must be > 0")
        if self.wm_weight < 0 or self.rehearsal_weight < 0 or self.reset_every < 0 or self.warmup_steps < 0:
            raise UserError(f"{name}: wm_weight, rehearsal_weight, reset_every and warmup_steps must be >= 0")
        if self.thief_arch is not None:
            MODELS.get(self.thief_arch)


def center_over_batch(grad: Tensor) -> Tensor:
    """``grad`` minus its mean over the batch (per class)."""
    return grad - grad.mean(dim=0, keepdim=True)


def distill_loss(teacher_probs: Tensor, student_logits: Tensor, temperature: float) -> Tensor:
    """τ²·KL(p_T ‖ softmax(s/τ)), batch mean (Hinton et al.'s scaling)."""
    log_student = F.log_softmax(student_logits / temperature, dim=1)
    return temperature ** 2 * F.kl_div(log_student, teacher_probs, reduction="batchmean")


def unrolled_params(thief: nn.Module, names: Sequence[str], params: Sequence[Tensor], teacher_probs: Tensor,
                    q: Tensor, *, steps: int, lr: float, temperature: float) -> tuple:
    """``steps`` SGD distillation steps of the thief on (q, p_T) with the graph kept (so the
    result is differentiable w.r.t. the teacher's outputs). Returns (φ_k, first gradient)."""
    current = list(params)
    first: Optional[List[Tensor]] = None
    for _ in range(steps):
        logits = functional_call(thief, dict(zip(names, current)), (q,))
        grads = torch.autograd.grad(distill_loss(teacher_probs, logits, temperature), current, create_graph=True)
        if first is None:
            first = [g.detach() for g in grads]
        current = [p - lr * g for p, g in zip(current, grads)]
    return current, first


def first_order_direction(thief: nn.Module, names: Sequence[str], params: Sequence[Tensor], q: Tensor,
                          x_w: Tensor, y_w: Tensor) -> tuple:
    """The thief's trigger loss and J_S(q)·∇_φ L_trig: how the thief's logits on ``q`` move along
    its trigger-loss gradient (forward-mode JVP, first order)."""
    leaves = [p.detach().requires_grad_(True) for p in params]
    trig_loss = F.cross_entropy(functional_call(thief, dict(zip(names, leaves)), (x_w,)), y_w)
    grads = torch.autograd.grad(trig_loss, leaves)
    detached = tuple(p.detach() for p in params)
    _, direction = jvp(lambda *ps: functional_call(thief, dict(zip(names, ps)), (q,)), detached, tuple(grads))
    return trig_loss.detach(), direction.detach()


class Rehearsal:
    """The T2S fine-tuning objective and its thief (a loss hook plus a step hook).

    Batches are ``(x, y, x_w, y_w, q)``: clean owner images and labels, triggers and their
    watermark labels, and the thief's query images."""

    def __init__(self, ctx: Context, cfg: T2SConfig):
        self.ctx, self.cfg = ctx, cfg
        self.resets = 0
        self.since_reset = 0
        self.thief: Optional[nn.Module] = None
        self._pending: Optional[Sequence[Tensor]] = None
        self.last_trigger_loss = float("nan")

    @property
    def enabled(self) -> bool:
        return self.cfg.rehearsal_weight > 0

    def _reset(self) -> None:
        ctx = self.ctx
        self.thief = ctx.new_model(arch=self.cfg.thief_arch, seed=ctx.seed_for("t2s", "thief", self.resets))
        self.thief.to(ctx.device).train()
        self.names = [n for n, _ in self.thief.named_parameters()]
        self.params = [p for _, p in self.thief.named_parameters()]
        self.optimizer = torch.optim.Adam(self.params, lr=self.cfg.thief_lr)
        self.resets += 1
        self.since_reset = 0

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        cfg = self.cfg
        x, y, x_w, y_w, q = batch
        n, m = x.shape[0], x_w.shape[0]
        if not self.enabled:
            logits = model(torch.cat([x, x_w]))
            return F.cross_entropy(logits[:n], y) + cfg.wm_weight * F.cross_entropy(logits[n:], y_w)
        if self.thief is None or (cfg.reset_every and self.since_reset >= cfg.reset_every):
            self._reset()
        logits = model(torch.cat([x, x_w, q]))
        task = F.cross_entropy(logits[:n], y) + cfg.wm_weight * F.cross_entropy(logits[n : n + m], y_w)
        teacher_probs = F.softmax(logits[n + m :] / cfg.temperature, dim=1)
        if self.since_reset < cfg.warmup_steps:
            kd = distill_loss(teacher_probs.detach(), self.thief(q), cfg.temperature)
            self._pending = torch.autograd.grad(kd, self.params)
            return task
        if cfg.center:  # only the rehearsal term reaches teacher_probs
            teacher_probs.register_hook(center_over_batch)
        if cfg.mode == "unrolled":
            final, self._pending = unrolled_params(self.thief, self.names, self.params, teacher_probs, q,
                                                   steps=cfg.inner_steps, lr=cfg.inner_lr, temperature=cfg.temperature)
            rehearsal = F.cross_entropy(functional_call(self.thief, dict(zip(self.names, final)), (x_w,)), y_w)
            self.last_trigger_loss = rehearsal.item()
            return task + cfg.rehearsal_weight * rehearsal
        kd = distill_loss(teacher_probs.detach(), self.thief(q), cfg.temperature)
        self._pending = torch.autograd.grad(kd, self.params)
        trig_loss, direction = first_order_direction(self.thief, self.names, self.params, q, x_w, y_w)
        self.last_trigger_loss = float(trig_loss)
        scale = cfg.inner_lr * cfg.temperature / q.shape[0]
        surrogate = scale * (teacher_probs * direction).sum()
        # Value: task + λ·(thief's trigger loss); gradient: the first-order hypergradient.
        return task + cfg.rehearsal_weight * (surrogate - surrogate.detach() + trig_loss)

    def on_step_end(self, step: int, model: nn.Module) -> None:
        if self._pending is None:
            return
        for p, g in zip(self.params, self._pending):
            p.grad = g
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._pending = None
        self.since_reset += 1


def rehearsal_batches(x: Tensor, y: Tensor, x_w: Tensor, y_w: Tensor, *, batch_size: int, wm_batch: int,
                      query_batch: int) -> BatchSource:
    """One pass over the owner's data per epoch; each batch adds ``wm_batch`` triggers and
    ``query_batch`` query images (both drawn with replacement)."""
    n = x.shape[0]

    def batches(epoch: int, gen: torch.Generator) -> Iterator[Batch]:
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            pick = torch.randint(0, x_w.shape[0], (wm_batch,), generator=gen)
            queries = torch.randint(0, n, (query_batch,), generator=gen)
            yield x[idx], y[idx], x_w[pick], y_w[pick], x[queries]

    return batches


@register_method("t2s")
class T2S(WatermarkMethod):
    """T2S (reimpl.) — rehearsal fine-tuning, reconstructed from the abstract (module docstring)."""

    paper = "https://doi.org/10.1109/ICASSP55912.2026.11463710"
    year = 2026
    category = "fine-tuning / extraction rehearsal (reconstruction from the abstract)"
    Config = T2SConfig

    def __init__(self, config: Any = None):
        super().__init__(config)
        self._base: Optional[WatermarkMethod] = None

    def base(self, ctx: Context) -> WatermarkMethod:
        """The trigger method, configured with its ``ctx.profile`` settings."""
        if self._base is None:
            cls = METHODS.get(self.config.trigger_method)
            self._base = cls(resolve(cls.Config, ctx.profile, section=f"methods.{self.config.trigger_method}"))
        return self._base

    def keygen(self, ctx: Context) -> KeySet:
        keys = self.base(ctx).keygen(ctx)
        cfg = self.config
        info: Dict[str, Any] = {"reconstruction": RECONSTRUCTION_NOTE, "label": "T2S (reimpl.)",
                                "trigger_method": cfg.trigger_method, "mode": cfg.mode,
                                "rehearsal_weight": cfg.rehearsal_weight}
        return KeySet(keys.embed_x, keys.embed_y, keys.verify_x, keys.verify_y, {**keys.meta, "t2s": info})

    def embed(self, ctx: Context, keys: KeySet) -> nn.Module:
        cfg = self.config
        if keys.embed_x.shape[0] == 0:
            raise UserError(f"methods.t2s: trigger method {cfg.trigger_method!r} has no watermark training samples "
                            f"(embed_x) to rehearse; pick another trigger_method")
        model = self.base(ctx).embed(ctx, keys)
        owner = ctx.data.owner
        objective = Rehearsal(ctx, cfg)
        source = rehearsal_batches(owner.x, owner.y, keys.embed_x, keys.embed_y, batch_size=ctx.train.batch_size,
                                   wm_batch=cfg.wm_batch, query_batch=cfg.query_batch)
        train = dataclasses.replace(ctx.train, epochs=cfg.epochs, lr=cfg.lr, lr_step=0)
        ctx.fit(model, source, cfg=train, loss_fn=objective.loss, on_step_end=objective.on_step_end,
                seed=ctx.seed_for("victim", "t2s"), desc=f"t2s {cfg.mode} fine-tune")
        log.info("t2s: %d thief initialisations, last thief trigger loss %.4f", objective.resets,
                 objective.last_trigger_loss)
        return model

    def finalize_keys(self, ctx: Context, victim: nn.Module, keys: KeySet) -> KeySet:
        return self.base(ctx).finalize_keys(ctx, victim, keys)
