"""Any image tree in torchvision ``ImageFolder`` layout (``<split>/<class>/<image>``).

Serves Tiny ImageNet (Le and Yang, "Tiny ImageNet Visual Recognition Challenge", CS231N
report, 2015, http://cs231n.stanford.edu/reports/2015/pdfs/yle_project.pdf), ImageNet subsets
(Russakovsky et al., "ImageNet Large Scale Visual Recognition Challenge", IJCV 2015,
https://arxiv.org/abs/1409.0575), COCO crops and similar data. Every image is decoded once
with PIL, centre-cropped to a square and resized to ``size``; a tree whose decoded images fit
the memory budget is kept in memory, a larger one is decoded once into a ``uint8`` shard on
disk (:mod:`wmbench.data.shards`) and read in batches — with the same numbers either way.

Layout: ``ROOT/<train_dir>/<class>/*.jpg`` and optionally ``ROOT/<test_dir>/<class>/*.jpg``
(``test_dir`` defaults to the first existing of ``val`` and ``test``). Tiny ImageNet's flat
``val/images`` + ``val/val_annotations.txt`` is also understood. Without a test folder the
training images are split 80/20 per class with a seeded permutation.
"""
from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from wmbench.data.base import DATA_ENV, DatasetSource, Split, channel_stats, check_root_exists
from wmbench.data.shards import ImageArray, default_shard_dir, find_shard, shard_key, write_shard
from wmbench.errors import UserError
from wmbench.registry import register_dataset

log = logging.getLogger(__name__)

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
TEST_DIR_CANDIDATES = ("val", "test")
#: Fraction of each class held out as test data when the tree has no test folder.
HOLDOUT_FRACTION = 0.2
STREAM_MODES = ("auto", "always", "never")


