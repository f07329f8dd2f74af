"""Content, Noise and Unrelated watermarks (Zhang et al. 2018).

Paper: Zhang, Gu, Jang, Wu, Stoecklin, Huang, Molloy, "Protecting Intellectual Property of Deep
Neural Networks with Watermarking", ACM AsiaCCS 2018, https://doi.org/10.1145/3196494.3196550.
Used as three baselines by DeepTracer (AAAI 2026, App. "Compared Watermarking Methods"):
"Content: embeds specific text content, such as 'TEST', into some training images"; "Noise: adds
specific Gaussian noise pattern to a portion of training images"; "Unrelated: uses unrelated OOD
samples as watermark samples, but with a same target label". Reference implementations:
sbaresearch/model-watermarking (``watermarks/protecting_ip.py``) and the Watermark-Robustness-
Toolbox (``wrt/defenses/watermark/zhang.py``).

Idea: the owner adds watermark samples, labelled with one target class, to the training set:

- **Content** (``content``): training images of the source classes with the text "TEST" drawn in
  white (Pillow's default font, no font file needed);
- **Noise** (``noise``): training images of the source classes plus one fixed Gaussian noise
  pattern ``N(0, sigma^2)`` (``sigma`` 0.4 as WRT), clipped to [0, 1];
- **Unrelated** (``unrelated``): images of another data set (Fashion-MNIST: scikit-learn's
  ``digits``; any other: the configurable ``source_dataset``), converted to the model's channels
  and size with :func:`wmbench.data.conform`.

Verification queries a *held-out* key set built the same way: stamped **test** images of the
source classes (Content, Noise) or the source data set's **test** split (Unrelated), all labelled
with the target; no training image is ever a key.

Choices where the sources are silent [wmbench, each a Config parameter]:

- ``target`` 1 for all three (the BadNets/BackdoorBox target; Zhang et al. fix one target per
  task without a general rule, sbaresearch uses (y + 1) mod 10, WRT 4 → 6);
- source classes: all non-target classes (``sources=()``) [methods.md rec];
- amount: ``wm_rate`` = 1 % of the owner's training set (the share DeepTracer's own phase 1
  uses), *appended* to the clean data, optionally repeated ``boost`` times (WRT's boost factor);
- Content: "TEST", font size 10, bottom-left corner (``xy=()``), binarised pure white — the
  sbaresearch pitfall of a red integer fill on RGB is avoided;
- Noise: one pattern per run seed (``ctx.seed_for("noise", "pattern")``), added in [0, 1];
- Unrelated: source ``auto`` = ``digits`` (``synthetic`` when the victim's data set is digits),
  all of its classes; embedding samples from its train split, keys from its test split;
- key sets of up to ``n_keys`` = 2,000 images (DeepTracer's M), fewer when fewer are held out.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Dict, Mapping, Optional, Tuple

import torch
from torch import Tensor, nn

from wmbench.api import Context, KeySet, WatermarkMethod
from wmbench.data import Split, conform, load_data
from wmbench.errors import UserError
from wmbench.methods._triggers import (
    add_pattern, appended_batches, check_class, class_index, gaussian_pattern, sample_index, stamp_mask, text_mask,
)
from wmbench.registry import register_method
from wmbench.utils import generator

log = logging.getLogger(__name__)


# -------------------------------------------------------------------------------------------
# Shared configuration and helpers
# -------------------------------------------------------------------------------------------
def _check_common(section: str, wm_rate: float, n_keys: int, boost: int) -> None:
    if not 0.0 < wm_rate < 1.0:
        raise UserError(f"{section}.wm_rate must be in (0, 1), got {wm_rate}")
    if n_keys < 1:
        raise UserError(f"{section}.n_keys must be >= 1, got {n_keys}")
    if boost < 1:
        raise UserError(f"{section}.boost must be >= 1, got {boost}")


def source_classes(section: str, sources: Tuple[int, ...], target: int, num_classes: int) -> Tuple[int, ...]:
    """The configured source classes, or every class but ``target`` when ``sources`` is empty."""
    check_class(section, "target", target, num_classes)
    if not sources:
        return tuple(c for c in range(num_classes) if c != target)
    for c in sources:
        check_class(section, "sources", c, num_classes)
    if target in sources:
        raise UserError(f"{section}.sources must not contain the target class {target}, got {list(sources)}")
    return tuple(sorted(set(int(c) for c in sources)))


def n_watermarks(wm_rate: float, n_owner: int) -> int:
    """``round(wm_rate * n_owner)``, at least 1."""
    return max(1, int(round(wm_rate * n_owner)))


def train_with_appended(ctx: Context, keys: KeySet, *, boost: int, desc: str) -> nn.Module:
    """Train a fresh victim on the owner's data with ``keys.embed_*`` appended ``boost`` times."""
    owner = ctx.data.owner
    wm_x = keys.embed_x.repeat(boost, 1, 1, 1)
    wm_y = keys.embed_y.repeat(boost)
    x = torch.cat([owner.x, wm_x])
    y = torch.cat([owner.y, wm_y])
    model = ctx.new_model(seed=ctx.seed_for("victim", "init"))
    ctx.fit(model, (x, y), seed=ctx.seed_for("victim", "order"), desc=desc)
    return model


