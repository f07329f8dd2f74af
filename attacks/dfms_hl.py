"""DFMS-HL: hard-label, (nearly) data-free model stealing with a GAN prior and class diversity.

Paper: Sanyal, Addepalli, Babu, "Towards Data-Free Model Stealing in a Hard Label Setting",
CVPR 2022, https://arxiv.org/abs/2204.11022. Official code: val-iisc/Hard-Label-Model-Stealing
(``code/train_generator/dcgan.py``, ``train_generator_clone.py``, ``code/train_student``).

Idea. The attacker sees only top-1 labels and has no task data, only a *proxy* set unrelated
to the task (the paper: synthetic shapes or a few CIFAR-100 classes). Zeroth-order gradients
through an argmax are degenerate, so the generator never receives a victim gradient; instead:

1. a GAN (generator G, discriminator D) is trained on the proxy data — the image prior (no queries);
2. the student is warmed up with cross-entropy on the victim's labels of the proxy images and
   of ``warmup_gan`` generated images;
3. alternating rounds until the budget is spent: a batch of G(z) is labelled by the victim
   (B queries) and the student takes a CE step on it, plus a replay step on a memory of earlier
   labelled pairs and, every ``proxy_every`` iterations, a step on the labelled proxy set; then
   G takes a step on ``GAN loss + div_weight · Σ p̄ log p̄`` (p̄ = the batch mean of the
   *student's* softmax on G(z): maximising its entropy spreads the queries over the classes —
   the student-side signal), and D a step on proxy vs generated images.

Queries: ``len(proxy) + warmup_gan + B · iterations``, never more than ``budget``.

Settings (``paper`` profile = the official CIFAR-10 scripts): budget 8 M, B 64, nz 100, GAN
Adam 2e-4 (β₁ 0.5) for 200 epochs, warm-up on the proxy set plus 50 k GAN images for 200
epochs (SGD 0.1), alternating stage with student SGD 0.01 (momentum 0.9, wd 5e-4),
``div_weight`` 500, a 50 k replay memory and a proxy step every 10 iterations. The ``quick``
profile (fixed before any watermark result was seen) scales everything to a 2-core CPU.

Choices where the sources differ or are silent [wmbench]:
- the proxy set is the registered ``synthetic`` dataset (prototype blobs, no natural images;
  the paper's data-free "synthetic" setting) unless ``proxy_set`` names another dataset
  (e.g. digits); ``proxy_size`` caps it (seeded sample);
- G is DFME's ``GeneratorA`` (width ``ngf``) instead of the 32-px DCGAN generator, so it fits
  any image side; D is a two-stride-conv DCGAN-style discriminator (width ``ndf``) with a
  linear head, trained with the logit form of the BCE;
- no AutoAugment, no EMA students, constant student learning rates (the official code's cosine
  schedules are dropped) — these are refinements of the paper's best numbers;
- the student is trained with the shared loop (:func:`~wmbench.training.fit`); G and D are
  updated inside its batch source between the student's steps. G's GAN pre-training also runs
  through the shared loop, whose Adam keeps torch's default β₁ = 0.9; D and the alternating
  stage use ``gan_beta1``.
This attack is hard-label only (``labels`` is fixed to "hard"). The hard-label variant of the
``dfme`` attack is the other data-free hard-label option (no proxy data, no GAN prior).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator, List, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wmbench.api import Attack, AttackContext, AttackOutcome
from wmbench.attacks._stealing import (
    TransferSet, check_access, pool_metrics, query_pool, query_victim, snapshot, student_model, train_student,
    validate_stealing,
)
from wmbench.attacks.dfme import GeneratorA
from wmbench.blackbox import Blackbox
from wmbench.config import TrainConfig
from wmbench.errors import UserError
from wmbench.registry import register_attack
from wmbench.training import Batch
from wmbench.utils import generator, seed_everything

log = logging.getLogger(__name__)


class Discriminator(nn.Module):
    """DCGAN-style discriminator: Conv(C→ndf, 4, 2, 1)+LReLU, Conv(ndf→2ndf, 4, 2, 1)+BN+LReLU,
    Flatten, Linear(→1) (a logit)."""

    def __init__(self, channels: int, size: int, ndf: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf, ndf * 2, 4, 2, 1), nn.BatchNorm2d(ndf * 2), nn.LeakyReLU(0.2, inplace=True),
            nn.Flatten())
        with torch.no_grad():
            width = self.net(torch.zeros(2, channels, size, size)).shape[1]
        self.head = nn.Linear(width, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.net(x)).squeeze(1)


def class_diversity(logits: Tensor) -> Tensor:
    """``Σ p̄ log p̄`` of the batch-mean softmax (minimising it maximises the batch's class entropy)."""
    p_mean = F.softmax(logits, dim=1).mean(dim=0)
    return (p_mean * p_mean.clamp_min(1e-12).log()).sum()


@dataclass(frozen=True)
class DFMSHLConfig:
    """DFMS-HL parameters (defaults = the official CIFAR-10 scripts; see the module docstring).

    labels: str = "hard"           hard-label only.
    budget: int = 8_000_000        total queries (proxy labels, warm-up and alternating rounds).
    proxy_set: str = "synthetic"   dataset of the GAN prior and the proxy queries.
    proxy_size: int | None = None  cap on the proxy images (seeded sample); None = all.
    batch_size: int = 64           B, generated images per alternating iteration.
    nz: int = 100                  latent size.
    ngf: int = 64                  generator width.
    ndf: int = 64                  discriminator width.
    gan_epochs: int = 200          GAN pre-training epochs over the proxy set.
    gan_lr: float = 2e-4           Adam lr of G and D (β₁ = gan_beta1).
    gan_beta1: float = 0.5
    warmup_gan: int = 50_000       generated images labelled for the student's warm-up.
    warmup_epochs: int = 200
    warmup_lr: float = 0.1         student lr in the warm-up.
    div_weight: float = 500.0      weight of the class-diversity term in G's loss.
    replay_size: int = 50_000      FIFO memory of labelled generated images (0 = no replay step).
    proxy_every: int = 10          a labelled proxy batch every N iterations (0 = never).
    arch: str | None = None        student architecture; None = the victim's.
    optimizer: str = "sgd"         student optimiser (adam, sgd, adagrad, adamax, rmsprop).
    lr: float = 0.01               student lr in the alternating stage.
    momentum: float = 0.9
    weight_decay: float = 5e-4
    iters_per_epoch: int = 100     iterations per "epoch" of the alternating stage (logging unit).
    query_noise: float = 0.0       std of Gaussian noise added to every query.
    snapshots: int = 4             intermediate students returned for budget curves (0 = none).
    """

    labels: str = "hard"
    budget: int = 8_000_000
    proxy_set: str = "synthetic"
    proxy_size: Optional[int] = None
    batch_size: int = 64
    nz: int = 100
    ngf: int = 64
    ndf: int = 64
    gan_epochs: int = 200
    gan_lr: float = 2e-4
    gan_beta1: float = 0.5
    warmup_gan: int = 50_000
    warmup_epochs: int = 200
    warmup_lr: float = 0.1
    div_weight: float = 500.0
    replay_size: int = 50_000
    proxy_every: int = 10
    arch: Optional[str] = None
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    iters_per_epoch: int = 100
    query_noise: float = 0.0
    snapshots: int = 4

    PROFILES: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "smoke": {"budget": 4000, "proxy_size": 500, "nz": 32, "ngf": 8, "ndf": 8, "gan_epochs": 2,
                  "warmup_gan": 500, "warmup_epochs": 4, "optimizer": "adam", "lr": 1e-3, "warmup_lr": 1e-3,
                  "replay_size": 2000, "iters_per_epoch": 20, "snapshots": 0},
        "quick": {"budget": 100_000, "proxy_size": 5000, "batch_size": 128, "ngf": 16, "ndf": 16, "gan_epochs": 10,
                  "warmup_gan": 5000, "warmup_epochs": 15, "replay_size": 20_000, "iters_per_epoch": 50},
        "paper": {},
    }

    def validate(self) -> None:
        if self.labels != "hard":
            raise UserError(f"attacks.dfms_hl.labels must be 'hard' (DFMS-HL is a hard-label attack), got {self.labels!r}")
        validate_stealing("attacks.dfms_hl", self)
        for key in ("nz", "ngf", "ndf", "gan_epochs", "warmup_epochs", "iters_per_epoch"):
            if getattr(self, key) < 1:
                raise UserError(f"attacks.dfms_hl.{key} must be >= 1, got {getattr(self, key)}")
        for key in ("warmup_gan", "replay_size", "proxy_every", "snapshots"):
            if getattr(self, key) < 0:
                raise UserError(f"attacks.dfms_hl.{key} must be >= 0, got {getattr(self, key)}")
        if self.proxy_size is not None and self.proxy_size < 1:
            raise UserError(f"attacks.dfms_hl.proxy_size must be >= 1 or null, got {self.proxy_size}")
        if not (self.gan_lr > 0 and self.warmup_lr > 0 and 0 <= self.gan_beta1 < 1 and self.div_weight >= 0):
            raise UserError("attacks.dfms_hl: gan_lr and warmup_lr must be > 0, gan_beta1 in [0, 1), div_weight >= 0")


