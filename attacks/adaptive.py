"""Adaptive attacks on DeepTracer-style composite watermarks.

Paper: DeepTracer App. "Robustness against Adaptive Attacks" (Fig. 13, Table 15; CIFAR-10):

1. *Knowledge of the combination pattern only*: "the adversary constructs composite samples
   using random primary task classes, assigns random labels, and fine-tunes the stolen model by
   incorporating them into the primary task dataset" — WSR falls, then stays above 40 % (Fig. 13a).
2. *Knowledge of the pattern and the source classes*: "constructs samples identical to ours,
   assigns random labels" — WSR 27.10 % (Fig. 13b).
3. *Source-class inference with the adaptive selection strategy*: the adversary runs DeepTracer's
   own K-Means selection on the stolen model with its data (Table 15: never the true classes).

Registered attacks (all white-box fine-tuning of a private copy; one snapshot per epoch):

- ``adaptive_pattern`` (scenario 1): every composite tiles ``n_tiles`` images of distinct,
  uniformly random classes;
- ``adaptive_sources`` (scenario 2): composites of the *true* source classes, taken from
  ``source_classes`` when set, else from the watermark knowledge the runner gives adaptive
  attacks (:attr:`wmbench.api.AttackContext.watermark`: the key set's ``sources`` meta, e.g. of
  ``deeptracer``); quadrants are shuffled per composite when the method's ``pattern`` is
  ``"shuffle"``. For a method without source classes (e.g. BadNets) the sources are inferred as in
  ``adaptive_infer`` and ``sources_known`` is 0 — the cell then measures scenario 3;
- ``adaptive_infer`` (scenario 3 followed by 2): infer the sources with DeepTracer's selection
  (:func:`wmbench.methods.deeptracer.class_centroids` on the model's penultimate features of the
  attacker's data, then :func:`~wmbench.methods.deeptracer.select_source_classes`), report them
  (``inferred_source_0..k-1``) and their overlap with the true sources (``source_overlap``,
  ``inference_success`` = all found; NaN when the truth is unknown — the truth is used for
  scoring only), then fine-tune with composites of the inferred classes.

Composites are built with DeepTracer's own :func:`~wmbench.methods.deeptracer.compose_grid`
(imported lazily; the adversary knows the pattern), from the attacker's split. Each epoch draws
fresh composites (``composite_ratio`` composites per clean sample, default 1:1 as in
shared/reference/attacks.md §5) with uniformly random labels; the clean samples keep their
ground-truth labels. Fine-tuning: SGD lr 0.01, momentum 0.9, weight decay 5e-4, batch 128; the
paper's epoch count is not stated beyond its Fig. 13 axis, 20 by default (``quick``: 5).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from wmbench.api import Attack, AttackContext, AttackOutcome
from wmbench.blackbox import Blackbox
from wmbench.config import TrainConfig
from wmbench.data import DataBundle, Split
from wmbench.errors import UserError
from wmbench.registry import register_attack
from wmbench.training import Batch, BatchSource

from wmbench.attacks.finetune import as_model, attacker_subset, finetune

log = logging.getLogger(__name__)

#: A composite maker: ``(n, generator) -> images [n, C, H, W]``.
Composer = Callable[[int, torch.Generator], Tensor]


def _compose_grid(tiles: Sequence[Tensor]) -> Tensor:
    from wmbench.methods.deeptracer import compose_grid  # lazy: the method module owns the pattern

    return compose_grid(tiles)


def _class_index(split: Split, num_classes: int) -> List[Tensor]:
    return [torch.nonzero(split.y == c).flatten() for c in range(num_classes)]


def random_class_composites(split: Split, n: int, n_tiles: int, num_classes: int, gen: torch.Generator) -> Tensor:
    """``n`` composites, each tiling ``n_tiles`` images of distinct random classes (present in ``split``)."""
    index = _class_index(split, num_classes)
    present = torch.tensor([c for c in range(num_classes) if index[c].numel()], dtype=torch.long)
    if present.numel() < n_tiles:
        raise UserError(f"composites of {n_tiles} distinct classes need that many classes in the attacker's data")
    classes = present[torch.argsort(torch.rand(n, present.numel(), generator=gen), dim=1)[:, :n_tiles]]
    tiles = []
    for t in range(n_tiles):
        pick = torch.empty(n, dtype=torch.long)
        for c in present.tolist():
            mask = classes[:, t] == c
            count = int(mask.sum())
            if count:
                pool = index[c]
                pick[mask] = pool[torch.randint(pool.numel(), (count,), generator=gen)]
        tiles.append(split.x[pick])
    return _compose_grid(tiles)


def source_composites(split: Split, sources: Sequence[int], n: int, gen: torch.Generator,
                      shuffle: bool = False) -> Tensor:
    """``n`` composites of one random image per source class, in source order (TL, TR, BL, BR for 4),
    or with the quadrants permuted per composite when ``shuffle``."""
    picks = []
    for c in sources:
        pool = torch.nonzero(split.y == c).flatten()
        if pool.numel() == 0:
            raise UserError(f"source class {c} has no images in the attacker's data")
        picks.append(split.x[pool[torch.randint(pool.numel(), (n,), generator=gen)]])
    if shuffle:
        order = torch.argsort(torch.rand(n, len(sources), generator=gen), dim=1)
        stacked = torch.stack(picks, dim=1)[torch.arange(n).unsqueeze(1), order]
        picks = [stacked[:, i] for i in range(len(sources))]
    return _compose_grid(picks)


def composite_batches(clean: Split, compose: Composer, ratio: float, num_classes: int,
                      batch_size: int) -> BatchSource:
    """A batch source: each epoch, the clean samples (true labels) plus ``ratio × len(clean)`` fresh
    composites with uniformly random labels, shuffled together."""
    n_comp = max(1, round(ratio * len(clean)))

    def batches(epoch: int, gen: torch.Generator) -> Iterator[Batch]:
        comp_x = compose(n_comp, gen)
        comp_y = torch.randint(num_classes, (n_comp,), generator=gen)
        x = torch.cat([clean.x, comp_x])
        y = torch.cat([clean.y, comp_y])
        order = torch.randperm(x.shape[0], generator=gen)
        for start in range(0, x.shape[0], batch_size):
            idx = order[start : start + batch_size]
            yield x[idx], y[idx]

    return batches


@torch.no_grad()
def penultimate(model: nn.Module, x: Tensor, device: torch.device, batch_size: int = 512) -> Tensor:
    model.eval()
    model.to(device)
    return torch.cat([model.features(x[i : i + batch_size].to(device)).float().cpu()
                      for i in range(0, x.shape[0], batch_size)])


def infer_sources(model: nn.Module, split: Split, num_classes: int, k: int, seed: int,
                  device: torch.device) -> List[int]:
    """DeepTracer's adaptive selection run by the adversary on ``model`` with its data (Table 15)."""
    from wmbench.methods.deeptracer import class_centroids, select_source_classes

    centroids = class_centroids(penultimate(model, split.x, device), split.y, num_classes)
    return [int(c) for c in select_source_classes(centroids, k=k, seed=seed)]


