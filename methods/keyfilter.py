"""DeepTracer's two-stage key filtering, usable on any method's candidate key set.

Paper: Yang et al., "DeepTracer", AAAI 2026, §"Watermark Key Samples Generation" (Eqs. 7–8),
stage 1 inspired by SSW (Tan et al., ACM MM 2023).

- Stage 1 keeps candidates ``(x, y_w)`` with ``F_V(x) = y_w``, ``F_S(x) = y_w`` and
  ``F_B(x) ≠ y_w`` (victim, surrogate stolen model, benign model).
- Stage 2 keeps the ``M`` of them with the highest surrogate probability of ``y_w``.

Enable it for any method with ``--set keys.filter=two_stage`` (DeepTracer uses it by default;
``keys.filter=none`` turns it off); ``--sweep keys.filter=none,two_stage`` compares both (the
paper's Table 22). Settings live in :class:`wmbench.config.KeyFilterConfig`.

Because the benign model takes part in the selection, the benign WSR on filtered keys is 0 by
construction; false positives must be measured on *other* clean models (the ``independent``
null attack). When fewer than ``M`` candidates pass stage 1, all of them are kept and the count
is recorded (``keys_stage1`` / ``keys_final`` metrics).
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wmbench.api import AttackContext, Context, KeySet
from wmbench.blackbox import Blackbox
from wmbench.config import KeyFilterConfig
from wmbench.data import Split

log = logging.getLogger(__name__)


def two_stage_select(labels: Tensor, victim_pred: Tensor, surrogate_probs: Tensor, benign_pred: Tensor,
                     top_m: int, min_keys: int = 0) -> Tuple[Tensor, Dict[str, float]]:
    """Indices of the kept candidates (Eq. 7, then Eq. 8), most confident first, and the counts.

    With ``min_keys`` > 0 and fewer candidates passing stage 1, the surrogate criterion is dropped
    (victim hits and benign misses only) and the ranking by surrogate confidence kept."""
    surrogate_pred = surrogate_probs.argmax(dim=1)
    stage1 = (victim_pred == labels) & (surrogate_pred == labels) & (benign_pred != labels)
    fallback = int(stage1.sum()) < min_keys
    passed = (victim_pred == labels) & (benign_pred != labels) if fallback else stage1
    index = torch.nonzero(passed).flatten()
    confidence = surrogate_probs[index, labels[index]]
    index = index[torch.argsort(confidence, descending=True, stable=True)][:top_m]
    stats = {"keys_candidates": int(labels.numel()), "keys_stage1": int(stage1.sum()), "keys_final": int(index.numel()),
             "surrogate_wsr_unfiltered": float((surrogate_pred == labels).float().mean()),
             "keys_fallback": int(fallback)}
    return index, stats


def train_surrogate(ctx: Context, victim: nn.Module, cfg: KeyFilterConfig) -> nn.Module:
    """The owner's simulated stolen model: soft-label Knockoff on the victim with its own seed,
    architecture and query data (``cfg.surrogate_*``)."""
    from wmbench.attacks.knockoff import Knockoff, KnockoffConfig

    empty = Split(ctx.data.test.x[:0], ctx.data.test.y[:0])
    view = dataclasses.replace(ctx.data, attacker=ctx.data.owner, owner=empty, test=empty)
    actx = AttackContext(data=view, arch=ctx.arch, train=ctx.train, verify=ctx.verify,
                         seed=ctx.seed_for("surrogate"), device=ctx.device, store=ctx.store, profile=ctx.profile,
                         progress=ctx.progress, victim_arch=cfg.surrogate_arch)
    attack = Knockoff(KnockoffConfig(
        labels="soft", budget=cfg.surrogate_budget, query_set=cfg.surrogate_query_set,
        pool_transforms=tuple(cfg.surrogate_pool_transforms), arch=cfg.surrogate_arch,
        epochs=cfg.surrogate_epochs or ctx.train.epochs, batch_size=cfg.surrogate_batch_size, optimizer="adam",
        lr=cfg.surrogate_lr, lr_step=0))
    box = Blackbox(victim, num_classes=ctx.data.num_classes, input_shape=ctx.input_shape, mode="probs",
                   device=ctx.device)
    return attack.run(box, actx).model


def filter_keys(ctx: Context, keys: KeySet, victim: nn.Module, surrogate: nn.Module, benign: nn.Module,
                top_m: int, min_keys: int = 0) -> Tuple[KeySet, Dict[str, float]]:
    """Apply the two-stage filter to ``keys.verify_*``; the embedding samples are unchanged."""
    x, y = keys.verify_x, keys.verify_y
    victim_pred = ctx.predict(victim, x).argmax(1)
    benign_pred = ctx.predict(benign, x).argmax(1)
    surrogate_probs = F.softmax(ctx.predict(surrogate, x), dim=1)
    index, stats = two_stage_select(y, victim_pred, surrogate_probs, benign_pred, top_m, min_keys)
    log.info("key filter: %s", stats)
    filtered = KeySet(keys.embed_x, keys.embed_y, x[index], y[index], {**dict(keys.meta), "filter": stats})
    return filtered, stats
