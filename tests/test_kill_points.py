"""Processes killed at chosen points of a grid, and a cell that runs out of memory (issue 16
item 2): nothing finished is lost or redone, nothing is duplicated, and rerunning the same
command completes the grid.

Each kill point (``tests/plugins/wmb_faults.py``) SIGKILLs one process once, the way the kernel's
OOM killer or a lost machine does: no ``finally`` block, no atexit, no flush. The points cover the
driver (``wmbench run`` itself) and Ray workers, mid-training and at every kind of write: a
tensors file or a record half written (temporary file synced, not renamed), a tensors file
complete without its JSON commit file, a record complete whose result never reached the driver,
the run manifest and the results tables half written, and the driver dying while workers run.

After the killed run (and, for a driver kill, once the folder is quiet) the test snapshots the
finished records, reruns the command without the fault and counts, against the records, the
rows of ``results.csv`` and ``results.parquet``: **lost** (a row the records call for that is
missing) and **duplicated** (a row present more than once). Both must be 0, every planned cell
must have exactly one ``ok`` record, and records finished before the rerun must be untouched.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Dict, List, Tuple

import pandas as pd
import pytest

from conftest import PLUGIN_DIR, wait_until_quiet
from wmbench.results import record_rows

# 2 seeds x BadNets x (none, Knockoff soft, Knockoff hard): 6 cells, 2 benign and 2 victim builds.
GRID = ["--methods", "badnets", "--attacks", "none,knockoff", "--datasets", "synthetic", "--seeds", "0,1",
        "--profile", "smoke", "--plugin", "wmb_faults", "--no-progress",
        "--set", "datasets.synthetic.train_size=300", "--set", "datasets.synthetic.test_size=100",
        "--set", "train.epochs=1", "--set", "attacks.knockoff.budget=200"]
N_CELLS = 6
ROW_KEY = ["cell_id", "stage", "step_name", "step", "metric"]

# (id, executor, fault spec, extra arguments, what the killed run does: "killed" = the driver
# died; "completes" = a worker died and Ray's retry finished the grid; "fails" = a worker died
# with no retry left, so the cells that needed its task are recorded failed and the rest completes)
POINTS: List[Tuple[str, str, str, List[str], str]] = [
    ("serial-mid-training", "serial", "role=any,at=step,n=3", [], "killed"),
    ("serial-artifact-torn", "serial", "role=any,at=write,path=*/artifacts/benign/*.pt,phase=torn", [], "killed"),
    ("serial-artifact-uncommitted", "serial", "role=any,at=write,path=*/artifacts/victim/*.pt,phase=after", [],
     "killed"),
    ("serial-record-torn", "serial", "role=any,at=write,path=*/cells/*.json,phase=torn,n=2", [], "killed"),
    ("serial-record-unreported", "serial", "role=any,at=write,path=*/cells/*.json,phase=after,n=2", [], "killed"),
    ("driver-manifest-torn", "ray", "role=driver,at=write,path=*/run.json,phase=torn", [], "killed"),
    ("driver-mid-grid", "ray", "role=driver,at=finished,n=3", [], "killed"),
    ("driver-tables-torn", "ray", "role=driver,at=write,path=*/results.csv,phase=torn", [], "killed"),
    ("worker-mid-training", "ray", "role=worker,at=step,n=2,after_cells=1", [], "completes"),
    ("worker-artifact-torn", "ray", "role=worker,at=write,path=*/artifacts/victim/*.pt,phase=torn", [],
     "completes"),
    ("worker-record-unreported", "ray", "role=worker,at=write,path=*/cells/*.json,phase=after", [], "completes"),
    ("worker-cell-no-retry-left", "ray", "role=worker,at=write,path=*/cells/*.json,phase=torn", ["--retries", "0"],
     "fails"),
    ("worker-artifact-no-retry-left", "ray", "role=worker,at=write,path=*/artifacts/victim/*.pt,phase=torn",
     ["--retries", "0"], "fails"),
]
# a lost victim fails the three cells that need it (none, Knockoff soft and hard), a lost cell itself
FAILED_CELLS = {"worker-cell-no-retry-left": 1, "worker-artifact-no-retry-left": 3}
WORKER_DIED = "WorkerCrashedError: The worker died unexpectedly while executing this task"


def _env(**extra: str) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WMB_FAULT")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [str(PLUGIN_DIR)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    env.update(extra)
    return env


def _argv(out: Path, executor: str, *extra: str) -> List[str]:
    return [sys.executable, "-m", "wmbench.cli", "run", *GRID, "--executor", executor, "--out", str(out), *extra]


def _records(out: Path) -> Dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (out / "cells").glob("*.json")}


def _run_killed(argv: List[str], env: Dict[str, str], timeout: float = 300) -> Tuple[int, int, str]:
    """Run ``argv`` in its own session; return its pid, exit code and stderr."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        _, err = proc.communicate(timeout=timeout)
    finally:
        try:  # whatever the dead driver started (Ray's processes) goes with it
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return proc.pid, proc.returncode, err


def _key(values) -> tuple:
    """A row's key with NaN (no curve step) as "", so equal keys compare equal."""
    return tuple("" if isinstance(v, float) and v != v else v for v in values)


