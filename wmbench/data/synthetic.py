"""A generated, easily learnable image classification set for fast tests.

Each class has a fixed random low-frequency prototype (a random 7x7 grid per channel,
upsampled bilinearly); a sample is its class prototype shifted by up to 2 pixels, plus
Gaussian noise, clipped to [0, 1]. A small CNN exceeds 90% test accuracy within two epochs,
yet no two samples are identical.

There is no paper behind this set: it exists so that tests and smoke runs need no files.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from wmbench.data.base import DatasetSource, Split, channel_stats
from wmbench.registry import register_dataset

#: Side of the random grid each prototype is upsampled from (keeps prototypes low-frequency).
GRID = 7
#: Largest shift, in pixels, applied to a sample in each direction.
MAX_SHIFT = 2


@register_dataset("synthetic")
class Synthetic(DatasetSource):
    """Generated prototype-plus-noise images (deterministic per ``seed``), for tests.

    Options: ``num_classes`` (10), ``channels`` (1), ``size`` (28), ``train_size`` (2000),
    ``test_size`` (500), ``seed`` (0), ``noise`` (0.15, standard deviation of the Gaussian
    pixel noise).
    """

    name = "synthetic"
    description = "generated prototype+shift+noise images; deterministic, learnable in seconds (tests)"
    paper = "none (generated test data)"
    num_classes = 10
    channels = 1
    size = 28
    mean = (0.5,)
    std = (0.3,)
    class_names = tuple(f"class{i}" for i in range(10))
    default_options = {
        "num_classes": 10,
        "channels": 1,
        "size": 28,
        "train_size": 2000,
        "test_size": 500,
        "seed": 0,
        "noise": 0.15,
    }

    def __init__(self, **options: object) -> None:
        super().__init__(**options)
        self.num_classes = int(self._int_option("num_classes", minimum=2))  # type: ignore[arg-type]
        self.channels = int(self._int_option("channels", minimum=1))  # type: ignore[arg-type]
        self.size = int(self._int_option("size", minimum=4))  # type: ignore[arg-type]
        self.train_size = int(self._int_option("train_size", minimum=1))  # type: ignore[arg-type]
        self.test_size = int(self._int_option("test_size", minimum=1))  # type: ignore[arg-type]
        self.seed = int(self._int_option("seed", minimum=0))  # type: ignore[arg-type]
        self.noise = self._float_option("noise", minimum=0.0)
        self.class_names = tuple(f"class{i}" for i in range(self.num_classes))
        self.mean = (0.5,) * self.channels
        self.std = (0.3,) * self.channels

    def prototypes(self, gen: torch.Generator) -> Tensor:
        """``[num_classes, channels, size, size]`` prototypes drawn from ``gen``."""
        grid = torch.rand(self.num_classes, self.channels, GRID, GRID, generator=gen)
        return F.interpolate(grid, size=(self.size, self.size), mode="bilinear", align_corners=True)

    def _samples(self, protos: Tensor, n: int, gen: torch.Generator) -> Split:
        k = self.num_classes
        labels = (torch.arange(n) % k)[torch.randperm(n, generator=gen)]
        shifts = torch.randint(-MAX_SHIFT, MAX_SHIFT + 1, (n, 2), generator=gen)
        noise = torch.randn(n, self.channels, self.size, self.size, generator=gen) * self.noise
        # Edge-replicated padding, then a crop at the shifted offset: a shift without wrap-around.
        padded = F.pad(protos, (MAX_SHIFT,) * 4, mode="replicate")
        x = torch.empty(n, self.channels, self.size, self.size)
        s = self.size
        for dy in range(-MAX_SHIFT, MAX_SHIFT + 1):
            for dx in range(-MAX_SHIFT, MAX_SHIFT + 1):
                mask = (shifts[:, 0] == dy) & (shifts[:, 1] == dx)
                if not bool(mask.any()):
                    continue
                oy, ox = MAX_SHIFT + dy, MAX_SHIFT + dx
                x[mask] = padded[labels[mask], :, oy:oy + s, ox:ox + s]
        x.add_(noise).clamp_(0.0, 1.0)
        return Split(x, labels.to(torch.int64))

    def load(self, root: Optional[str], download: bool) -> Tuple[Split, Split]:
        gen = torch.Generator().manual_seed(self.seed)
        protos = self.prototypes(gen)
        train = self._samples(protos, self.train_size, gen)
        test = self._samples(protos, self.test_size, gen)
        self.mean, self.std = channel_stats(train.x)
        self.source_path = None
        return train, test
