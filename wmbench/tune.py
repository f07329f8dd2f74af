"""``wmbench tune``: a Ray Tune grid search whose trials run ordinary cells.

One trial per point of the spec's ``sweeps`` (``KEY=V1,V2,...``, the ``--sweep`` syntax; the
command line's ``--grid``), each running its methods × attacks × datasets × seeds cells with the
same task graph and cell function as ``wmbench run`` (:mod:`wmbench.tasks`) into the same run
folder (``RUN/cells``, resumable; Tune's own files go to ``RUN/tune/``). The trials report the
mean metrics of their cells (:func:`trial_metrics`).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import sys
import time
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import pandas as pd

from wmbench.cache import atomic_write_text
from wmbench.config import canonical_json
from wmbench.errors import UserError
from wmbench.executor import RayBackend, SerialBackend
from wmbench.plan import plan_run
from wmbench.results import consolidate
from wmbench.runner import start_run
from wmbench.spec import GridSpec, expand_sweeps
from wmbench.tasks import build_graph


def tune_axes(grid: Sequence[str]) -> List[Tuple[str, List[Any]]]:
    """``["methods.deeptracer.lambda3=0.001,0.01"]`` -> ``[("methods.deeptracer.lambda3", [0.001, 0.01])]``
    (parsed by :func:`wmbench.spec.expand_sweeps`, the same code as ``--sweep``)."""
    axes: List[Tuple[str, List[Any]]] = []
    for item in grid:
        key = item.partition("=")[0].strip()
        values = [combo[key] for combo in expand_sweeps([item])]
        if any(key == k for k, _ in axes):
            raise UserError(f"--grid {key} given twice; give all its values in one --grid {key}=v1,v2,...")
        axes.append((key, values))
    return axes


_TUNE_METRICS = (("victim", "acc"), ("victim", "wsr"), ("attack", "acc"), ("attack", "fidelity"), ("attack", "wsr"),
                 ("attack", "detected"))


def trial_metrics(records: Sequence[Mapping[str, Any]]) -> Dict[str, float]:
    """Means over a trial's cells: ``victim_acc``, ``victim_wsr``, ``attack_acc``, ``attack_wsr``, ..."""
    out: Dict[str, float] = {"cells": float(len(records)),
                             "failed": float(sum(r.get("status") == "failed" for r in records))}
    for stage, metric in _TUNE_METRICS:
        values = [float(r["metrics"][stage][metric]) for r in records
                  if r.get("status") == "ok" and metric in (r.get("metrics") or {}).get(stage, {})]
        values = [v for v in values if v == v]
        out[f"{stage}_{metric}"] = sum(values) / len(values) if values else float("nan")
    return out


def _tune_trial(config: Dict[str, Any], cells_by_combo: Dict[str, List[Dict[str, Any]]], axes: List[str],
                opts: Dict[str, Any], retries: int, threads: int) -> None:
    """One Tune trial: the cells of one grid point, run like ``--executor serial`` would."""
    import torch
    from ray import tune as ray_tune

    torch.set_num_threads(max(1, threads))
    if opts.get("device", "auto") == "auto":
        import ray

        if not ray.get_gpu_ids():
            opts = {**opts, "device": "cpu"}
    combo = {key: config[key] for key in axes}
    cells = cells_by_combo[canonical_json(combo)]
    graph = build_graph(cells, opts["cache_dir"])
    records = [result for task, result in SerialBackend().run(graph, opts, retries) if task.is_cell]
    ray_tune.report(trial_metrics(records))


def _cells_by_combo(planned: Sequence[Any]) -> Dict[str, List[Dict[str, Any]]]:
    """The runnable cells of a plan grouped by grid point (the canonical JSON of their sweep)."""
    groups: Dict[str, List[Dict[str, Any]]] = {}
    seen = set()
    for p in planned:
        if p.skipped_reason or p.cell.cell_id in seen:
            continue
        seen.add(p.cell.cell_id)
        groups.setdefault(canonical_json(dict(p.cell.sweep)), []).append(p.cell.as_dict())
    return groups


def tune(spec: GridSpec) -> Tuple[pd.DataFrame, pd.DataFrame]:
    """A Ray Tune grid search over ``spec.sweeps`` (see the module docstring). Returns
    ``(trials, frame)``: one row per trial with its grid values and mean metrics, and the run's
    long results table. Tune always runs on Ray (``spec.executor`` is not used)."""
    if not spec.sweeps:
        raise UserError("wmbench tune needs at least one --grid KEY=V1,V2,... (e.g. methods.deeptracer.lambda3=0.001,0.01)")
    axes = tune_axes(spec.sweeps)
    run_plan = plan_run(spec.replace(progress=False), executor="tune")
    if importlib.util.find_spec("ray") is None:
        raise UserError("wmbench tune needs Ray Tune: pip install 'wmbench[ray]'")
    backend = RayBackend(address=spec.ray_address, cpus_per_cell=spec.cpus_per_cell, gpus_per_cell=spec.gpus_per_cell,
                         device=spec.device, plugins=spec.plugins)
    start_run(run_plan)
    opts = dataclasses.asdict(run_plan.opts)
    backend.start()
    try:
        from ray import tune as ray_tune

        trainable = ray_tune.with_parameters(_tune_trial, cells_by_combo=_cells_by_combo(run_plan.planned),
                                             axes=[k for k, _ in axes], opts=opts, retries=spec.retries,
                                             threads=max(1, int(spec.cpus_per_cell)))
        trainable = ray_tune.with_resources(trainable, {"cpu": backend.cpus_per_cell, "gpu": backend.gpus})
        storage = run_plan.run_dir / "tune"
        storage.mkdir(parents=True, exist_ok=True)
        name = "tune-" + time.strftime("%Y%m%d-%H%M%S")
        show = spec.progress is True or (spec.progress is None and sys.stderr.isatty())
        tuner = ray_tune.Tuner(
            trainable,
            param_space={key: ray_tune.grid_search(values) for key, values in axes},
            tune_config=ray_tune.TuneConfig(num_samples=1),
            run_config=ray_tune.RunConfig(name=name, storage_path=str(storage), verbose=1 if show else 0),
        )
        rows = []
        for result in tuner.fit():
            row = {key: (result.config or {}).get(key) for key, _ in axes}
            row.update({k: v for k, v in (result.metrics or {}).items() if k in trial_metrics([])})
            if result.error is not None:
                row["error"] = f"{type(result.error).__name__}: {result.error}"
            rows.append(row)
        trials = pd.DataFrame(rows)
        if not trials.empty:
            trials = trials.sort_values([k for k, _ in axes]).reset_index(drop=True)
    finally:
        backend.stop()
    frame = consolidate(run_plan.run_dir)
    atomic_write_text(run_plan.run_dir / "tune" / f"{name}.csv", trials.to_csv(index=False))
    ids = {p.cell.cell_id for p in run_plan.planned}
    return trials, frame[frame["cell_id"].isin(ids)].reset_index(drop=True)