class _StampWatermark(WatermarkMethod):
    """Source-class images with a fixed stamp, labelled with one target (Content, Noise)."""

    category = "in-distribution / stamp"

    def _stamper(self, ctx: Context) -> Tuple[Callable[[Tensor], Tensor], Dict[str, Any]]:
        """The stamping function for this run and JSON-able facts about it."""
        raise NotImplementedError

    def keygen(self, ctx: Context) -> KeySet:
        cfg = self.config
        section = f"methods.{self.name}"
        sources = source_classes(section, tuple(cfg.sources), cfg.target, ctx.data.num_classes)
        stamp, facts = self._stamper(ctx)
        gen = generator(ctx.seed_for(self.name, "keys"))
        owner, test = ctx.data.owner, ctx.data.test
        candidates = class_index(owner.y, sources)
        if candidates.numel() == 0:
            raise UserError(f"{section}: the owner's data hold no image of the source classes {list(sources)}")
        n_wm = min(n_watermarks(cfg.wm_rate, len(owner)), candidates.numel())
        wm_index = sample_index(candidates, n_wm, gen)
        key_index = sample_index(class_index(test.y, sources), cfg.n_keys, gen)
        if key_index.numel() == 0:
            raise UserError(f"{section}: the test split holds no image of the source classes {list(sources)}")
        embed_x = stamp(owner.x[wm_index])
        verify_x = stamp(test.x[key_index])
        return KeySet(
            embed_x=embed_x,
            embed_y=torch.full((embed_x.shape[0],), cfg.target, dtype=torch.long),
            verify_x=verify_x,
            verify_y=torch.full((verify_x.shape[0],), cfg.target, dtype=torch.long),
            meta={"target": cfg.target, "sources": list(sources), "n_wm": int(embed_x.shape[0]),
                  "n_keys": int(verify_x.shape[0]), "boost": cfg.boost, "key_source": "test", **facts},
        )

    def embed(self, ctx: Context, keys: KeySet) -> nn.Module:
        return train_with_appended(ctx, keys, boost=self.config.boost, desc=f"{self.name} victim")


# -------------------------------------------------------------------------------------------
# Content
# -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ContentConfig:
    """Content ("TEST") watermark parameters (see the module docstring).

    target: int = 1              watermark label.
    sources: tuple = ()          source classes; empty = every class but the target.
    wm_rate: float = 0.01        watermarked training images, as a share of the owner's set (appended).
    boost: int = 1               times the watermark samples are repeated in the training set.
    n_keys: int = 2000           size of the verification key set (stamped test images).
    text: str = "TEST"           the drawn text.
    font_size: int = 10          size of Pillow's default font.
    xy: tuple = ()               top-left of the text in pixels; empty = bottom-left corner.
    color: tuple = (1.0,)        text colour per channel in [0, 1] (one value = all channels: white).
    """

    target: int = 1
    sources: Tuple[int, ...] = ()
    wm_rate: float = 0.01
    boost: int = 1
    n_keys: int = 2000
    text: str = "TEST"
    font_size: int = 10
    xy: Tuple[int, ...] = ()
    color: Tuple[float, ...] = (1.0,)

    PROFILES: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "smoke": {"wm_rate": 0.1, "n_keys": 300},
        "quick": {},
        "paper": {},
    }

    def validate(self) -> None:
        _check_common("methods.content", self.wm_rate, self.n_keys, self.boost)
        if not self.text:
            raise UserError("methods.content.text must not be empty")
        if self.font_size < 1:
            raise UserError(f"methods.content.font_size must be >= 1, got {self.font_size}")
        if self.xy and len(self.xy) != 2:
            raise UserError(f"methods.content.xy must be [x, y] or empty, got {list(self.xy)}")
        if not self.color or any(not 0.0 <= c <= 1.0 for c in self.color):
            raise UserError(f"methods.content.color must be values in [0, 1], got {list(self.color)}")


