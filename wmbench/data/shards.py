"""Image sets larger than memory: a ``uint8`` shard on disk, decoded once, read on demand.

An :class:`ImageArray` stands where a split's ``x`` tensor stands (``float32 [N, C, H, W]`` in
``[0, 1]``) but keeps the pixels in a file: a raw ``uint8`` array ``[N, C, S, S]`` mapped with
``numpy.memmap``, so the operating system pages rows in as they are read and drops them under
memory pressure. Indexing it (``x[rows]``, ``x[a:b]``, ``x[mask]``) returns an ordinary float32
tensor, computed exactly as the in-memory loaders compute theirs (``uint8 → float32, / 255``),
so a set streamed from a shard and the same set decoded into memory give the same numbers to the
bit. :meth:`ImageArray.rows` and :meth:`ImageArray.converted` are views (a row map, a per-batch
channel/size conversion) that copy nothing. What needs whole tensors calls
:meth:`ImageArray.materialize`.

:func:`write_shard` decodes a list of image files into a shard with a pool of threads, one chunk at
a time (memory bounded by the chunk, not the set), and writes its ``meta.json`` last, atomically,
so a shard interrupted half-way is never taken for a finished one; :func:`find_shard` reuses a
finished shard whose key (the file list with sizes and modification times, the image size and
channels) matches.

The format is deliberately plain — a header-less array and a JSON file — so any tool can read it
(``numpy.memmap(path, uint8, "r", shape=meta["shape"])``).
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

#: Images decoded per chunk by :func:`write_shard` (bounds its memory).
CHUNK = 1024
#: Environment variable naming the shard folder (default ``~/.cache/wmbench/shards``).
SHARDS_ENV = "WMBENCH_SHARDS"
IMAGES_FILE = "images.u8"
META_FILE = "meta.json"

Index = Union[int, slice, Tensor, Sequence[int], np.ndarray]
Convert = Callable[[Tensor], Tensor]


def default_shard_dir() -> str:
    return os.path.abspath(os.path.expanduser(os.environ.get(SHARDS_ENV) or "~/.cache/wmbench/shards"))


class ImageArray:
    """Read-only, tensor-like images in a ``uint8`` shard (see the module docstring).

    Parameters
    ----------
    path: the shard's ``images.u8``.
    count, channels, size: the stored array's shape ``[count, channels, size, size]``.
    index: optional ``int64`` row map (this view's row ``i`` is stored row ``index[i]``).
    convert: optional per-batch conversion (channels and size) with the shape it produces.
    """

    dtype = torch.float32
    device = torch.device("cpu")

    def __init__(self, path: str, count: int, channels: int, size: int, *, index: Optional[Tensor] = None,
                 convert: Optional[Tuple[Convert, Tuple[int, int, int]]] = None, _shared: Optional[dict] = None) -> None:
        self.path = path
        self._stored = (int(count), int(channels), int(size), int(size))
        self._index = index
        self._convert = convert
        # one mapping of the file for this array and every view of it (each mapping would count
        # the same cached pages again in the process's resident size)
        self._shared = _shared if _shared is not None else {}

    # -- shape -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._index.shape[0]) if self._index is not None else self._stored[0]

    @property
    def shape(self) -> torch.Size:
        per_image = self._convert[1] if self._convert is not None else self._stored[1:]
        return torch.Size((len(self), *per_image))

    def dim(self) -> int:
        return 4

    def __repr__(self) -> str:
        return f"ImageArray({self.path!r}, shape={tuple(self.shape)})"

    def __getstate__(self):  # the file is mapped again in the receiving process
        state = dict(self.__dict__)
        state["_shared"] = {}
        return state

    # -- reading -----------------------------------------------------------------------------
    def _array(self) -> np.memmap:
        if "memmap" not in self._shared:
            self._shared["memmap"] = np.memmap(self.path, dtype=np.uint8, mode="r", shape=self._stored)
        return self._shared["memmap"]

    def _view(self, index: Optional[Tensor], convert) -> "ImageArray":
        return ImageArray(self.path, *self._stored[:3], index=index, convert=convert, _shared=self._shared)

    def _stored_rows(self, key: Index) -> Tuple[np.ndarray, bool]:
        """Stored row numbers for ``key`` and whether ``key`` picked a single image."""
        n = len(self)
        if isinstance(key, (int, np.integer)):
            i = int(key) + (n if int(key) < 0 else 0)
            if not 0 <= i < n:
                raise IndexError(f"index {key} is out of range for {n} images")
            rows, single = np.array([i]), True
        elif isinstance(key, slice):
            rows, single = np.arange(n)[key], False
        else:
            t = key if isinstance(key, Tensor) else torch.as_tensor(np.asarray(key))
            if t.dtype == torch.bool:
                if t.shape != (n,):
                    raise IndexError(f"a boolean mask must have shape [{n}], got {list(t.shape)}")
                t = torch.nonzero(t).flatten()
            t = t.to(torch.long).flatten()
            if t.numel() and (int(t.min()) < -n or int(t.max()) >= n):
                raise IndexError(f"indices out of range for {n} images")
            rows, single = torch.where(t < 0, t + n, t).numpy(), False
        if self._index is not None:
            rows = self._index.numpy()[rows]
        return rows, single

    def __getitem__(self, key: Index) -> Tensor:
        rows, single = self._stored_rows(key)
        if rows.size == 0:
            out = torch.empty((0, *self._stored[1:]), dtype=torch.float32)
        else:
            # numpy fancy indexing of a memmap reads just these rows (sorted reads: fewer seeks)
            order = np.argsort(rows, kind="stable")
            block = np.empty((rows.size, *self._stored[1:]), dtype=np.uint8)
            block[order] = self._array()[rows[order]]
            out = torch.from_numpy(block).to(torch.float32).div_(255.0)
        if self._convert is not None:
            out = self._convert[0](out)
        return out[0] if single else out

    def __iter__(self):
        raise TypeError("iterate an ImageArray in batches: x[start:stop]")

    # -- views -------------------------------------------------------------------------------
    def rows(self, key: Index) -> "ImageArray":
        """A view of the selected rows (no pixels read)."""
        rows, _ = self._stored_rows(key)
        return self._view(torch.from_numpy(np.ascontiguousarray(rows)), self._convert)

    def converted(self, convert: Convert, shape: Tuple[int, int, int]) -> "ImageArray":
        """A view whose batches pass through ``convert`` (producing images of ``shape``)."""
        if self._convert is not None:
            first = self._convert[0]
            convert, shape = (lambda x, f=first, g=convert: g(f(x))), shape
        return self._view(self._index, (convert, tuple(shape)))

    def same_store(self, other: "ImageArray") -> bool:
        return (isinstance(other, ImageArray) and other.path == self.path and other._stored == self._stored
                and other._convert is self._convert)

    def stored_index(self) -> Tensor:
        return self._index if self._index is not None else torch.arange(self._stored[0])

    def materialize(self, chunk: int = 4096) -> Tensor:
        """Every image of this view in memory, as one float32 tensor."""
        out = torch.empty(tuple(self.shape), dtype=torch.float32)
        for start in range(0, len(self), chunk):
            out[start:start + chunk] = self[start:start + chunk]
        return out


def concat(parts: Sequence[ImageArray]) -> ImageArray:
    """One view over several views of the same shard (rows in order)."""
    first = parts[0]
    if not all(first.same_store(p) for p in parts[1:]):
        raise ValueError("only views of one shard can be concatenated lazily")
    return first._view(torch.cat([p.stored_index() for p in parts]), first._convert)


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------
def shard_key(paths: Sequence[str], size: int, channels: int) -> str:
    """A key naming the decoded form of ``paths``: the files (with sizes and modification times),
    the image size and channels."""
    h = hashlib.sha256(f"v1|{size}|{channels}|{len(paths)}".encode())
    for p in paths:
        st = os.stat(p)
        h.update(f"|{p}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:24]


def find_shard(folder: str, key: str) -> Optional[ImageArray]:
    """The finished shard ``key`` under ``folder``, or None."""
    meta_path = os.path.join(folder, key, META_FILE)
    if not os.path.isfile(meta_path):
        return None
    with open(meta_path) as fh:
        meta = json.load(fh)
    path = os.path.join(folder, key, IMAGES_FILE)
    count, channels, size = meta["shape"][0], meta["shape"][1], meta["shape"][2]
    if not os.path.isfile(path) or os.path.getsize(path) != count * channels * size * size:
        return None
    return ImageArray(path, count, channels, size)


def write_shard(folder: str, key: str, paths: Sequence[str], decode: Callable[[str], np.ndarray], *,
                size: int, channels: int, workers: int = 2, chunk: Optional[int] = None) -> ImageArray:
    """Decode ``paths`` (``decode(path) -> uint8 [size, size, channels]``) into the shard ``key``.

    Chunks of ``chunk`` images are decoded by ``workers`` threads and written in place; the
    ``meta.json`` that marks the shard finished is written last (atomically)."""
    chunk = chunk or CHUNK
    target = os.path.join(folder, key)
    os.makedirs(target, exist_ok=True)
    path = os.path.join(target, IMAGES_FILE)
    count = len(paths)
    shape = (count, channels, size, size)
    array = np.memmap(path, dtype=np.uint8, mode="w+", shape=shape) if count else None
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for start in range(0, count, chunk):
            images: List[np.ndarray] = list(pool.map(decode, paths[start:start + chunk]))
            array[start:start + len(images)] = np.stack(images).transpose(0, 3, 1, 2)
    if array is not None:
        array.flush()
        del array
    else:
        open(path, "wb").close()
    tmp = os.path.join(target, f".{META_FILE}.{os.getpid()}.tmp")
    with open(tmp, "w") as fh:
        json.dump({"shape": list(shape), "dtype": "uint8", "layout": "NCHW", "files": count}, fh)
    os.replace(tmp, os.path.join(target, META_FILE))
    return ImageArray(path, count, channels, size)
