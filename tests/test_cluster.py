"""A grid on a real two-node Ray cluster (``ray.cluster_utils.Cluster``: a head node with one CPU
and a worker node with two, separate raylets and object stores on this machine), run through
``wmbench run --ray-address``: cells spread over both nodes, each cell is written exactly once,
losing the worker node mid-run loses no finished cell nor hangs the driver, and rerunning the
same command completes the grid.

The cluster keeps its files, and the address file Ray writes for ``ray.init()`` without an
address, in a private ``$RAY_TMPDIR``, so other Ray instances on the machine never join it.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pandas as pd
import pytest

from wmbench.cli import main
from wmbench.plan import plan_run
from wmbench.results import record_rows
from wmbench.spec import GridSpec

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow]

STORE = 80 * 1024 * 1024  # bytes of object store per node
HEAD_CPUS, WORKER_CPUS = 1, 2  # a lone task takes the worker's two CPUs (spare CPUs are shared)
METHODS, ATTACKS = ("badnets", "content", "noise"), ("none", "knockoff")  # knockoff: soft and hard labels
TINY = ["datasets.synthetic.train_size=300", "datasets.synthetic.test_size=100", "train.epochs=1",
        "attacks.knockoff.budget=200"]


class TwoNodes:
    """A head node and a worker node; the worker can be removed and a fresh one added."""

    def __init__(self) -> None:
        self.cluster = Cluster(initialize_head=True, head_node_args=dict(
            num_cpus=HEAD_CPUS, object_store_memory=STORE, include_dashboard=False))
        self.worker = None
        self.ensure_worker()

    @property
    def address(self) -> str:
        return self.cluster.address

    @property
    def head_id(self) -> str:
        return self.cluster.head_node.node_id

    def remove_worker(self) -> None:
        self.cluster.remove_node(self.worker)
        self.worker = None

    def ensure_worker(self) -> None:
        if self.worker is None:
            self.worker = self.cluster.add_node(num_cpus=WORKER_CPUS, object_store_memory=STORE)
            self.cluster.wait_for_nodes(timeout=120)


@pytest.fixture(scope="module")
def cluster():
    temp = tempfile.mkdtemp(prefix="wmbray", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    saved = {k: os.environ.get(k) for k in ("RAY_TMPDIR", "RAY_USAGE_STATS_ENABLED", "RAY_ADDRESS")}
    os.environ.update(RAY_TMPDIR=temp, RAY_USAGE_STATS_ENABLED="0")
    os.environ.pop("RAY_ADDRESS", None)
    nodes = None
    try:
        nodes = TwoNodes()
        yield nodes
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if nodes is not None:
            nodes.cluster.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture
def two_nodes(cluster):
    """The cluster with its worker node (a test before may have removed it)."""
    cluster.ensure_worker()
    return cluster


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    """One artifact cache for the grids below, as a cluster's shared results folder would hold."""
    return tmp_path_factory.mktemp("artifacts")


def _argv(address: str, out: Path, cache: Path, *extra: str) -> List[str]:
    return ["run", "--methods", ",".join(METHODS), "--attacks", ",".join(ATTACKS), "--datasets", "synthetic",
            "--profile", "smoke", "--executor", "ray", "--ray-address", address, "--out", str(out),
            "--cache-dir", str(cache), "--no-progress", *[a for item in TINY for a in ("--set", item)], *extra]


def _planned(out: Path) -> set:
    plan = plan_run(GridSpec.of(METHODS, ATTACKS, "synthetic", seeds=[0], profile="smoke", overrides=TINY, out=out))
    return {p.cell.cell_id for p in plan.planned}


def _records(out: Path) -> Dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (out / "cells").glob("*.json")}


def _stamps(out: Path) -> Dict[str, Tuple[int, str]]:
    """Each cell file's modification time and text."""
    return {p.stem: (p.stat().st_mtime_ns, p.read_text()) for p in (out / "cells").glob("*.json")}


def _assert_every_cell_once(out: Path, planned: set) -> None:
    """``out`` holds one ok record per planned cell, and the results tables exactly their rows."""
    records = _records(out)
    assert set(records) == planned
    assert {r["cell_id"] for r in records.values()} == planned
    assert {r["status"] for r in records.values()} == {"ok"}, {k: r.get("error") for k, r in records.items()}
    rows = sum(len(record_rows(r)) for r in records.values())
    for frame in (pd.read_parquet(out / "results.parquet"), pd.read_csv(out / "results.csv")):
        assert set(frame["cell_id"]) == planned and len(frame) == rows
        assert not frame.duplicated(subset=["cell_id", "stage", "step_name", "step", "metric"]).any()


