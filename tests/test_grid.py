"""The grid planner, task graph and executors (wmbench.plan, wmbench.tasks, wmbench.executor), resume, failure isolation, Ray, and the report files.

Golden files (tests/golden/grid_*) hold the report rendered from the fixed results table of
:func:`_golden_records`; after an intended change of the report's format regenerate them with
``WMBENCH_UPDATE_GOLDEN=1 pytest tests/test_grid.py -k golden`` and review the diff by eye.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import PLUGIN_DIR, wait_until_quiet
from wmbench import report
from wmbench.errors import UserError
from wmbench.results import to_frame
from wmbench.executor import RayBackend
from wmbench.plan import plan_run as plan_spec
from wmbench.runner import run
from wmbench.spec import GridSpec
from wmbench.tasks import build_graph

GOLDEN = Path(__file__).parent / "golden"
REPO = Path(__file__).resolve().parent.parent

# Tiny synthetic grids: seconds per cell on one CPU.
TINY = ["datasets.synthetic.train_size=300", "datasets.synthetic.test_size=100", "train.epochs=1"]
TINY_CLI = [a for item in TINY for a in ("--set", item)]


def _env(**extra: str) -> Dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [str(PLUGIN_DIR)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    env.update(extra)
    return env


def _wmbench(*args: str) -> List[str]:
    return [sys.executable, "-m", "wmbench.cli", *args]


def _cells(out: Path) -> Dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (out / "cells").glob("*.json")}


def plan_run(*args, **fields):
    """Plan the grid of ``GridSpec.of(*args, **fields)`` (writes nothing)."""
    return plan_spec(GridSpec.of(*args, **fields))


def _lines(path: Path, prefix: str) -> List[str]:
    return [line for line in path.read_text().splitlines() if line.startswith(prefix)] if path.exists() else []


# ------------------------------------------------------------------------------------------
# The dependency graph
# ------------------------------------------------------------------------------------------
def test_graph_shares_artifacts_and_chain_prefixes(tmp_path):
    plan = plan_run(["badnets", "deeptracer"], ["none", "knockoff", "knockoff+ftal", "knockoff+ftll"], "synthetic",
                    seeds=[0, 1], profile="smoke", overrides=TINY, out=tmp_path / "run")
    assert not (tmp_path / "run").exists()  # planning writes nothing
    graph = build_graph(plan.todo, plan.opts.cache_dir)
    # 2 methods × (none + knockoff soft/hard + two chains × soft/hard) × 2 seeds
    assert len(graph.cells) == 2 * 7 * 2
    assert graph.count("benign") == 2  # one per seed, shared by both methods
    assert graph.count("victim") == 4  # one per (method, seed), shared by its 7 cells
    assert graph.count("filtered_keys") == 2  # DeepTracer's surrogate + key filter, per seed
    # knockoff[soft] feeds knockoff, knockoff+ftal and knockoff+ftll: one stolen task per
    # (method, seed, labels); the whole chains are used once and stay inside their cells.
    assert graph.count("stolen") == 2 * 2 * 2
    ids = [t.id for t in graph]
    assert len(ids) == len(set(ids))
    position = {t.id: i for i, t in enumerate(graph)}
    for task in graph:
        assert all(position[d] < position[task.id] for d in task.deps)
        if task.is_cell:
            cell = task.cell
            dep = graph[task.deps[0]]
            if cell["attack"] == "none":
                assert dep.kind == ("filtered_keys" if cell["method"] == "deeptracer" else "victim")
            else:
                assert dep.kind == "stolen" and dep.cell["attack"] == "knockoff"
                assert dep.cell["labels"] == cell["labels"].split("+")[0]
    for task in graph.artifacts:  # every artifact is needed by some cell
        assert any(task.id in graph.ancestors(c.id) for c in graph.cells)
    # Serial order: dependencies first, each artifact before its first user.
    order = [t.id for t in graph.depth_first()]
    assert sorted(order) == sorted(ids)
    assert all(order.index(d) < order.index(t) for t in order for d in graph.ancestors(t))


def test_adding_an_attack_to_a_finished_grid_runs_only_its_cells(tmp_path, plugin_path, monkeypatch):
    from wmbench.attacks.knockoff import Knockoff

    log_file = tmp_path / "notes.txt"
    monkeypatch.setenv("WMB_GRID_LOG", str(log_file))
    kwargs = dict(profile="smoke", overrides=TINY + ["attacks.knockoff.budget=100"], out=tmp_path / "run",
                  plugins=["wmb_grid"], progress=False, executor="serial")
    first = run("grid_counting", ["none", "ftal"], "synthetic", **kwargs)
    assert set(first["status"]) == {"ok"} and len(_lines(log_file, "embed")) == 1
    calls = []
    original = Knockoff.run
    monkeypatch.setattr(Knockoff, "run", lambda self, target, ctx: calls.append(1) or original(self, target, ctx))
    records: List[dict] = []
    second = run("grid_counting", ["none", "ftal", "knockoff"], "synthetic", on_record=records.append, **kwargs)
    assert second["cell_id"].nunique() == 4 and set(second["status"]) == {"ok"}
    assert len(records) == 2 and {r["cell"]["attack"] for r in records} == {"knockoff"}  # only the new cells ran
    assert len(calls) == 2 and len(_lines(log_file, "embed")) == 1  # the victim was reused, not rebuilt


def test_three_attack_cells_one_victim_task():
    plan = plan_run("badnets", ["none", "knockoff"], "synthetic", profile="smoke", overrides=TINY, out="/nonexistent/x")
    graph = build_graph(plan.todo)
    assert len(graph.cells) == 3 and graph.count("victim") == 1 and graph.count("benign") == 1
    assert graph.count("stolen") == 0 and len(graph) == 5


def test_serial_grid_builds_each_artifact_once_also_with_overwrite(tmp_path, plugin_path, monkeypatch):
    from wmbench.attacks.knockoff import Knockoff

    log_file = tmp_path / "notes.txt"
    monkeypatch.setenv("WMB_GRID_LOG", str(log_file))
    calls = []
    original = Knockoff.run
    monkeypatch.setattr(Knockoff, "run", lambda self, target, ctx: calls.append(1) or original(self, target, ctx))
    kwargs = dict(profile="smoke", overrides=TINY + ["attacks.knockoff.labels=soft", "attacks.knockoff.budget=100",
                                                   "attacks.ftal.epochs=1"],
                  out=tmp_path / "run", plugins=["wmb_grid"], progress=False, executor="serial")
    frame = run("grid_counting", ["none", "knockoff", "knockoff+ftal"], "synthetic", **kwargs)
    assert set(frame["status"]) == {"ok"}
    assert len(_lines(log_file, "embed")) == 1  # one victim for three cells
    assert len(calls) == 1  # the knockoff stage is stolen once for knockoff and knockoff+ftal
    # The graph's artifact ids are exactly the store's files (no duplicate, nothing missed).
    plan = plan_run("grid_counting", ["none", "knockoff", "knockoff+ftal"], "synthetic", **{
        k: v for k, v in kwargs.items() if k not in ("progress", "executor")})
    graph = build_graph([c.cell.as_dict() for c in plan.planned], plan.opts.cache_dir)
    store = Path(plan.opts.cache_dir)
    for kind in ("benign", "victim", "stolen"):
        expected = {t.id.split("/")[1] for t in graph.artifacts if t.kind == kind}
        on_disk = {p.stem for p in (store / kind).glob("*.json")}
        assert expected <= on_disk, kind
    assert len(list((store / "benign").glob("*.json"))) == 1
    assert len(list((store / "victim").glob("*.json"))) == 1

    # --overwrite rebuilds every artifact, once: not once per cell.
    frame = run("grid_counting", ["none", "knockoff", "knockoff+ftal"], "synthetic", overwrite=True, **kwargs)
    assert set(frame["status"]) == {"ok"}
    assert len(_lines(log_file, "embed")) == 2
    assert len(calls) == 2


STORE_SCRIPT = """
import sys, time, torch
from wmbench.cache import ArtifactStore
def build():
    with open(sys.argv[2], "a") as fh:
        fh.write("build\\n")
    time.sleep(3)
    return {"w": torch.full((3,), 7.0)}, {"by": "subprocess"}
