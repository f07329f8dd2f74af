"""The long results table: a run folder's cell records (:mod:`wmbench.records`) as one tidy frame.

Files of a run folder this module writes::

    RUN/results.parquet, RUN/results.csv   the long table, rewritten after every run

The long table has one row per (cell, stage, metric) with the columns in :data:`COLUMNS`.
Fractions (acc, wsr, fidelity, ci) are stored in [0, 1]. ``load(run_dir)`` is the API.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping

import pandas as pd

from wmbench.cache import atomic_write_bytes, atomic_write_text
from wmbench.cell import Cell, cell_variant
from wmbench.errors import UserError
from wmbench.records import SCHEMA_VERSION, iter_records

KEY_COLUMNS = ["run", "cell_id", "method", "attack", "labels", "dataset", "model", "seed", "profile", "sweep"]
COLUMNS = KEY_COLUMNS + [
    "stage", "step_name", "step", "metric", "value", "status", "skipped_reason", "method_params_hash", "attack_params_hash",
    "method_variant", "attack_variant", "wmbench_version", "git_sha", "torch_version", "device", "host", "started_at", "wall_s", "queries",
    "schema_version",
]


def _variant(record: Mapping[str, Any]) -> Dict[str, str]:
    """The record's ``variant`` (:func:`wmbench.cell.cell_variant`); records written before it
    existed get it computed from their cell against today's profile defaults (empty when the
    cell's method or attack is not registered in this process)."""
    if "variant" in record:
        return dict(record["variant"] or {})
    if record.get("status") != "ok" or not record.get("cell"):
        return {}
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
        # what the cell changes against its profile's defaults (wmbench.cell.cell_variant)
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
    """The long results table of a run folder: built from its cell records, or, in a folder that
    holds only the table (a committed reference report: ``results.csv``), read from it."""
    run_dir = Path(run_dir)
    if (run_dir / "cells").is_dir():
        return to_frame(iter_records(run_dir))
    table = run_dir / "results.csv"
    if table.is_file():
        return read_table(table)
    raise UserError(f"{run_dir} is not a wmbench run folder (no cells/ nor results.csv); "
                    "give the --out folder of `wmbench run`")


def read_table(path: Path) -> pd.DataFrame:
    """A long table written by :func:`consolidate` (``results.csv``); a file that is not one
    raises :class:`UserError` naming what is missing."""
    try:
        frame = pd.read_csv(path, keep_default_na=False, na_values=[""], low_memory=False)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read the results table {path}: {exc}") from None
    missing = [c for c in ("cell_id", "stage", "metric", "value", "status") if c not in frame.columns]
    if missing:
        raise UserError(f"{path} is not a wmbench results table (no {', '.join(missing)} column)")
    for column in COLUMNS:
        if column not in frame.columns:
            frame[column] = float("nan") if column in ("value", "step", "wall_s") else ""
    text = [c for c in COLUMNS if c not in ("value", "step", "wall_s", "seed", "queries", "schema_version")]
    frame[text] = frame[text].fillna("").astype(str)
    frame["value"] = pd.to_numeric(frame["value"], errors="coerce")
    frame["step"] = pd.to_numeric(frame["step"], errors="coerce")
    try:
        frame["seed"] = frame["seed"].astype(int)
    except (TypeError, ValueError):
        raise UserError(f"{path}: column seed must hold whole numbers, got {frame['seed'].iloc[0]!r}") from None
    return frame[COLUMNS + [c for c in frame.columns if c not in COLUMNS]]


def consolidate(run_dir: Path) -> pd.DataFrame:
    """Rewrite ``results.parquet`` and ``results.csv`` from the cell records; return the table."""
    frame = load(run_dir)
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