def test_grid_spreads_over_both_nodes_and_writes_each_cell_once(two_nodes, shared_cache, tmp_path):
    out = tmp_path / "shared" / "run"
    planned = _planned(out)
    assert len(planned) == 9  # 3 methods × (none, knockoff[soft], knockoff[hard])
    assert main(_argv(two_nodes.address, out, shared_cache)) == 0
    assert not ray.is_initialized()  # the driver left the cluster; the cluster runs on
    _assert_every_cell_once(out, planned)
    nodes = {r["provenance"].get("ray_node") for r in _records(out).values()}
    assert nodes == {two_nodes.head_id, two_nodes.worker.node_id}  # both nodes ran cells


def test_losing_a_node_keeps_finished_cells_and_a_rerun_completes_the_grid(two_nodes, shared_cache, tmp_path):
    out = tmp_path / "shared" / "run"
    planned = _planned(out)
    state: Dict[str, Any] = {}
    stop = threading.Event()

    def kill_worker_after_first_record() -> None:
        try:
            while not stop.is_set():
                if (out / "cells").is_dir() and any((out / "cells").glob("*.json")):
                    state["before"] = _stamps(out)
                    two_nodes.remove_worker()
                    state["killed"] = True
                    return
                time.sleep(0.02)
        except BaseException as exc:  # reported by the test, not lost in the thread
            state["error"] = exc

    killer = threading.Thread(target=kill_worker_after_first_record, daemon=True)
    killer.start()
    try:
        code = main(_argv(two_nodes.address, out, shared_cache))  # a lost node never crashes the driver
    finally:
        stop.set()
        killer.join(timeout=120)
    assert "error" not in state, state.get("error")
    assert state.get("killed"), "the worker node was never removed"
    before = state["before"]
    assert 1 <= len(before) < len(planned)  # the node was lost mid-run
    assert code in (0, 1)  # 1: a cell whose task could not be rerun is recorded failed
    records = _records(out)
    assert set(records) <= planned and {r["cell_id"] for r in records.values()} == set(records)
    after_kill = _stamps(out)
    assert {k: after_kill[k] for k in before} == before  # no finished cell lost or rewritten
    finished = {k: after_kill[k] for k, r in records.items() if r["status"] == "ok"}

    two_nodes.ensure_worker()  # a fresh node replaces the lost one
    assert main(_argv(two_nodes.address, out, shared_cache)) == 0
    _assert_every_cell_once(out, planned)
    final = _stamps(out)
    assert {k: final[k] for k in before} == before
    assert {k: final[k] for k in finished} == finished  # finished cells were reused, not rerun
    started = {k: json.loads(text)["started_at"] for k, (_, text) in before.items()}
    assert {k: r["started_at"] for k, r in _records(out).items() if k in before} == started


def test_a_worker_dying_after_recording_its_cell_keeps_the_record(two_nodes, shared_cache, tmp_path, plugin_path):
    """The worker writes the cell's finished record, then dies before its result reaches the
    driver; with no retries left the driver must keep that record, not overwrite it ``failed``."""
    from wmb_cluster import NAME

    out = tmp_path / "run"
    argv = ["run", "--plugin", "wmb_cluster", "--methods", "badnets", "--attacks", NAME, "--datasets", "synthetic",
            "--profile", "smoke", "--executor", "ray", "--ray-address", two_nodes.address, "--out", str(out),
            "--cache-dir", str(shared_cache), "--no-progress", "--retries", "0",
            *[a for item in TINY for a in ("--set", item)]]
    assert main(argv) == 0
    (record,) = _records(out).values()
    assert record["status"] == "ok" and record["cell"]["attack"] == NAME
    assert record["provenance"]["ray_node"]  # written by the worker that died, on a Ray node


def test_a_task_too_big_for_the_nodes_left_is_resubmitted_smaller(two_nodes, tmp_path):
    """Alone in the grid, each task of a benign → victim → cell chain takes the worker's two CPUs.
    Lose the worker while one runs: Ray's retry asks for two CPUs, which the one-CPU head never
    has, so it would wait forever; the driver resubmits it with one CPU and the grid completes.
    The driver runs in a subprocess so that a hang fails the test instead of stopping it."""
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "wmbench.cli", "run", "--methods", "badnets", "--attacks", "knockoff",
            "--datasets", "synthetic", "--profile", "smoke", "--executor", "ray", "--ray-address", two_nodes.address,
            "--out", str(out), "--no-progress", "--set", "attacks.knockoff.labels=soft",
            *[a for item in TINY for a in ("--set", item)]]
    proc = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        deadline = time.time() + 240
        while not any((out / "logs" / "artifacts").glob("*.log")) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)  # until the first artifact task (on the worker: two CPUs) has started
        assert proc.poll() is None, "the grid ended before the worker node could be removed"
        cells_at_kill = list((out / "cells").glob("*.json"))
        two_nodes.remove_worker()
        output, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail("the driver hung after losing the worker node:\n" + output[-3000:])
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert cells_at_kill == []  # the node was lost mid-run
    assert proc.returncode == 0, output[-3000:]
    assert "more than any node left has; resubmitted with 1" in output
    (record,) = _records(out).values()
    assert record["status"] == "ok" and record["provenance"]["ray_node"] == two_nodes.head_id
