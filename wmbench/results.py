"""Results store: one JSON record per cell, consolidated into a long/tidy table.

Layout of a run folder::

    RUN/cells/CELL_ID.json     one record per cell (status, config, metrics, provenance)
    RUN/logs/CELL_ID.log       the cell's log
    RUN/artifacts/...          cached models and key sets (:mod:`wmbench.cache`)
    RUN/results.parquet, RUN/results.csv   the long table, rewritten after every run

The long table has one row per (cell, stage, metric) with the columns in :data:`COLUMNS`.
Fractions (acc, wsr, fidelity, ci) are stored in [0, 1]. ``load(run_dir)`` is the API.
"""
from __future__ import annotations

import json
import logging
import platform
import socket
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional

import pandas as pd

from wmbench import __version__
from wmbench.cache import atomic_write_bytes, atomic_write_text
from wmbench.errors import UserError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
KEY_COLUMNS = ["run", "cell_id", "method", "attack", "labels", "dataset", "model", "seed", "profile", "sweep"]
COLUMNS = KEY_COLUMNS + [
    "stage", "step_name", "step", "metric", "value", "status", "skipped_reason", "method_params_hash", "attack_params_hash",
    "method_variant", "attack_variant", "wmbench_version", "git_sha", "torch_version", "device", "host", "started_at", "wall_s", "queries",
    "schema_version",
]


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


def provenance(device: str) -> Dict[str, Any]:
    import torch

    return {
        "wmbench_version": __version__,
        "git_sha": git_sha(),
        "torch_version": torch.__version__,
        "device": device,
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "schema_version": SCHEMA_VERSION,
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
        return record
    except (OSError, ValueError) as exc:
        raise UserError(f"corrupt result file {path}: {exc}; delete it and rerun `wmbench run` to recompute the cell") from None


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


def _variant(record: Mapping[str, Any]) -> Dict[str, str]:
    """The record's ``variant`` (:func:`wmbench.runner.cell_variant`); records written before it
    existed get it computed from their cell against today's profile defaults (empty when the
    cell's method or attack is not registered in this process)."""
    if "variant" in record:
        return dict(record["variant"] or {})
    if record.get("status") != "ok" or not record.get("cell"):
        return {}
    from wmbench.runner import Cell, cell_variant  # runner imports this module

    try:
        return cell_variant(Cell.from_dict(record["cell"]))
    except Exception:  # noqa: BLE001 - an unknown plugin or an old cell layout: no label
        return {}


def record_rows(record: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """The long rows of one cell record."""
    cell = record.get("cell", {})
    prov = record.get("provenance", {})
    variant = _variant(record)
    base = {
        "run": record.get("run", ""),
        "cell_id": record["cell_id"],
        "method": cell.get("method", ""),
        "attack": cell.get("attack", ""),
        "labels": cell.get("labels", ""),
        "dataset": cell.get("dataset", ""),
        "model": cell.get("arch", ""),
        "seed": cell.get("seed", -1),
        "profile": cell.get("profile", ""),
        "sweep": ",".join(f"{k}={v}" for k, v in sorted((cell.get("sweep") or {}).items())),
        "status": record["status"],
        "skipped_reason": record.get("skipped_reason", ""),
        "method_params_hash": record.get("method_params_hash", ""),
        "attack_params_hash": record.get("attack_params_hash", ""),
        # what the cell changes against its profile's defaults (wmbench.runner.cell_variant)
        "method_variant": variant.get("method", ""),
        "attack_variant": variant.get("attack", ""),
        "started_at": record.get("started_at", ""),
        "wall_s": record.get("wall_s", float("nan")),
        "queries": record.get("queries", 0),
        **{k: prov.get(k, "") for k in ("wmbench_version", "git_sha", "torch_version", "device", "host")},
        "schema_version": prov.get("schema_version", SCHEMA_VERSION),
    }
    metrics = record.get("metrics") or {}
    none = {"step_name": "", "step": float("nan")}
    if not metrics:
        return [{**base, "stage": "", **none, "metric": "status", "value": float("nan")}]
    rows = [
        {**base, "stage": stage, **none, "metric": metric, "value": float(value)}
        for stage, values in metrics.items()
        for metric, value in values.items()
    ]
    for point in record.get("curve") or []:
        step = {"step_name": point["step_name"], "step": float(point["step"])}
        rows += [{**base, "stage": "curve", **step, "metric": k, "value": float(v)}
                 for k, v in point.items() if k not in ("step_name", "step")]
    return rows


def to_frame(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    rows = [row for record in records for row in record_rows(record)]
    frame = pd.DataFrame(rows, columns=COLUMNS)
    frame["value"] = frame["value"].astype(float)
    frame["seed"] = frame["seed"].astype(int)
    frame["step"] = frame["step"].astype(float)
    return frame


def load(run_dir: str | Path) -> pd.DataFrame:
    """The long results table of a run folder (built from its cell records)."""
    run_dir = Path(run_dir)
    if not (run_dir / "cells").is_dir():
        raise UserError(f"{run_dir} is not a wmbench run folder (no cells/); give the --out folder of `wmbench run`")
    return to_frame(iter_records(run_dir))


def consolidate(run_dir: Path) -> pd.DataFrame:
    """Rewrite ``results.parquet`` and ``results.csv`` from the cell records; return the table."""
    frame = load(run_dir)
    import io

    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    atomic_write_bytes(Path(run_dir) / "results.parquet", buf.getvalue())
    atomic_write_text(Path(run_dir) / "results.csv", frame.to_csv(index=False))
    return frame


def wide(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per cell with ``<stage>_<metric>`` columns (convenience view)."""
    ok = frame[(frame["status"] == "ok") & (frame["stage"] != "curve")]
    if ok.empty:
        return pd.DataFrame()
    table = ok.pivot_table(index=KEY_COLUMNS, columns=["stage", "metric"], values="value", aggfunc="first")
    table.columns = [f"{s}_{m}" for s, m in table.columns]
    return table.reset_index()
