"""Content-addressed artifact store.

Each artifact (a benign model, a watermarked victim with its key set, a stolen model) is
stored once under the hash of everything that determines it, and reused by every cell.

Layout: ``ROOT/KIND/KEY.pt`` (a dict of tensors, read with ``torch.load(weights_only=True)``)
and ``ROOT/KIND/KEY.json`` (spec, metadata, the SHA-256 of the ``.pt`` file and ``build_s``, the
seconds the build took). Both are written atomically (temp file + ``os.replace``); the JSON is
written last and is the commit marker. On load the checksum is verified; a missing, truncated or
corrupt file is logged and rebuilt, never used. A per-key ``flock`` keeps two processes from
building the same artifact.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Tuple

import torch
from torch import Tensor

from wmbench.version import __version__
from wmbench.config import canonical_json, stable_hash
from wmbench.errors import CorruptArtifact

log = logging.getLogger(__name__)

Tensors = Dict[str, Tensor]
Meta = Dict[str, Any]


def _umask() -> int:
    """The process umask, read without changing it where Linux exposes it (threads stay safe)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, rename).

    The file gets the permissions of a plain ``open(path, "w")`` (0o666 minus the umask), not
    ``mkstemp``'s private 0o600: results and reports are meant to be read by others."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created with its folder if missing) across
    processes; used for artifacts and for result cells."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class ArtifactStore:
    """Artifacts under ``root`` keyed by ``(kind, spec)``; see the module docstring."""

    def __init__(self, root: os.PathLike | str):
        self.root = Path(root)
        self.hits = 0
        self.builds = 0

    def key(self, spec: Mapping[str, Any]) -> str:
        return stable_hash(spec, length=24)

    def paths(self, kind: str, key: str) -> Tuple[Path, Path]:
        base = self.root / kind / key
        return base.with_suffix(".pt"), base.with_suffix(".json")

    def _lock(self, kind: str, key: str):
        return file_lock(self.root / kind / f"{key}.lock")

    def load(self, kind: str, spec: Mapping[str, Any]) -> Optional[Tuple[Tensors, Meta]]:
        """Return ``(tensors, meta)`` if a valid artifact exists, None if absent.

        Raises :class:`CorruptArtifact` when the files exist but fail verification.
        """
        key = self.key(spec)
        pt, js = self.paths(kind, key)
        if not js.exists():
            return None
        try:
            record = json.loads(js.read_text())
        except (OSError, ValueError) as exc:
            raise CorruptArtifact(f"{js}: unreadable metadata ({exc})") from None
        if not isinstance(record, dict):
            raise CorruptArtifact(f"{js}: metadata is not a JSON object")
        if not pt.exists():
            raise CorruptArtifact(f"{pt}: missing weights file")
        digest = _sha256(pt)
        if digest != record.get("sha256"):
            raise CorruptArtifact(f"{pt}: checksum mismatch (file truncated or modified)")
        try:
            tensors = torch.load(pt, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CorruptArtifact(f"{pt}: cannot be loaded ({exc})") from None
        return tensors, record.get("meta", {})

    def save(self, kind: str, spec: Mapping[str, Any], tensors: Tensors, meta: Optional[Meta] = None,
             build_s: Optional[float] = None) -> str:
        """Write the artifact; ``build_s`` (the seconds its build took) is recorded for timing reports."""
        key = self.key(spec)
        pt, js = self.paths(kind, key)
        import io

        buf = io.BytesIO()
        torch.save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, buf)
        atomic_write_bytes(pt, buf.getvalue())
        record = {
            "kind": kind,
            "key": key,
            "spec": json.loads(canonical_json(spec)),
            "meta": meta or {},
            "sha256": _sha256(pt),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "wmbench_version": __version__,
            "torch_threads": torch.get_num_threads(),  # CPU results can differ in the last bits across counts
        }
        if build_s is not None:
            record["build_s"] = round(build_s, 3)
        atomic_write_text(js, json.dumps(record, indent=1, sort_keys=True))
        return key

    def build(self, kind: str, spec: Mapping[str, Any], build: Callable[[], Tuple[Tensors, Meta]]
              ) -> Tuple[Tensors, Meta]:
        """Build the artifact unconditionally, save it with the seconds the build took and return it."""
        started = time.perf_counter()
        tensors, meta = build()
        self.save(kind, spec, tensors, meta, build_s=time.perf_counter() - started)
        return tensors, meta

    def get_or_build(
        self, kind: str, spec: Mapping[str, Any], build: Callable[[], Tuple[Tensors, Meta]]
    ) -> Tuple[Tensors, Meta]:
        """Load the artifact, or build it (once, under a lock), save it and return it."""
        found = self._try_load(kind, spec)
        if found is not None:
            self.hits += 1
            return found
        key = self.key(spec)
        with self._lock(kind, key):
            found = self._try_load(kind, spec)  # another process may have built it meanwhile
            if found is not None:
                self.hits += 1
                return found
            built = self.build(kind, spec, build)
            self.builds += 1
            return built

    def _try_load(self, kind: str, spec: Mapping[str, Any]) -> Optional[Tuple[Tensors, Meta]]:
        try:
            return self.load(kind, spec)
        except CorruptArtifact as exc:
            log.warning("corrupt artifact, rebuilding: %s", exc)
            return None
