"""Composite backdoor as a watermark (Lin et al., CCS 2020).

Paper: Lin, Xu, Liu, Zhang, "Composite Backdoor Attack for Deep Neural Network by Mixing
Existing Benign Features", ACM CCS 2020, https://doi.org/10.1145/3372297.3423362 (code:
TemporaryAcc0unt/composite-attack: ``attack_cifar.py``, ``utils/mixer.py``, ``utils/dataset.py``,
``utils/trainer.py``). Turned into a watermark by DeepTracer (AAAI 2026, App. "Compared
Watermarking Methods"): "selects two classes of training data and combines their features".

Idea: the trigger is the *combination* of two benign features. A composite of an image of class
A and one of class B (``HalfMixer``: one half of each, side by side or one above the other) is
labelled with a third class C. So that "any mix" does not become the trigger, the training data
also hold *same-class* mixes (two images of one class, keeping that label). Every epoch is drawn
afresh (reference ``MixDataset(normal_rate=0.5, mix_rate=0.5, poison_rate=0.1)``): ``normal_rate``
× N clean images, ``mix_rate`` × N same-class mixes and ``poison_rate`` × N composites A + B → C,
N = the owner's training set size. The loss is cross-entropy plus ``contrastive_weight`` × the
reference ``ContrastiveLoss`` (margin 1) on the *logits* of the batch's samples labelled A, B or
C, paired consecutively: same-label pairs cost 0.5·d², others 0.5·relu(margin − √(d² + 1e-9))²;
the reference averages over pairs and then divides by the pair count again (kept:
``contrastive_average="reference"``; ``"mean"`` drops the second division).

Reference settings (``paper`` profile): A = 0, B = 1, C = 2; HalfMixer with a random split
direction, jitter 3, random window ("shake") and random swap; contrastive weight 1, margin 1;
Adam with the default lr and StepLR(10, 0.5) — the shared ``train`` section; 50 epochs in the
reference, the shared ``train.epochs`` here.

Choices where the sources are silent or that wmbench changes [wmbench, each a Config parameter]:

- mixing happens in [0, 1] before normalisation (the reference mixes normalised tensors; with
  gap 0 every pixel is copied from one image, so the result is the same);
- clean images of an epoch are a random subset of the owner's data drawn *without* replacement
  (the reference draws a random class, then a random image, with replacement); mixes and
  composites draw their images with replacement, as the reference;
- the epoch-1 composites are the key set's ``embed_x`` (built at key generation from owner images);
  later epochs draw new ones (``resample=True``, as the reference's per-item drawing);
  ``resample=False`` reuses ``embed_x`` every epoch;
- the reference's ``opt_freq=2`` (two batches per optimiser step) is not copied; the horizontal
  flip augmentation (CIFAR) is not applied (wmbench trains every model without augmentation);
- verification: ``n_keys`` = 2,000 composites of held-out **test** images of A and B, labelled C.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterator, Mapping, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wmbench.api import Context, KeySet, WatermarkMethod
from wmbench.data import Split
from wmbench.errors import UserError
from wmbench.methods._triggers import check_class, class_index, half_mix, sample_index
from wmbench.registry import register_method
from wmbench.training import Batch, BatchSource
from wmbench.utils import generator

log = logging.getLogger(__name__)

SPLITS = ("random", "vertical", "horizontal")


@dataclass(frozen=True)
class CompositeConfig:
    """Composite parameters (defaults = reference settings; see the module docstring).

    class_a: int = 0             first source class (A).
    class_b: int = 1             second source class (B).
    target: int = 2              label of A + B composites (C).
    normal_rate: float = 0.5     clean images per epoch, as a share of the owner's set N.
    mix_rate: float = 0.5        same-class mixes per epoch (they keep their class), share of N.
    poison_rate: float = 0.1     A + B → C composites per epoch, share of N.
    resample: bool = True        draw new composites every epoch (else reuse the epoch-1 pool).
    split: str = "random"        HalfMixer direction: random, vertical (left|right) or horizontal.
    jitter: int = 3              largest shift of the boundary from the middle, in pixels.
    shake: bool = True           take each half from a random window of its image.
    contrastive_weight: float = 1.0   weight of the contrastive term (reference simi_factor).
    margin: float = 1.0          contrastive margin on logit distances.
    contrastive_average: str = "reference"   "reference" (mean / pairs again) or "mean".
    n_keys: int = 2000           verification composites of test images.
    """

    class_a: int = 0
    class_b: int = 1
    target: int = 2
    normal_rate: float = 0.5
    mix_rate: float = 0.5
    poison_rate: float = 0.1
    resample: bool = True
    split: str = "random"
    jitter: int = 3
    shake: bool = True
    contrastive_weight: float = 1.0
    margin: float = 1.0
    contrastive_average: str = "reference"
    n_keys: int = 2000

    PROFILES: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "smoke": {"n_keys": 300},
        "quick": {},
        "paper": {},
    }

    def validate(self) -> None:
        if len({self.class_a, self.class_b, self.target}) != 3:
            raise UserError(
                f"methods.composite needs three distinct classes, got class_a={self.class_a}, "
                f"class_b={self.class_b}, target={self.target}"
            )
        for name in ("normal_rate", "mix_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise UserError(f"methods.composite.{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 < self.poison_rate <= 1.0:
            raise UserError(f"methods.composite.poison_rate must be in (0, 1], got {self.poison_rate}")
        if self.split not in SPLITS:
            raise UserError(f"methods.composite.split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        if self.jitter < 0:
            raise UserError(f"methods.composite.jitter must be >= 0, got {self.jitter}")
        if self.contrastive_weight < 0 or self.margin < 0:
            raise UserError("methods.composite.contrastive_weight and margin must be >= 0")
        if self.contrastive_average not in ("reference", "mean"):
            raise UserError(
                f"methods.composite.contrastive_average must be reference or mean, got {self.contrastive_average!r}"
            )
        if self.n_keys < 1:
            raise UserError(f"methods.composite.n_keys must be >= 1, got {self.n_keys}")


def contrastive_pairs(logits: Tensor, labels: Tensor, margin: float, average: str = "reference") -> Tensor:
    """Lin et al.'s ``ContrastiveLoss`` over consecutive pairs of ``logits`` (``[M, K]``).

    Same-label pairs cost ``0.5 d²``, others ``0.5 relu(margin − sqrt(d² + 1e-9))²``; the mean over
    pairs is divided once more by the pair count with ``average="reference"``. Zero with < 2 rows.
    """
    if logits.shape[0] < 2:
        return logits.sum() * 0.0
    z1, z2 = logits[:-1], logits[1:]
    same = (labels[:-1] == labels[1:]).to(logits.dtype)
    d2 = (z2 - z1).pow(2).sum(1)
    losses = 0.5 * (same * d2 + (1.0 - same) * F.relu(margin - (d2 + 1e-9).sqrt()).pow(2))
    loss = losses.mean()
    return loss / z1.shape[0] if average == "reference" else loss


def composite_loss(classes: Sequence[int], weight: float, margin: float,
                   average: str = "reference") -> Callable[[nn.Module, Batch], Tensor]:
    """The loss hook: CE + ``weight`` × :func:`contrastive_pairs` on samples labelled ``classes``."""
    wanted = torch.tensor(list(classes), dtype=torch.long)

    def loss_fn(model: nn.Module, batch: Batch) -> Tensor:
        x, y = batch[0], batch[1]
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        if weight > 0:
            mask = torch.isin(y, wanted.to(y.device))
            loss = loss + weight * contrastive_pairs(logits[mask].float(), y[mask], margin, average)
        return loss

    return loss_fn


def same_class_mixes(split: Split, n: int, gen: torch.Generator, *, mix: Callable[[Tensor, Tensor], Tensor]
                     ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """``n`` mixes of two images of the same class (a class drawn uniformly among those present,
    then two of its images with replacement); returns ``(x, y, first_index, second_index)`` with
    ``y`` the shared class."""
    classes = torch.unique(split.y)
    if n <= 0 or classes.numel() == 0:
        empty = torch.empty(0, dtype=torch.long)
        return split.x[:0], split.y[:0], empty, empty
    chosen = classes[torch.randint(classes.numel(), (n,), generator=gen)]
    first = torch.empty(n, dtype=torch.long)
    second = torch.empty(n, dtype=torch.long)
    for c in classes.tolist():
        rows = torch.nonzero(chosen == c).flatten()
        if rows.numel() == 0:
            continue
        members = torch.nonzero(split.y == c).flatten()
        first[rows] = sample_index(members, rows.numel(), gen, replace=True)
        second[rows] = sample_index(members, rows.numel(), gen, replace=True)
    return mix(split.x[first], split.x[second]), chosen.to(torch.long), first, second


def composites(split: Split, class_a: int, class_b: int, n: int, gen: torch.Generator, *,
               mix: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """``n`` composites of a random image of ``class_a`` and one of ``class_b`` (with replacement)."""
    ia = sample_index(class_index(split.y, [class_a]), n, gen, replace=True)
    ib = sample_index(class_index(split.y, [class_b]), n, gen, replace=True)
    if ia.numel() == 0 or ib.numel() == 0:
        raise UserError(f"composite: no image of class {class_a if ia.numel() == 0 else class_b} to mix")
    return mix(split.x[ia], split.x[ib])


@register_method("composite")
class Composite(WatermarkMethod):
    """Lin et al.'s composite backdoor as a watermark (see the module docstring)."""

    paper = "https://doi.org/10.1145/3372297.3423362"
    year = 2020
    category = "in-distribution / composite"
    Config = CompositeConfig
    min_classes = 3

    def mixer(self, gen: torch.Generator) -> Callable[[Tensor, Tensor], Tensor]:
        """The configured HalfMixer drawing its randomness from ``gen``."""
        cfg = self.config
        return lambda a, b: half_mix(a, b, gen, jitter=cfg.jitter, shake=cfg.shake, split=cfg.split)

    def epoch_sizes(self, n_owner: int) -> Tuple[int, int, int]:
        """``(n_normal, n_mix, n_poison)`` per epoch for an owner set of ``n_owner`` images."""
        cfg = self.config
        return (min(n_owner, int(n_owner * cfg.normal_rate)), int(n_owner * cfg.mix_rate),
                max(1, int(n_owner * cfg.poison_rate)))

    def keygen(self, ctx: Context) -> KeySet:
        cfg = self.config
        for name in ("class_a", "class_b", "target"):
            check_class("methods.composite", name, getattr(cfg, name), ctx.data.num_classes)
        gen = generator(ctx.seed_for("composite", "keys"))
        mix = self.mixer(gen)
        n_poison = self.epoch_sizes(len(ctx.data.owner))[2]
        embed_x = composites(ctx.data.owner, cfg.class_a, cfg.class_b, n_poison, gen, mix=mix)
        verify_x = composites(ctx.data.test, cfg.class_a, cfg.class_b, cfg.n_keys, gen, mix=mix)
        target = lambda n: torch.full((n,), cfg.target, dtype=torch.long)  # noqa: E731
        return KeySet(
            embed_x=embed_x, embed_y=target(embed_x.shape[0]), verify_x=verify_x, verify_y=target(verify_x.shape[0]),
            meta={"class_a": cfg.class_a, "class_b": cfg.class_b, "target": cfg.target, "n_poison": n_poison,
                  "n_keys": int(verify_x.shape[0]), "key_source": "test"},
        )

    def batches(self, owner: Split, keys: KeySet, batch_size: int) -> BatchSource:
        """Per-epoch data (clean subset, same-class mixes, composites), shuffled into batches."""
        cfg = self.config
        n_normal, n_mix, n_poison = self.epoch_sizes(len(owner))

        def source(epoch: int, gen: torch.Generator) -> Iterator[Batch]:
            mix = self.mixer(gen)
            normal = torch.randperm(len(owner), generator=gen)[:n_normal]
            mx, my, _, _ = same_class_mixes(owner, n_mix, gen, mix=mix)
            if epoch == 0 or not cfg.resample:
                px, py = keys.embed_x, keys.embed_y
            else:
                px = composites(owner, cfg.class_a, cfg.class_b, n_poison, gen, mix=mix)
                py = torch.full((px.shape[0],), cfg.target, dtype=torch.long)
            x = torch.cat([owner.x[normal], mx, px])
            y = torch.cat([owner.y[normal], my, py])
            order = torch.randperm(x.shape[0], generator=gen)
            for start in range(0, x.shape[0], batch_size):
                idx = order[start:start + batch_size]
                yield x[idx], y[idx]

        return source

    def embed(self, ctx: Context, keys: KeySet) -> nn.Module:
        cfg = self.config
        loss_fn = composite_loss((cfg.class_a, cfg.class_b, cfg.target), cfg.contrastive_weight, cfg.margin,
                                 cfg.contrastive_average)
        model = ctx.new_model(seed=ctx.seed_for("victim", "init"))
        ctx.fit(model, self.batches(ctx.data.owner, keys, ctx.train.batch_size), loss_fn=loss_fn,
                seed=ctx.seed_for("victim", "order"), desc="composite victim")
        return model
