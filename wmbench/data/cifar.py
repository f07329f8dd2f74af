"""CIFAR-10 and CIFAR-100 through torchvision's readers.

Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", technical report,
University of Toronto, 2009 (https://www.cs.toronto.edu/~kriz/learning-features-2009-TR.pdf).
50,000 training and 10,000 test RGB images of 32x32 pixels, in 10 or 100 classes.

The data root must hold torchvision's layout (``cifar-10-batches-py/`` or
``cifar-100-python/``); nothing is downloaded unless ``download=True``.
"""
from __future__ import annotations

import logging
import os
from typing import Any, ClassVar, Optional, Tuple

import numpy as np
import torch

from wmbench.data.base import DATA_ENV, DatasetSource, Split, check_root_exists
from wmbench.errors import UserError
from wmbench.registry import register_dataset

log = logging.getLogger(__name__)

#: Download folder used when ``download=True`` and no root is given.
DEFAULT_CACHE = "~/.cache/wmbench"

_PAPER = (
    "Krizhevsky. Learning Multiple Layers of Features from Tiny Images. Tech. report, "
    "University of Toronto (2009) https://www.cs.toronto.edu/~kriz/learning-features-2009-TR.pdf"
)


def _to_split(data: np.ndarray, targets: Any) -> Split:
    """uint8 ``[N, H, W, C]`` + label list -> :class:`Split` (one vectorised conversion)."""
    x = torch.from_numpy(np.ascontiguousarray(data)).permute(0, 3, 1, 2).contiguous()
    x = x.to(torch.float32).div_(255.0)
    y = torch.as_tensor(np.asarray(targets, dtype=np.int64))
    return Split(x, y)


class _CIFARBase(DatasetSource):
    """Shared locate/load logic; subclasses name the torchvision class and folder."""

    channels = 3
    size = 32
    #: The owner's training recipe on CIFAR (He et al., 2016): random crop with 4-pixel padding and
    #: horizontal flip (``train.augment`` when it is left unset).
    train_augment: Tuple[str, ...] = ("crop", "flip")
    default_options = {}
    folder: ClassVar[str] = ""
    title: ClassVar[str] = ""
    tv_class: ClassVar[str] = ""

    def locate(self, root: Optional[str], download: bool) -> Optional[str]:
        if root is None:
            if download:
                return os.path.expanduser(DEFAULT_CACHE)
            raise UserError(
                f"{self.title} needs --data-root DIR (or ${DATA_ENV}) holding {self.folder}/ "
                "(torchvision format), or --download with network"
            )
        check_root_exists(root, self.name)
        if not os.path.isdir(os.path.join(root, self.folder)) and not download:
            raise UserError(
                f"{self.title} not found: expected folder {os.path.join(root, self.folder)} "
                f"(torchvision format, {self.folder}/); put it there or pass --download with network"
            )
        return root

    def load(self, root: Optional[str], download: bool) -> Tuple[Split, Split]:
        import torchvision

        directory = self.locate(root, download)
        assert directory is not None
        cls = getattr(torchvision.datasets, self.tv_class)
        splits = []
        for train in (True, False):
            try:
                ds = cls(directory, train=train, download=download)
            except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted"
                raise UserError(
                    f"{self.title} in {os.path.join(directory, self.folder)} is incomplete or corrupt "
                    f"({exc}); replace it with the torchvision-format {self.folder}/ folder"
                ) from None
            except Exception as exc:  # network errors when downloading; unreadable batch files otherwise
                if download:
                    raise UserError(f"downloading {self.title} into {directory} failed: {exc}") from None
                raise UserError(
                    f"{self.title} in {os.path.join(directory, self.folder)} is corrupt ({type(exc).__name__}: {exc}); "
                    f"replace it with the torchvision-format {self.folder}/ folder"
                ) from None
            if train:
                self.class_names = tuple(str(c) for c in ds.classes)
            splits.append(_to_split(ds.data, ds.targets))
        self.source_path = os.path.join(directory, self.folder)
        return splits[0], splits[1]


@register_dataset("cifar10")
class CIFAR10(_CIFARBase):
    """CIFAR-10 (Krizhevsky 2009): 10 classes, 3x32x32, 50k/10k."""

    name = "cifar10"
    description = "CIFAR-10: 50k/10k RGB 32x32 images, 10 classes (torchvision format)"
    paper = _PAPER
    num_classes = 10
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)
    class_names = (
        "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
    )
    folder = "cifar-10-batches-py"
    title = "CIFAR-10"
    tv_class = "CIFAR10"


@register_dataset("cifar100")
class CIFAR100(_CIFARBase):
    """CIFAR-100 (Krizhevsky 2009): 100 fine classes, 3x32x32, 50k/10k."""

    name = "cifar100"
    description = "CIFAR-100: 50k/10k RGB 32x32 images, 100 fine classes (torchvision format)"
    paper = _PAPER
    num_classes = 100
    mean = (0.5071, 0.4865, 0.4409)
    std = (0.2673, 0.2564, 0.2762)
    class_names = ()  # filled from torchvision's ``classes`` on load
    folder = "cifar-100-python"
    title = "CIFAR-100"
    tv_class = "CIFAR100"