class _GANStream:
    """GAN pre-training as a batch source for G's training loop: each batch first takes a D step
    on a proxy batch vs G's current samples, then yields the latent batch for G's step."""

    def __init__(self, g: GeneratorA, d: Discriminator, real: Tensor, cfg: DFMSHLConfig, device: torch.device,
                 seed: int) -> None:
        self.g, self.d, self.real, self.cfg, self.device = g, d, real, cfg, device
        self.opt_d = torch.optim.Adam(d.parameters(), lr=cfg.gan_lr, betas=(cfg.gan_beta1, 0.999))
        self.z_gen = generator(seed)

    def __call__(self, epoch: int, gen: torch.Generator) -> Iterator[Batch]:
        order = torch.randperm(self.real.shape[0], generator=gen)
        for start in range(0, order.numel(), self.cfg.batch_size):
            real = self.real[order[start:start + self.cfg.batch_size]].to(self.device)
            z = torch.randn(real.shape[0], self.cfg.nz, generator=self.z_gen).to(self.device)
            d_step(self.d, self.opt_d, real, self.g(z).detach())
            yield (z,)


def d_step(d: Discriminator, opt: torch.optim.Optimizer, real: Tensor, fake: Tensor) -> None:
    """One discriminator step: real -> 1, fake -> 0 (BCE on logits)."""
    d.train()
    opt.zero_grad(set_to_none=True)
    out_real, out_fake = d(real), d(fake)
    loss = F.binary_cross_entropy_with_logits(out_real, torch.ones_like(out_real)) + \
        F.binary_cross_entropy_with_logits(out_fake, torch.zeros_like(out_fake))
    loss.backward()
    opt.step()