def lost_and_duplicated(out: Path, table: pd.DataFrame) -> Tuple[int, int]:
    """Rows the records call for that ``table`` lacks, and rows ``table`` holds more than once."""
    expected = Counter(_key(row[k] for k in ROW_KEY) for r in _records(out).values() for row in record_rows(r))
    present = Counter(_key(row) for row in table[ROW_KEY].itertuples(index=False, name=None))
    lost = sum((expected - present).values())
    duplicated = sum(n - 1 for n in present.values() if n > 1)
    return lost, duplicated


@pytest.mark.parametrize("point_id,executor,fault,extra,outcome", [
    pytest.param(*point, id=point[0], marks=[pytest.mark.ray, pytest.mark.slow] if point[1] == "ray" else [])
    for point in POINTS])
def test_a_kill_point_loses_and_duplicates_nothing(tmp_path, point_id, executor, fault, extra, outcome):
    if executor == "ray":
        pytest.importorskip("ray")
    out, mark = tmp_path / "run", tmp_path / "fired"
    env = _env(WMB_FAULT=fault, WMB_FAULT_MARK=str(mark), WMB_FAULT_RUN=str(out))
    driver, code, err = _run_killed(_argv(out, executor, *extra), env)
    assert mark.exists(), f"the fault never fired (exit {code}): {err[-3000:]}"
    assert (int(mark.read_text()) == driver) == (outcome == "killed")  # the process the point names died
    if outcome == "killed":
        assert code == -signal.SIGKILL, f"the driver should have been killed (exit {code}): {err[-3000:]}"
        if executor == "ray":
            wait_until_quiet(out)
    elif outcome == "completes":
        assert code == 0, f"Ray should have retried the killed task (exit {code}): {err[-3000:]}"
    else:
        assert code == 1, f"exit {code}: {err[-3000:]}"
        failed = [r for r in _records(out).values() if r["status"] == "failed"]
        assert len(failed) == FAILED_CELLS[point_id], [r.get("error") for r in failed]
        for record in failed:  # one readable line: what died, and which dependency it was
            assert record["error"].startswith(WORKER_DIED if len(failed) == 1 else "dependency victim/")
            assert WORKER_DIED in record["error"] and "\x1b" not in record["error"]
        assert sum(r["status"] == "ok" for r in _records(out).values()) == N_CELLS - len(failed)

    before = {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")} if (out / "cells").is_dir() else {}
    finished_before = {k for k, r in _records(out).items() if r["status"] == "ok"} if before else set()
    rerun = subprocess.run(_argv(out, "serial"), capture_output=True, text=True, env=_env(), timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]

    records = _records(out)
    assert len(records) == N_CELLS and {r["status"] for r in records.values()} == {"ok"}
    after = {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}
    assert {f"{k}.json": after[f"{k}.json"] for k in finished_before} == {f"{k}.json": before[f"{k}.json"]
                                                                          for k in finished_before}
    ran = rerun.stderr.count("[ok]") - rerun.stderr.count("reused")
    assert ran == N_CELLS - len(finished_before)  # each unfinished cell once, no finished one again
    for table in (pd.read_csv(out / "results.csv", keep_default_na=False, na_values=[""]),
                  pd.read_parquet(out / "results.parquet")):
        table = table.assign(step_name=table["step_name"].fillna(""))
        assert lost_and_duplicated(out, table) == (0, 0)
        assert set(table["cell_id"]) == set(records)


def test_a_cell_out_of_memory_is_retried_recorded_failed_and_rerun(tmp_path):
    """A cell whose allocation fails (its address space capped below what it asks for) is retried,
    then recorded ``failed`` with torch's message while the other cells finish; the rerun, with
    the memory it needs, runs that cell only."""
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "wmbench.cli", "run", "--methods", "badnets", "--attacks", "none,fault_oom",
            "--datasets", "synthetic", "--seeds", "0", "--profile", "smoke", "--plugin", "wmb_faults",
            "--no-progress", "--executor", "serial", "--out", str(out),
            "--set", "datasets.synthetic.train_size=300", "--set", "datasets.synthetic.test_size=100",
            "--set", "train.epochs=1"]
    first = subprocess.run(argv, capture_output=True, text=True, env=_env(WMB_FAULT_OOM_MB="256"), timeout=300)
    assert first.returncode == 1, first.stderr[-3000:]
    by_attack = {r["cell"]["attack"]: r for r in _records(out).values()}
    assert by_attack["none"]["status"] == "ok"
    oom = by_attack["fault_oom"]
    assert oom["status"] == "failed" and oom["attempts"] == 2
    assert "can't allocate memory" in oom["error"] or "MemoryError" in oom["error"], oom["error"]
    ok_mtime = (out / "cells" / f"{by_attack['none']['cell_id']}.json").stat().st_mtime_ns

    rerun = subprocess.run(argv, capture_output=True, text=True, env=_env(), timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    by_attack = {r["cell"]["attack"]: r for r in _records(out).values()}
    assert {r["status"] for r in by_attack.values()} == {"ok"}
    assert (out / "cells" / f"{by_attack['none']['cell_id']}.json").stat().st_mtime_ns == ok_mtime
    assert rerun.stderr.count("[ok]") - rerun.stderr.count("reused") == 1