def known_sources(watermark: Mapping[str, Any]) -> Optional[List[int]]:
    """The true source classes from the watermark knowledge, or None."""
    for where in ("keys_meta", "method_config"):
        part = watermark.get(where) or {}
        for key in ("sources", "source_classes"):
            value = part.get(key)
            if isinstance(value, (list, tuple)) and value:
                return [int(v) for v in value]
    return None


@dataclass(frozen=True)
class AdaptiveConfig:
    """Adaptive fine-tuning parameters (see the module docstring).

    n_tiles: int = 4                images per composite (the pattern: 2×2 for 4).
    source_classes: tuple | None = None   adaptive_sources: the sources (None = from the watermark).
    composite_ratio: float = 1.0    fresh composites per clean sample and epoch (1:1).
    epochs: int = 20
    batch_size: int = 128
    lr: float = 0.01                SGD, momentum 0.9, weight decay 5e-4.
    n_samples: int | None = None    clean attacker samples used (None = the whole split).
    """

    n_tiles: int = 4
    source_classes: Optional[Tuple[int, ...]] = None
    composite_ratio: float = 1.0
    epochs: int = 20
    batch_size: int = 128
    lr: float = 0.01
    n_samples: Optional[int] = None

    PROFILES: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "smoke": {"epochs": 2, "n_samples": 1000},
        "quick": {"epochs": 5},
        "paper": {},
    }

    def validate(self) -> None:
        if self.n_tiles < 2:
            raise UserError(f"adaptive attacks: n_tiles must be >= 2, got {self.n_tiles}")
        if self.source_classes is not None and len(set(self.source_classes)) != len(self.source_classes):
            raise UserError(f"adaptive attacks: source_classes must be distinct, got {list(self.source_classes)}")
        if self.composite_ratio <= 0 or self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise UserError("adaptive attacks: composite_ratio and lr must be > 0, epochs and batch_size >= 1")
        if self.n_samples is not None and self.n_samples < 10:
            raise UserError("adaptive attacks: n_samples must be >= 10 or null")


