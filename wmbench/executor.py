"""Execution backends: where the tasks of a grid run. One interface, two implementations.

A backend has ``run(graph, opts, retries, progress)``, which runs every task of a
:class:`~wmbench.tasks.TaskGraph` after its dependencies and yields ``(task, result)`` as tasks
finish (:class:`Backend`). :class:`SerialBackend` runs them in this process, dependencies first
(the debugging executor); :class:`RayBackend` runs them as Ray tasks on an embedded local
instance or on a cluster given by ``address``/``$RAY_ADDRESS`` — artifact tasks are Ray tasks
and cell tasks take their ``ObjectRef`` as arguments, so Ray starts a cell only once its
artifacts exist. Each task gets ``cpus_per_cell`` CPUs (torch uses that many threads) and
``gpus_per_cell`` GPUs (fractions allowed; never asked for where the cluster has none); with
``spare_cpus="share"`` (the default) a task that starts while fewer tasks are runnable than CPU
slots gets the spare CPUs too (:func:`cpu_shares`), so the benign → victim → surrogate chain at
the head of every grid uses every core instead of one. A failed
task is retried ``retries`` times; a cell that still fails is recorded ``failed`` with its
traceback, a failed artifact fails the cells that need it, and the rest of the grid completes.
A task whose node is lost is rerun by Ray (``retries`` times) on the nodes left; the driver
follows nodes that leave or join (every ``NODE_CHECK_S`` seconds), resubmits with fewer CPUs a
task that asked for more than any node left has (it would wait forever), and keeps the finished
record of a cell whose worker died after writing it (:func:`~wmbench.tasks.lost_task_result`).
Ctrl-C cancels the pending tasks and shuts Ray down; re-running the same command resumes.

:func:`execute` is the one call the launchers (:mod:`wmbench.runner`, :mod:`wmbench.tune`) make.
"""
from __future__ import annotations

import importlib.util
import logging
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Protocol, Sequence, Tuple

from wmbench.errors import UserError
from wmbench.progress import Progress
from wmbench.spec import SPARE_CPUS, GridSpec
from wmbench.tasks import Task, TaskGraph, build_graph, lost_task_result, run_task, task_options

log = logging.getLogger(__name__)

NODE_CHECK_S = 5.0  # how often a running grid looks for Ray nodes that joined or were lost


class Backend(Protocol):
    """Runs a task graph; yields each task with its result as it finishes."""

    name: str

    def run(self, graph: TaskGraph, opts: Mapping[str, Any], retries: int,
            progress: Optional[Progress] = None) -> Iterator[Tuple[Task, Dict[str, Any]]]:
        ...


