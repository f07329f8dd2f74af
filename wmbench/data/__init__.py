"""Datasets held in memory as tensors (sets larger than memory in ``uint8`` shards on disk,
:mod:`wmbench.data.shards`), split into owner / attacker / test parts.

See :mod:`wmbench.data.base` for the design. Sources are registered in
:data:`wmbench.registry.DATASETS` and imported on first use.
"""
from wmbench.data.base import (
    ATTACKER_POOL,
    DataBundle,
    DatasetSource,
    Split,
    clear_cache,
    conform,
    load_data,
    resolve_root,
    pool_parts,
    split_indices,
    training_pool,
)
from wmbench.data.shards import ImageArray

__all__ = [
    "Split",
    "DataBundle",
    "DatasetSource",
    "load_data",
    "conform",
    "clear_cache",
    "resolve_root",
    "split_indices",
    "training_pool",
    "pool_parts",
    "ATTACKER_POOL",
    "ImageArray",
]