def default_memory_budget() -> int:
    """Bytes a decoded set may take in memory before ``stream=auto`` keeps it on disk: a quarter
    of the machine's physical memory."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS) and not name.startswith(".")


def _list_images(directory: str) -> List[str]:
    return sorted(
        os.path.join(directory, f) for f in os.listdir(directory)
        if _is_image(f) and os.path.isfile(os.path.join(directory, f))
    )


def _scan_classes(directory: str) -> List[str]:
    return sorted(
        d.name for d in os.scandir(directory) if d.is_dir() and not d.name.startswith(".")
    )


def _load_image(path: str, size: int, mode: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as img:
            img = img.convert(mode)
            w, h = img.size
            side = min(w, h)
            left, top = (w - side) // 2, (h - side) // 2
            img = img.crop((left, top, left + side, top + side))
            if side != size:
                img = img.resize((size, size), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read image {path}: {exc}; remove or replace the file") from None
    return arr[:, :, None] if arr.ndim == 2 else arr


@register_dataset("imagefolder")
class ImageFolderData(DatasetSource):
    """An ``ImageFolder`` tree loaded into memory (Tiny ImageNet, ImageNet subsets, COCO crops).

    Options: ``path`` (the tree; absolute, or relative to the data root; default the data
    root itself), ``size`` (32), ``channels`` (3, or 1 for greyscale), ``max_per_class``
    (None: all; else the first N files of each class, in sorted order, per split),
    ``train_dir`` ("train"), ``test_dir`` (None: first existing of "val", "test"),
    ``split_seed`` (0; for the 80/20 hold-out when there is no test folder), ``workers``
    (2; decoding threads), ``stream`` (``auto``: keep a split on disk when its decoded float32
    images would exceed ``memory_budget_mb``; ``always``; ``never``), ``memory_budget_mb`` (None:
    a quarter of physical memory), ``shard_dir`` (None: ``$WMBENCH_SHARDS``, else
    ``~/.cache/wmbench/shards``; where the decoded ``uint8`` shards are written once and reused).
    Streaming changes memory and speed only, never the images a model sees.
    """

    name = "imagefolder"
    description = ("any torchvision ImageFolder tree (Tiny ImageNet, ImageNet subsets, COCO crops); in memory, or "
                   "read from a uint8 shard when large")
    paper = (
        "Le, Yang. Tiny ImageNet Visual Recognition Challenge (2015) "
        "http://cs231n.stanford.edu/reports/2015/pdfs/yle_project.pdf; Russakovsky et al. "
        "ImageNet Large Scale Visual Recognition Challenge. IJCV (2015) https://arxiv.org/abs/1409.0575"
    )
    num_classes = 0
    channels = 3
    size = 32
    mean = (0.5, 0.5, 0.5)
    std = (0.25, 0.25, 0.25)
    class_names = ()
    default_options = {
        "path": None,
        "size": 32,
        "channels": 3,
        "max_per_class": None,
        "train_dir": "train",
        "test_dir": None,
        "split_seed": 0,
        "workers": 2,
        "stream": "auto",
        "memory_budget_mb": None,
        "shard_dir": None,
    }

    def __init__(self, **options: object) -> None:
        super().__init__(**options)
        self.size = int(self._int_option("size", minimum=1))  # type: ignore[arg-type]
        self.channels = int(self._int_option("channels", minimum=1))  # type: ignore[arg-type]
        if self.channels not in (1, 3):
            raise UserError(f"dataset 'imagefolder' option channels must be 1 or 3, got {self.channels}")
        self.max_per_class = self._int_option("max_per_class", minimum=1, allow_none=True)
        self.split_seed = int(self._int_option("split_seed", minimum=0))  # type: ignore[arg-type]
        self.workers = int(self._int_option("workers", minimum=1))  # type: ignore[arg-type]
        if self.options["stream"] not in STREAM_MODES:
            raise UserError(f"dataset 'imagefolder' option stream must be one of {', '.join(STREAM_MODES)}, "
                            f"got {self.options['stream']!r}")
        budget_mb = self._int_option("memory_budget_mb", minimum=0, allow_none=True)
        self.memory_budget = default_memory_budget() if budget_mb is None else int(budget_mb) << 20
        self.mean = (0.5,) * self.channels
        self.std = (0.25,) * self.channels

    # -- locating ----------------------------------------------------------------------------
    def locate(self, root: Optional[str], download: bool) -> Optional[str]:
        path = self.options["path"]
        if path is not None:
            path = os.path.expanduser(str(path))
            if not os.path.isabs(path):
                if root is None:
                    path = os.path.abspath(path)
                else:
                    path = os.path.join(root, path)
        elif root is not None:
            path = root
        else:
            raise UserError(
                f"dataset 'imagefolder' needs --data-root DIR (or ${DATA_ENV}) or option path=DIR "
                "holding train/<class>/<images> (torchvision ImageFolder layout)"
            )
        check_root_exists(path, self.name)
        train_dir = os.path.join(path, str(self.options["train_dir"]))
        if not os.path.isdir(train_dir):
            raise UserError(
                f"image folder {path} has no training folder {train_dir}; expected "
                f"{path}/{self.options['train_dir']}/<class>/<images> (set option train_dir=... otherwise)"
            )
        return path

    def _test_dir(self, path: str) -> Optional[str]:
        given = self.options["test_dir"]
        if given is not None:
            test_dir = os.path.join(path, str(given))
            if not os.path.isdir(test_dir):
                raise UserError(f"image folder test_dir {test_dir} does not exist")
            return test_dir
        for candidate in TEST_DIR_CANDIDATES:
            test_dir = os.path.join(path, candidate)
            if os.path.isdir(test_dir):
                return test_dir
        return None

    # -- file lists --------------------------------------------------------------------------
    def _cap(self, files: List[str]) -> List[str]:
        return files[: self.max_per_class] if self.max_per_class is not None else files

    def _class_files(self, directory: str, class_to_idx: Dict[str, int]) -> List[Tuple[str, int]]:
        items: List[Tuple[str, int]] = []
        for cls in _scan_classes(directory):
            if cls not in class_to_idx:
                raise UserError(
                    f"class folder {os.path.join(directory, cls)} is not among the training classes; "
                    "test classes must match the train folder's class names"
                )
            files = self._cap(_list_images(os.path.join(directory, cls)))
            items += [(f, class_to_idx[cls]) for f in files]
        return items

    def _tiny_imagenet_val(self, directory: str, class_to_idx: Dict[str, int]) -> List[Tuple[str, int]]:
        """Tiny ImageNet's ``val/val_annotations.txt`` (``file<TAB>wnid<TAB>box``) layout."""
        per_class: Dict[int, List[str]] = {}
        with open(os.path.join(directory, "val_annotations.txt")) as fh:
            for line in fh:
                parts = line.strip().split("\t")
                if len(parts) < 2 or parts[1] not in class_to_idx:
                    continue
                per_class.setdefault(class_to_idx[parts[1]], []).append(
                    os.path.join(directory, "images", parts[0])
                )
        items: List[Tuple[str, int]] = []
        for label in sorted(per_class):
            items += [(f, label) for f in self._cap(sorted(per_class[label]))]
        return items

    def _holdout(self, items: Sequence[Tuple[str, int]]) -> Tuple[List[int], List[int]]:
        gen = torch.Generator().manual_seed(self.split_seed)
        labels = torch.tensor([label for _, label in items], dtype=torch.long)
        train_idx: List[int] = []
        test_idx: List[int] = []
        for label in torch.unique(labels).tolist():
            members = torch.nonzero(labels == label).flatten()
            members = members[torch.randperm(len(members), generator=gen)]
            # at least one test image per class with two or more images; none for singletons
            n_test = max(1, int(round(HOLDOUT_FRACTION * len(members)))) if len(members) >= 2 else 0
            test_idx += members[:n_test].tolist()
            train_idx += members[n_test:].tolist()
        return sorted(train_idx), sorted(test_idx)

    # -- loading -----------------------------------------------------------------------------
    def _streams(self, count: int) -> bool:
        """Whether ``count`` decoded images stay on disk (see the ``stream`` option)."""
        if self.options["stream"] != "auto":
            return self.options["stream"] == "always"
        return count * self.channels * self.size * self.size * 4 > self.memory_budget

    def _shard(self, paths: Sequence[str], mode: str) -> ImageArray:
        folder = os.path.abspath(os.path.expanduser(str(self.options["shard_dir"] or default_shard_dir())))
        key = shard_key(paths, self.size, self.channels)
        found = find_shard(folder, key)
        if found is not None:
            log.info("image shard %s: %d images, reused", os.path.join(folder, key), len(found))
            return found
        log.info("decoding %d images into the shard %s", len(paths), os.path.join(folder, key))
        try:
            return write_shard(folder, key, paths, lambda p: _load_image(p, self.size, mode), size=self.size,
                               channels=self.channels, workers=self.workers)
        except OSError as exc:
            raise UserError(f"cannot write the image shard under {folder}: {exc.strerror or exc}; "
                            "give a writable folder with option shard_dir=DIR or $WMBENCH_SHARDS") from None

    def _read(self, items: Sequence[Tuple[str, int]]) -> Split:
        mode = "RGB" if self.channels == 3 else "L"
        paths = [p for p, _ in items]
        y = torch.tensor([label for _, label in items], dtype=torch.int64)
        if self._streams(len(paths)):
            return Split(self._shard(paths, mode), y)
        if self.workers > 1 and len(paths) > 64:
            with ThreadPoolExecutor(max_workers=self.workers) as pool:
                arrays = list(pool.map(lambda p: _load_image(p, self.size, mode), paths))
        else:
            arrays = [_load_image(p, self.size, mode) for p in paths]
        if arrays:
            stacked = np.stack(arrays)
        else:
            stacked = np.zeros((0, self.size, self.size, self.channels), dtype=np.uint8)
        x = torch.from_numpy(stacked).permute(0, 3, 1, 2).contiguous().to(torch.float32).div_(255.0)
        return Split(x, y)

    def load(self, root: Optional[str], download: bool) -> Tuple[Split, Split]:
        path = self.locate(root, download)
        assert path is not None
        train_dir = os.path.join(path, str(self.options["train_dir"]))
        classes = _scan_classes(train_dir)
        if not classes:
            raise UserError(f"training folder {train_dir} has no class subfolders; expected {train_dir}/<class>/<images>")
        class_to_idx = {c: i for i, c in enumerate(classes)}
        train_items = self._class_files(train_dir, class_to_idx)
        if not train_items:
            raise UserError(f"training folder {train_dir} holds no images ({', '.join(IMG_EXTENSIONS)})")
        empty = sorted(set(classes) - {classes[label] for _, label in train_items})
        if empty:
            raise UserError(f"class folder(s) {', '.join(os.path.join(train_dir, c) for c in empty)} hold no images "
                            f"({', '.join(IMG_EXTENSIONS)}); add images or remove the folder")
        test_dir = self._test_dir(path)
        if test_dir is not None and os.path.isfile(os.path.join(test_dir, "val_annotations.txt")):
            test_items = self._tiny_imagenet_val(test_dir, class_to_idx)
        elif test_dir is not None:
            test_items = self._class_files(test_dir, class_to_idx)
        else:
            tr, te = self._holdout(train_items)
            test_items = [train_items[i] for i in te]
            train_items = [train_items[i] for i in tr]
            log.info("no test folder under %s; held out %d of %d images as test", path, len(test_items),
                     len(test_items) + len(train_items))
        self.num_classes = len(classes)
        self.class_names = tuple(classes)
        train = self._read(train_items)
        test = self._read(test_items)
        self.mean, self.std = channel_stats(train.x, chunk=1024)  # bounded memory on a streamed set too
        self.source_path = path
        return train, test