@register_method("content")
class Content(_StampWatermark):
    """Zhang et al.'s Content watermark: white "TEST" on source-class images → target."""

    paper = "https://doi.org/10.1145/3196494.3196550"
    year = 2018
    Config = ContentConfig

    def mask(self, size: int) -> Tensor:
        """The ``[size, size]`` boolean mask of the drawn text."""
        cfg = self.config
        xy = (int(cfg.xy[0]), int(cfg.xy[1])) if cfg.xy else None
        return text_mask(cfg.text, size, xy=xy, font_size=cfg.font_size)

    def _stamper(self, ctx: Context) -> Tuple[Callable[[Tensor], Tensor], Dict[str, Any]]:
        mask = self.mask(ctx.data.size)
        color = tuple(self.config.color)
        return (lambda x: stamp_mask(x, mask, color)), {"text": self.config.text, "text_pixels": int(mask.sum())}


# -------------------------------------------------------------------------------------------
# Noise
# -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NoiseConfig:
    """Noise watermark parameters (see the module docstring).

    target: int = 1              watermark label.
    sources: tuple = ()          source classes; empty = every class but the target.
    wm_rate: float = 0.01        watermarked training images, as a share of the owner's set (appended).
    boost: int = 1               times the watermark samples are repeated in the training set.
    n_keys: int = 2000           size of the verification key set (test images + the pattern).
    sigma: float = 0.4           standard deviation of the fixed pattern, in [0, 1] pixel units (WRT).
    """

    target: int = 1
    sources: Tuple[int, ...] = ()
    wm_rate: float = 0.01
    boost: int = 1
    n_keys: int = 2000
    sigma: float = 0.4

    PROFILES: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "smoke": {"wm_rate": 0.1, "n_keys": 300},
        "quick": {},
        "paper": {},
    }

    def validate(self) -> None:
        _check_common("methods.noise", self.wm_rate, self.n_keys, self.boost)
        if self.sigma <= 0:
            raise UserError(f"methods.noise.sigma must be > 0, got {self.sigma}")


@register_method("noise")
class Noise(_StampWatermark):
    """Zhang et al.'s Noise watermark: one fixed Gaussian pattern on source-class images → target."""

    paper = "https://doi.org/10.1145/3196494.3196550"
    year = 2018
    Config = NoiseConfig

    def pattern(self, ctx: Context) -> Tensor:
        """This run's fixed ``(C, H, W)`` noise pattern."""
        return gaussian_pattern(ctx.input_shape, self.config.sigma, ctx.seed_for("noise", "pattern"))

    def _stamper(self, ctx: Context) -> Tuple[Callable[[Tensor], Tensor], Dict[str, Any]]:
        pattern = self.pattern(ctx)
        return (lambda x: add_pattern(x, pattern)), {"sigma": self.config.sigma}