ArtifactStore(sys.argv[1]).get_or_build("benign", {"k": 1}, build)
"""


def test_store_lock_serialises_builds_across_processes(tmp_path):
    from wmbench.cache import ArtifactStore

    builds = tmp_path / "builds.txt"
    proc = subprocess.Popen([sys.executable, "-c", STORE_SCRIPT, str(tmp_path / "store"), str(builds)], env=_env())
    try:
        deadline = time.time() + 120
        while "build" not in (builds.read_text() if builds.exists() else "") and time.time() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "the other process should still be building"

        def build():  # must not run: the other process holds the lock, then this one loads its result
            builds.open("a").write("build\n")
            return {"w": torch.zeros(3)}, {"by": "pytest"}

        import torch

        tensors, meta = ArtifactStore(tmp_path / "store").get_or_build("benign", {"k": 1}, build)
    finally:
        proc.wait(timeout=120)
    assert proc.returncode == 0
    assert builds.read_text().count("build") == 1
    assert meta == {"by": "subprocess"} and float(tensors["w"][0]) == 7.0


def test_two_processes_share_a_results_folder(tmp_path):
    out = tmp_path / "run"
    log_file = tmp_path / "notes.txt"
    argv = _wmbench("run", "--plugin", "wmb_grid", "--methods", "grid_counting", "--attacks", "none",
                    "--datasets", "synthetic", "--seeds", "0,1", "--profile", "smoke", "--executor", "serial",
                    "--out", str(out), "--no-progress", *TINY_CLI)
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=_env(WMB_GRID_LOG=str(log_file))) for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [r[1][-2000:] for r in results]
    assert sorted(line.split()[1] for line in _lines(log_file, "embed")) == ["seed=0", "seed=1"]  # no victim twice
    cells = _cells(out)
    assert len(cells) == 2 and {c["status"] for c in cells.values()} == {"ok"}
    # Every cell ran in exactly one process; the other one reused its record.
    ran = sum(err.count("[ok]") - err.count("reused)") for _, err in results)
    assert ran == 2


# ------------------------------------------------------------------------------------------
# Resume after the driver is killed
# ------------------------------------------------------------------------------------------
def _kill_midway(argv: List[str], out: Path, env: Dict[str, str], timeout: float = 240) -> None:
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline and proc.poll() is None:
            if any(c["status"] == "ok" for c in _cells(out).values() if (out / "cells").is_dir()):
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and whatever it started (Ray's workers)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    # A worker outside the process group may still finish the cell in hand: wait until the
    # folder is quiet, so the snapshot taken next is what the resumed run starts from.
    wait_until_quiet(out)


def _snapshot(out: Path) -> Dict[Path, int]:
    files = list((out / "cells").glob("*.json")) + list((out / "artifacts").glob("*/*.json"))
    return {p: p.stat().st_mtime_ns for p in files}


@pytest.mark.parametrize("executor", ["serial", pytest.param("ray", marks=[pytest.mark.ray, pytest.mark.slow])])
def test_resume_after_sigkill_reuses_finished_cells_and_artifacts(tmp_path, executor):
    if executor == "ray":
        pytest.importorskip("ray")
    out = tmp_path / "run"
    # Ray runs cells side by side, so it needs more of them for some to be unfinished at the kill.
    n = 3 if executor == "serial" else 8
    argv = _wmbench("run", "--methods", "badnets", "--attacks", "none", "--datasets", "synthetic",
                    "--seeds", ",".join(map(str, range(n))), "--profile", "smoke", "--executor", executor,
                    "--out", str(out), "--no-progress", *TINY_CLI)
    _kill_midway(argv, out, _env())
    before = _snapshot(out)
    done_before = {k for k, c in _cells(out).items() if c["status"] == "ok"}
    assert 1 <= len(done_before) < n
    result = subprocess.run(argv, capture_output=True, text=True, env=_env(), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    cells = _cells(out)
    assert len(cells) == n and {c["status"] for c in cells.values()} == {"ok"}
    after = _snapshot(out)
    assert {p: after[p] for p in before} == before  # finished cells and artifacts were not redone
    assert result.stderr.count("[ok]") == n - len(done_before)


# ------------------------------------------------------------------------------------------
# Failures stay in their cells
# ------------------------------------------------------------------------------------------
def test_failed_cells_are_retried_recorded_and_isolated(tmp_path, plugin_path, monkeypatch, capsys):
    from wmbench.cli import main

    log_file = tmp_path / "notes.txt"
    monkeypatch.setenv("WMB_GRID_LOG", str(log_file))
    out = tmp_path / "run"
    records: List[dict] = []
    frame = run(["badnets", "grid_broken"], ["none", "grid_failing", "grid_flaky"], "synthetic", profile="smoke",
                overrides=TINY, out=out, plugins=["wmb_grid"], executor="serial", retries=1, progress=True,
                on_record=records.append)
    status = {(r["cell"]["method"], r["cell"]["attack"]): r for r in records}
    assert len(status) == 6
    assert status[("badnets", "none")]["status"] == "ok"
    flaky = status[("badnets", "grid_flaky")]
    assert flaky["status"] == "ok" and flaky["attempts"] == 2  # failed once, retried, succeeded
    failing = status[("badnets", "grid_failing")]
    assert failing["status"] == "failed" and failing["attempts"] == 2
    assert "planned failure" in failing["error"] and "Traceback" in failing["traceback"]
    assert len(_lines(log_file, "attempt grid_failing")) == 2
    # The broken victim is tried twice (not once per cell) and fails its three cells only.
    assert len(_lines(log_file, "embed grid_broken")) == 2
    for attack in ("none", "grid_failing", "grid_flaky"):
        record = status[("grid_broken", attack)]
        assert record["status"] == "failed" and "dependency victim/" in record["error"]
        assert "embedding failed" in record["traceback"]
    assert set(frame.drop_duplicates("cell_id")["status"]) == {"ok", "failed"}
    err = capsys.readouterr().err
    assert "cells 6/6 done" in err and "4 failed" in err  # the live progress line

    code = main(["show", failing["cell_id"], "--out", str(out)])
    shown = capsys.readouterr().out
    assert code == 0
    assert "status: failed" in shown and "after 2 attempts" in shown and "RuntimeError: grid_failing" in shown


def test_gpu_request_without_gpus_is_refused(tmp_path, capsys):
    pytest.importorskip("ray")
    from wmbench.cli import main

    if RayBackend._local_gpus():
        pytest.skip("this machine has a GPU")
    with pytest.raises(UserError, match="asks for GPUs but this machine has none"):
        RayBackend(gpus_per_cell=0.5)
    code = main(["run", "--methods", "badnets", "--attacks", "none", "--datasets", "synthetic", "--profile", "smoke",
                 "--executor", "ray", "--gpus-per-cell", "0.5", "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("wmbench: error: ") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------
# Reports: golden files, figures, LaTeX that compiles
# ------------------------------------------------------------------------------------------
def _golden_records() -> List[Dict[str, Any]]:
    """3 methods × (none, knockoff soft/hard) × 2 seeds, a knockoff budget sweep, a failed and a
    skipped cell; values from fixed formulas."""
    base_acc = {"badnets": 0.90, "content": 0.88, "deeptracer": 0.91}
    wsr_soft = {"badnets": 0.12, "content": 0.31, "deeptracer": 0.97}
    records = []

    def record(method: str, attack: str, labels: str, seed: int, metrics: Dict[str, Dict[str, float]],
               sweep: Dict[str, Any] | None = None, status: str = "ok", **extra: Any) -> None:
        sweep = sweep or {}
        tag = "-".join(f"{v}" for v in sweep.values())
        records.append({
            "cell_id": f"{method}-{attack}-{labels}-{seed}{'-' + tag if tag else ''}", "run": "golden",
            "cell": {"method": method, "attack": attack, "labels": labels, "dataset": "fmnist", "seed": seed,
                     "profile": "smoke", "arch": "naivenet", "sweep": sweep},
            "status": status, "metrics": metrics, "wall_s": 1.0, "queries": 1000 if attack != "none" else 0,
            "provenance": {"wmbench_version": "0.1.0", "git_sha": "golden", "torch_version": "2", "device": "cpu",
                           "host": "h", "schema_version": 2}, **extra})

    for method in ("badnets", "content", "deeptracer"):
        for seed in (0, 1):
            d = 0.01 * seed
            stages = {"benign": {"acc": 0.92 + d, "wsr": 0.02 + d, "threshold": 0.2},
                      "victim": {"acc": base_acc[method] + d, "wsr": 1.0 - 2 * d, "threshold": 0.2}}
            record(method, "none", "", seed, stages)
            for labels, factor in (("soft", 1.0), ("hard", 0.5)):
                attack = {"acc": (base_acc[method] - 0.1 * (2 - factor)) + d, "wsr": wsr_soft[method] * factor + d,
                          "fidelity": 0.85 + d, "queries": 1000.0, "threshold": 0.2}
                record(method, "knockoff", labels, seed, {**stages, "attack": attack})
            if method in ("badnets", "deeptracer"):
                for budget in (250, 500, 1000):
                    attack = {"acc": 0.5 + budget / 4000 + d, "wsr": wsr_soft[method] * budget / 1000 + d,
                              "fidelity": 0.6 + d, "queries": float(budget), "threshold": 0.2}
                    record(method, "knockoff", "soft", seed, {**stages, "attack": attack},
                           sweep={"attacks.knockoff.budget": budget})
    record("content", "dfme", "soft", 0, {}, status="failed", error="RuntimeError: boom")
    record("content", "jbda", "hard", 0, {}, status="skipped", skipped_reason="not applicable")
    return records


@pytest.fixture()
def golden_frame() -> pd.DataFrame:
    return to_frame(_golden_records())


GOLDEN_FILES = {
    "grid_report.md": lambda f: report.render(f, fmt="md", standalone=True),
    "grid_report.tex": lambda f: report.render(f, fmt="latex", standalone=True),
    "grid_report.html": lambda f: report.render(f, fmt="html", standalone=True),
    "grid_table1.csv": lambda f: report.to_csv(report.table1(f)),
    "grid_table2.csv": lambda f: report.to_csv(report.table2(f)),
}


@pytest.mark.parametrize("name", sorted(GOLDEN_FILES))
def test_report_rendering_matches_golden(golden_frame, name):
    text = GOLDEN_FILES[name](golden_frame)
    path = GOLDEN / name
    if os.environ.get("WMBENCH_UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8")


def test_golden_table_values(golden_frame):
    t1 = report.table1(golden_frame).set_index("method")
    # mean ± sample std over the two seeds
    assert t1.loc["content", "victim_acc_mean"] == pytest.approx(88.5)
    assert t1.loc["content", "victim_acc_std"] == pytest.approx(np.std([88, 89], ddof=1))
    assert (t1["n_seeds"] == 2).all()
    t2 = report.table2(golden_frame).set_index("method")
    assert t2.loc["deeptracer", "knockoff_soft_wsr_mean"] == pytest.approx(97.5)
    assert t2.loc["badnets", "knockoff_hard_wsr_mean"] == pytest.approx(6.5)
    md = report.render(golden_frame, fmt="md")
    # mean ± half-width of the 95 % t-interval over the 2 seeds (12.71 · 0.71 / √2 = 6.35); in parentheses:
    # the theft failed (stolen accuracy 81.5 % < 90 % of the victim's 91.5 %), so the WSR is no evidence
    assert "(97.50 ± 6.35)" in md
    tex = report.render(golden_frame, fmt="latex")
    assert "\\textcolor{gray}{\\begin{tabular}[t]{@{}r@{}}$97.50$\\\\[-2pt]{\\tiny$\\pm$6.35}" in tex
    assert "\\textbf{\\boldmath$91.50$}" in tex and "\\toprule" in tex  # best (tied) in bold, booktabs


def test_grid_figures_and_self_contained_report(golden_frame, tmp_path):
    from wmbench.report.figures_grid import heatmap_frame, parse_sweep, sweep_frame

    assert parse_sweep("attacks.knockoff.budget=500,train.epochs=3") == {"attacks.knockoff.budget": 500.0,
                                                                         "train.epochs": 3.0}
    heat = heatmap_frame(golden_frame)[("fmnist", "naivenet")]
    assert list(heat.index) == ["badnets", "content", "deeptracer"]
    assert list(heat.columns[:2]) == ["knockoff/soft", "knockoff/hard"]
    assert heat.loc["deeptracer", "knockoff/soft"] == pytest.approx(97.5)
    assert list(heat.columns[2:]) == [f"knockoff[budget={b}]/soft" for b in (250, 500, 1000)]
    sweeps = sweep_frame(golden_frame)
    assert set(sweeps["key"]) == {"attacks.knockoff.budget"} and sorted(set(sweeps["x"])) == [250, 500, 1000]

    written = report.write_report(golden_frame, tmp_path)
    names = {p.name for p in written}
    for name in ("report.md", "report.tex", "report.html", "table1.csv", "table2.csv",
                 "heatmap_wsr_fmnist_naivenet.png", "heatmap_wsr_fmnist_naivenet.pdf",
                 "sweep_fmnist_naivenet_knockoff_soft_budget.png", "sweep_fmnist_naivenet_knockoff_soft_budget.pdf"):
        assert name in names
    figures = tmp_path / "figures"
    assert (figures / "heatmap_wsr_fmnist_naivenet.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (figures / "sweep_fmnist_naivenet_knockoff_soft_budget.pdf").read_bytes()[:5] == b"%PDF-"
    html = (tmp_path / "report.html").read_text()
    pngs = sorted(figures.glob("*.png"))
    assert html.count("data:image/png;base64,") == len(pngs) >= 2 and "src=\"figures/" not in html
    assert "Table 1" in html and html.rstrip().endswith("</html>")
    md = (tmp_path / "report.md").read_text()
    assert "## Figures" in md and all(f"(figures/{p.name})" in md for p in pngs)
    tex = (tmp_path / "report.tex").read_text()
    assert tex.count("\\includegraphics") == len(list(figures.glob("*.pdf")))
    # a second write does not add a second figure section
    report.write_report(golden_frame, tmp_path)
    assert (tmp_path / "report.md").read_text().count("## Figures") == 1


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex not installed (texlive-latex-base)")
def test_latex_report_compiles(golden_frame, tmp_path):
    report.write_report(golden_frame, tmp_path, compare="paper")
    result = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "report.tex"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:]
    assert (tmp_path / "report.pdf").read_bytes()[:5] == b"%PDF-"


# ------------------------------------------------------------------------------------------
# Ray: the same table as the serial executor
# ------------------------------------------------------------------------------------------
ACCEPTANCE = TINY + [
    "attacks.knockoff.labels=soft", "attacks.knockoff.budget=150", "methods.deeptracer.n_candidates=200",
    "methods.deeptracer.target_pool=60", "keys.surrogate_arch=naivenet", "keys.top_m=60",
]
TIMING = {"wall_s", "attack_wall_s"}


def _values(frame: pd.DataFrame) -> pd.Series:
    frame = frame[~frame["metric"].isin(TIMING)]
    return frame.set_index(["cell_id", "stage", "step_name", "step", "metric"])["value"].sort_index()


@pytest.mark.ray
def test_ray_executor_matches_serial_and_report(tmp_path, capsys):
    ray = pytest.importorskip("ray")
    from wmbench.cli import main

    grid = (["badnets", "deeptracer", "content"], ["none", "knockoff"], "synthetic")
    kwargs = dict(seeds=[0, 1], profile="smoke", overrides=ACCEPTANCE, progress=False)
    # Ray gives each task OMP_NUM_THREADS = cpus_per_cell; the same thread count here makes the CPU
    # kernels reduce in the same order, so the two tables agree to float precision.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        serial = run(*grid, out=tmp_path / "serial", executor="serial", **kwargs)
    finally:
        torch.set_num_threads(threads)
    records: List[dict] = []
    on_ray = run(*grid, out=tmp_path / "ray", executor="ray", cpus_per_cell=1, spare_cpus="none",
                 on_record=records.append, **kwargs)
    assert not ray.is_initialized()  # the embedded instance is shut down
    assert len(records) == 12 and {r["status"] for r in records} == {"ok"}
    assert {r["provenance"]["device"] for r in records} == {"cpu"}
    a, b = _values(serial), _values(on_ray)
    assert a.index.equals(b.index)
    assert ((a - b).abs().fillna(0) <= 1e-6).all() and (a.isna() == b.isna()).all()
    for table in (report.table1, report.table2):
        pd.testing.assert_frame_equal(table(serial), table(on_ray), check_exact=False, atol=1e-6)
    # each shared artifact was built once: 2 benign models, 6 victims, 2 DeepTracer key filters
    store = tmp_path / "ray" / "artifacts"
    assert [len(list((store / k).glob("*.json"))) for k in ("benign", "victim", "filtered_keys")] == [2, 6, 2]

    capsys.readouterr()
    assert main(["report", str(tmp_path / "ray"), "--format", "latex"]) == 0
    assert "\\toprule" in capsys.readouterr().out
    for name in ("report.md", "report.tex", "report.html", "table1.csv", "table2.csv",
                 "figures/heatmap_wsr_synthetic_naivenet.png", "figures/heatmap_wsr_synthetic_naivenet.pdf"):
        assert (tmp_path / "ray" / name).exists(), name


def test_cpu_shares_pack_many_tasks_and_share_spare_cpus_with_few():
    from wmbench.executor import cpu_shares

    assert cpu_shares(1, 2, 1, 2) == [2.0]  # the chain's head alone: every core
    assert cpu_shares(1, 2, 1, 2, share=False) == [1.0]
    assert cpu_shares(5, 2, 1, 2) == [1.0, 1.0]  # a busy grid: one CPU per task
    assert cpu_shares(2, 5, 1, 8) == [3.0, 2.0]  # the remainder goes to the first
    assert cpu_shares(1, 16, 1, 4) == [4.0]  # never more than the largest node has
    assert cpu_shares(3, 1.5, 0.5, 2) == [0.5, 0.5, 0.5]
    assert cpu_shares(1, 1.5, 0.5, 2) == [1.0]
    assert cpu_shares(3, 0.5, 1, 2) == [] and cpu_shares(0, 4, 1, 4) == []
    assert cpu_shares(3, 8, 1, 8, free_slots=1) == [8.0]  # one free GPU slot: one task starts, with the CPUs
    assert cpu_shares(3, 8, 1, 8, free_slots=0) == []


@pytest.mark.ray
def test_ray_gives_a_lone_task_every_core_and_matches_serial_at_that_thread_count(tmp_path):
    pytest.importorskip("ray")
    cores = len(os.sched_getaffinity(0))
    if cores < 2:
        pytest.skip("needs two CPUs")
    kwargs = dict(profile="smoke", overrides=TINY, progress=False)
    shared = run("badnets", "none", "synthetic", out=tmp_path / "share", executor="ray", **kwargs)
    fixed = run("badnets", "none", "synthetic", out=tmp_path / "none", executor="ray", spare_cpus="none", **kwargs)
    threads = torch.get_num_threads()
    torch.set_num_threads(cores)
    try:
        serial = run("badnets", "none", "synthetic", out=tmp_path / "serial", executor="serial", **kwargs)
    finally:
        torch.set_num_threads(threads)

    def artifact_threads(out):
        return {json.loads(p.read_text())["torch_threads"] for p in (out / "artifacts").glob("*/*.json")}

    assert artifact_threads(tmp_path / "share") == {cores} and artifact_threads(tmp_path / "none") == {1}
    assert [r["provenance"]["torch_threads"] for r in _cells(tmp_path / "share").values()] == [cores]
    assert [r["provenance"]["torch_threads"] for r in _cells(tmp_path / "none").values()] == [1]
    # same seed, same thread count: the same numbers, to the bit
    pd.testing.assert_series_equal(_values(shared), _values(serial), check_exact=True)


# ------------------------------------------------------------------------------------------
# Ray Tune: one trial per grid point, cells in the same results store as `run`
# ------------------------------------------------------------------------------------------
@pytest.mark.ray
def test_tune_grid_writes_cells_like_run(tmp_path, capsys):
    pytest.importorskip("ray")
    from wmbench.cli import main

    out = tmp_path / "tuned"
    argv = ["tune", "--methods", "badnets", "--attacks", "none", "--datasets", "synthetic", "--profile", "smoke",
            "--grid", "methods.badnets.poison_rate=0.05,0.2", "--out", str(out), "--no-progress", *TINY_CLI]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "methods.badnets.poison_rate" in printed and "victim_wsr" in printed
    cells = _cells(out)
    assert len(cells) == 2 and {c["status"] for c in cells.values()} == {"ok"}
    rates = sorted(c["cell"]["method_config"]["poison_rate"] for c in cells.values())
    assert rates == [0.05, 0.2]
    # The same grid through `run --sweep` finds every cell finished: same cell ids, same store.
    stamps = {p.stem: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}
    frame = run("badnets", "none", "synthetic", profile="smoke", out=out, overrides=TINY, progress=False,
                sweeps=["methods.badnets.poison_rate=0.05,0.2"])
    assert set(frame["cell_id"]) == set(cells)
    assert {p.stem: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")} == stamps
    capsys.readouterr()
    # argparse: --grid is required; one line, exit 2
    assert main(["tune", "--methods", "badnets", "--datasets", "synthetic", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "--grid" in err and err.count("\n") == 1 and not (tmp_path / "x").exists()
