"""In-memory datasets, the owner/attacker split and format conversion.

Every dataset is held in memory as tensors: images ``float32`` in ``[0, 1]`` with shape
``[N, C, H, W]`` (``H == W``) and labels ``int64`` with shape ``[N]`` — except a set larger than
memory, whose images stay in a ``uint8`` shard on disk (:class:`~wmbench.data.shards.ImageArray`,
read in batches); of such a set only the attacker's split and query pools stay on disk, the
owner's and test splits are read into memory (cap them with ``owner_size`` / ``test_size``). A
:class:`DatasetSource` reads (or generates) the train and test sets; :func:`load_data` turns
them into a :class:`DataBundle` in which the training set is divided, with a fixed-seed
permutation, into two disjoint parts: the *owner's* data (used to train the watermarked model)
and the *attacker's* data (used by stealing and removal attacks). This follows the
Watermark-Robustness-Toolbox convention (Lukas et al., "SoK: How Robust is Image
Classification Deep Neural Network Watermarking?", IEEE S&P 2022,
https://arxiv.org/abs/2108.04974), where the attacker holds a disjoint third of the training
distribution.

Loaded bundles are memoised in-process; treat their tensors as read-only (copy before
modifying in place) and call :func:`clear_cache` after changing files on disk.

Why one module: the split, the bundle memo and the format conversion are one contract every
dataset source relies on (what ``load_data`` returns); they change together.
"""
from __future__ import annotations

import functools
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from wmbench.data.shards import ImageArray
from wmbench.errors import UserError

log = logging.getLogger(__name__)

#: Environment variable naming the default data root (the CLI's ``--data-root``).
DATA_ENV = "WMBENCH_DATA"

#: ITU-R BT.601 luma weights, used to turn RGB into one grey channel.
LUMA_WEIGHTS: Tuple[float, float, float] = (0.299, 0.587, 0.114)

#: Images per chunk in :func:`conform`, bounding the temporary memory of a conversion.
_CONFORM_CHUNK = 4096

IndexLike = Union[Tensor, Sequence[int]]


# -------------------------------------------------------------------------------------------
# Splits and bundles
# -------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Split:
    """A set of images ``x`` (``float32 [N, C, H, W]`` in ``[0, 1]``) and labels ``y`` (``int64 [N]``).

    ``x`` is a tensor, or an :class:`~wmbench.data.shards.ImageArray` for a set kept on disk
    (indexing it gives tensors; :meth:`in_memory` reads it all). Equality is identity
    (``eq=False``): comparing tensors element-wise is never what a caller wants from ``==``.
    """

    x: Union[Tensor, ImageArray]
    y: Tensor

    def __post_init__(self) -> None:
        if not isinstance(self.x, (Tensor, ImageArray)) or not isinstance(self.y, Tensor):
            raise TypeError("Split needs tensors x and y")
        if self.x.dim() != 4:
            raise ValueError(f"Split.x must have shape [N, C, H, W], got {tuple(self.x.shape)}")
        if self.y.dim() != 1 or self.y.shape[0] != self.x.shape[0]:
            raise ValueError(
                f"Split.y must have shape [{self.x.shape[0]}], got {tuple(self.y.shape)}"
            )

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def shape(self) -> Tuple[int, int, int]:
        """Per-image shape ``(C, H, W)``."""
        return tuple(self.x.shape[1:])  # type: ignore[return-value]

    def subset(self, index: IndexLike) -> "Split":
        """The rows selected by ``index`` (integer indices, or a boolean mask), in that order."""
        if isinstance(index, Tensor):
            idx = index if index.dtype == torch.bool else index.to(torch.long)
        else:
            idx = torch.as_tensor(list(index), dtype=torch.long)
        if isinstance(self.x, ImageArray):
            return Split(self.x.rows(idx), self.y[idx])
        return Split(self.x[idx], self.y[idx])

    @property
    def on_disk(self) -> bool:
        """Whether the images are read from a shard on demand."""
        return isinstance(self.x, ImageArray)

    def in_memory(self) -> "Split":
        """This split with its images in memory (itself when they are already)."""
        return Split(self.x.materialize(), self.y) if isinstance(self.x, ImageArray) else self

    def take(self, n: Optional[int], seed: int) -> "Split":
        """A seeded random subset of ``n`` rows, or ``self`` when ``n`` is None or ``>= len(self)``."""
        if n is None or n >= len(self):
            return self
        if n < 0:
            raise UserError(f"cannot take {n} samples; give a size >= 0 or none")
        gen = torch.Generator().manual_seed(int(seed))
        idx = torch.randperm(len(self), generator=gen)[:n]
        return self.subset(idx)


