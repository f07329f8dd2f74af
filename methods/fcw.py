"""Function-coupled watermarks (Wen et al. 2023), name ``fcw``.

Paper: Wen, Li, Jiang, Xu, "On Function-Coupled Watermarks for Deep Neural Networks",
arXiv:2302.10296 (v3, 2023), https://arxiv.org/abs/2302.10296; official code
cure-lab/Function-Coupled-Watermark (``tinyimagenet-wm.py`` embedding, ``select_combine_img.py``
fusion, ``pruning.py`` masking). Not one of DeepTracer's baselines; added as a removal-robust
in-distribution watermark.

Idea: couple the watermark with the model's normal function. (1) Triggers are *in-distribution*:
two training images of source classes i and j are fused and labelled with a third class t —
**direct** fusion puts A top-left and B bottom-right on a white canvas of twice the side (visible),
**invisible** fusion blends 0.5·A + 0.5·B. (2) During training a random mask zeroes a small share
of the convolution weights every few iterations (made permanent, so the weights restart from 0
and may regrow), which spreads the watermark over the network.

Released settings (``paper`` profile): sources 0 and 3, target 1, invisible fusion; masking of
0.2 % of all conv weights (incl. shortcut convs; not BN or FC) every 10 iterations; 10 triggers
appended to every batch of 128 clean images, plain cross-entropy.

Choices where the sources are silent or that wmbench changes [wmbench, each a Config parameter]:

- fusion in [0, 1]; direct fusion downsizes the 2H×2W canvas to H×W bilinearly with antialias
  (the code resizes at load time); ``fusion`` selects "invisible" (released) or "direct";
- ``n_triggers`` = 100 training fusions, each of a random image of class i and one of class j
  (key seed; the code takes the first 30 in index order), appended ``wm_per_batch`` per batch in
  a per-epoch shuffled cycle;
- the victim is trained from scratch with the shared ``train`` schedule and the masking on
  throughout (the paper fine-tunes a clean model for 40 epochs with SGD 0.01);
- masking draws its positions from a seeded generator: exactly ``round(mask_ratio × n)`` of the
  n conv weights are set to 0 every ``mask_interval`` optimiser steps — the same as
  ``prune.global_unstructured(..., RandomUnstructured, amount=mask_ratio)`` + ``prune.remove``,
  but reproducible (:func:`mask_conv_weights`);
- verification: ``n_keys`` = 2,000 fusions of held-out **test** images (no top-confidence
  re-ranking). Because the keys are *unseen* fusions, the watermark must generalise: at the
  ``quick`` profile 100 invisible training fusions give 86.3 % victim WSR on Fashion-MNIST, so
  ``quick`` uses ``n_triggers`` = 500 (97.4 %, accuracy −0.8 points); the ``paper`` profile keeps
  100 (untested at that scale).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, List, Mapping, Tuple

import torch
from torch import Tensor, nn

from wmbench.api import Context, KeySet, WatermarkMethod
from wmbench.data import Split
from wmbench.errors import UserError
from wmbench.methods._triggers import appended_batches, blend, check_class, class_index, direct_fusion, sample_index
from wmbench.registry import register_method
from wmbench.utils import generator

log = logging.getLogger(__name__)

FUSIONS = ("invisible", "direct")


@dataclass(frozen=True)
class FCWConfig:
    """Function-coupled watermark parameters (defaults = released settings; see the module docstring).

    sources: tuple = (0, 3)      the two source classes (A, B).
    target: int = 1              label of the fused triggers.
    fusion: str = "invisible"    "invisible" (alpha·A + (1 − alpha)·B) or "direct" (2×2 canvas).
    alpha: float = 0.5           weight of A in invisible fusion.
    fill: float = 1.0            value of the empty quadrants in direct fusion (white).
    n_triggers: int = 100        fused training images used for embedding (quick profile: 500,
                                 see PROFILES).
    wm_per_batch: int = 10       triggers appended to every clean batch.
    mask_ratio: float = 0.002    share of conv weights zeroed at each masking step (0 disables).
    mask_interval: int = 10      optimiser steps between masking steps.
    n_keys: int = 2000           verification fusions of test images.
    """

    sources: Tuple[int, ...] = (0, 3)
    target: int = 1
    fusion: str = "invisible"
    alpha: float = 0.5
    fill: float = 1.0
    n_triggers: int = 100
    wm_per_batch: int = 10
    mask_ratio: float = 0.002
    mask_interval: int = 10
    n_keys: int = 2000

    PROFILES: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "smoke": {"n_keys": 300},
        # Fashion-MNIST, 5 epochs, invisible fusion: 100 training fusions reach only 86.3 % victim
        # WSR on held-out test fusions (they are memorised but generalise poorly); 500 reach
        # 97.4 % (1,000: 93.5 %; direct fusion with 100: 100 %).
        "quick": {"n_triggers": 500},
        "paper": {},
    }

    def validate(self) -> None:
        if len(self.sources) != 2 or len({*self.sources, self.target}) != 3:
            raise UserError(
                f"methods.fcw needs two distinct sources and a third target class, got sources={list(self.sources)}, "
                f"target={self.target}"
            )
        if self.fusion not in FUSIONS:
            raise UserError(f"methods.fcw.fusion must be one of {', '.join(FUSIONS)}, got {self.fusion!r}")
        if not 0.0 < self.alpha < 1.0:
            raise UserError(f"methods.fcw.alpha must be in (0, 1), got {self.alpha}")
        if not 0.0 <= self.fill <= 1.0:
            raise UserError(f"methods.fcw.fill must be in [0, 1], got {self.fill}")
        if self.n_triggers < 1 or self.wm_per_batch < 1 or self.n_keys < 1:
            raise UserError("methods.fcw.n_triggers, wm_per_batch and n_keys must be >= 1")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise UserError(f"methods.fcw.mask_ratio must be in [0, 1), got {self.mask_ratio}")
        if self.mask_interval < 1:
            raise UserError(f"methods.fcw.mask_interval must be >= 1, got {self.mask_interval}")


def conv_weights(model: nn.Module) -> List[Tensor]:
    """The weight tensors of every convolution of ``model`` (incl. shortcut convs), in module order."""
    return [m.weight for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)]


@torch.no_grad()
def mask_conv_weights(model: nn.Module, ratio: float, gen: torch.Generator) -> int:
    """Zero ``round(ratio × n)`` of the ``n`` conv weights of ``model``, chosen uniformly over all of
    them (global random unstructured masking, made permanent); returns how many were zeroed."""
    weights = conv_weights(model)
    sizes = [w.numel() for w in weights]
    total = sum(sizes)
    k = int(round(ratio * total))
    if k == 0 or total == 0:
        return 0
    chosen = torch.randperm(total, generator=gen)[:k]
    start = 0
    for w, size in zip(weights, sizes):
        local = chosen[(chosen >= start) & (chosen < start + size)] - start
        if local.numel():
            w[torch.unravel_index(local.to(w.device), w.shape)] = 0.0
        start += size
    return k


def masking_hook(ratio: float, interval: int, gen: torch.Generator) -> Callable[[int, nn.Module], None]:
    """An ``on_step_end`` hook for :func:`wmbench.training.fit`: mask every ``interval`` steps."""

    def hook(step: int, model: nn.Module) -> None:
        if ratio > 0 and step % interval == 0:
            mask_conv_weights(model, ratio, gen)

    return hook


@register_method("fcw")
class FunctionCoupled(WatermarkMethod):
    """Wen et al.'s function-coupled watermark (see the module docstring)."""

    paper = "https://arxiv.org/abs/2302.10296"
    year = 2023
    category = "in-distribution / fused"
    Config = FCWConfig
    min_classes = 3

    def fuse(self, a: Tensor, b: Tensor) -> Tensor:
        """Fuse image batches ``a`` (class i) and ``b`` (class j) with the configured fusion."""
        cfg = self.config
        return blend(a, b, cfg.alpha) if cfg.fusion == "invisible" else direct_fusion(a, b, cfg.fill)

    def fusions(self, split: Split, n: int, gen: torch.Generator) -> Tensor:
        """``n`` fusions of a random image of each source class of ``split`` (with replacement)."""
        a, b = self.config.sources
        ia = sample_index(class_index(split.y, [a]), n, gen, replace=True)
        ib = sample_index(class_index(split.y, [b]), n, gen, replace=True)
        if ia.numel() == 0 or ib.numel() == 0:
            raise UserError(f"methods.fcw: no image of source class {a if ia.numel() == 0 else b}")
        return self.fuse(split.x[ia], split.x[ib])

    def keygen(self, ctx: Context) -> KeySet:
        cfg = self.config
        for c in (*cfg.sources, cfg.target):
            check_class("methods.fcw", "sources/target", c, ctx.data.num_classes)
        gen = generator(ctx.seed_for("fcw", "keys"))
        embed_x = self.fusions(ctx.data.owner, cfg.n_triggers, gen)
        verify_x = self.fusions(ctx.data.test, cfg.n_keys, gen)
        target = lambda n: torch.full((n,), cfg.target, dtype=torch.long)  # noqa: E731
        return KeySet(
            embed_x=embed_x, embed_y=target(embed_x.shape[0]), verify_x=verify_x, verify_y=target(verify_x.shape[0]),
            meta={"sources": list(cfg.sources), "target": cfg.target, "fusion": cfg.fusion,
                  "n_triggers": int(embed_x.shape[0]), "n_keys": int(verify_x.shape[0]), "key_source": "test"},
        )

    def embed(self, ctx: Context, keys: KeySet) -> nn.Module:
        cfg = self.config
        owner = ctx.data.owner
        batches = appended_batches(owner.x, owner.y, keys.embed_x, keys.embed_y,
                                   batch_size=ctx.train.batch_size, per_batch=cfg.wm_per_batch)
        hook = masking_hook(cfg.mask_ratio, cfg.mask_interval, generator(ctx.seed_for("fcw", "mask")))
        model = ctx.new_model(seed=ctx.seed_for("victim", "init"))
        ctx.fit(model, batches, seed=ctx.seed_for("victim", "order"), desc="fcw victim", on_step_end=hook)
        return model
