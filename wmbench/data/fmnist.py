"""Fashion-MNIST, read from the original idx files.

Xiao, Rasul and Vollgraf, "Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine
Learning Algorithms", arXiv:1708.07747, 2017 (https://arxiv.org/abs/1708.07747).
60,000 training and 10,000 test greyscale images of 28x28 pixels in 10 clothing classes.

Files are searched in ``root`` (directly, in ``root/fashion-mnist`` and in
``root/FashionMNIST/raw``), then in ``/usr/share/datasets/fashion-mnist`` (Debian package
``dataset-fashion-mnist``); only with ``download=True`` are they fetched through torchvision.
"""
from __future__ import annotations

import gzip
import logging
import os
import zlib
from typing import ClassVar, List, Optional, Tuple

import numpy as np
import torch

from wmbench.data.base import DatasetSource, Split, check_root_exists
from wmbench.errors import UserError
from wmbench.registry import register_dataset

log = logging.getLogger(__name__)

#: Where Debian's ``dataset-fashion-mnist`` package installs the files.
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
#: Download folder used when ``download=True`` and no root is given.
DEFAULT_CACHE = "~/.cache/wmbench"

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def _read_bytes(path: str) -> bytes:
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as fh:
                return fh.read()
        with open(path, "rb") as fh:
            return fh.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise UserError(f"cannot read idx file {path}: {exc}; the file is truncated or corrupt, replace it") from None


def read_idx_images(path: str) -> np.ndarray:
    """Read an idx3 image file (optionally gzip-compressed) into a ``uint8 [N, H, W]`` array."""
    data = _read_bytes(path)
    if len(data) < 16:
        raise UserError(f"idx image file {path} is truncated ({len(data)} bytes, header needs 16)")
    magic, n, rows, cols = (int.from_bytes(data[i:i + 4], "big") for i in range(0, 16, 4))
    if magic != IMAGES_MAGIC:
        raise UserError(f"{path} is not an idx image file (magic {magic}, expected {IMAGES_MAGIC})")
    expected = 16 + n * rows * cols
    if len(data) != expected:
        raise UserError(
            f"idx image file {path} is truncated or corrupt: header says {n}x{rows}x{cols} "
            f"({expected} bytes) but it holds {len(data)} bytes"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=16).reshape(n, rows, cols)


