"""Cell records: one JSON file per cell, written atomically, read back, and found when finished.

Layout of a run folder::

    RUN/cells/CELL_ID.json     one record per cell (status, config, metrics, provenance)
    RUN/logs/CELL_ID.log       the cell's log

A record is written once, whole (:func:`wmbench.cache.atomic_write_text`): a reader never sees
half a file, and a run killed at any moment leaves either the old record or the new one. A cell
whose record says ``ok`` or ``skipped`` is finished and never recomputed (resume); ``failed``
and corrupt records are recomputed. The long results table built from the records is
:mod:`wmbench.results`.
"""
from __future__ import annotations

import json
import logging
import platform
import socket
import subprocess
import sys
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional

from wmbench.cache import atomic_write_text
from wmbench.cell import Cell
from wmbench.config import stable_hash
from wmbench.errors import UserError
from wmbench.version import __version__

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2


@lru_cache(maxsize=1)
def git_sha() -> str:
    """The git commit of the wmbench source tree, or "unknown" outside a checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        sha = out.stdout.strip()
        if out.returncode == 0 and sha:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def ray_node() -> str:
    """The id of the Ray node this process runs a task on; "" outside a Ray task (the serial
    executor, the driver writing the record of a cell whose worker died). Never imports Ray: a
    process that runs a Ray task has imported and initialised it already."""
    ray = sys.modules.get("ray")
    try:
        if ray is None or not ray.is_initialized():
            return ""
        context = ray.get_runtime_context()
        if context.worker.mode != ray.WORKER_MODE:
            return ""
        return str(context.get_node_id() or "")
    except Exception:  # noqa: BLE001 - a Ray without these calls: the record just lacks the node
        return ""


def provenance(device: str) -> Dict[str, Any]:
    """Where and with what a record was made; ``ray_node`` only when a Ray task made it."""
    import torch

    from wmbench.training import current_engine

    node = ray_node()
    return {
        "wmbench_version": __version__,
        "git_sha": git_sha(),
        "torch_version": torch.__version__,
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "engine": current_engine().as_dict(),
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "schema_version": SCHEMA_VERSION,
        **({"ray_node": node} if node else {}),
    }


def cell_path(run_dir: Path, cell_id: str) -> Path:
    return Path(run_dir) / "cells" / f"{cell_id}.json"


def write_cell(run_dir: Path, record: Mapping[str, Any]) -> Path:
    """Write a cell record atomically; a reader never sees half a file."""
    path = cell_path(run_dir, record["cell_id"])
    atomic_write_text(path, json.dumps(record, indent=1, sort_keys=True, default=str))
    return path


def read_cell(path: Path) -> Dict[str, Any]:
    """Read one cell record; a corrupt file raises :class:`UserError` naming it."""
    try:
        record = json.loads(Path(path).read_text())
        if not isinstance(record, dict) or "cell_id" not in record or "status" not in record:
            raise ValueError("missing cell_id/status")
        _check_shape(record)
        return record
    except (OSError, ValueError) as exc:
        raise UserError(f"corrupt result file {path}: {exc}; delete it and rerun `wmbench run` to recompute the cell") from None


def _check_shape(record: Mapping[str, Any]) -> None:
    """The parts of a record readers rely on: ``cell`` an object (its seed a whole number), ``metrics`` stages of
    ``{metric: number}``, ``curve`` a list of objects; ValueError naming the first that is not."""
    cell = record.get("cell", {})
    if not isinstance(cell, dict):
        raise ValueError("'cell' is not an object")
    if "seed" in cell and (isinstance(cell["seed"], bool) or not isinstance(cell["seed"], int)):
        raise ValueError(f"the cell's seed is {cell['seed']!r}, not a whole number")
    metrics = record.get("metrics") or {}
    if not isinstance(metrics, dict) or not all(isinstance(m, dict) for m in metrics.values()):
        raise ValueError("'metrics' is not an object of stages")
    for stage, values in metrics.items():
        for name, value in values.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"metric {stage}.{name} is {value!r}, not a number")
    if not isinstance(record.get("curve") or [], list) or not all(isinstance(p, dict) for p in record.get("curve") or []):
        raise ValueError("'curve' is not a list of objects")


def finished(run_dir: Path, cell_id: str) -> Optional[Dict[str, Any]]:
    """The record of a finished (ok or skipped) cell, or None (absent, failed or corrupt)."""
    path = cell_path(run_dir, cell_id)
    if not path.exists():
        return None
    try:
        record = read_cell(path)
    except UserError as exc:
        log.warning("%s; recomputing", exc)
        return None
    return record if record["status"] in ("ok", "skipped") else None


def iter_records(run_dir: Path) -> Iterable[Dict[str, Any]]:
    for path in sorted((Path(run_dir) / "cells").glob("*.json")):
        yield read_cell(path)


def new_record(cell: Cell, run_name: str, status: str, **fields: Any) -> Dict[str, Any]:
    """A record of ``cell`` with its identity (id, run, config, parameter hashes), ``status``
    and ``fields``."""
    return {
        "cell_id": cell.cell_id, "run": run_name, "cell": cell.as_dict(),
        "method_params_hash": stable_hash(cell.method_config, 12),
        "attack_params_hash": stable_hash(cell.attack_configs, 12),
        "status": status, **fields,
    }


def now() -> str:
    """The current UTC time as records store it (``started_at``)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
