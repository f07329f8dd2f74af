"""Every finished cell in a tracker researchers already use: MLflow or TensorBoard (``--track``).

Off by default; no server is needed — both write local files inside the run folder:

- ``mlflow``: a file store at ``<out>/mlruns`` (browse with ``MLFLOW_ALLOW_FILE_STORE=true mlflow ui
  --backend-store-uri <out>/mlruns``; MLflow 3 keeps file stores behind that switch), one experiment per run folder and one MLflow run per cell, named like the cell
  (``badnets × knockoff[soft] on fmnist seed 0``), with the cell's keys and variant as parameters,
  every metric as ``<stage>.<metric>`` (``attack.wsr``, ``victim.acc``, …) and the cell id, wmbench
  version and git sha as tags. Needs ``mlflow`` (``pip install mlflow-skinny`` is enough).
- ``tensorboard``: event files at ``<out>/tensorboard/<cell_id>/`` (browse with ``tensorboard
  --logdir <out>/tensorboard``), each metric a scalar ``<stage>/<metric>``, the cell's
  description and variant as text. Written with ``tensorboardX`` (installed with Ray Tune).

Each cell is logged once: a cell already in the tracker (a rerun, a resumed grid that reuses
finished cells) is skipped, and a cell that finished before the tracker saw it (a run killed
between the record and the log) is logged when the rerun reuses it. Failed cells are not logged
(they run again next time).
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any, Dict, Mapping, Protocol, Set

from wmbench.cell import describe
from wmbench.errors import UserError
from wmbench.records import git_sha
from wmbench.version import __version__

log = logging.getLogger(__name__)

TRACKERS = ("mlflow", "tensorboard")
CELL_TAG = "wmbench.cell_id"


class Tracker(Protocol):
    def log(self, record: Mapping[str, Any]) -> None:
        ...


def scalar_metrics(record: Mapping[str, Any]) -> Dict[str, float]:
    """``{"<stage>.<metric>": value}`` of a record's finite numeric metrics."""
    out: Dict[str, float] = {}
    for stage, values in (record.get("metrics") or {}).items():
        if not isinstance(values, Mapping):
            continue
        for metric, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                out[f"{stage}.{metric}"] = float(value)
    return out


def cell_params(record: Mapping[str, Any]) -> Dict[str, str]:
    cell = record["cell"]
    params = {k: str(cell.get(k, "")) for k in ("method", "attack", "labels", "dataset", "seed", "profile", "arch")}
    variant = record.get("variant") or {}
    params.update({"method_variant": str(variant.get("method", "")), "attack_variant": str(variant.get("attack", "")),
                   "sweep": ",".join(f"{k}={v}" for k, v in sorted((cell.get("sweep") or {}).items()))})
    return params


class MLflowTracker:
    """One MLflow run per cell in a file store under the run folder."""

    def __init__(self, run_dir: Path) -> None:
        import mlflow

        # MLflow 3 keeps its plain-file store in maintenance mode behind this switch; a file store
        # is what "no server, nothing to install beyond mlflow-skinny" needs (a database store
        # would need SQLAlchemy and a migration tool).
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        store = (Path(run_dir) / "mlruns").absolute()
        store.mkdir(parents=True, exist_ok=True)
        self.client = mlflow.tracking.MlflowClient(tracking_uri=store.as_uri())
        name = f"wmbench/{Path(run_dir).name}"
        found = self.client.get_experiment_by_name(name)
        self.experiment = found.experiment_id if found else self.client.create_experiment(name)
        runs = self.client.search_runs([self.experiment], max_results=50000)
        self.tracked: Set[str] = {r.data.tags.get(CELL_TAG, "") for r in runs}

    def log(self, record: Mapping[str, Any]) -> None:
        if record.get("status") != "ok" or record["cell_id"] in self.tracked:
            return
        from mlflow.entities import Metric, Param, RunTag

        run = self.client.create_run(self.experiment, run_name=describe(record["cell"]),
                                     tags={CELL_TAG: record["cell_id"], "wmbench.version": __version__,
                                           "wmbench.git_sha": git_sha()})
        stamp = 0
        self.client.log_batch(
            run.info.run_id,
            metrics=[Metric(k, v, stamp, 0) for k, v in sorted(scalar_metrics(record).items())],
            params=[Param(k, v) for k, v in cell_params(record).items()],
            tags=[RunTag("wmbench.wall_s", f"{float(record.get('wall_s', 0)):.1f}")])
        self.client.set_terminated(run.info.run_id)
        self.tracked.add(record["cell_id"])


class TensorBoardTracker:
    """One event-file folder per cell under ``<out>/tensorboard``."""

    def __init__(self, run_dir: Path) -> None:
        from tensorboardX import SummaryWriter

        self._writer = SummaryWriter
        self.folder = Path(run_dir) / "tensorboard"

    def log(self, record: Mapping[str, Any]) -> None:
        target = self.folder / record["cell_id"]
        if record.get("status") != "ok" or target.exists():
            return
        partial = self.folder / f".{record['cell_id']}.partial"
        shutil.rmtree(partial, ignore_errors=True)  # left by a killed run
        writer = self._writer(logdir=str(partial))
        try:
            for key, value in sorted(scalar_metrics(record).items()):
                writer.add_scalar(key.replace(".", "/", 1), value, 0)
            writer.add_text("cell", describe(record["cell"]), 0)
            writer.add_text("params", json.dumps(cell_params(record), sort_keys=True), 0)
        finally:
            writer.close()
        partial.rename(target)  # complete or absent: a killed run logs the cell again next time


def check_tracker(kind: str) -> None:
    """Raise :class:`UserError` now (before anything runs or is written) when ``kind`` is unknown
    or its library is missing."""
    modules = {"mlflow": ("mlflow", "`pip install mlflow-skinny`"),
               "tensorboard": ("tensorboardX", "`pip install tensorboardX`")}
    if kind not in modules:
        raise UserError(f"unknown tracker {kind!r}; accepted: {', '.join(TRACKERS)}")
    import importlib.util

    module, how = modules[kind]
    if importlib.util.find_spec(module) is None:
        raise UserError(f"--track {kind} needs the {module} package; install it with {how}")


def tracking_callback(kind: str, run_dir: Path):
    """An ``on_record`` callback logging each finished cell to ``kind``; the tracker is opened at
    the first record (so a grid refused at planning writes nothing). A tracker error is logged,
    never fatal to the grid."""
    check_tracker(kind)
    state: Dict[str, Tracker] = {}

    def on_record(record: Mapping[str, Any]) -> None:
        try:
            if "tracker" not in state:
                state["tracker"] = make_tracker(kind, run_dir)
            state["tracker"].log(record)
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - the cell's record is safe; only its log is missing
            log.warning("could not log cell %s to %s: %s", record.get("cell_id"), kind, exc)

    return on_record


def make_tracker(kind: str, run_dir: Path) -> Tracker:
    """The tracker ``kind`` (one of :data:`TRACKERS`) writing under ``run_dir``; an unknown kind or a
    missing library raises :class:`UserError` (:func:`check_tracker`)."""
    check_tracker(kind)
    return MLflowTracker(run_dir) if kind == "mlflow" else TensorBoardTracker(run_dir)