# -------------------------------------------------------------------------------------------
# Unrelated
# -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class UnrelatedConfig:
    """Unrelated (out-of-distribution) watermark parameters (see the module docstring).

    target: int = 1              watermark label of every unrelated image.
    source_dataset: str = "auto" the data set the images come from; "auto" = digits (synthetic
                                 when the victim's data set is digits). Any registered data set
                                 works (e.g. cifar100 for CIFAR-10 when its files are present).
    source_root: str | None = None   data root of the source data set (else $WMBENCH_DATA / system paths).
    source_classes: tuple = ()   classes of the source data set to use; empty = all.
    wm_rate: float = 0.01        unrelated training images, as a share of the owner's set (appended).
    boost: int = 1               times the watermark samples are repeated in the training set.
    n_keys: int = 2000           size of the verification key set (the source's test images, held out).
    """

    target: int = 1
    source_dataset: str = "auto"
    source_root: Optional[str] = None
    source_classes: Tuple[int, ...] = ()
    wm_rate: float = 0.01
    boost: int = 1
    n_keys: int = 2000

    PROFILES: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "smoke": {"wm_rate": 0.1, "n_keys": 300},
        "quick": {},
        "paper": {},
    }

    def validate(self) -> None:
        _check_common("methods.unrelated", self.wm_rate, self.n_keys, self.boost)
        if not self.source_dataset:
            raise UserError("methods.unrelated.source_dataset must name a data set or be 'auto'")


def unrelated_source(name: str, victim_dataset: str) -> str:
    """Resolve ``"auto"``: digits, or synthetic when the victim itself is trained on digits."""
    if name != "auto":
        return name
    return "synthetic" if victim_dataset == "digits" else "digits"


@register_method("unrelated")
class Unrelated(WatermarkMethod):
    """Zhang et al.'s Unrelated watermark: images of another data set, all labelled ``target``."""

    paper = "https://doi.org/10.1145/3196494.3196550"
    year = 2018
    category = "out-of-distribution / unrelated"
    Config = UnrelatedConfig

    def source_splits(self, ctx: Context) -> Tuple[str, Split, Split]:
        """``(name, pool, held_out)``: the source data set's train images (both of its splits) and
        its test images, converted to the victim's channels and size."""
        cfg = self.config
        name = unrelated_source(cfg.source_dataset, ctx.data.name)
        if name == ctx.data.name:
            raise UserError(f"methods.unrelated.source_dataset must differ from the victim's data set {name!r}")
        bundle = load_data(name, root=cfg.source_root)
        pool = Split(torch.cat([bundle.owner.x, bundle.attacker.x]), torch.cat([bundle.owner.y, bundle.attacker.y]))
        held_out = bundle.test
        if cfg.source_classes:
            for c in cfg.source_classes:
                check_class("methods.unrelated", "source_classes", c, bundle.num_classes)
            pool = pool.subset(class_index(pool.y, cfg.source_classes))
            held_out = held_out.subset(class_index(held_out.y, cfg.source_classes))
        shape = (ctx.data.channels, ctx.data.size)
        return name, conform(pool, *shape), conform(held_out, *shape)

    def keygen(self, ctx: Context) -> KeySet:
        cfg = self.config
        check_class("methods.unrelated", "target", cfg.target, ctx.data.num_classes)
        name, pool, held_out = self.source_splits(ctx)
        if len(pool) == 0 or len(held_out) == 0:
            raise UserError(f"methods.unrelated: source data set {name!r} has no images of the chosen classes")
        gen = generator(ctx.seed_for("unrelated", "keys"))
        n_wm = n_watermarks(cfg.wm_rate, len(ctx.data.owner))
        if n_wm > len(pool):
            log.warning("unrelated: %d watermark images asked, %s has %d; using all", n_wm, name, len(pool))
        embed_x = pool.x[sample_index(torch.arange(len(pool)), n_wm, gen)]
        verify_x = held_out.x[sample_index(torch.arange(len(held_out)), cfg.n_keys, gen)]
        return KeySet(
            embed_x=embed_x,
            embed_y=torch.full((embed_x.shape[0],), cfg.target, dtype=torch.long),
            verify_x=verify_x,
            verify_y=torch.full((verify_x.shape[0],), cfg.target, dtype=torch.long),
            meta={"target": cfg.target, "source_dataset": name, "n_wm": int(embed_x.shape[0]),
                  "n_keys": int(verify_x.shape[0]), "boost": cfg.boost, "key_source": f"{name} test split"},
        )

    def embed(self, ctx: Context, keys: KeySet) -> nn.Module:
        return train_with_appended(ctx, keys, boost=self.config.boost, desc="unrelated victim")