class SerialBackend:
    """Every task in this process, dependencies first (:meth:`TaskGraph.depth_first`)."""

    name = "serial"

    def run(self, graph: TaskGraph, opts: Mapping[str, Any], retries: int,
            progress: Optional[Progress] = None) -> Iterator[Tuple[Task, Dict[str, Any]]]:
        results: Dict[str, Dict[str, Any]] = {}
        for task in graph.depth_first():
            if progress is not None:
                progress.set_running(1)
            result = run_task(task.id, task.kind, task.cell, task_options(graph, task, opts), retries,
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


def cpu_shares(ready: int, free_cpus: float, cpus_per_cell: float, max_cpus: float, share: bool = True,
               free_slots: Optional[int] = None) -> List[float]:
    """The CPUs of each of the ``ready`` tasks that can start now (the first ones, in order).

    Packing: when at least as many tasks are ready as there are free slots
    (``free_cpus // cpus_per_cell``, or fewer when ``free_slots`` — e.g. the free GPU slots — says
    so), each starting task gets ``cpus_per_cell``. Sharing (``share=True``): when fewer are
    ready, the free CPUs are split among them in whole CPUs, the first ones taking the remainder,
    each at most ``max_cpus`` (the largest node's) and at least ``cpus_per_cell``. Torch then runs
    that many threads in the task. Results on CPU can differ in the last bits between thread
    counts (the count is recorded with every cell and artifact); ``share=False`` fixes it.
    """
    cpu_slots = int(math.floor(free_cpus / cpus_per_cell + 1e-9))
    n = min(ready, cpu_slots if free_slots is None else min(cpu_slots, free_slots))
    if n <= 0:
        return []
    if not share or n >= cpu_slots:
        return [cpus_per_cell] * n
    whole = int(math.floor(free_cpus + 1e-9))
    base, extra = divmod(whole, n)
    return [max(cpus_per_cell, min(max_cpus, float(base + (1 if i < extra else 0)))) for i in range(n)]


class RayBackend:
    """Tasks on Ray: an embedded local instance (``num_cpus`` = this process's CPU affinity, no
    dashboard) unless ``address`` (or ``$RAY_ADDRESS``) names a cluster to join.

    A task is submitted once its dependencies have finished (it takes their ObjectRefs as
    arguments), with the CPUs :func:`cpu_shares` gives it. ``gpus_per_cell=None`` asks for one GPU
    per task where the cluster has GPUs (and ``device`` is not ``cpu``), none otherwise.
    """

    name = "ray"

    def __init__(self, address: Optional[str] = None, cpus_per_cell: float = 1.0,
                 gpus_per_cell: Optional[float] = None, device: str = "auto", plugins: Sequence[str] = (),
                 num_cpus: Optional[int] = None, object_store_mb: int = 256, spare_cpus: str = "share"):
        if not cpus_per_cell or cpus_per_cell <= 0:
            raise UserError(f"--cpus-per-cell must be positive, got {cpus_per_cell}")
        if gpus_per_cell is not None and gpus_per_cell < 0:
            raise UserError(f"--gpus-per-cell must be 0 or more, got {gpus_per_cell}")
        if gpus_per_cell is not None and gpus_per_cell > 1 and gpus_per_cell != int(gpus_per_cell):
            raise UserError(f"--gpus-per-cell above 1 must be a whole number (Ray's rule), got {gpus_per_cell}")
        if spare_cpus not in SPARE_CPUS:
            raise UserError(f"--spare-cpus must be one of {', '.join(SPARE_CPUS)}, got {spare_cpus!r}")
        self.spare_cpus = spare_cpus
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
        self.total_cpus = self.node_cpus = self.total_gpus = 0.0
        if self.address is None:
            check_local_device(device)
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

    @staticmethod
    def _capacity(ray: Any) -> Tuple[float, float, float, float]:
        """The alive nodes' CPUs and the largest node's, their GPUs and the largest node's."""
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive", True)]
        cpus, gpus = [float(n.get("CPU", 0.0)) for n in nodes], [float(n.get("GPU", 0.0)) for n in nodes]
        return sum(cpus), max(cpus or [0.0]), sum(gpus), max(gpus or [0.0])

    def _fit_resources(self, ray: Any) -> None:
        total_cpus, node_cpus, total_gpus, node_gpus = self._capacity(ray)
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
        self.total_cpus, self.node_cpus, self.total_gpus = total_cpus, float(node_cpus), total_gpus
        slots = total_cpus / self.cpus_per_cell
        if self.gpus:
            slots = min(slots, total_gpus / self.gpus)
        self.slots = max(1, int(math.floor(slots + 1e-9)))
        log.info("Ray: %g CPUs, %g GPUs; %g CPUs and %g GPUs per task, up to %d at once",
                 total_cpus, total_gpus, self.cpus_per_cell, self.gpus, self.slots)

    def _follow_nodes(self, ray: Any, running: Mapping[Any, Tuple[Task, float]]) -> List[Any]:
        """Follow the nodes that joined or left mid-run (the CPUs new tasks may take); return the
        running tasks that asked for more CPUs than any node left has: their node was lost and
        Ray's retry of them waits for a node that will not come."""
        total_cpus, node_cpus, total_gpus, _ = self._capacity(ray)
        if (total_cpus, node_cpus, total_gpus) == (self.total_cpus, self.node_cpus, self.total_gpus):
            return []
        log.warning("the Ray cluster changed: %g CPUs (%g on the largest node), %g GPUs; was %g (%g), %g",
                    total_cpus, node_cpus, total_gpus, self.total_cpus, self.node_cpus, self.total_gpus)
        self.total_cpus, self.node_cpus, self.total_gpus = total_cpus, node_cpus, total_gpus
        if node_cpus < self.cpus_per_cell:  # no node can run any task: wait for one to join
            return []
        return [ref for ref, (_, cpus) in running.items() if cpus > node_cpus + 1e-9]

    def stop(self) -> None:
        if self.owns:
            import ray

            ray.shutdown()
            self.owns = False

    def _free_gpu_slots(self, used_gpus: float) -> Optional[int]:
        if not self.gpus:
            return None
        return int(math.floor((self.total_gpus - used_gpus) / self.gpus + 1e-9))

    def run(self, graph: TaskGraph, opts: Mapping[str, Any], retries: int,
            progress: Optional[Progress] = None) -> Iterator[Tuple[Task, Dict[str, Any]]]:
        self.start()
        import ray
        from ray.exceptions import RayError

        remote = ray.remote(_ray_task)
        waiting: List[Task] = graph.depth_first()  # dependencies always come first
        refs: Dict[str, Any] = {}
        running: Dict[Any, Tuple[Task, float]] = {}
        done: set = set()
        failed: Dict[str, str] = {}  # task id -> error, for the dependents of a task lost with its worker
        used_cpus = used_gpus = 0.0
        checked = time.monotonic()

        def submit(task: Task, cpus: float) -> None:
            # max_retries: Ray resubmits a task whose worker died; ``retries`` inside covers exceptions
            ref = remote.options(num_cpus=cpus, num_gpus=self.gpus, max_retries=retries).remote(
                task.id, task.kind, task.cell, task_options(graph, task, opts), retries, max(1, int(cpus)),
                *[refs[d] for d in task.deps])
            refs[task.id] = ref
            running[ref] = (task, cpus)

        try:
            while waiting or running:
                ready = [t for t in waiting if all(d in done for d in t.deps)]
                shares = cpu_shares(len(ready), self.total_cpus - used_cpus, self.cpus_per_cell, self.node_cpus,
                                    share=self.spare_cpus == "share", free_slots=self._free_gpu_slots(used_gpus))
                for task, cpus in zip(ready, shares):
                    submit(task, cpus)
                    used_cpus += cpus
                    used_gpus += self.gpus
                    waiting.remove(task)
                if not running:
                    raise RuntimeError(f"no task can start ({len(waiting)} waiting); the task graph is inconsistent")
                if time.monotonic() - checked >= NODE_CHECK_S:
                    checked = time.monotonic()
                    for ref in self._follow_nodes(ray, running):  # would never start again: resubmit smaller
                        if ray.wait([ref], timeout=0)[0]:
                            continue  # it finished after all: collected below
                        task, cpus = running.pop(ref)
                        try:
                            ray.cancel(ref)
                        except Exception:  # noqa: BLE001 - already gone; the resubmitted task replaces it
                            pass
                        log.warning("task %s asked for %g CPUs, more than any node left has; resubmitted with %g",
                                    task.id, cpus, self.node_cpus)
                        submit(task, self.node_cpus)
                        used_cpus += self.node_cpus - cpus
                finished, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
                if progress is not None:
                    progress.set_running(len(running))
                for ref in finished:
                    task, cpus = running.pop(ref)
                    used_cpus -= cpus
                    used_gpus -= self.gpus
                    try:
                        result = ray.get(ref)
                    except RayError as exc:  # the worker died (after Ray's retries) or a dependency's did
                        lost = [d for d in task.deps if d in failed]
                        error = f"dependency {lost[0]} failed: {failed[lost[0]]}" if lost else ray_error_line(exc)
                        result = lost_task_result(task, opts, error, str(exc))
                    if result.get("status") == "failed":
                        failed[task.id] = result.get("error", "")
                    done.add(task.id)
                    yield task, result
        except BaseException:
            for ref in running:
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # already finished, or Ray is going down
                    pass
            raise
        finally:
            self.stop()


def ray_error_line(exc: BaseException) -> str:
    """One readable line for a Ray error: its type and the first line of its message that is not
    Ray's ``ray::task() (pid=…)`` header, without terminal colour codes."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(exc).splitlines()]
    text = next((line for line in lines if line and not line.startswith("ray::")), "")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def check_local_device(device: str) -> None:
    """``cuda`` / ``cuda:N`` must name a CUDA device of this machine (where serial and embedded-Ray
    cells run); :class:`UserError` before anything runs otherwise."""
    if not str(device).startswith("cuda"):
        return
    import torch

    index, count = int(str(device).partition(":")[2] or 0), torch.cuda.device_count()
    if index >= count:
        raise UserError(f"--device {device} asks for CUDA device {index} but this machine has {count}; "
                        "use --device auto or cpu" + (f", or cuda:0..{count - 1}" if count else ""))


def make_backend(spec: GridSpec, default: str = "serial") -> Backend:
    """The backend ``spec.executor`` names (``default`` when it names none). ``auto`` is Ray,
    falling back to serial with a warning when Ray is not installed; asked for explicitly, a
    missing Ray is an error."""
    name = spec.executor_or(default)
    explicit = name != "auto"
    name = "ray" if name == "auto" else name
    if name == "serial":
        check_local_device(spec.device)
        if spec.gpus_per_cell:
            log.warning("--gpus-per-cell only applies to the ray executor")
        return SerialBackend()
    if name != "ray":
        raise UserError(f"unknown executor {name!r}; accepted: ray, serial, auto")
    if importlib.util.find_spec("ray") is None:
        if explicit:
            raise UserError("the ray executor needs the optional extra: pip install 'wmbench[ray]' "
                            "(or use --executor serial)")
        log.warning("ray is not installed; running the grid with the serial executor")
        return SerialBackend()
    return RayBackend(address=spec.ray_address, cpus_per_cell=spec.cpus_per_cell, gpus_per_cell=spec.gpus_per_cell,
                      device=spec.device, plugins=spec.plugins, spare_cpus=spec.spare_cpus)


def execute(cells: Sequence[Mapping[str, Any]], opts: Mapping[str, Any], *, backend: Optional[Backend] = None, retries: int = 1,
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
