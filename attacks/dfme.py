"""DFME: data-free model extraction with a generator and zeroth-order gradient estimates.

Paper: Truong, Maini, Walls, Papernot, "Data-Free Model Extraction", CVPR 2021,
https://arxiv.org/abs/2011.14779. Official code: cake-lab/datafree-model-extraction
(``dfme/train.py``, ``dfme/approximate_gradients.py``, ``dfme/network/gan.py``).

Idea (soft labels). A generator G maps noise z to queries. Each iteration:

1. **generator step** (``g_iter`` times): x = G(z) for a batch of B; the victim is black-box, so
   the gradient of the disagreement ``L = ‖S(x) − V(x)‖₁`` (student logits vs the victim's logits
   recovered as ``log p − mean log p``) with respect to x is estimated by forward differences
   along ``m`` random unit directions u (``ε``): ``∇ ≈ dim/ε · mean_u[(L(x+εu) − L(x))·u] / (K·B)``,
   taken in G's pre-activation space (``pre_x``) and pushed into G with ``x.backward(∇)``;
   G *maximises* the disagreement (it descends on −L). This costs B·(m+1) queries;
2. **student steps** (``d_iter``): fresh z, query the victim on G(z) (B queries each) and
   train the student with L1 on the recovered logits (``loss="kl"``: KL on probabilities).

Queries per iteration are exactly ``B·(g_iter·(m+1) + d_iter)`` (soft); the attack runs
``budget // that`` iterations, so it never exceeds ``budget``.

Hard labels (``labels="hard"``, DeepTracer's "DFME hard label"; DualCOS/DisGUIDE ``hl`` loss):
zeroth-order estimates of an argmax are degenerate (almost every direction leaves the label
unchanged), so the generator is driven by a **student-side** signal instead [wmbench choice,
following shared/reference/attacks.md §2.5]: G maximises the student's cross-entropy against the
victim's labels of its own batch (B queries; the gradient flows through the student only)
plus ``div_weight`` times the diversity term Σ p̄ log p̄ of the batch-mean student softmax (the
DFMS-HL class-diversity loss, keeping G from collapsing onto one class). The student trains
with CE on the labels, also on the generator step's labelled batch (already paid for).
Queries per iteration: ``B·(g_iter + d_iter)``. A DFMS-HL-style attack with a GAN prior on proxy
data is the separate ``dfms_hl`` attack.

Settings (``paper`` profile = the official CIFAR-10 run, which DeepTracer's author also uses:
yangyunfei16/DualCOS run_cifar10.sh): budget 20 M, B 256, nz 256, GeneratorA ngf 64, m 1,
ε 1e-3, d_iter 5, g_iter 1, student SGD lr 0.1, momentum 0.9, wd 5e-4; generator Adam 1e-4;
50 iterations per epoch, MultiStep at 10/30/50 % of the epochs, ×0.3 (student and generator).
The ``quick`` profile is the scaled CPU setting of shared/reference/attacks.md §2.3 (ngf 16,
B 128, m 1, d_iter 5), fixed before any watermark result was seen, with a 300 k budget.

Choices where the sources are silent [wmbench]: G's output is mapped to pixels as
``(tanh + 1)/2`` (the official code's tanh lives in normalised space; wmbench models take [0, 1]
images and normalise inside); GeneratorA's side is ``4·⌈size/4⌉``, resized to ``size`` when
those differ; the MultiStep schedule is applied by training the student in one
:func:`~wmbench.training.fit` call per lr phase (so SGD momentum restarts at a milestone);
``snapshots`` intermediate students (at equal fractions of the iterations) are returned for
the runner's budget curves.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, Iterator, List, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wmbench.api import Attack, AttackContext, AttackOutcome
from wmbench.attacks._stealing import (
    check_access, query_victim, recovered_logits, snapshot, student_model, validate_stealing,
)
from wmbench.blackbox import Blackbox
from wmbench.config import TrainConfig
from wmbench.errors import UserError
from wmbench.registry import register_attack
from wmbench.training import Batch
from wmbench.utils import generator, seed_everything

log = logging.getLogger(__name__)

LOSSES = ("l1", "kl")


# --------------------------------------------------------------------------------------------
# Generator
# --------------------------------------------------------------------------------------------
class GeneratorA(nn.Module):
    """DFME's ``GeneratorA`` (``network/gan.py``), width ``ngf``, for ``channels``×``size``² images.

    Linear(nz → 2ngf·s₀²), BN, ×2 upsample, Conv(2ngf→2ngf)+BN+LReLU(0.2), ×2 upsample,
    Conv(2ngf→ngf)+BN+LReLU(0.2), Conv(ngf→C), BN(C, affine=False); s₀ = ⌈size/4⌉.
    ``forward(z, pre_x=True)`` returns the pre-activation; otherwise pixels ``(tanh + 1)/2``.
    """

    def __init__(self, nz: int, ngf: int, channels: int, size: int) -> None:
        super().__init__()
        self.nz, self.size = nz, size
        self.init_size = max(1, math.ceil(size / 4))
        self.l1 = nn.Linear(nz, ngf * 2 * self.init_size ** 2)
        self.conv_blocks0 = nn.Sequential(nn.BatchNorm2d(ngf * 2))
        self.conv_blocks1 = nn.Sequential(
            nn.Conv2d(ngf * 2, ngf * 2, 3, stride=1, padding=1), nn.BatchNorm2d(ngf * 2), nn.LeakyReLU(0.2, inplace=True))
        self.conv_blocks2 = nn.Sequential(
            nn.Conv2d(ngf * 2, ngf, 3, stride=1, padding=1), nn.BatchNorm2d(ngf), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ngf, channels, 3, stride=1, padding=1), nn.BatchNorm2d(channels, affine=False))

    def forward(self, z: Tensor, pre_x: bool = False) -> Tensor:
        out = self.l1(z.view(z.shape[0], -1)).view(z.shape[0], -1, self.init_size, self.init_size)
        img = self.conv_blocks0(out)
        img = self.conv_blocks1(F.interpolate(img, scale_factor=2))
        img = self.conv_blocks2(F.interpolate(img, scale_factor=2))
        if img.shape[-1] != self.size:
            img = F.interpolate(img, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return img if pre_x else to_pixels(img)


def to_pixels(pre: Tensor) -> Tensor:
    """Generator pre-activation -> images in [0, 1]."""
    return (torch.tanh(pre) + 1.0) / 2.0


def unit_directions(n: int, m: int, shape: Tuple[int, ...], gen: torch.Generator) -> Tensor:
    """``[n, m, *shape]`` directions drawn uniformly from the unit sphere (normalised Gaussians)."""
    dim = int(torch.tensor(shape).prod())
    u = torch.randn(n, m, dim, generator=gen)
    u = u / u.norm(dim=2, keepdim=True)
    return u.view(n, m, *shape)


def forward_difference_gradient(loss_values: Tensor, u: Tensor, eps: float, *, normalise: float) -> Tensor:
    """DFME's estimate from per-point objectives ``loss_values`` [B, m+1] (last column: x itself)
    and directions ``u`` [B, m, C, H, W]: ``dim/ε · mean_m[(L(x+εu) − L(x))·u] / normalise``."""
    b, m = u.shape[0], u.shape[1]
    dim = u[0, 0].numel()
    diff = (loss_values[:, :m] - loss_values[:, m:]).view(b, m, *([1] * (u.dim() - 2)))
    return (dim / eps) * (diff * u).mean(dim=1) / normalise


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DFMEConfig:
    """DFME parameters (defaults = the official CIFAR-10 run; see the module docstring).

    labels: str = "soft"           "soft" (probabilities) or "hard" (top-1 label only).
    budget: int = 20_000_000       queries; the attack stops before exceeding it.
    batch_size: int = 256          B, images per generator / student batch.
    nz: int = 256                  latent size.
    ngf: int = 64                  generator width (scaled down on CPU).
    grad_m: int = 1                m, random directions of the forward differences (soft).
    grad_epsilon: float = 1e-3     ε of the forward differences (soft).
    d_iter: int = 5                student steps per iteration.
    g_iter: int = 1                generator steps per iteration.
    loss: str = "l1"               soft student/generator loss: "l1" (recovered logits) or "kl".
    div_weight: float = 1.0        hard: weight of the generator's class-diversity term.
    arch: str | None = None        student architecture; None = the victim's.
    optimizer: str = "sgd"         student optimiser (adam, sgd, adagrad, adamax, rmsprop).
    lr: float = 0.1                student lr.
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_g: float = 1e-4             generator lr (Adam).
    iters_per_epoch: int = 50      iterations per "epoch" (the schedule's unit).
    milestones: tuple = (0.1, 0.3, 0.5)   lr milestones as fractions of the epochs.
    lr_gamma: float = 0.3          lr factor at each milestone (student and generator).
    query_noise: float = 0.0       std of Gaussian noise added to every query.
    snapshots: int = 4             intermediate students returned for budget curves (0 = none).
    """

    labels: str = "soft"
    budget: int = 20_000_000
    batch_size: int = 256
    nz: int = 256
    ngf: int = 64
    grad_m: int = 1
    grad_epsilon: float = 1e-3
    d_iter: int = 5
    g_iter: int = 1
    loss: str = "l1"
    div_weight: float = 1.0
    arch: Optional[str] = None
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_g: float = 1e-4
    iters_per_epoch: int = 50
    milestones: Tuple[float, ...] = (0.1, 0.3, 0.5)
    lr_gamma: float = 0.3
    query_noise: float = 0.0
    snapshots: int = 4

    PROFILES: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "smoke": {"budget": 8000, "batch_size": 32, "nz": 64, "ngf": 8, "iters_per_epoch": 10, "snapshots": 0},
        "quick": {"budget": 300_000, "batch_size": 128, "ngf": 16, "iters_per_epoch": 50},
        "paper": {},
    }

    def validate(self) -> None:
        validate_stealing("attacks.dfme", self)
        if self.loss not in LOSSES:
            raise UserError(f"attacks.dfme.loss must be 'l1' or 'kl', got {self.loss!r}")
        for key in ("nz", "ngf", "grad_m", "d_iter", "iters_per_epoch"):
            if getattr(self, key) < 1:
                raise UserError(f"attacks.dfme.{key} must be >= 1, got {getattr(self, key)}")
        if self.g_iter < 0 or self.snapshots < 0:
            raise UserError("attacks.dfme: g_iter and snapshots must be >= 0")
        if not self.grad_epsilon > 0 or not self.lr_g > 0 or not self.div_weight >= 0:
            raise UserError("attacks.dfme: grad_epsilon and lr_g must be > 0 and div_weight >= 0")
        if any(not 0 < f < 1 for f in self.milestones) or not 0 < self.lr_gamma <= 1:
            raise UserError("attacks.dfme: milestones must be fractions in (0, 1) and lr_gamma in (0, 1]")
        if self.budget < self.cost_per_iteration:
            raise UserError(f"attacks.dfme.budget ({self.budget}) is below the cost of one iteration "
                            f"({self.cost_per_iteration} queries = B·(g_iter·(m+1) + d_iter))")

    @property
    def cost_per_iteration(self) -> int:
        """Queries per iteration: ``B·(g_iter·(m+1) + d_iter)`` (soft) or ``B·(g_iter + d_iter)`` (hard)."""
        per_g = self.grad_m + 1 if self.labels == "soft" else 1
        return self.batch_size * (self.g_iter * per_g + self.d_iter)


def lr_phases(epochs: int, milestones: Tuple[float, ...], gamma: float) -> List[Tuple[int, float]]:
    """``[(epochs, lr factor), ...]``: MultiStep milestones (fractions of ``epochs``) as phases."""
    cuts = sorted({min(epochs, max(0, int(round(f * epochs)))) for f in milestones})
    bounds = [0] + [c for c in cuts if 0 < c < epochs] + [epochs]
    return [(bounds[i + 1] - bounds[i], gamma ** i) for i in range(len(bounds) - 1) if bounds[i + 1] > bounds[i]]


# --------------------------------------------------------------------------------------------
# The alternation, as a batch source of the shared training loop
# --------------------------------------------------------------------------------------------
class DFMEStream:
    """Yields the student's batches (victim-labelled generator images) and runs the generator
    steps in between; the student's optimiser step is the training loop's."""

    def __init__(self, cfg: DFMEConfig, target: Blackbox, student: nn.Module, gen_model: GeneratorA,
                 device: torch.device, seed: int, iterations: int) -> None:
        self.cfg, self.target, self.student, self.g = cfg, target, student, gen_model
        self.device = device
        self.iterations = iterations
        self.done = 0
        self.opt_g = torch.optim.Adam(gen_model.parameters(), lr=cfg.lr_g)
        self.z_gen = generator(seed)
        self.u_gen = generator(seed + 1)
        self.noise_gen = generator(seed + 2)
        self.num_classes = target.num_classes
        self.shape = target.input_shape
        every = iterations // (cfg.snapshots + 1) if cfg.snapshots else 0
        self.snap_at = {every * (i + 1) for i in range(cfg.snapshots)} if every else set()
        self.snapshots: List[Tuple[str, float, nn.Module]] = []
        self.g_loss = float("nan")

    def set_lr_factor(self, factor: float) -> None:
        for group in self.opt_g.param_groups:
            group["lr"] = self.cfg.lr_g * factor

    def _z(self) -> Tensor:
        return torch.randn(self.cfg.batch_size, self.cfg.nz, generator=self.z_gen).to(self.device)

    def _query(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        return query_victim(self.target, x, labels=self.cfg.labels, noise=self.cfg.query_noise, gen=self.noise_gen,
                            batch_size=max(512, x.shape[0]))

    def _student_eval(self, x: Tensor, grad: bool = False) -> Tensor:
        self.student.eval()
        try:
            with torch.set_grad_enabled(grad):
                return self.student(x.to(self.device))
        finally:
            self.student.train()

    def generator_step_soft(self) -> None:
        cfg = self.cfg
        self.g.train()
        self.opt_g.zero_grad(set_to_none=True)
        pre = self.g(self._z(), pre_x=True)
        b, m = pre.shape[0], cfg.grad_m
        with torch.no_grad():
            u = unit_directions(b, m, tuple(pre.shape[1:]), self.u_gen).to(pre.device)
            points = torch.cat([pre.detach().unsqueeze(1) + cfg.grad_epsilon * u, pre.detach().unsqueeze(1)], dim=1)
            images = to_pixels(points.view(-1, *pre.shape[1:]))
            sent, probs = self._query(images)
            s_logits = self._student_eval(sent).float().cpu()
            if cfg.loss == "l1":
                values = -(s_logits - recovered_logits(probs)).abs().mean(dim=1)
                normalise = float(self.num_classes * b)
            else:
                values = -F.kl_div(F.log_softmax(s_logits, dim=1), probs, reduction="none").sum(dim=1)
                normalise = 1.0
            values = values.view(b, m + 1)
            grad = forward_difference_gradient(values, u.cpu(), cfg.grad_epsilon, normalise=normalise)
        pre.backward(grad.to(pre.device))
        self.opt_g.step()
        self.g_loss = float(values[:, -1].mean())

    def generator_step_hard(self) -> Batch:
        cfg = self.cfg
        self.g.train()
        self.opt_g.zero_grad(set_to_none=True)
        x = self.g(self._z())
        sent, labels = self._query(x.detach())
        logits = self._student_eval(x, grad=True)
        p_mean = F.softmax(logits, dim=1).mean(dim=0)
        diversity = (p_mean * p_mean.clamp_min(1e-12).log()).sum()
        loss = -F.cross_entropy(logits, labels.to(logits.device)) + cfg.div_weight * diversity
        grads = torch.autograd.grad(loss, list(self.g.parameters()))
        for p, g in zip(self.g.parameters(), grads):
            p.grad = g
        self.opt_g.step()
        self.g_loss = float(loss.detach())
        return sent, labels

    def student_batch(self) -> Batch:
        with torch.no_grad():
            self.g.train()
            x = self.g(self._z())
        sent, out = self._query(x)
        return (sent, recovered_logits(out)) if self.cfg.labels == "soft" else (sent, out)

    def __call__(self, epoch: int, _gen: torch.Generator) -> Iterator[Batch]:
        for _ in range(self.cfg.iters_per_epoch):
            if self.done >= self.iterations:
                return
            for _ in range(self.cfg.g_iter):
                if self.cfg.labels == "soft":
                    self.generator_step_soft()
                else:
                    yield self.generator_step_hard()
            for _ in range(self.cfg.d_iter):
                yield self.student_batch()
            self.done += 1
            if self.done in self.snap_at:
                self.snapshots.append(("queries", float(self.target.queries), snapshot(self.student)))


def student_loss(cfg: DFMEConfig):
    """The student's loss hook: L1 on recovered logits, KL, or CE on hard labels."""

    def loss_fn(model: nn.Module, batch: Batch) -> Tensor:
        x, t = batch[0], batch[1]
        logits = model(x)
        if not t.is_floating_point():
            return F.cross_entropy(logits, t)
        if cfg.loss == "l1":
            return F.l1_loss(logits, t)
        return F.kl_div(F.log_softmax(logits, dim=1), F.softmax(t, dim=1), reduction="batchmean")

    return loss_fn


def run_phases(ctx: AttackContext, student: nn.Module, stream: Any, *, cfg: Any, epochs: int, desc: str,
               seed: int) -> List[Dict[str, float]]:
    """Train ``student`` on ``stream`` for ``epochs`` with the MultiStep schedule as fit phases."""
    history: List[Dict[str, float]] = []
    for i, (phase_epochs, factor) in enumerate(lr_phases(epochs, cfg.milestones, cfg.lr_gamma)):
        stream.set_lr_factor(factor)
        tc = TrainConfig(epochs=phase_epochs, batch_size=cfg.batch_size, optimizer=cfg.optimizer, lr=cfg.lr * factor,
                         momentum=cfg.momentum, weight_decay=cfg.weight_decay, lr_step=0)
        history += ctx.fit(student, stream, cfg=tc, loss_fn=student_loss(cfg), seed=seed + i, desc=f"{desc}-phase{i}")
    return history


@register_attack("dfme")
class DFME(Attack):
    """Data-free model extraction, soft (zeroth-order) or hard (student-side generator signal) labels."""

    paper = "https://arxiv.org/abs/2011.14779"
    year = 2021
    category = "stealing"
    needs = frozenset({"probs"})
    label_modes = ("soft", "hard")
    Config = DFMEConfig

    def run(self, target: Blackbox | nn.Module, ctx: AttackContext) -> AttackOutcome:
        cfg: DFMEConfig = self.config
        target = check_access(target, cfg.labels, "DFME")
        started = time.perf_counter()
        cost = cfg.cost_per_iteration
        iterations = cfg.budget // cost
        epochs = max(1, math.ceil(iterations / cfg.iters_per_epoch))
        student = student_model(ctx, cfg.arch, "dfme", "student")
        seed_everything(ctx.seed_for("dfme", "generator"))
        g = GeneratorA(cfg.nz, cfg.ngf, ctx.data.channels, ctx.data.size).to(ctx.device)
        stream = DFMEStream(cfg, target, student, g, ctx.device, ctx.seed_for("dfme", "stream"), iterations)
        history = run_phases(ctx, student, stream, cfg=cfg, epochs=epochs, desc=f"dfme-{cfg.labels}",
                             seed=ctx.seed_for("dfme", "order"))
        if target.queries != stream.done * cost:
            raise RuntimeError(f"DFME query accounting: {target.queries} != {stream.done} × {cost}")
        log.info("dfme-%s: %d iterations × %d queries = %d", cfg.labels, stream.done, cost, target.queries)
        return AttackOutcome(model=student, queries=target.queries, snapshots=stream.snapshots, metrics={
            "pool_size": 0.0,
            "pool_in_distribution": 0.0,
            "iterations": float(stream.done),
            "queries_per_iteration": float(cost),
            "generator_loss": stream.g_loss,
            "attack_wall_s": time.perf_counter() - started,
            "final_loss": history[-1]["loss"] if history else float("nan"),
        })
