"""DeepTracer: deep coupled watermarks that survive model stealing.

Paper: Yang, Chen, Xuan, Zhao, Zhao, Li, "DeepTracer: Tracing Stolen Model via Deep Coupled
Watermarks", AAAI 2026, https://arxiv.org/abs/2511.08985 (official code:
github.com/yangyunfei16/DeepTracer, not available to us).

Idea. Watermark samples are *in-distribution composites*: one image of each of four source
classes, each resized to a quarter (H/2 × W/2) and tiled 2×2 at the native size, labelled with
the class a benign model finds least likely for them. The sources are the classes nearest to the
K-Means centres of the per-class feature centroids of a benign model (Eqs. 1–2); the target is
``argmin_j`` of the benign model's mean softmax over the composites (Eqs. 3–4). Embedding adds a
same-class coupling loss to the task and watermark losses (Eqs. 5–6):

    L = L_pri + λ1·L_wm + λ2·(λ3·L_intra + λ4·L_inter)
    L_intra = mean_i ‖f_i − c_{y_i}‖²,   L_inter = mean_i Σ_{j≠y_i} max(0, margin − ‖f_i − c_j‖)²

trained in two phases (1 % then 10 % watermark data, the second fine-tuning the first). The
verification keys are composites of *test* images filtered in two stages (Eqs. 7–8) with the
victim, a surrogate stolen model and the benign model — :mod:`wmbench.methods.keyfilter`, which
the runner applies for every method whose ``keys.filter`` is ``two_stage`` (DeepTracer's default).

Paper settings (``paper`` profile): λ = (1.0, 1.0, 0.01, 3.0), 2 × 100 epochs of Adam 1e-3
halved every 10 epochs (the shared ``train`` section), 1 % / 10 % watermark data, M = 2000 keys,
threshold 20 %.

Choices the paper leaves open [wmbench, each a Config parameter]:

- centroid features for source selection: penultimate features (``feature_space``);
- K-Means: scikit-learn, ``n_init=10``, ``random_state`` from the key seed; the class nearest a
  centre is searched among that cluster's members, which guarantees distinct sources; sources are
  ordered by cluster index and tiled TL, TR, BL, BR (``pattern="fixed"``; ``"shuffle"`` permutes
  the quadrants per sample);
- resizing: bilinear with antialias, in [0, 1] before normalisation;
- target pool: ``target_pool`` composites of training images; sources are excluded from argmin;
- the coupling loss acts on ``coupling_space`` ("logits" as the paper's "output feature vector
  at the last layer", or "softmax", or "normalized" = L2-normalised logits); ``margin`` is not
  stated (default 1.0, the Composite/MEA-Defender contrastive margin);
- centroids: detached EMA (``centroid_momentum``) of the per-class mean of *clean* samples,
  updated every step; the coupling terms run over the whole mixed batch (clean samples with their
  labels, watermark samples with the target);
- batches: every batch holds ``max(min_wm_per_batch, share)`` watermark samples and at least one
  target-class sample, so the coupling terms are always defined;
- phase 2 uses a fresh optimiser with ``phase2_lr`` (None = the shared learning rate);
- candidates for keys: ``n_candidates`` composites, each from one random test image per source.

``losses`` selects the terms for the paper's Table 4 ablation, e.g. ``"wm"``, ``"intra"``,
``"wm+intra"``; ``--sweep methods.deeptracer.losses=wm,intra,inter,wm+intra,wm+inter,intra+inter,wm+intra+inter``
runs the whole table. ``selection="random"`` gives the Figure 5 ablation and ``n_sources`` the
Table 20 one (2, 4, 6, 8 sources tiled in a 1×2, 2×2, 2×3, 2×4 grid). ``sources`` (with
``target``) fixes the composite, a wmbench diagnostic outside the paper: the adaptive choice
depends on the benign model, so a budget sweep otherwise changes the source classes with the
budget.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wmbench.api import Context, KeySet, WatermarkMethod
from wmbench.config import NEW_SETTING, TrainConfig
from wmbench.data import Split
from wmbench.errors import UserError
from wmbench.registry import register_method
from wmbench.utils import generator

log = logging.getLogger(__name__)

LOSS_TERMS = ("wm", "intra", "inter")
SPACES = ("logits", "softmax", "normalized")


@dataclass(frozen=True)
class DeepTracerConfig:
    """DeepTracer parameters (defaults = the paper's where it states them; see the module docstring).

    n_sources: int = 4              source classes per composite (Table 20: 2, 4, 6, 8).
    selection: str = "adaptive"     "adaptive" (K-Means, Eqs. 1–2) or "random" (Figure 5).
    feature_space: str = "penultimate"  features for the class centroids: "penultimate" or "logits".
    pattern: str = "fixed"          quadrant order: "fixed" (sources in cluster order) or "shuffle".
    target: int | None = None       None = least likely class under the benign model (Eqs. 3–4).
    sources: tuple = ()             fixed source classes in quadrant order; () = chosen by ``selection``.
    target_pool: int = 1000         composites used to choose the target.
    phase1_ratio: float = 0.01      watermark samples / training set in phase 1.
    phase2_ratio: float = 0.10      watermark samples / training set in phase 2.
    phase2_lr: float | None = None  learning rate of phase 2 (None = ``train.lr``).
    losses: str = "wm+intra+inter"  terms on top of L_pri, joined by "+" (Table 4 ablation).
    lambda1, lambda2, lambda3, lambda4: float = 1.0, 1.0, 0.01, 3.0
    margin: float = 1.0             inter-class margin (not stated in the paper).
    coupling_space: str = "logits"  where f_i lives: "logits", "softmax" or "normalized".
    centroid_momentum: float = 0.9  EMA momentum of the class centroids.
    min_wm_per_batch: int = 2       floor on watermark samples per batch.
    n_candidates: int = 20000       composites of test images before key filtering (|S_0|).
    """

    n_sources: int = 4
    selection: str = "adaptive"
    feature_space: str = "penultimate"
    pattern: str = "fixed"
    target: Optional[int] = None
    sources: Tuple[int, ...] = field(default=(), metadata=NEW_SETTING)
    target_pool: int = 1000
    phase1_ratio: float = 0.01
    phase2_ratio: float = 0.10
    phase2_lr: Optional[float] = None
    losses: str = "wm+intra+inter"
    lambda1: float = 1.0
    lambda2: float = 1.0
    lambda3: float = 0.01
    lambda4: float = 3.0
    margin: float = 1.0
    coupling_space: str = "logits"
    centroid_momentum: float = 0.9
    min_wm_per_batch: int = 2
    n_candidates: int = 20000

    PROFILES: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "smoke": {"n_candidates": 2000, "target_pool": 300, "phase1_ratio": 0.05},
        "quick": {},
        "paper": {},
    }

    @property
    def loss_terms(self) -> Tuple[str, ...]:
        return tuple(t for t in self.losses.split("+") if t)

    def validate(self) -> None:
        if self.n_sources < 2:
            raise UserError(f"methods.deeptracer.n_sources must be >= 2, got {self.n_sources}")
        for name, value, options in (("selection", self.selection, ("adaptive", "random")),
                                     ("feature_space", self.feature_space, ("penultimate", "logits")),
                                     ("pattern", self.pattern, ("fixed", "shuffle")),
                                     ("coupling_space", self.coupling_space, SPACES)):
            if value not in options:
                raise UserError(f"methods.deeptracer.{name} must be one of {', '.join(options)}, got {value!r}")
        unknown = [t for t in self.loss_terms if t not in LOSS_TERMS]
        if unknown or not self.loss_terms:
            raise UserError(f"methods.deeptracer.losses must join terms from {', '.join(LOSS_TERMS)} with '+', "
                            f"got {self.losses!r}")
        for name in ("phase1_ratio", "phase2_ratio"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise UserError(f"methods.deeptracer.{name} must be in [0, 1), got {value}")
        if self.phase1_ratio == 0 and self.phase2_ratio == 0:
            raise UserError("methods.deeptracer: phase1_ratio and phase2_ratio cannot both be 0")
        if self.margin < 0 or not 0 <= self.centroid_momentum < 1:
            raise UserError("methods.deeptracer: margin must be >= 0 and centroid_momentum in [0, 1)")
        if self.sources and (len(self.sources) != self.n_sources or len(set(self.sources)) != len(self.sources)):
            raise UserError(f"methods.deeptracer.sources must be {self.n_sources} distinct classes (n_sources), "
                            f"got {list(self.sources)}")
        if self.n_candidates < 1 or self.target_pool < 1 or self.min_wm_per_batch < 1:
            raise UserError("methods.deeptracer: n_candidates, target_pool and min_wm_per_batch must be >= 1")


# --------------------------------------------------------------------------------------------
# Stage 1: watermark sample construction (pure functions)
# --------------------------------------------------------------------------------------------

def class_centroids(features: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Eq. 1: the mean feature vector of each class, ``[num_classes, D]`` (NaN rows for absent classes)."""
    sums = torch.zeros(num_classes, features.shape[1], dtype=features.dtype).index_add_(0, labels, features)
    counts = torch.bincount(labels, minlength=num_classes).to(features.dtype).unsqueeze(1)
    return sums / counts


def select_source_classes(centroids: Tensor, k: int = 4, seed: int = 0) -> List[int]:
    """Eq. 2 and the nearest-class rule: K-Means over the class centroids, then in each cluster
    the member class nearest its centre. Returns ``k`` distinct classes ordered by cluster index."""
    from sklearn.cluster import KMeans

    valid = [j for j in range(centroids.shape[0]) if torch.isfinite(centroids[j]).all()]
    if len(valid) < k:
        raise UserError(f"DeepTracer needs {k} source classes but only {len(valid)} classes have samples")
    points = centroids[valid].double().numpy()
    km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(points)
    sources = []
    for cluster in range(k):
        members = np.flatnonzero(km.labels_ == cluster)
        dist = np.linalg.norm(points[members] - km.cluster_centers_[cluster], axis=1)
        sources.append(valid[int(members[np.argmin(dist)])])
    return sources


def random_source_classes(num_classes: int, k: int, seed: int) -> List[int]:
    """Figure 5's baseline: ``k`` distinct classes drawn uniformly."""
    return torch.randperm(num_classes, generator=generator(seed))[:k].tolist()


def grid_layout(n: int) -> Tuple[int, int]:
    """Rows × columns for ``n`` tiles: 2 → 1×2, 4 → 2×2, 6 → 2×3, 8 → 2×4."""
    rows = 1 if n <= 2 else 2
    return rows, math.ceil(n / rows)


def _edges(total: int, parts: int) -> List[int]:
    return [round(i * total / parts) for i in range(parts + 1)]


def compose_grid(tiles: Sequence[Tensor]) -> Tensor:
    """Tile ``n`` image batches (each ``[N, C, H, W]``) into one ``[N, C, H, W]`` composite per
    row: each image is resized (bilinear, antialias) to its grid cell, row-major order
    (for 4 tiles: TL, TR, BL, BR). Empty cells of an incomplete grid stay black."""
    if not tiles:
        raise ValueError("compose_grid needs at least one tile")
    n, c, h, w = tiles[0].shape
    rows, cols = grid_layout(len(tiles))
    ys, xs = _edges(h, rows), _edges(w, cols)
    out = torch.zeros(n, c, h, w, dtype=tiles[0].dtype)
    for i, tile in enumerate(tiles):
        r, q = divmod(i, cols)
        size = (ys[r + 1] - ys[r], xs[q + 1] - xs[q])
        out[:, :, ys[r] : ys[r + 1], xs[q] : xs[q + 1]] = F.interpolate(
            tile, size=size, mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
    return out


def sample_composites(split: Split, sources: Sequence[int], n: int, gen: torch.Generator,
                      shuffle_quadrants: bool = False) -> Tensor:
    """``n`` composites, each from one uniformly drawn image of every source class in ``split``."""
    picks = []
    for cls in sources:
        index = torch.nonzero(split.y == cls).flatten()
        if index.numel() == 0:
            raise UserError(f"source class {cls} has no images in this split")
        picks.append(split.x[index[torch.randint(index.numel(), (n,), generator=gen)]])
    if shuffle_quadrants:
        order = torch.argsort(torch.rand(n, len(sources), generator=gen), dim=1)
        stacked = torch.stack(picks, dim=1)  # [n, S, C, H, W]
        stacked = stacked[torch.arange(n).unsqueeze(1), order]
        picks = [stacked[:, i] for i in range(len(sources))]
    return compose_grid(picks)


def least_likely_target(probs: Tensor, exclude: Sequence[int] = ()) -> Tuple[int, List[float]]:
    """Eqs. 3–4: the class with the lowest mean probability over the watermark samples (sources
    excluded). Returns the class and the mean probabilities P^j."""
    mean = probs.mean(dim=0)
    masked = mean.clone()
    masked[list(exclude)] = float("inf")
    return int(masked.argmin()), mean.tolist()


# --------------------------------------------------------------------------------------------
# Stage 2: coupled embedding
# --------------------------------------------------------------------------------------------

def coupling_space(logits: Tensor, space: str) -> Tensor:
    if space == "softmax":
        return F.softmax(logits, dim=1)
    if space == "normalized":
        return F.normalize(logits, dim=1)
    return logits


def intra_loss(f: Tensor, y: Tensor, centroids: Tensor) -> Tensor:
    """Eq. 5, L_intra = mean_i ‖f_i − c_{y_i}‖²."""
    return ((f - centroids[y]) ** 2).sum(dim=1).mean()


def inter_loss(f: Tensor, y: Tensor, centroids: Tensor, margin: float, valid: Optional[Tensor] = None) -> Tensor:
    """Eq. 5, L_inter = mean_i Σ_{j≠y_i} max(0, margin − ‖f_i − c_j‖)² (over classes ``valid``)."""
    dist = torch.cdist(f, centroids)  # [N, C]
    hinge = F.relu(margin - dist) ** 2
    mask = torch.ones_like(hinge, dtype=torch.bool)
    mask[torch.arange(f.shape[0]), y] = False
    if valid is not None:
        mask &= valid.unsqueeze(0)
    return (hinge * mask).sum(dim=1).mean()


class CentroidTracker:
    """Detached EMA of the per-class mean coupling features of clean samples."""

    def __init__(self, num_classes: int, momentum: float):
        self.momentum = momentum
        self.centroids: Optional[Tensor] = None
        self.seen = torch.zeros(num_classes, dtype=torch.bool)
        self.num_classes = num_classes

    def update(self, f: Tensor, y: Tensor) -> None:
        f = f.detach()
        if self.centroids is None:
            self.centroids = torch.zeros(self.num_classes, f.shape[1], device=f.device, dtype=f.dtype)
            self.seen = self.seen.to(f.device)
        sums = torch.zeros_like(self.centroids).index_add_(0, y, f)
        counts = torch.bincount(y, minlength=self.num_classes).to(f.dtype)
        present = counts > 0
        means = sums[present] / counts[present].unsqueeze(1)
        fresh = present & ~self.seen
        old = self.centroids[present]
        blended = torch.where(fresh[present].unsqueeze(1), means, self.momentum * old + (1 - self.momentum) * means)
        self.centroids[present] = blended
        self.seen |= present


def mixed_batches(clean: Split, wm_x: Tensor, target: int, batch_size: int, wm_per_batch: int):
    """A batch source: each batch = ``batch_size − wm_per_batch`` clean samples (one pass over the
    clean data per epoch) + ``wm_per_batch`` watermark samples cycling through a shuffled pool,
    with at least one clean target-class sample. Yields ``(x, y, is_watermark)``."""
    target_index = torch.nonzero(clean.y == target).flatten()
    n_clean = batch_size - wm_per_batch

    def batches(epoch: int, gen: torch.Generator) -> Iterator[Tuple[Tensor, Tensor, Tensor]]:
        order = torch.randperm(len(clean), generator=gen)
        wm_order = torch.randperm(wm_x.shape[0], generator=gen)
        cursor = 0
        for start in range(0, len(clean), n_clean):
            idx = order[start : start + n_clean]
            if target_index.numel() and not (clean.y[idx] == target).any():
                idx = idx.clone()
                idx[-1] = target_index[torch.randint(target_index.numel(), (1,), generator=gen)]
            take = torch.arange(cursor, cursor + wm_per_batch) % wm_x.shape[0]
            cursor += wm_per_batch
            wm = wm_x[wm_order[take]]
            x = torch.cat([clean.x[idx], wm])
            y = torch.cat([clean.y[idx], torch.full((wm.shape[0],), target, dtype=torch.long)])
            is_wm = torch.cat([torch.zeros(idx.numel(), dtype=torch.bool), torch.ones(wm.shape[0], dtype=torch.bool)])
            yield x, y, is_wm

    return batches


def coupled_loss(config: DeepTracerConfig, num_classes: int, tracker: CentroidTracker):
    """The loss hook of Eq. 6 (terms selected by ``config.losses``)."""
    terms = config.loss_terms

    def loss_fn(model: nn.Module, batch: Tuple[Tensor, Tensor, Tensor]) -> Tensor:
        x, y, is_wm = batch
        logits = model(x)
        clean = ~is_wm
        loss = F.cross_entropy(logits[clean], y[clean])
        if "wm" in terms and is_wm.any():
            loss = loss + config.lambda1 * F.cross_entropy(logits[is_wm], y[is_wm])
        if "intra" in terms or "inter" in terms:
            f = coupling_space(logits, config.coupling_space)
            tracker.update(f[clean], y[clean])
            centroids = tracker.centroids
            coupling = f.new_zeros(())
            seen = tracker.seen
            keep = seen[y]
            if "intra" in terms and keep.any():
                coupling = coupling + config.lambda3 * intra_loss(f[keep], y[keep], centroids)
            if "inter" in terms and keep.any():
                coupling = coupling + config.lambda4 * inter_loss(f[keep], y[keep], centroids, config.margin, seen)
            loss = loss + config.lambda2 * coupling
        return loss

    return loss_fn


# --------------------------------------------------------------------------------------------
# The method
# --------------------------------------------------------------------------------------------

@register_method("deeptracer")
class DeepTracer(WatermarkMethod):
    """DeepTracer (see the module docstring)."""

    paper = "https://arxiv.org/abs/2511.08985"
    year = 2026
    category = "in-distribution / coupled composite"
    Config = DeepTracerConfig
    min_classes = 5
    default_key_filter = "two_stage"

    def select_sources(self, ctx: Context, benign: nn.Module) -> List[int]:
        cfg = self.config
        if cfg.sources:
            if not all(0 <= c < ctx.data.num_classes for c in cfg.sources):
                raise UserError(f"methods.deeptracer.sources {list(cfg.sources)} must be classes "
                                f"0–{ctx.data.num_classes - 1}")
            return [int(c) for c in cfg.sources]
        seed = ctx.seed_for("deeptracer", "sources")
        if cfg.selection == "random":
            return random_source_classes(ctx.data.num_classes, cfg.n_sources, seed)
        owner = ctx.data.owner
        if cfg.feature_space == "logits":
            feats = ctx.predict(benign, owner.x)
        else:
            feats = ctx.features(benign, owner.x)
        return select_source_classes(class_centroids(feats, owner.y, ctx.data.num_classes), cfg.n_sources, seed)

    def keygen(self, ctx: Context) -> KeySet:
        cfg = self.config
        if ctx.data.num_classes < cfg.n_sources + 1:
            raise UserError(f"DeepTracer with {cfg.n_sources} sources needs at least {cfg.n_sources + 1} classes")
        benign = ctx.benign_model()
        sources = self.select_sources(ctx, benign)
        gen = generator(ctx.seed_for("deeptracer", "composites"))
        shuffle = cfg.pattern == "shuffle"
        owner = ctx.data.owner
        if cfg.target is None:
            pool = sample_composites(owner, sources, cfg.target_pool, gen, shuffle)
            probs = F.softmax(ctx.predict(benign, pool), dim=1)
            target, mean_probs = least_likely_target(probs, exclude=sources)
        else:
            target, mean_probs = cfg.target, []
            if target in sources or not 0 <= target < ctx.data.num_classes:
                raise UserError(f"methods.deeptracer.target {target} must be a class other than the sources {sources}")
        n1 = round(cfg.phase1_ratio * len(owner))
        n2 = round(cfg.phase2_ratio * len(owner))
        embed_x = torch.cat([sample_composites(owner, sources, n, gen, shuffle) for n in (n1, n2)])
        candidates = sample_composites(ctx.data.test, sources, cfg.n_candidates, gen, shuffle)
        log.info("deeptracer: sources %s, target %d (mean benign probabilities %s)", sources, target,
                 [round(p, 4) for p in mean_probs])
        return KeySet(
            embed_x=embed_x,
            embed_y=torch.full((embed_x.shape[0],), target, dtype=torch.long),
            verify_x=candidates,
            verify_y=torch.full((candidates.shape[0],), target, dtype=torch.long),
            meta={"sources": sources, "target": target, "n_phase1": n1, "n_phase2": n2,
                  "target_probs": mean_probs, "selection": cfg.selection},
        )

    def _phase(self, ctx: Context, model: nn.Module, wm_x: Tensor, target: int, lr: Optional[float], name: str,
               seed: int) -> None:
        cfg = self.config
        owner = ctx.data.owner
        train: TrainConfig = ctx.train if lr is None else dataclasses.replace(ctx.train, lr=lr)
        share = round(train.batch_size * wm_x.shape[0] / (len(owner) + wm_x.shape[0]))
        wm_per_batch = min(max(cfg.min_wm_per_batch, share), train.batch_size // 2)
        tracker = CentroidTracker(ctx.data.num_classes, cfg.centroid_momentum)
        ctx.fit(model, mixed_batches(owner, wm_x, target, train.batch_size, wm_per_batch), cfg=train,
                loss_fn=coupled_loss(cfg, ctx.data.num_classes, tracker), seed=seed, desc=f"deeptracer {name}")

    def embed(self, ctx: Context, keys: KeySet) -> nn.Module:
        target = int(keys.meta["target"])
        n1, n2 = int(keys.meta["n_phase1"]), int(keys.meta["n_phase2"])
        model = ctx.new_model(seed=ctx.seed_for("victim", "init"))
        if n1:
            self._phase(ctx, model, keys.embed_x[:n1], target, None, "phase 1", ctx.seed_for("victim", "phase1"))
        if n2:
            self._phase(ctx, model, keys.embed_x[n1 : n1 + n2], target, self.config.phase2_lr, "phase 2",
                        ctx.seed_for("victim", "phase2"))
        return model