class _AlternatingStream:
    """The alternating stage as the student's batch source (see the module docstring)."""

    def __init__(self, cfg: DFMSHLConfig, target: Blackbox, student: nn.Module, g: GeneratorA, d: Discriminator,
                 proxy: TransferSet, real: Tensor, device: torch.device, seed: int, iterations: int) -> None:
        self.cfg, self.target, self.student, self.g, self.d = cfg, target, student, g, d
        self.proxy, self.real, self.device, self.iterations = proxy, real, device, iterations
        self.opt_g = torch.optim.Adam(g.parameters(), lr=cfg.gan_lr, betas=(cfg.gan_beta1, 0.999))
        self.opt_d = torch.optim.Adam(d.parameters(), lr=cfg.gan_lr, betas=(cfg.gan_beta1, 0.999))
        self.z_gen, self.pick, self.noise_gen = generator(seed), generator(seed + 1), generator(seed + 2)
        self.memory_x: List[Tensor] = []
        self.memory_y: List[Tensor] = []
        self.memory_n = 0
        self.done = 0
        every = iterations // (cfg.snapshots + 1) if cfg.snapshots else 0
        self.snap_at = {every * (i + 1) for i in range(cfg.snapshots)} if every else set()
        self.snapshots: List[Tuple[str, float, nn.Module]] = []
        self.diversity = float("nan")

    def _remember(self, x: Tensor, y: Tensor) -> None:
        if self.cfg.replay_size <= 0:
            return
        self.memory_x.append(x)
        self.memory_y.append(y)
        self.memory_n += x.shape[0]
        while self.memory_n - self.memory_x[0].shape[0] >= self.cfg.replay_size:
            self.memory_n -= self.memory_x.pop(0).shape[0]
            self.memory_y.pop(0)

    def _replay(self) -> Batch:
        x, y = torch.cat(self.memory_x), torch.cat(self.memory_y)
        idx = torch.randperm(x.shape[0], generator=self.pick)[: self.cfg.batch_size]
        return x[idx], y[idx]

    def __call__(self, epoch: int, _gen: torch.Generator) -> Iterator[Batch]:
        cfg = self.cfg
        for _ in range(cfg.iters_per_epoch):
            if self.done >= self.iterations:
                return
            self.g.train()
            z = torch.randn(cfg.batch_size, cfg.nz, generator=self.z_gen).to(self.device)
            fake = self.g(z)
            sent, labels = query_victim(self.target, fake.detach(), labels="hard", noise=cfg.query_noise,
                                        gen=self.noise_gen, batch_size=max(512, cfg.batch_size))
            self._remember(sent, labels)
            yield sent, labels
            if cfg.replay_size > 0 and self.memory_n > cfg.batch_size:
                yield self._replay()
            if cfg.proxy_every and self.done % cfg.proxy_every == 0 and len(self.proxy):
                idx = torch.randperm(len(self.proxy), generator=self.pick)[: cfg.batch_size]
                yield self.proxy.gather(idx)
            # generator: GAN loss + class diversity of the student's predictions
            self.student.eval()
            self.opt_g.zero_grad(set_to_none=True)
            div = class_diversity(self.student(fake))
            self.d.eval()
            out = self.d(fake)
            self.d.train()
            loss = F.binary_cross_entropy_with_logits(out, torch.ones_like(out)) + cfg.div_weight * div
            grads = torch.autograd.grad(loss, list(self.g.parameters()))
            for p, grad in zip(self.g.parameters(), grads):
                p.grad = grad
            self.opt_g.step()
            self.student.train()
            real = self.real[torch.randperm(self.real.shape[0], generator=self.pick)[: cfg.batch_size]]
            d_step(self.d, self.opt_d, real.to(self.device), fake.detach())
            self.diversity = float(div.detach())
            self.done += 1
            if self.done in self.snap_at:
                self.snapshots.append(("queries", float(self.target.queries), snapshot(self.student)))


