"""Schedule a grid as a dependency graph of tasks, in this process or on Ray (and Ray Tune).

The grid is not a flat list of cells. Every cell needs shared **artifacts** — the benign model
of its (dataset, data, architecture, training schedule, seed), the watermarked victim and key
set of its (method, method settings, ...), DeepTracer's surrogate and filtered keys when the key
filter is on, and, for attack chains, the models stolen by the chain's first stages — and
those are built once, by their own **artifact task**, before the **cell tasks** that use them:

    benign ──> victim ──> filtered_keys ──> cell (method × attack × labels × seed)
                                       └──> stolen (a chain's first stage, when ≥ 2 cells share it) ──> cell

:func:`build_graph` turns the cells into a :class:`TaskGraph` (task ids are ``cell/CELL_ID`` and
``KIND/STORE_KEY``, the artifact store's own content hash, so two cells needing the same artifact
name the same task and it is built once). Tasks only carry small JSON configs; models travel
through the artifact store (:mod:`wmbench.cache`), whose per-key ``flock`` also keeps two
``wmbench run`` processes sharing a results folder from training the same artifact twice, and
a per-cell ``flock`` keeps them from running the same cell twice.

Backends run the graph: :class:`SerialBackend` (in this process, dependencies first; the
debugging executor) and :class:`RayBackend` (an embedded local Ray instance, or a cluster given
by ``address``/``$RAY_ADDRESS``; artifact tasks are Ray tasks and cell tasks take their
``ObjectRef`` as arguments, so Ray starts a cell only once its artifacts exist). Each task gets
``cpus_per_cell`` CPUs (torch uses that many threads) and ``gpus_per_cell`` GPUs (fractions
allowed; never asked for where the cluster has none). A failed task is retried ``retries``
times; a cell that still fails is recorded ``failed`` with its traceback (``wmbench show``), a
failed artifact fails the cells that need it, and the rest of the grid completes. Ctrl-C
cancels the pending tasks and shuts Ray down; re-running the same command resumes.

:func:`tune` runs a Ray Tune grid (``tune.grid_search``) over method/attack/any settings with
the same cell function (:func:`wmbench.runner.run_cell`) into the same results store.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import logging
import math
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from wmbench.cache import ArtifactStore, file_lock
from wmbench.config import canonical_json, stable_hash
from wmbench.errors import UserError

log = logging.getLogger(__name__)

__all__ = [
    "Task", "TaskGraph", "build_graph", "run_task", "build_artifact", "SerialBackend", "RayBackend",
    "make_backend", "execute", "Progress", "tune", "tune_axes",
]

#: Artifact kinds, in dependency order.
ARTIFACT_KINDS: Tuple[str, ...] = ("benign", "victim", "filtered_keys", "stolen")
_PREPARE_UPTO = {"benign": "benign", "victim": "victim", "filtered_keys": "keys"}


# --------------------------------------------------------------------------------------------
# The graph
# --------------------------------------------------------------------------------------------

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


def _short(cell: Mapping[str, Any]) -> str:
    labels = f"[{cell.get('labels')}]" if cell.get("labels") else ""
    sweep = ",".join(f"{k}={v}" for k, v in sorted((cell.get("sweep") or {}).items()))
    return (f"{cell['method']} × {cell['attack']}{labels} on {cell['dataset']} seed {cell['seed']}"
            + (f" [{sweep}]" if sweep else ""))


def build_graph(cells: Sequence[Mapping[str, Any]], cache_dir: str | os.PathLike = ".") -> TaskGraph:
    """The dependency graph of ``cells`` (cell dicts, see :class:`wmbench.runner.Cell`).

    Each distinct benign model, victim and filtered key set becomes one artifact task; a stolen
    model (a prefix of an attack chain, or a whole chain) becomes one when two or more cells
    need it and every stage up to it is cacheable. Cell ``c`` depends on the artifacts it uses.
    """
    from wmbench.registry import ATTACKS
    from wmbench.runner import (
        Cell, benign_spec, chain_prefix, filtered_keys_spec, stage_spec, uses_key_filter, victim_spec,
    )

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
        graph.add(Task(f"cell/{cell.cell_id}", "cell", cell_dict, (deps[-1],), _short(cell_dict)))
    return graph


# --------------------------------------------------------------------------------------------
# Running one task (in this process or in a Ray worker)
# --------------------------------------------------------------------------------------------

def build_artifact(kind: str, cell_dict: Mapping[str, Any], opts_dict: Mapping[str, Any]) -> None:
    """Build (or find in the store) one artifact for ``cell_dict``; raises on failure."""
    from wmbench.runner import Cell, RunOptions, _evaluate_cell, prepare_victim

    cell = Cell.from_dict(cell_dict)
    opts = RunOptions(**opts_dict)
    if kind in _PREPARE_UPTO:
        prepare_victim(cell, opts, upto=_PREPARE_UPTO[kind])
    elif kind == "stolen":
        _evaluate_cell(cell, opts)  # the chain prefix as a cell of its own: stores every stage's model
    else:
        raise ValueError(f"unknown artifact kind {kind!r}; accepted: {', '.join(ARTIFACT_KINDS)}")


def failed_cell_record(cell_dict: Mapping[str, Any], opts_dict: Mapping[str, Any], error: str,
                       tb: str = "") -> Dict[str, Any]:
    """Write and return the ``failed`` record of a cell that could not run (a dependency failed,
    or its worker died)."""
    from wmbench.results import provenance, write_cell
    from wmbench.runner import Cell

    cell = Cell.from_dict(cell_dict)
    record = {
        "cell_id": cell.cell_id, "run": opts_dict.get("run_name", ""), "cell": cell.as_dict(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "method_params_hash": stable_hash(cell.method_config, 12), "attack_params_hash": stable_hash(cell.attack_configs, 12),
        "status": "failed", "metrics": {}, "error": error, "traceback": tb, "wall_s": 0.0, "provenance": provenance(""),
    }
    write_cell(Path(opts_dict["run_dir"]), record)
    return record


def _run_cell_task(cell_dict: Mapping[str, Any], opts_dict: Mapping[str, Any], retries: int) -> Dict[str, Any]:
    from wmbench.results import finished, write_cell
    from wmbench.runner import Cell, run_cell

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
            record = run_cell(cell_dict, opts_dict)
            if record["status"] != "failed":
                break
            if attempt < retries:
                log.warning("cell %s failed (%s); retrying (%d/%d)", cell_id, record.get("error"), attempt + 1, retries)
        if attempt:
            record["attempts"] = attempt + 1
            write_cell(run_dir, record)
        return record


def _run_artifact_task(task_id: str, kind: str, cell_dict: Mapping[str, Any], opts_dict: Mapping[str, Any],
                       retries: int) -> Dict[str, Any]:
    from wmbench.registry import load_plugin
    from wmbench.runner import _CellLog

    for module in opts_dict.get("plugins") or ():
        load_plugin(module)
    started = time.perf_counter()
    error, tb = "", ""
    log_path = Path(opts_dict["run_dir"]) / "logs" / "artifacts" / f"{task_id.replace('/', '-')}.log"
    with _CellLog(log_path):
        for attempt in range(retries + 1):
            try:
                log.info("artifact %s (%s)", task_id, _short(cell_dict))
                build_artifact(kind, cell_dict, opts_dict)
                return {"task": task_id, "status": "ok", "wall_s": time.perf_counter() - started,
                        "attempts": attempt + 1}
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # recorded in the cells that need it
                error, tb = f"{type(exc).__name__}: {exc}", traceback.format_exc()
                log.exception("artifact %s failed (attempt %d/%d)", task_id, attempt + 1, retries + 1)
    return {"task": task_id, "status": "failed", "error": error, "traceback": tb,
            "wall_s": time.perf_counter() - started, "attempts": retries + 1}


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
    if kind == "cell":
        return _run_cell_task(cell_dict, opts_dict, retries)
    return _run_artifact_task(task_id, kind, cell_dict, opts_dict, retries)


def _task_options(graph: TaskGraph, task: Task, opts: Mapping[str, Any]) -> Dict[str, Any]:
    """The run options of one task: with ``overwrite``, the artifacts this run rebuilt before it
    are marked fresh so the task reuses them instead of rebuilding them again."""
    out = dict(opts)
    if opts.get("overwrite"):
        out["fresh_artifacts"] = tuple(a for a in graph.ancestors(task.id) if not a.startswith("cell/"))
    return out


# --------------------------------------------------------------------------------------------
# Progress
# --------------------------------------------------------------------------------------------

class Progress:
    """One live line on stderr: tasks done with an ETA, and cells done / running / failed / total."""

    def __init__(self, graph: TaskGraph, enabled: bool):
        self.total_cells = len(graph.cells)
        self.total_artifacts = len(graph.artifacts)
        self.cells_done = self.cells_failed = self.artifacts_done = 0
        self.running = 0
        self.enabled = enabled
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=len(graph), unit="task", file=sys.stderr, dynamic_ncols=True, desc="grid",
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} tasks "
                                       "[{elapsed}<{remaining}] {postfix}")
            self._refresh()

    def _refresh(self) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(
                f"cells {self.cells_done}/{self.total_cells} done, {self.running} running, {self.cells_failed} failed; "
                f"artifacts {self.artifacts_done}/{self.total_artifacts}", refresh=True)

    def set_running(self, running: int) -> None:
        if running != self.running:
            self.running = running
            self._refresh()

    def finished(self, task: Task, result: Mapping[str, Any]) -> None:
        if task.is_cell:
            self.cells_done += 1
            self.cells_failed += result.get("status") == "failed"
        else:
            self.artifacts_done += 1
        if self.cells_done == self.total_cells:
            self.running = 0
        if self.bar is not None:
            self.bar.update(1)
            self._refresh()
        if not task.is_cell and result.get("status") == "failed":
            self.write(f"[failed] {task.label}: {result.get('error', '')}")

    def write(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(message, file=sys.stderr)
        else:
            log.warning("%s", message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# --------------------------------------------------------------------------------------------
# Backends
# --------------------------------------------------------------------------------------------

class SerialBackend:
    """Every task in this process, dependencies first (:meth:`TaskGraph.depth_first`)."""

    name = "serial"

    def run(self, graph: TaskGraph, opts: Mapping[str, Any], retries: int,
            progress: Optional[Progress] = None) -> Iterator[Tuple[Task, Dict[str, Any]]]:
        results: Dict[str, Dict[str, Any]] = {}
        for task in graph.depth_first():
            if progress is not None:
                progress.set_running(1)
            result = run_task(task.id, task.kind, task.cell, _task_options(graph, task, opts), retries,
                              [results[d] for d in task.deps])
            results[task.id] = result
            yield task, result


def _ray_task(task_id: str, kind: str, cell: Dict[str, Any], opts: Dict[str, Any], retries: int, threads: int,
              *deps: Dict[str, Any]) -> Dict[str, Any]:
    """The body of every Ray task (deps arrive resolved: Ray passes ObjectRef arguments by value)."""
    import torch

    torch.set_num_threads(max(1, threads))
    if opts.get("device", "auto") == "auto":
        try:
            import ray

            if not ray.get_gpu_ids():  # no GPU was given to this task: never take one anyway
                opts = {**opts, "device": "cpu"}
        except Exception:  # pragma: no cover - outside a Ray worker
            pass
    return run_task(task_id, kind, cell, opts, retries, deps)


def _plugin_paths(plugins: Sequence[str]) -> List[str]:
    """Folders Ray workers need on ``PYTHONPATH`` to import the ``--plugin`` modules."""
    paths: List[str] = []
    for module in plugins:
        if ":" in module or "/" in module:
            continue
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.origin or spec.origin in ("built-in", "frozen"):
            continue
        root = Path(spec.origin).resolve().parent
        for _ in range(module.count(".") + (1 if spec.submodule_search_locations else 0)):
            root = root.parent
        if str(root) not in paths and "site-packages" not in str(root):
            paths.append(str(root))
    return paths


class RayBackend:
    """Tasks on Ray: an embedded local instance (``num_cpus`` = this process's CPU affinity, no
    dashboard) unless ``address`` (or ``$RAY_ADDRESS``) names a cluster to join.

    Artifact tasks are submitted first and cell tasks take their ObjectRefs as arguments, so Ray
    runs a cell only after its artifacts exist. ``gpus_per_cell=None`` asks for one GPU per task
    where the cluster has GPUs (and ``device`` is not ``cpu``), none otherwise.
    """

    name = "ray"

    def __init__(self, address: Optional[str] = None, cpus_per_cell: float = 1.0,
                 gpus_per_cell: Optional[float] = None, device: str = "auto", plugins: Sequence[str] = (),
                 num_cpus: Optional[int] = None, object_store_mb: int = 256):
        if not cpus_per_cell or cpus_per_cell <= 0:
            raise UserError(f"--cpus-per-cell must be positive, got {cpus_per_cell}")
        if gpus_per_cell is not None and gpus_per_cell < 0:
            raise UserError(f"--gpus-per-cell must be 0 or more, got {gpus_per_cell}")
        if gpus_per_cell is not None and gpus_per_cell > 1 and gpus_per_cell != int(gpus_per_cell):
            raise UserError(f"--gpus-per-cell above 1 must be a whole number (Ray's rule), got {gpus_per_cell}")
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.cpus_per_cell = float(cpus_per_cell)
        self.gpus_per_cell = gpus_per_cell
        self.device = device
        self.plugins = tuple(plugins)
        self.num_cpus = num_cpus
        self.object_store_mb = object_store_mb
        self.owns = False
        self.gpus = 0.0
        self.slots = 1
        if self.address is None and gpus_per_cell and not self._local_gpus():
            raise UserError(f"--gpus-per-cell {gpus_per_cell} asks for GPUs but this machine has none; "
                            "use --gpus-per-cell 0 (the default here) or --ray-address of a cluster with GPUs")

    @staticmethod
    def _local_gpus() -> int:
        import torch

        return torch.cuda.device_count()

    def start(self) -> None:
        """Start (or join) Ray and fix the per-task resources against what the cluster has."""
        try:
            import ray
        except ImportError:
            raise UserError("the ray executor needs the optional extra: pip install 'wmbench[ray]' "
                            "(or use --executor serial)") from None
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")  # Tune trials keep our (absolute) paths
        if not ray.is_initialized():
            kwargs: Dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                      "configure_logging": False}
            paths = _plugin_paths(self.plugins)
            env = {"RAY_CHDIR_TO_TRIAL_DIR": "0"}
            if paths:
                env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
            kwargs["runtime_env"] = {"env_vars": env}
            if self.address:
                kwargs["address"] = self.address
            else:
                kwargs["num_cpus"] = self.num_cpus or len(os.sched_getaffinity(0))
                kwargs["object_store_memory"] = self.object_store_mb * 1024 * 1024
            log.info("starting Ray (%s)", f"address {self.address}" if self.address else f"local, {kwargs['num_cpus']} CPUs")
            try:
                ray.init(**kwargs)
            except ConnectionError as exc:
                raise UserError(f"cannot join the Ray cluster at {self.address}: {exc}") from None
            self.owns = True
        self._fit_resources(ray)

    def _fit_resources(self, ray: Any) -> None:
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive", True)]
        total_gpus = float(sum(n.get("GPU", 0.0) for n in nodes))
        node_gpus = max([n.get("GPU", 0.0) for n in nodes] or [0.0])
        node_cpus = max([n.get("CPU", 0.0) for n in nodes] or [0.0])
        total_cpus = float(sum(n.get("CPU", 0.0) for n in nodes))
        if self.cpus_per_cell > node_cpus:
            raise UserError(f"--cpus-per-cell {self.cpus_per_cell:g} exceeds the largest node's {node_cpus:g} CPUs; "
                            f"use at most {node_cpus:g}")
        wanted = self.gpus_per_cell
        if wanted is None:
            wanted = 1.0 if node_gpus >= 1 and self.device != "cpu" else 0.0
        if wanted > 0 and total_gpus == 0:
            raise UserError(f"--gpus-per-cell {wanted:g} asks for GPUs but the Ray cluster has none; "
                            "use --gpus-per-cell 0 or join a cluster with GPUs (--ray-address)")
        if wanted > node_gpus:
            raise UserError(f"--gpus-per-cell {wanted:g} exceeds the largest node's {node_gpus:g} GPUs")
        self.gpus = float(wanted)
        slots = total_cpus / self.cpus_per_cell
        if self.gpus:
            slots = min(slots, total_gpus / self.gpus)
        self.slots = max(1, int(math.floor(slots + 1e-9)))
        log.info("Ray: %g CPUs, %g GPUs; %g CPUs and %g GPUs per task, up to %d at once",
                 total_cpus, total_gpus, self.cpus_per_cell, self.gpus, self.slots)

    def stop(self) -> None:
        if self.owns:
            import ray

            ray.shutdown()
            self.owns = False

    def run(self, graph: TaskGraph, opts: Mapping[str, Any], retries: int,
            progress: Optional[Progress] = None) -> Iterator[Tuple[Task, Dict[str, Any]]]:
        self.start()
        import ray
        from ray.exceptions import RayError

        threads = max(1, int(self.cpus_per_cell))
        remote = ray.remote(_ray_task).options(num_cpus=self.cpus_per_cell, num_gpus=self.gpus,
                                               max_retries=retries)  # retries after a worker dies
        refs: Dict[str, Any] = {}
        owner: Dict[Any, Task] = {}
        done: set = set()
        try:
            for task in graph.depth_first():  # dependencies are always submitted first
                ref = remote.remote(task.id, task.kind, task.cell, _task_options(graph, task, opts), retries, threads,
                                    *[refs[d] for d in task.deps])
                refs[task.id] = ref
                owner[ref] = task
            pending = list(refs.values())
            while pending:
                ready, pending = ray.wait(pending, num_returns=1, timeout=1.0)
                if progress is not None:
                    runnable = sum(1 for r in pending if all(d in done for d in owner[r].deps))
                    progress.set_running(min(runnable, self.slots))
                for ref in ready:
                    task = owner[ref]
                    try:
                        result = ray.get(ref)
                    except RayError as exc:  # the worker died (after Ray's retries) or a dependency's did
                        error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                        if task.is_cell:
                            result = failed_cell_record(task.cell, opts, error, str(exc))
                        else:
                            result = {"task": task.id, "status": "failed", "error": error, "traceback": str(exc)}
                    done.add(task.id)
                    yield task, result
        except BaseException:
            for ref in refs.values():
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # already finished, or Ray is going down
                    pass
            raise
        finally:
            self.stop()


def make_backend(name: str, *, explicit: bool = True, address: Optional[str] = None, cpus_per_cell: float = 1.0,
                 gpus_per_cell: Optional[float] = None, device: str = "auto",
                 plugins: Sequence[str] = ()) -> "SerialBackend | RayBackend":
    """``"serial"`` or ``"ray"``. When Ray was only the default (``explicit=False``) and is not
    installed, fall back to serial with a warning; asked for explicitly, that is an error."""
    if name == "serial":
        if gpus_per_cell:
            log.warning("--gpus-per-cell only applies to the ray executor")
        return SerialBackend()
    if name != "ray":
        raise UserError(f"unknown executor {name!r}; accepted: ray, serial")
    if importlib.util.find_spec("ray") is None:
        if explicit:
            raise UserError("the ray executor needs the optional extra: pip install 'wmbench[ray]' "
                            "(or use --executor serial)")
        log.warning("ray is not installed; running the grid with the serial executor")
        return SerialBackend()
    return RayBackend(address=address, cpus_per_cell=cpus_per_cell, gpus_per_cell=gpus_per_cell, device=device,
                      plugins=plugins)


def execute(cells: Sequence[Mapping[str, Any]], opts: Mapping[str, Any], *, backend: Any = None, retries: int = 1,
            on_record: Optional[Callable[[Dict[str, Any]], None]] = None,
            progress: Optional[bool] = None) -> List[Dict[str, Any]]:
    """Run ``cells`` (cell dicts) as a task graph on ``backend``; return their records.

    ``progress``: True shows the live view on stderr, None shows it when stderr is a terminal.
    ``on_record`` is called with each cell's record as it finishes (artifacts are not reported).
    On Ctrl-C the pending tasks are cancelled and KeyboardInterrupt propagates (finished cells
    are already on disk: rerunning resumes).
    """
    backend = backend or SerialBackend()
    graph = build_graph(cells, opts.get("cache_dir", "."))
    log.info("task graph: %s", graph.summary())
    show = progress is True or (progress is None and sys.stderr.isatty())
    bar = Progress(graph, show)
    records: List[Dict[str, Any]] = []
    try:
        for task, result in backend.run(graph, opts, retries, bar):
            bar.finished(task, result)
            if task.is_cell:
                records.append(result)
                if on_record is not None:
                    on_record(result)
    finally:
        bar.close()
    return records


# --------------------------------------------------------------------------------------------
# Ray Tune
# --------------------------------------------------------------------------------------------

def tune_axes(grid: Sequence[str]) -> List[Tuple[str, List[Any]]]:
    """``["methods.deeptracer.lambda3=0.001,0.01"]`` -> ``[("methods.deeptracer.lambda3", [0.001, 0.01])]``
    (parsed by :func:`wmbench.runner.expand_sweeps`, the same code as ``--sweep``)."""
    from wmbench.runner import expand_sweeps

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


def tune(
    methods: str | Sequence[str] = "deeptracer",
    attacks: str | Sequence[str] = "knockoff",
    datasets: str | Sequence[str] = "fmnist",
    *,
    grid: Sequence[str],
    seeds: str | Sequence[int] = (0,),
    profile: str = "quick",
    overrides: Sequence[str] = (),
    config: Optional[str] = None,
    data_root: Optional[str] = None,
    download: bool = False,
    out: Optional[str | os.PathLike] = None,
    cache_dir: Optional[str | os.PathLike] = None,
    ray_address: Optional[str] = None,
    cpus_per_cell: float = 1.0,
    gpus_per_cell: Optional[float] = None,
    retries: int = 1,
    overwrite: bool = False,
    plugins: Sequence[str] = (),
    device: str = "auto",
    progress: Optional[bool] = None,
):
    """A Ray Tune grid search: one trial per point of ``grid`` (``KEY=V1,V2,...`` items, the
    ``--sweep`` syntax), each running its methods × attacks × datasets × seeds cells with
    :func:`wmbench.runner.run_cell` into the run folder (``RUN/cells``, resumable like ``run``;
    Tune's own files go to ``RUN/tune/``). Returns ``(trials, frame)``: one row per trial with
    its grid values and mean metrics, and the run's long results table.
    """
    import pandas as pd

    from wmbench import runner
    from wmbench.results import consolidate

    if not grid:
        raise UserError("wmbench tune needs at least one --grid KEY=V1,V2,... (e.g. methods.deeptracer.lambda3=0.001,0.01)")
    if retries < 0:
        raise UserError(f"--retries must be 0 or more, got {retries}")
    axes = tune_axes(grid)
    run_plan = runner.plan_run(methods, attacks, datasets, seeds=seeds, profile=profile, overrides=overrides,
                               sweeps=list(grid), config=config, data_root=data_root, download=download, out=out,
                               cache_dir=cache_dir, overwrite=overwrite, plugins=plugins, device=device,
                               progress=False, executor="tune")
    if importlib.util.find_spec("ray") is None:
        raise UserError("wmbench tune needs Ray Tune: pip install 'wmbench[ray]'")
    backend = RayBackend(address=ray_address, cpus_per_cell=cpus_per_cell, gpus_per_cell=gpus_per_cell,
                         device=device, plugins=plugins)
    runner.start_run(run_plan)
    cells_by_combo: Dict[str, List[Dict[str, Any]]] = {}
    seen = set()
    for p in run_plan.planned:
        if p.skipped_reason or p.cell.cell_id in seen:
            continue
        seen.add(p.cell.cell_id)
        cells_by_combo.setdefault(canonical_json(dict(p.cell.sweep)), []).append(p.cell.as_dict())
    opts = dataclasses.asdict(run_plan.opts)
    backend.start()
    try:
        from ray import tune as ray_tune

        trainable = ray_tune.with_parameters(_tune_trial, cells_by_combo=cells_by_combo, axes=[k for k, _ in axes],
                                             opts=opts, retries=retries, threads=max(1, int(cpus_per_cell)))
        trainable = ray_tune.with_resources(trainable, {"cpu": backend.cpus_per_cell, "gpu": backend.gpus})
        storage = run_plan.run_dir / "tune"
        storage.mkdir(parents=True, exist_ok=True)
        name = "tune-" + time.strftime("%Y%m%d-%H%M%S")
        show = progress is True or (progress is None and sys.stderr.isatty())
        tuner = ray_tune.Tuner(
            trainable,
            param_space={key: ray_tune.grid_search(values) for key, values in axes},
            tune_config=ray_tune.TuneConfig(num_samples=1),
            run_config=ray_tune.RunConfig(name=name, storage_path=str(storage), verbose=1 if show else 0),
        )
        results = tuner.fit()
        rows = []
        for result in results:
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
    from wmbench.cache import atomic_write_text

    atomic_write_text(run_plan.run_dir / "tune" / f"{name}.csv", trials.to_csv(index=False))
    ids = {p.cell.cell_id for p in run_plan.planned}
    return trials, frame[frame["cell_id"].isin(ids)].reset_index(drop=True)
