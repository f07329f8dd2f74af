"""scikit-learn's bundled handwritten digits, upscaled: an MNIST-like set that needs no files.

The 1,797 8x8 images come from the UCI "Optical Recognition of Handwritten Digits" data
(Alpaydin and Kaynak, 1998, https://doi.org/10.24432/C50P49), shipped with scikit-learn as
``sklearn.datasets.load_digits``. Pixel values 0..16 are scaled to [0, 1] and upsampled
bilinearly to ``size`` x ``size``. Used as a query, transfer or out-of-distribution set for
models trained on Fashion-MNIST (see :func:`wmbench.data.conform`).
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from wmbench.data.base import DatasetSource, Split, channel_stats
from wmbench.registry import register_dataset


@register_dataset("digits")
class Digits(DatasetSource):
    """UCI handwritten digits via scikit-learn (Alpaydin & Kaynak 1998), 1 channel, upscaled.

    Options: ``size`` (default 28), ``split_seed`` (default 0) for the stratified 75/25
    train/test split.
    """

    name = "digits"
    description = "scikit-learn handwritten digits (1,797 8x8 images) upscaled; MNIST-like, no files needed"
    paper = (
        "Alpaydin, Kaynak. Optical Recognition of Handwritten Digits. UCI Machine Learning "
        "Repository (1998) https://doi.org/10.24432/C50P49"
    )
    num_classes = 10
    channels = 1
    size = 28
    mean = (0.3052,)  # of the default 28x28 training split; recomputed on load
    std = (0.3246,)
    class_names = tuple(str(i) for i in range(10))
    default_options = {"size": 28, "split_seed": 0}

    def __init__(self, **options: object) -> None:
        super().__init__(**options)
        self.size = int(self._int_option("size", minimum=1))  # type: ignore[arg-type]
        self.split_seed = int(self._int_option("split_seed", minimum=0))  # type: ignore[arg-type]

    def load(self, root: Optional[str], download: bool) -> Tuple[Split, Split]:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        images = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
        if self.size != images.shape[-1]:
            images = F.interpolate(
                images, size=(self.size, self.size), mode="bilinear", align_corners=False,
                antialias=self.size < images.shape[-1],
            ).clamp_(0.0, 1.0)
        labels = torch.from_numpy(digits.target.astype(np.int64))
        index = np.arange(len(labels))
        train_idx, test_idx = train_test_split(
            index, test_size=0.25, stratify=digits.target, random_state=self.split_seed
        )
        train = Split(images[torch.from_numpy(train_idx)].contiguous(), labels[torch.from_numpy(train_idx)])
        test = Split(images[torch.from_numpy(test_idx)].contiguous(), labels[torch.from_numpy(test_idx)])
        self.mean, self.std = channel_stats(train.x)
        self.source_path = "sklearn.datasets.load_digits"
        return train, test