def read_idx_labels(path: str) -> np.ndarray:
    """Read an idx1 label file (optionally gzip-compressed) into a ``uint8 [N]`` array."""
    data = _read_bytes(path)
    if len(data) < 8:
        raise UserError(f"idx label file {path} is truncated ({len(data)} bytes, header needs 8)")
    magic, n = int.from_bytes(data[0:4], "big"), int.from_bytes(data[4:8], "big")
    if magic != LABELS_MAGIC:
        raise UserError(f"{path} is not an idx label file (magic {magic}, expected {LABELS_MAGIC})")
    if len(data) != 8 + n:
        raise UserError(
            f"idx label file {path} is truncated or corrupt: header says {n} labels "
            f"but it holds {len(data) - 8}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=8)


def _find_file(directory: str, stem: str) -> Optional[str]:
    for candidate in (stem + ".gz", stem):
        path = os.path.join(directory, candidate)
        if os.path.isfile(path):
            return path
    return None


def _complete_dir(directory: str, files: Optional[dict] = None) -> Optional[dict]:
    """``{key: path}`` when ``directory`` holds all four idx files (gzip or plain), else None."""
    found = {key: _find_file(directory, stem) for key, stem in (files or FILES).items()}
    if all(found.values()):
        return found
    return None


@register_dataset("fmnist")
class FashionMNIST(DatasetSource):
    """Fashion-MNIST (Xiao et al., 2017, https://arxiv.org/abs/1708.07747): 10 classes, 1x28x28."""

    name = "fmnist"
    description = "Fashion-MNIST: 60k/10k greyscale 28x28 clothing images, 10 classes"
    paper = "Xiao, Rasul, Vollgraf. Fashion-MNIST. arXiv:1708.07747 (2017) https://arxiv.org/abs/1708.07747"
    num_classes = 10
    channels = 1
    size = 28
    mean = (0.2860,)
    std = (0.3530,)
    class_names = (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    )
    default_options = {}

    #: Overridable for tests; the system-wide install location.
    system_dirs: Tuple[str, ...] = (DEBIAN_DIR,)
    #: Sub-folders of the data root searched (after the root itself): ours, then torchvision's.
    root_dirs: Tuple[str, ...] = ("fashion-mnist", os.path.join("FashionMNIST", "raw"))
    #: The four idx files (without ``.gz``) and the torchvision class that downloads them.
    files: ClassVar[dict] = FILES
    torchvision_class = "FashionMNIST"
    title = "Fashion-MNIST"
    install_hint = "install the Debian package dataset-fashion-mnist, "

    def _candidates(self, root: Optional[str]) -> List[str]:
        dirs: List[str] = []
        if root is not None:
            dirs += [root] + [os.path.join(root, d) for d in self.root_dirs]
        dirs += list(self.system_dirs)
        return dirs

    def _find(self, root: Optional[str]) -> Tuple[Optional[str], Optional[dict], List[str]]:
        searched = self._candidates(root)
        for directory in searched:
            files = _complete_dir(directory, self.files)
            if files is not None:
                return directory, files, searched
        return None, None, searched

    def locate(self, root: Optional[str], download: bool) -> Optional[str]:
        check_root_exists(root, self.name)
        directory, _, searched = self._find(root)
        if directory is not None:
            if root is not None and not directory.startswith(root):
                log.info("%s not in %s; using %s", self.title, root, directory)
            return directory
        if download:
            return self._download(root)
        names = ", ".join(f"{stem}.gz" for stem in self.files.values())
        raise UserError(
            f"{self.title} not found in {', '.join(searched)}; {self.install_hint}pass --data-root DIR "
            f"holding {names}, or --download"
        )

    def _download(self, root: Optional[str]) -> str:
        import torchvision

        target = os.path.expanduser(root or DEFAULT_CACHE)
        log.info("downloading %s into %s", self.title, target)
        cls = getattr(torchvision.datasets, self.torchvision_class)
        try:
            for train in (True, False):
                cls(target, train=train, download=True, **self._download_kwargs())
        except Exception as exc:  # network errors come in many types
            raise UserError(f"downloading {self.title} into {target} failed: {exc}") from None
        directory = os.path.join(target, self.torchvision_class, "raw")
        if _complete_dir(directory, self.files) is None:
            raise UserError(f"{self.title} download into {target} did not produce the idx files in {directory}")
        return directory

    def _download_kwargs(self) -> dict:
        return {}

    def load(self, root: Optional[str], download: bool) -> Tuple[Split, Split]:
        directory = self.locate(root, download)
        assert directory is not None
        files = _complete_dir(directory, self.files)
        assert files is not None
        self.source_path = directory
        train = self._read_split(files["train_images"], files["train_labels"])
        test = self._read_split(files["test_images"], files["test_labels"])
        return train, test

    def _read_split(self, images_path: str, labels_path: str) -> Split:
        images = read_idx_images(images_path)
        labels = read_idx_labels(labels_path)
        if images.shape[0] != labels.shape[0]:
            raise UserError(
                f"{images_path} holds {images.shape[0]} images but {labels_path} holds "
                f"{labels.shape[0]} labels; the files do not belong together"
            )
        if images.shape[1:] != (self.size, self.size):
            raise UserError(f"{images_path} holds {images.shape[1]}x{images.shape[2]} images, expected 28x28")
        images, labels = self._decode(images, labels.astype(np.int64))
        if labels.size and (int(labels.max()) >= self.num_classes or int(labels.min()) < 0):
            raise UserError(f"{labels_path} holds label {int(labels.max())}, expected 0..{self.num_classes - 1}")
        x = torch.from_numpy(images.astype(np.float32)).div_(255.0).unsqueeze(1)
        y = torch.from_numpy(labels)
        return Split(x, y)

    def _decode(self, images: np.ndarray, labels: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Source-specific fix-ups of the raw arrays (none for Fashion-MNIST)."""
        return images, labels
