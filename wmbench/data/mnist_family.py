"""MNIST, Kuzushiji-MNIST and EMNIST: the other 28x28 greyscale sets in the idx format.

Natural out-of-distribution query pools for a Fashion-MNIST victim (and tasks of their own),
read exactly like Fashion-MNIST (:mod:`wmbench.data.fmnist`) from ``--data-root``: the four idx
files, gzip-compressed or not, in the root itself, in ``root/<name>`` or in torchvision's
``root/<Class>/raw`` layout; ``--download`` fetches them through torchvision. Their per-channel
mean and standard deviation are computed from the training images.

- LeCun, Bottou, Bengio and Haffner, "Gradient-based learning applied to document
  recognition", Proc. IEEE 1998 (MNIST: 60k/10k handwritten digits).
- Clanuwat et al., "Deep Learning for Classical Japanese Literature", arXiv:1812.01718, 2018
  (Kuzushiji-MNIST: 60k/10k cursive Japanese characters, 10 classes).
- Cohen, Afshar, Tapson and van Schaik, "EMNIST: an extension of MNIST to handwritten letters",
  arXiv:1702.05373, 2017. The files are ``emnist-<split>-{train,test}-{images-idx3,labels-idx1}-ubyte``
  (the official ``gzip.zip`` unpacks them into ``gzip/``); option ``split`` picks one of
  ``balanced`` (47 classes, the default), ``byclass`` (62), ``bymerge`` (47), ``digits`` (10),
  ``letters`` (26; stored labels 1..26 become 0..25) and ``mnist`` (10). EMNIST stores each image
  transposed; it is turned upright on reading.
"""
from __future__ import annotations

import os
from typing import ClassVar, Dict, Optional, Tuple

import numpy as np

from wmbench.data.base import Split, channel_stats
from wmbench.data.fmnist import FashionMNIST
from wmbench.errors import UserError
from wmbench.registry import register_dataset


def _idx_files(prefix: str = "", test: str = "t10k") -> Dict[str, str]:
    """The four idx file names: MNIST's ``train-…`` / ``t10k-…``, EMNIST's ``<prefix>train-…`` / ``<prefix>test-…``."""
    return {
        "train_images": f"{prefix}train-images-idx3-ubyte",
        "train_labels": f"{prefix}train-labels-idx1-ubyte",
        "test_images": f"{prefix}{test}-images-idx3-ubyte",
        "test_labels": f"{prefix}{test}-labels-idx1-ubyte",
    }


class _IdxSet(FashionMNIST):
    """An idx-format 28x28 greyscale set read like Fashion-MNIST, with statistics from its data."""

    system_dirs: Tuple[str, ...] = ()
    install_hint = ""
    mean = (0.5,)
    std = (0.25,)

    def load(self, root: Optional[str], download: bool) -> Tuple[Split, Split]:
        train, test = super().load(root, download)
        self.mean, self.std = channel_stats(train.x)
        return train, test


@register_dataset("mnist")
class MNIST(_IdxSet):
    """MNIST handwritten digits (LeCun et al., 1998): 10 classes, 1x28x28."""

    name = "mnist"
    description = "MNIST: 60k/10k greyscale 28x28 handwritten digits, 10 classes (idx files)"
    paper = "LeCun, Bottou, Bengio, Haffner. Gradient-based learning applied to document recognition. Proc. IEEE (1998)"
    num_classes = 10
    class_names = tuple(str(d) for d in range(10))
    root_dirs = ("mnist", os.path.join("MNIST", "raw"))
    files: ClassVar[dict] = _idx_files()
    torchvision_class = "MNIST"
    title = "MNIST"


@register_dataset("kmnist")
class KMNIST(_IdxSet):
    """Kuzushiji-MNIST (Clanuwat et al., 2018): 10 classes of cursive Japanese, 1x28x28."""

    name = "kmnist"
    description = "Kuzushiji-MNIST: 60k/10k greyscale 28x28 cursive Japanese characters, 10 classes (idx files)"
    paper = "Clanuwat et al. Deep Learning for Classical Japanese Literature. arXiv:1812.01718 (2018)"
    num_classes = 10
    class_names = ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")
    root_dirs = ("kmnist", os.path.join("KMNIST", "raw"))
    files: ClassVar[dict] = _idx_files()
    torchvision_class = "KMNIST"
    title = "Kuzushiji-MNIST"


#: EMNIST splits and their class counts.
EMNIST_SPLITS = {"balanced": 47, "byclass": 62, "bymerge": 47, "digits": 10, "letters": 26, "mnist": 10}


@register_dataset("emnist")
class EMNIST(_IdxSet):
    """EMNIST (Cohen et al., 2017): handwritten digits and letters, 1x28x28; option ``split``."""

    name = "emnist"
    description = "EMNIST: handwritten digits and letters, greyscale 28x28; option split (balanced: 47 classes)"
    paper = "Cohen, Afshar, Tapson, van Schaik. EMNIST: an extension of MNIST to handwritten letters. arXiv:1702.05373 (2017)"
    num_classes = 47  # the default split, balanced (set per split in __init__)
    root_dirs = ("emnist", "gzip", os.path.join("EMNIST", "raw"))
    torchvision_class = "EMNIST"
    title = "EMNIST"
    default_options = {"split": "balanced"}

    def __init__(self, **options: object) -> None:
        super().__init__(**options)
        split = self.options["split"]
        if split not in EMNIST_SPLITS:
            raise UserError(f"dataset 'emnist' option split must be one of {', '.join(EMNIST_SPLITS)}, got {split!r}")
        self.split = str(split)
        self.num_classes = EMNIST_SPLITS[self.split]
        self.class_names = tuple(str(i) for i in range(self.num_classes))
        self.files = _idx_files(f"emnist-{self.split}-", test="test")
        self.title = f"EMNIST ({self.split})"

    def _download_kwargs(self) -> dict:
        return {"split": self.split}

    def _decode(self, images: np.ndarray, labels: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        images = np.ascontiguousarray(images.transpose(0, 2, 1))  # stored transposed
        if self.split == "letters":
            labels = labels - 1  # stored as 1..26
        return images, labels