@register_attack("dfms_hl")
class DFMSHL(Attack):
    """DFMS-HL hard-label stealing with a GAN prior on proxy data (see the module docstring)."""

    paper = "https://arxiv.org/abs/2204.11022"
    year = 2022
    category = "stealing"
    needs = frozenset({"labels"})
    Config = DFMSHLConfig

    def run(self, target: Blackbox | nn.Module, ctx: AttackContext) -> AttackOutcome:
        cfg: DFMSHLConfig = self.config
        target = check_access(target, "hard", "DFMS-HL")
        started = time.perf_counter()
        device = ctx.device
        proxy = query_pool(ctx, cfg.proxy_set).take(cfg.proxy_size, ctx.seed_for("dfms_hl", "proxy"))
        n_proxy = min(len(proxy), cfg.budget)
        proxy = proxy.take(n_proxy, ctx.seed_for("dfms_hl", "proxy-budget"))
        warmup_gan = min(cfg.warmup_gan, cfg.budget - n_proxy)
        iterations = (cfg.budget - n_proxy - warmup_gan) // cfg.batch_size
        noise_gen = generator(ctx.seed_for("dfms_hl", "noise"))

        # 1. GAN prior on the proxy data (no victim queries)
        seed_everything(ctx.seed_for("dfms_hl", "gan-init"))
        g = GeneratorA(cfg.nz, cfg.ngf, ctx.data.channels, ctx.data.size).to(device)
        d = Discriminator(ctx.data.channels, ctx.data.size, cfg.ndf).to(device)
        gan_stream = _GANStream(g, d, proxy.x, cfg, device, ctx.seed_for("dfms_hl", "gan-z"))

        def gan_loss(model: nn.Module, batch: Batch) -> Tensor:
            out = d(model(batch[0]))
            return F.binary_cross_entropy_with_logits(out, torch.ones_like(out))

        ctx.fit(g, gan_stream, cfg=TrainConfig(epochs=cfg.gan_epochs, batch_size=cfg.batch_size, optimizer="adam",
                                               lr=cfg.gan_lr, lr_step=0),
                loss_fn=gan_loss, seed=ctx.seed_for("dfms_hl", "gan-order"), desc="dfms_hl-gan")

        # 2. warm-up: victim labels of the proxy images and of generated images
        qkw = dict(labels="hard", noise=cfg.query_noise, gen=noise_gen, batch_size=512)
        proxy_sent, proxy_y = query_victim(target, proxy.x, **qkw)
        proxy_set = TransferSet()
        proxy_set.add(proxy_sent, proxy_y)
        warm = TransferSet()
        warm.add(proxy_sent, proxy_y)
        z_gen = generator(ctx.seed_for("dfms_hl", "warmup-z"))
        g.train()
        for start in range(0, warmup_gan, 512):
            n = min(512, warmup_gan - start)
            with torch.no_grad():
                x = g(torch.randn(n, cfg.nz, generator=z_gen).to(device)).cpu()
            warm.add(*query_victim(target, x, **qkw))
        student = student_model(ctx, cfg.arch, "dfms_hl", "student")
        train_student(ctx, student, warm, TrainConfig(
            epochs=cfg.warmup_epochs, batch_size=max(cfg.batch_size, 128), optimizer=cfg.optimizer, lr=cfg.warmup_lr,
            momentum=cfg.momentum, weight_decay=cfg.weight_decay, lr_step=0),
            seed=ctx.seed_for("dfms_hl", "warmup-order"), desc="dfms_hl-warmup")
        warm_queries = target.queries

        # 3. alternating stage until the budget is spent
        stream = _AlternatingStream(cfg, target, student, g, d, proxy_set, proxy.x, device,
                                    ctx.seed_for("dfms_hl", "stream"), iterations)
        epochs = max(1, -(-iterations // cfg.iters_per_epoch))
        history = ctx.fit(student, stream, cfg=TrainConfig(
            epochs=epochs, batch_size=cfg.batch_size, optimizer=cfg.optimizer, lr=cfg.lr, momentum=cfg.momentum,
            weight_decay=cfg.weight_decay, lr_step=0), seed=ctx.seed_for("dfms_hl", "order"), desc="dfms_hl")
        if target.queries != warm_queries + stream.done * cfg.batch_size or target.queries > cfg.budget:
            raise RuntimeError(f"DFMS-HL query accounting: {target.queries} queries for budget {cfg.budget}")
        return AttackOutcome(model=student, queries=target.queries, snapshots=stream.snapshots, metrics={
            **pool_metrics(proxy, cfg.proxy_set),
            "warmup_queries": float(warm_queries),
            "iterations": float(stream.done),
            "student_diversity": stream.diversity,
            "attack_wall_s": time.perf_counter() - started,
            "final_loss": history[-1]["loss"] if history else float("nan"),
        })