@dataclass(frozen=True, eq=False)
class DataBundle:
    """A loaded dataset: owner / attacker / test splits plus metadata.

    ``owner`` and ``attacker`` are disjoint parts of the source's training set; ``test`` is
    the source's test set. ``mean`` / ``std`` are per-channel statistics of the training set
    (for normalisation layers). ``info`` records provenance: ``source`` (path or None),
    ``train_size`` / ``test_size_full`` (before the split and caps), ``owner_size``,
    ``attacker_size``, ``test_size``, ``split_seed``, ``attacker_fraction`` and ``options``.
    """

    name: str
    num_classes: int
    channels: int
    size: int
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    owner: Split
    attacker: Split
    test: Split
    class_names: Tuple[str, ...]
    info: Dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> Tuple[int, int, int]:
        """Per-image shape ``(channels, size, size)``."""
        return (self.channels, self.size, self.size)


# -------------------------------------------------------------------------------------------
# Sources
# -------------------------------------------------------------------------------------------
class DatasetSource:
    """Base class of the dataset readers registered in :data:`wmbench.registry.DATASETS`.

    Subclasses set the class attributes below and implement :meth:`load` (and :meth:`locate`
    when they read files). Options specific to a source are declared in
    ``default_options``; the constructor rejects any other keyword with a :class:`UserError`
    listing the accepted ones, and stores the merged options in ``self.options``. A source
    whose metadata depends on its options or its data (``num_classes``, ``mean``, ...) sets
    the instance attributes in ``__init__`` or :meth:`load`.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    num_classes: int = 0
    channels: int = 1
    size: int = 0
    mean: Tuple[float, ...] = ()
    std: Tuple[float, ...] = ()
    class_names: Tuple[str, ...] = ()
    default_options: ClassVar[Mapping[str, Any]] = {}
    #: ``train.augment`` when the run leaves it unset: the batched augmentation of the owner's
    #: training images that this dataset's usual recipe uses (:mod:`wmbench.augment`; none here).
    train_augment: Tuple[str, ...] = ()

    def __init__(self, **options: Any) -> None:
        unknown = sorted(set(options) - set(self.default_options))
        if unknown:
            accepted = ", ".join(sorted(self.default_options)) or "(none)"
            raise UserError(
                f"dataset {self.name!r} does not accept option(s) {', '.join(unknown)}; "
                f"accepted: {accepted}"
            )
        merged = dict(self.default_options)
        merged.update(options)
        self.options: Dict[str, Any] = merged
        #: Where the data was read from (set by :meth:`load`); recorded in ``DataBundle.info``.
        self.source_path: Optional[str] = None

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{type(self).__name__}({opts})"

    # -- helpers for subclasses --------------------------------------------------------------
    def _int_option(self, key: str, minimum: int = 0, allow_none: bool = False) -> Optional[int]:
        value = self.options[key]
        if value is None and allow_none:
            return None
        try:
            as_int = int(value)
        except (TypeError, ValueError):
            raise UserError(f"dataset {self.name!r} option {key} must be an integer, got {value!r}") from None
        if isinstance(value, float) and value != as_int:
            raise UserError(f"dataset {self.name!r} option {key} must be an integer, got {value!r}")
        if as_int < minimum:
            raise UserError(f"dataset {self.name!r} option {key} must be >= {minimum}, got {value!r}")
        return as_int

    def _float_option(self, key: str, minimum: float = 0.0) -> float:
        value = self.options[key]
        try:
            as_float = float(value)
        except (TypeError, ValueError):
            raise UserError(f"dataset {self.name!r} option {key} must be a number, got {value!r}") from None
        if not math.isfinite(as_float) or as_float < minimum:
            raise UserError(f"dataset {self.name!r} option {key} must be >= {minimum}, got {value!r}")
        return as_float

    # -- interface ---------------------------------------------------------------------------
    def locate(self, root: Optional[str], download: bool) -> Optional[str]:
        """Return the path the data will be read from (None for generated/bundled data).

        Raises :class:`UserError` with one line naming the paths searched and how to
        provide the data.
        """
        return None

    def load(self, root: Optional[str], download: bool) -> Tuple[Split, Split]:
        """Return ``(train, test)`` splits."""
        raise NotImplementedError


def channel_stats(x: Tensor, chunk: int = 8192) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """Per-channel mean and standard deviation of ``x`` (``[N, C, H, W]``), computed in chunks."""
    c = x.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    count = 0
    for start in range(0, x.shape[0], chunk):
        part = x[start:start + chunk].to(torch.float64)
        total += part.sum(dim=(0, 2, 3))
        total_sq += (part * part).sum(dim=(0, 2, 3))
        count += part.shape[0] * part.shape[2] * part.shape[3]
    if count == 0:
        return tuple([0.0] * c), tuple([1.0] * c)
    mean = total / count
    var = (total_sq / count - mean * mean).clamp_min(0.0)
    std = var.sqrt()
    # a channel that never varies gets the smallest positive std the 4 decimals can hold (rounding
    # a clamp of 1e-6 gave 0.0, which the models' normalisation rejects)
    return tuple(round(float(v), 4) for v in mean), tuple(max(round(float(v), 4), 1e-4) for v in std)


def resolve_root(root: Optional[Union[str, os.PathLike]]) -> Optional[str]:
    """The ``root`` argument, else the environment variable ``WMBENCH_DATA``, else None."""
    if root is not None and str(root) != "":
        return os.path.abspath(os.path.expanduser(str(root)))
    env = os.environ.get(DATA_ENV)
    if env:
        return os.path.abspath(os.path.expanduser(env))
    return None


def check_root_exists(root: Optional[str], dataset: str) -> None:
    """Raise :class:`UserError` when an explicit data root does not exist."""
    if root is not None and not os.path.isdir(root):
        raise UserError(
            f"data root {root} for dataset {dataset!r} does not exist or is not a directory; "
            f"pass --data-root DIR (or set ${DATA_ENV}) pointing at an existing folder"
        )


# -------------------------------------------------------------------------------------------
# Splitting and loading
# -------------------------------------------------------------------------------------------
def split_indices(n: int, attacker_fraction: float, split_seed: int) -> Tuple[Tensor, Tensor]:
    """``(owner_index, attacker_index)`` for a training set of ``n`` rows.

    A permutation of ``range(n)`` is drawn from a ``torch.Generator`` seeded with
    ``split_seed``; its first ``round(attacker_fraction * n)`` entries are the attacker's and
    the rest the owner's. Both index tensors keep permutation order (so any prefix is a
    random sample).
    """
    _check_fraction(attacker_fraction)
    gen = torch.Generator().manual_seed(int(split_seed))
    perm = torch.randperm(n, generator=gen)
    n_att = int(round(attacker_fraction * n))
    return perm[n_att:], perm[:n_att]


def _check_fraction(attacker_fraction: float) -> None:
    try:
        ok = 0.0 < float(attacker_fraction) < 1.0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise UserError(
            f"attacker_fraction must be a number strictly between 0 and 1, got {attacker_fraction!r}"
        )


def _check_cap(name: str, value: Optional[int]) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{name} must be a positive integer or none, got {value!r}")
    return value


def _freeze(value: Any) -> Any:
    """A hashable stand-in for an option value (lists -> tuples, dicts -> sorted tuples)."""
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, (set, frozenset)):
        return tuple(sorted(_freeze(v) for v in value))
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value


@functools.lru_cache(maxsize=4)
def _load_source(
    name: str, root: Optional[str], download: bool, frozen_options: Tuple[Tuple[str, Any], ...]
) -> Tuple[DatasetSource, Split, Split]:
    from wmbench.registry import DATASETS

    cls = DATASETS.get(name)
    source = cls(**dict(frozen_options))
    start = time.perf_counter()
    train, test = source.load(root, download)
    for label, split in (("train", train), ("test", test)):
        if len(split) == 0:
            raise UserError(f"dataset {name!r} has no {label} images{' in ' + source.source_path if source.source_path else ''}; "
                            "give data with at least one training and one test image")
        if split.x.shape[1:] != (source.channels, source.size, source.size):
            raise RuntimeError(
                f"dataset {name!r} {label} images have shape {tuple(split.x.shape[1:])}, "
                f"expected {(source.channels, source.size, source.size)}"
            )
    log.info(
        "loaded dataset %s from %s: %d train / %d test in %.2fs",
        name, source.source_path or "(generated)", len(train), len(test), time.perf_counter() - start,
    )
    return source, train, test


@functools.lru_cache(maxsize=8)
def _load_bundle(
    name: str,
    root: Optional[str],
    download: bool,
    attacker_fraction: float,
    split_seed: int,
    owner_size: Optional[int],
    attacker_size: Optional[int],
    test_size: Optional[int],
    frozen_options: Tuple[Tuple[str, Any], ...],
) -> DataBundle:
    source, train, test = _load_source(name, root, download, frozen_options)
    owner_idx, attacker_idx = split_indices(len(train), attacker_fraction, split_seed)
    # the owner's data and the test set are read into memory (methods embed, evaluation scores);
    # the attacker's split, a query pool, stays on disk when the source streams
    owner = train.subset(owner_idx).take(owner_size, split_seed + 1).in_memory()
    attacker = train.subset(attacker_idx).take(attacker_size, split_seed + 2)
    test_split = test.take(test_size, split_seed + 3).in_memory()
    info: Dict[str, Any] = {
        "dataset": name,
        "source": source.source_path,
        "options": dict(source.options),
        "train_size": len(train),
        "test_size_full": len(test),
        "owner_size": len(owner),
        "attacker_size": len(attacker),
        "test_size": len(test_split),
        "split_seed": split_seed,
        "attacker_fraction": attacker_fraction,
    }
    return DataBundle(
        name=name,
        num_classes=int(source.num_classes),
        channels=int(source.channels),
        size=int(source.size),
        mean=tuple(float(v) for v in source.mean),
        std=tuple(float(v) for v in source.std),
        owner=owner,
        attacker=attacker,
        test=test_split,
        class_names=tuple(str(c) for c in source.class_names),
        info=info,
    )


def load_data(
    name: str,
    *,
    root: Optional[Union[str, os.PathLike]] = None,
    download: bool = False,
    attacker_fraction: float = 1 / 3,
    split_seed: int = 1337,
    owner_size: Optional[int] = None,
    attacker_size: Optional[int] = None,
    test_size: Optional[int] = None,
    options: Optional[Mapping[str, Any]] = None,
) -> DataBundle:
    """Load dataset ``name`` and split its training set into owner and attacker parts.

    The training set is permuted with a generator seeded by ``split_seed``; the first
    ``attacker_fraction`` of the permutation goes to the attacker, the rest to the owner
    (disjoint). ``owner_size`` / ``attacker_size`` / ``test_size`` then cap each split with
    a seeded random subset. ``options`` are passed to the source's constructor. ``root``
    defaults to ``$WMBENCH_DATA``.

    Results are memoised in-process: identical arguments return the same
    :class:`DataBundle` object (its tensors are shared; do not modify them in place).
    """
    _check_fraction(attacker_fraction)
    if isinstance(split_seed, bool) or not isinstance(split_seed, int):
        raise UserError(f"split_seed must be an integer, got {split_seed!r}")
    caps = (
        _check_cap("owner_size", owner_size),
        _check_cap("attacker_size", attacker_size),
        _check_cap("test_size", test_size),
    )
    frozen = _freeze(dict(options or {}))
    return _load_bundle(
        name, resolve_root(root), bool(download), float(attacker_fraction), int(split_seed),
        *caps, frozen,
    )


#: The pool name (``query_set`` entry, ``keys.surrogate_query_set``) of the querier's own split of the
#: victim's dataset: the attacker's split for an attack, the owner's data for the owner's surrogate.
ATTACKER_POOL = "attacker"


def pool_parts(query_set: Optional[str]) -> List[str]:
    """The sets of a pool name: ``"mnist+kmnist"`` is MNIST's and Kuzushiji-MNIST's images; None is
    :data:`ATTACKER_POOL`."""
    return [part.strip() for part in str(query_set).split("+")] if query_set is not None else [ATTACKER_POOL]


def training_pool(name: str, *, root: Optional[Union[str, os.PathLike]] = None, download: bool = False,
                  options: Optional[Mapping[str, Any]] = None) -> Split:
    """The whole training split of dataset ``name`` as a query pool: the owner's rows, then the
    attacker's, of :func:`load_data`'s default split — on disk when the source streams."""
    _, train, _ = _load_source(name, resolve_root(root), bool(download), _freeze(dict(options or {})))
    owner_idx, attacker_idx = split_indices(len(train), 1 / 3, 1337)
    return train.subset(torch.cat([owner_idx, attacker_idx]))


def clear_cache() -> None:
    """Forget every memoised load (e.g. after files on disk changed)."""
    _load_bundle.cache_clear()
    _load_source.cache_clear()


# -------------------------------------------------------------------------------------------
# Format conversion
# -------------------------------------------------------------------------------------------
def _convert_channels(x: Tensor, channels: int) -> Tensor:
    c = x.shape[1]
    if c == channels:
        return x
    if c == 3 and channels == 1:
        w = torch.tensor(LUMA_WEIGHTS, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x * w).sum(dim=1, keepdim=True)
    if c == 1:
        return x.repeat(1, channels, 1, 1)
    raise UserError(
        f"cannot convert {c}-channel images to {channels} channels; "
        "supported: RGB -> grey, grey -> any channel count"
    )


def conform(split: Split, channels: int, size: int) -> Split:
    """Convert ``split`` to ``channels`` channels and ``size`` x ``size`` pixels.

    RGB -> grey uses the luma weights 0.299/0.587/0.114; grey -> RGB repeats the channel.
    Resizing is bilinear (anti-aliased when shrinking). Work is done in chunks; the result
    stays in ``[0, 1]``. Returns ``split`` itself when nothing changes. Used when one dataset
    serves as the query set for a model trained on another (e.g. digits for Fashion-MNIST).
    """
    if channels < 1 or size < 1:
        raise UserError(f"conform needs channels >= 1 and size >= 1, got {channels}, {size}")
    c, h, w = split.x.shape[1:]
    if c == channels and h == size and w == size:
        return split
    if c != channels and not (c == 1 or (c == 3 and channels == 1)):
        _convert_channels(split.x[:0], channels)  # raises the UserError
    convert = functools.partial(_conform_part, channels=channels, size=size)
    if isinstance(split.x, ImageArray):  # converted batch by batch as it is read
        return Split(split.x.converted(convert, (channels, size, size)), split.y)
    parts = [convert(split.x[start:start + _CONFORM_CHUNK].to(torch.float32))
             for start in range(0, max(len(split), 1), _CONFORM_CHUNK)]
    x = torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]
    return Split(x.contiguous(), split.y)


def _conform_part(part: Tensor, channels: int, size: int) -> Tensor:
    """One batch of :func:`conform`'s work (each image is converted on its own)."""
    c, h, w = part.shape[1:]
    if part.shape[0] == 0:
        return part.new_zeros((0, channels, size, size))
    if c == 3 and channels == 1:
        part = _convert_channels(part, channels)  # shrink channels before resizing
    if (h, w) != (size, size):
        part = F.interpolate(part, size=(size, size), mode="bilinear", align_corners=False,
                             antialias=size < max(h, w))
    if part.shape[1] != channels:
        part = _convert_channels(part, channels)  # grow channels after resizing
    return part.clamp(0.0, 1.0)
