"""--cell-timeout: a task that runs too long is stopped, recorded failed with the reason and not
retried, the rest of the grid completes, and a rerun finishes only what is missing."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from wmbench.cli import main
from wmbench.errors import TaskTimeout, UserError
from wmbench.spec import GridSpec
from wmbench.tasks import deadline


def _records(out: Path):
    return {json.loads(p.read_text())["cell"]["attack"]: json.loads(p.read_text())
            for p in (out / "cells").glob("*.json")}


def test_deadline_interrupts_and_restores_the_timer():
    reached = []
    with pytest.raises(TaskTimeout, match="cell x ran past --cell-timeout 0.2 s"):
        with deadline(0.2, "cell x"):
            time.sleep(5)
            reached.append("after the sleep")
    assert reached == []  # interrupted inside the sleep
    with deadline(5, "cell y"):  # finishes in time: nothing raised, and no alarm left behind
        pass
    time.sleep(0.3)
    with deadline(None, "cell z"):
        time.sleep(0.01)


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf")])
def test_bad_timeouts_are_refused(bad):
    with pytest.raises(UserError, match="--cell-timeout must be a finite number above 0"):
        GridSpec(cell_timeout=bad)


@pytest.mark.parametrize("executor", ["serial", pytest.param("ray", marks=[pytest.mark.ray, pytest.mark.slow])])
def test_a_hanging_cell_is_stopped_recorded_and_the_grid_completes(tmp_path, plugin_path, capsys, monkeypatch,
                                                                   executor):
    if executor == "ray":
        pytest.importorskip("ray")
    out = tmp_path / "run"
    argv = ["run", "--plugin", "wmb_slow", "--methods", "badnets", "--attacks", "none,sleepy,quantize",
            "--datasets", "synthetic", "--profile", "smoke", "--executor", executor, "--out", str(out),
            "--no-progress", "--retries", "2", "--cpus-per-cell", "1"]
    # the victim first, without a limit (on a loaded machine it takes a while); then the grid
    assert main(argv[:6] + ["none"] + argv[7:]) == 0
    attempts = tmp_path / "sleepy.log"
    monkeypatch.setenv("WMB_SLEEPY_LOG", str(attempts))
    monkeypatch.setenv("WMB_SLEEPY_SECONDS", "300")
    rc = main(argv + ["--cell-timeout", "12"])
    assert attempts.read_text().split() == ["start"]  # stopped in its sleep, and not retried (--retries 2)
    assert rc == 1  # a failed cell: the run says so
    records = _records(out)
    assert records["none"]["status"] == "ok" and records["quantize"]["status"] == "ok"
    slow = records["sleepy"]
    assert slow["status"] == "failed"
    assert "TaskTimeout" in slow["error"] and "--cell-timeout 12 s" in slow["error"]
    assert slow.get("attempts", 1) == 1
    finished = {k: (out / "cells" / f"{r['cell_id']}.json").stat().st_mtime_ns for k, r in records.items()
                if r["status"] == "ok"}
    # the same command without the hang: only the failed cell runs again
    monkeypatch.setenv("WMB_SLEEPY_SECONDS", "0")
    assert main(argv + ["--cell-timeout", "12"]) == 0
    assert attempts.read_text().split() == ["start", "start", "end"]  # the failed cell ran once more, to the end
    again = _records(out)
    assert {k: r["status"] for k, r in again.items()} == {"none": "ok", "sleepy": "ok", "quantize": "ok"}
    assert {k: (out / "cells" / f"{again[k]['cell_id']}.json").stat().st_mtime_ns for k in finished} == finished
    capsys.readouterr()
