"""The task graph of a grid, and the body of every task.

The grid is not a flat list of cells. Every cell needs shared artifacts (:mod:`wmbench.artifacts`)
— the benign model, the watermarked victim and key set, the filtered keys when the key filter
is on, and, for attack chains, the models stolen by the chain's first stages — and those are
built once, by their own **artifact task**, before the **cell tasks** that use them:

    benign ──> victim ──> filtered_keys ──> cell (method × attack × labels × seed)
                                       └──> stolen (a chain's first stage, when ≥ 2 cells share it) ──> cell

:func:`build_graph` turns cells into a :class:`TaskGraph` (task ids are ``cell/CELL_ID`` and
``KIND/STORE_KEY``, the artifact store's own content hash, so two cells needing the same artifact
name the same task and it is built once). Tasks carry only small JSON configs; models travel
through the artifact store, whose per-key ``flock`` also keeps two ``wmbench run`` processes
sharing a results folder from training the same artifact twice, and :func:`run_task` takes a
per-cell ``flock`` so they never run the same cell twice. Backends (:mod:`wmbench.executor`)
decide where tasks run; this module decides what each one does.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from wmbench.artifacts import (
    ARTIFACT_KINDS, benign_spec, filtered_keys_spec, prepare_victim, stage_spec, uses_key_filter, victim_spec,
)
from wmbench.cache import ArtifactStore, file_lock
from wmbench.cell import Cell, chain_prefix, describe
from wmbench.errors import TaskTimeout
from wmbench.evaluate import CellLog, evaluate_cell, failed_cell_record, run_cell
from wmbench.plan import RunOptions
from wmbench.records import finished, write_cell
from wmbench.registry import ATTACKS, load_plugin
from wmbench.training import Engine, use_engine

log = logging.getLogger(__name__)

_PREPARE_UPTO = {"benign": "benign", "victim": "victim", "filtered_keys": "keys"}


@dataclass(frozen=True)
class Task:
    """One node: a cell, or an artifact built for the cells that depend on it.

    ``cell`` is the cell's dict; for an artifact, the dict of the first cell that needs it (for
    a ``stolen`` artifact: that cell cut to the chain prefix being built).
    """

    id: str
    kind: str  # "cell" or one of ARTIFACT_KINDS
    cell: Dict[str, Any]
    deps: Tuple[str, ...] = ()
    label: str = ""

    @property
    def is_cell(self) -> bool:
        return self.kind == "cell"


@dataclass
class TaskGraph:
    """Tasks keyed by id, in insertion order (every task comes after its dependencies)."""

    tasks: Dict[str, Task] = field(default_factory=dict)

    def add(self, task: Task) -> Task:
        if task.id in self.tasks:
            return self.tasks[task.id]
        missing = [d for d in task.deps if d not in self.tasks]
        if missing:
            raise ValueError(f"task {task.id} depends on unknown tasks {missing}")
        self.tasks[task.id] = task
        return task

    def __len__(self) -> int:
        return len(self.tasks)

    def __iter__(self) -> Iterator[Task]:
        return iter(self.tasks.values())

    def __getitem__(self, task_id: str) -> Task:
        return self.tasks[task_id]

    @property
    def cells(self) -> List[Task]:
        return [t for t in self.tasks.values() if t.is_cell]

    @property
    def artifacts(self) -> List[Task]:
        return [t for t in self.tasks.values() if not t.is_cell]

    def count(self, kind: str) -> int:
        return sum(1 for t in self.tasks.values() if t.kind == kind)

    def ancestors(self, task_id: str) -> List[str]:
        """Every task ``task_id`` depends on, directly or not (dependencies first)."""
        seen: Dict[str, None] = {}

        def visit(tid: str) -> None:
            for dep in self.tasks[tid].deps:
                if dep not in seen:
                    visit(dep)
                    seen[dep] = None

        visit(task_id)
        return list(seen)

    def dependents(self, task_id: str) -> List[str]:
        return [t.id for t in self.tasks.values() if task_id in t.deps]

    def depth_first(self) -> List[Task]:
        """Cells in order, each preceded by its not yet listed dependencies (the serial order:
        the first results come early and every artifact is built before its first user)."""
        order: Dict[str, None] = {}
        for task in self.cells:
            for dep in self.ancestors(task.id):
                order.setdefault(dep, None)
            order.setdefault(task.id, None)
        for task in self.artifacts:  # artifacts nobody needs (none are created) stay listed
            order.setdefault(task.id, None)
        return [self.tasks[t] for t in order]

    def summary(self) -> str:
        kinds = [f"{self.count(k)} {k}" for k in ARTIFACT_KINDS if self.count(k)]
        return f"{len(self.cells)} cells, artifacts: {', '.join(kinds) or 'none'}"


def build_graph(cells: Sequence[Mapping[str, Any]], cache_dir: str | os.PathLike = ".") -> TaskGraph:
    """The dependency graph of ``cells`` (cell dicts, see :class:`wmbench.cell.Cell`).

    Each distinct benign model, victim and filtered key set becomes one artifact task; a stolen
    model (a prefix of an attack chain, or a whole chain) becomes one when two or more cells
    need it and every stage up to it is cacheable. Cell ``c`` depends on the artifacts it uses.
    """
    store = ArtifactStore(cache_dir)
    parsed = [Cell.from_dict(c) for c in cells]

    def stage_ids(cell: Any) -> List[Optional[str]]:
        """The store id of the model after each stage, None from the first non-cacheable stage on."""
        if cell.attack == "none":
            return []
        ids: List[Optional[str]] = []
        cacheable = True
        for index, name in enumerate(cell.attack_stages):
            cacheable = cacheable and bool(ATTACKS.get(name).cacheable)
            ids.append(f"stolen/{store.key(stage_spec(cell, index))}" if cacheable else None)
        return ids

    users: Dict[str, int] = {}
    for cell in parsed:
        for sid in stage_ids(cell):
            if sid is not None:
                users[sid] = users.get(sid, 0) + 1

    graph = TaskGraph()
    for cell, cell_dict in zip(parsed, cells):
        cell_dict = dict(cell_dict)
        benign = graph.add(Task(f"benign/{store.key(benign_spec(cell))}", "benign", cell_dict, (),
                                f"benign {cell.dataset}/{cell.arch} seed {cell.seed}"))
        last = graph.add(Task(f"victim/{store.key(victim_spec(cell))}", "victim", cell_dict, (benign.id,),
                              f"victim {cell.method} {cell.dataset}/{cell.arch} seed {cell.seed}"))
        if uses_key_filter(cell):
            last = graph.add(Task(f"filtered_keys/{store.key(filtered_keys_spec(cell))}", "filtered_keys", cell_dict,
                                  (last.id,), f"filtered keys {cell.method} {cell.dataset} seed {cell.seed}"))
        deps = [last.id]
        for index, sid in enumerate(stage_ids(cell)):
            if sid is None or users.get(sid, 0) < 2:
                continue
            prefix = chain_prefix(cell, index + 1)
            node = graph.add(Task(sid, "stolen", prefix.as_dict(), (deps[-1],),
                                  f"stolen {prefix.attack} from {cell.method} {cell.dataset} seed {cell.seed}"))
            deps.append(node.id)
        graph.add(Task(f"cell/{cell.cell_id}", "cell", cell_dict, (deps[-1],), describe(cell_dict)))
    return graph


def build_artifact(kind: str, cell_dict: Mapping[str, Any], opts_dict: Mapping[str, Any]) -> None:
    """Build (or find in the store) one artifact for ``cell_dict``; raises on failure."""
    cell = Cell.from_dict(cell_dict)
    opts = RunOptions(**opts_dict)
    if kind in _PREPARE_UPTO:
        prepare_victim(cell, opts, upto=_PREPARE_UPTO[kind])
    elif kind == "stolen":
        evaluate_cell(cell, opts)  # the chain prefix as a cell of its own: stores every stage's model
    else:
        raise ValueError(f"unknown artifact kind {kind!r}; accepted: {', '.join(ARTIFACT_KINDS)}")


@contextlib.contextmanager
def deadline(seconds: Optional[float], what: str) -> Iterator[None]:
    """Raise :class:`~wmbench.errors.TaskTimeout` in the enclosed code once it has run ``seconds``
    (``--cell-timeout``; None: no limit). A POSIX interval timer on the main thread (where the
    serial executor and Ray workers run tasks): it interrupts Python code and sleeps, not a single
    native call in progress, which is short in training loops."""
    if not seconds or not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        if seconds:
            log.warning("--cell-timeout cannot be applied to %s outside a process's main thread", what)
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise TaskTimeout(f"{what} ran past --cell-timeout {seconds:g} s and was stopped")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, float(seconds))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _timed_out(record: Mapping[str, Any]) -> bool:
    return str(record.get("error", "")).startswith(TaskTimeout.__name__)


def _run_cell_task(cell_dict: Mapping[str, Any], opts_dict: Mapping[str, Any], retries: int) -> Dict[str, Any]:
    cell_id = Cell.from_dict(cell_dict).cell_id
    run_dir = Path(opts_dict["run_dir"])
    # One process at a time per cell: a second `wmbench run` on the same folder waits, then reuses.
    with file_lock(run_dir / ".locks" / f"{cell_id}.lock"):
        if not opts_dict.get("overwrite"):
            done = finished(run_dir, cell_id)
            if done is not None:
                return {**done, "reused": True}
        record: Dict[str, Any] = {}
        for attempt in range(retries + 1):
            try:
                with deadline(opts_dict.get("cell_timeout"), f"cell {cell_id}"):
                    record = run_cell(cell_dict, opts_dict)
            except TaskTimeout as exc:  # expired between the cell's work and its record
                record = failed_cell_record(cell_dict, opts_dict, f"{type(exc).__name__}: {exc}")
            if record["status"] != "failed" or _timed_out(record):  # a task that hangs hangs again
                break
            if attempt < retries:
                log.warning("cell %s failed (%s); retrying (%d/%d)", cell_id, record.get("error"), attempt + 1, retries)
        if attempt:
            record["attempts"] = attempt + 1
            write_cell(run_dir, record)
        return record


def _run_artifact_task(task_id: str, kind: str, cell_dict: Mapping[str, Any], opts_dict: Mapping[str, Any],
                       retries: int) -> Dict[str, Any]:
    for module in opts_dict.get("plugins") or ():
        load_plugin(module)
    started = time.perf_counter()
    error, tb = "", ""
    log_path = Path(opts_dict["run_dir"]) / "logs" / "artifacts" / f"{task_id.replace('/', '-')}.log"
    with CellLog(log_path):
        for attempt in range(retries + 1):
            try:
                log.info("artifact %s (%s)", task_id, describe(cell_dict))
                with deadline(opts_dict.get("cell_timeout"), f"artifact {task_id}"):
                    build_artifact(kind, cell_dict, opts_dict)
                return {"task": task_id, "status": "ok", "wall_s": time.perf_counter() - started,
                        "attempts": attempt + 1}
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # recorded in the cells that need it
                error, tb = f"{type(exc).__name__}: {exc}", traceback.format_exc()
                log.exception("artifact %s failed (attempt %d/%d)", task_id, attempt + 1, retries + 1)
                if isinstance(exc, TaskTimeout):  # a build that hangs hangs again
                    break
    return {"task": task_id, "status": "failed", "error": error, "traceback": tb,
            "wall_s": time.perf_counter() - started, "attempts": attempt + 1}


def run_task(task_id: str, kind: str, cell_dict: Mapping[str, Any], opts_dict: Mapping[str, Any], retries: int = 1,
             deps: Sequence[Mapping[str, Any]] = ()) -> Dict[str, Any]:
    """Run one task after its dependencies (``deps``: their results). Never raises for a task
    failure: a cell returns its record (``status`` ok / failed), an artifact a status dict."""
    failed = [d for d in deps if d.get("status") == "failed"]
    if failed:
        first = failed[0]
        error = f"dependency {first.get('task', '?')} failed: {first.get('error', '')}"
        if kind == "cell":
            return failed_cell_record(cell_dict, opts_dict, error, first.get("traceback", ""))
        return {"task": task_id, "status": "failed", "error": error, "traceback": first.get("traceback", ""),
                "wall_s": 0.0, "attempts": 0}
    with use_engine(Engine(compile=bool(opts_dict.get("compile")))):
        if kind == "cell":
            return _run_cell_task(cell_dict, opts_dict, retries)
        return _run_artifact_task(task_id, kind, cell_dict, opts_dict, retries)


def lost_task_result(task: Task, opts_dict: Mapping[str, Any], error: str, tb: str = "") -> Dict[str, Any]:
    """The result of a task whose worker died for good (its node was lost, the backend's retries
    are spent): a ``failed`` status for an artifact, and for a cell its record. A worker can die
    after writing a finished record and before its result comes back, so a finished record on
    disk is kept (unless ``overwrite``: then it may be an earlier run's) and only an unfinished
    cell is recorded ``failed``, under the cell's lock like every other write of its record."""
    if not task.is_cell:
        return {"task": task.id, "status": "failed", "error": error, "traceback": tb}
    run_dir = Path(opts_dict["run_dir"])
    cell_id = Cell.from_dict(task.cell).cell_id
    with file_lock(run_dir / ".locks" / f"{cell_id}.lock"):
        done = None if opts_dict.get("overwrite") else finished(run_dir, cell_id)
        if done is not None:
            log.warning("cell %s: its worker died after recording it %s; kept", cell_id, done["status"])
            return done
        return failed_cell_record(task.cell, opts_dict, error, tb)


def task_options(graph: TaskGraph, task: Task, opts: Mapping[str, Any]) -> Dict[str, Any]:
    """The run options of one task: with ``overwrite``, the artifacts this run rebuilt before it
    are marked fresh so the task reuses them instead of rebuilding them again."""
    out = dict(opts)
    if opts.get("overwrite"):
        out["fresh_artifacts"] = tuple(a for a in graph.ancestors(task.id) if not a.startswith("cell/"))
    return out