class _Adaptive(Attack):
    """Shared fine-tuning with composites (``composer`` chosen by each subclass)."""

    paper = "https://arxiv.org/abs/2511.08985"
    year = 2026
    category = "adaptive"
    needs = frozenset({"weights"})
    Config = AdaptiveConfig

    def incompatibility(self, method: type, data: DataBundle) -> Optional[str]:
        if data.num_classes < self.config.n_tiles:
            return f"{self.name} tiles {self.config.n_tiles} distinct classes; {data.name} has {data.num_classes}"
        return None

    def composer(self, model: nn.Module, clean: Split, ctx: AttackContext,
                 metrics: Dict[str, float]) -> Composer:
        raise NotImplementedError

    def run(self, target: Blackbox | nn.Module, ctx: AttackContext) -> AttackOutcome:
        cfg: AdaptiveConfig = self.config
        started = time.perf_counter()
        model = as_model(target, self.name)
        clean = attacker_subset(ctx.data.attacker, cfg.n_samples, ctx.seed_for(self.name, "subset"))
        metrics: Dict[str, float] = {}
        compose = self.composer(model, clean, ctx, metrics)
        train = TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, optimizer="sgd", lr=cfg.lr, momentum=0.9,
                            weight_decay=5e-4, lr_step=0)
        source = composite_batches(clean, compose, cfg.composite_ratio, ctx.data.num_classes, cfg.batch_size)
        snaps, history = finetune(model, source, ctx, train, last_layer_only=False,
                                  seed=ctx.seed_for(self.name, "order"), desc=self.name)
        metrics.update(attack_wall_s=time.perf_counter() - started, n_samples=float(len(clean)),
                       final_loss=history[-1]["loss"])
        return AttackOutcome(model=model, queries=0, snapshots=snaps, metrics=metrics)


def _record_sources(metrics: Dict[str, float], prefix: str, sources: Sequence[int]) -> None:
    for i, c in enumerate(sources):
        metrics[f"{prefix}_{i}"] = float(c)


@register_attack("adaptive_pattern")
class AdaptivePattern(_Adaptive):
    """Scenario 1: composites of random classes with random labels (pattern known)."""

    def composer(self, model: nn.Module, clean: Split, ctx: AttackContext, metrics: Dict[str, float]) -> Composer:
        k, classes = self.config.n_tiles, ctx.data.num_classes
        return lambda n, gen: random_class_composites(clean, n, k, classes, gen)


class _SourceComposites(_Adaptive):
    """Composites of a fixed list of source classes (true or inferred)."""

    knows_watermark = True

    def sources(self, model: nn.Module, clean: Split, ctx: AttackContext, metrics: Dict[str, float]) -> List[int]:
        raise NotImplementedError

    def infer(self, model: nn.Module, clean: Split, ctx: AttackContext, metrics: Dict[str, float]) -> List[int]:
        inferred = infer_sources(model, clean, ctx.data.num_classes, self.config.n_tiles,
                                 ctx.seed_for(self.name, "kmeans"), ctx.device)
        _record_sources(metrics, "inferred_source", inferred)
        truth = known_sources(ctx.watermark)
        if truth is not None:
            overlap = len(set(truth) & set(inferred))
            metrics["source_overlap"] = float(overlap)
            metrics["inference_success"] = float(set(truth) == set(inferred))
        else:
            metrics["source_overlap"] = float("nan")
            metrics["inference_success"] = float("nan")
        log.info("%s: inferred sources %s (true: %s)", self.name, inferred, truth)
        return inferred

    def composer(self, model: nn.Module, clean: Split, ctx: AttackContext, metrics: Dict[str, float]) -> Composer:
        sources = self.sources(model, clean, ctx, metrics)
        _record_sources(metrics, "used_source", sources)
        config = ctx.watermark.get("method_config") or {}
        shuffle = config.get("pattern") == "shuffle"
        metrics["shuffled_quadrants"] = float(shuffle)
        return lambda n, gen: source_composites(clean, sources, n, gen, shuffle)


@register_attack("adaptive_sources")
class AdaptiveSources(_SourceComposites):
    """Scenario 2: composites of the true source classes with random labels (pattern and sources known)."""

    def sources(self, model: nn.Module, clean: Split, ctx: AttackContext, metrics: Dict[str, float]) -> List[int]:
        given = self.config.source_classes
        truth = [int(c) for c in given] if given is not None else known_sources(ctx.watermark)
        if truth is None:
            log.warning("adaptive_sources: the watermark (%s) has no source classes; inferring them instead",
                        ctx.watermark.get("method", "?"))
            metrics["sources_known"] = 0.0
            return self.infer(model, clean, ctx, metrics)
        if any(not 0 <= c < ctx.data.num_classes for c in truth):
            raise UserError(f"adaptive_sources: source classes {truth} outside 0..{ctx.data.num_classes - 1}")
        metrics["sources_known"] = 1.0
        return truth


@register_attack("adaptive_infer")
class AdaptiveInfer(_SourceComposites):
    """Scenario 3 then 2: infer the sources with DeepTracer's selection, then fine-tune with their composites."""

    def sources(self, model: nn.Module, clean: Split, ctx: AttackContext, metrics: Dict[str, float]) -> List[int]:
        metrics["sources_known"] = 0.0
        return self.infer(model, clean, ctx, metrics)
