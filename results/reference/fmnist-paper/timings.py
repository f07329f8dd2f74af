"""Wall and task time per stage of the paper-profile run (issue 13), from the run folder alone.

Usage: ``python results/reference/fmnist-paper/timings.py RUN_DIR OUT_CSV`` (run.sh calls it).

Every task of the run is timed from what the run folder keeps: an artifact task (benign model,
victim, filtered keys with DeepTracer's surrogate) by its store record (``build_s`` seconds ending
at ``created_at``), a cell task by its record in ``cells/`` (``wall_s`` seconds from
``started_at``). Work lost to a cut (an unfinished build or cell, redone on resume) is not counted.

Tasks are assigned to the stage of ``run.sh`` that first needed them (:func:`stage_of`: by the
DeepTracer config, the sweep and the training epochs). A stage's **wall time** is the length of
the union of its tasks' intervals — the time during which at least one of its tasks ran, which
leaves out the hours between sessions when the run was cut and resumed — and its **task time**
the sum of its tasks' durations (a task ran on one core beside another task, or on both when it
ran alone: BENCHMARKS.md, "spare CPUs").
"""
from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from wmbench.records import iter_records

PAPER_EPOCHS = 100
STAGES = ("main", "pools", "budget", "diagnostic")

#: The store kinds built by a task of their own (this run has no attack chains, whose shared first
#: stages are ``stolen`` tasks too); other records (a cell's stolen copy, DeepTracer's surrogate
#: inside the key filter) are timed within the task that built them.
TASK_KINDS = ("benign", "victim", "filtered_keys")


def stage_of(method_config: dict, sweep: str, epochs: int) -> str:
    """The stage of ``run.sh`` that first needed a task: the diagnostic is the only one that fixes
    DeepTracer's source classes, the pool study the one that sweeps ``query_set``, and the budget
    grid the one that sweeps epochs (its models train for 10 or 30)."""
    if (method_config or {}).get("sources"):
        return "diagnostic"
    if "query_set" in sweep:
        return "pools"
    return "budget" if "epochs" in sweep or epochs != PAPER_EPOCHS else "main"


def _utc(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()


def artifact_tasks(run_dir: Path) -> list[dict]:
    rows = []
    for path in sorted((run_dir / "artifacts").glob("*/*.json")):
        record = json.loads(path.read_text())
        if record["kind"] not in TASK_KINDS:  # built inside another task (a cell's stolen copy, the surrogate)
            continue
        epochs = record["spec"]["train"]["epochs"]
        end = _utc(record["created_at"])
        rows.append({"stage": stage_of(record["spec"].get("method_config"), "", epochs), "task": record["kind"],
                     "method": record["spec"].get("method", ""), "detail": f"train.epochs={epochs}",
                     "start": end - record["build_s"], "end": end})
    return rows


def cell_tasks(run_dir: Path) -> list[dict]:
    rows = []
    for record in iter_records(run_dir):
        if record["status"] != "ok":
            continue
        cell, start = record["cell"], _utc(record["started_at"])
        sweep = ",".join(f"{k}={v}" for k, v in (cell.get("sweep") or {}).items())
        stage = stage_of(cell.get("method_config"), sweep, cell["train"]["epochs"])
        rows.append({"stage": stage, "task": f"{cell['attack']} {cell.get('labels') or ''}".strip(),
                     "method": cell["method"], "detail": sweep, "start": start, "end": start + record["wall_s"]})
    return rows


def union_length(intervals: list[tuple[float, float]]) -> float:
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def stage_table(tasks: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for stage in STAGES:
        part = tasks[tasks["stage"] == stage]
        if part.empty:
            continue
        rows.append({"stage": stage, "tasks": len(part),
                     "wall_h": union_length(list(zip(part["start"], part["end"]))) / 3600,
                     "task_h": (part["end"] - part["start"]).sum() / 3600})
    return pd.DataFrame(rows)


def main(run_dir: str, out_csv: str) -> None:
    tasks = pd.DataFrame(artifact_tasks(Path(run_dir)) + cell_tasks(Path(run_dir)))
    tasks["minutes"] = (tasks["end"] - tasks["start"]) / 60
    tasks.sort_values(["stage", "start"]).drop(columns=["start", "end"]).to_csv(out_csv, index=False,
                                                                                float_format="%.1f")
    print(stage_table(tasks).to_markdown(index=False, floatfmt=".2f"))


if __name__ == "__main__":
    main(*sys.argv[1:3])
