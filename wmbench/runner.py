"""``wmbench run`` and :func:`wmbench.run`: plan a grid, start its run folder, execute it, return its table.

The launcher strings the pipeline together — spec (:mod:`wmbench.spec`) → plan
(:mod:`wmbench.plan`) → task graph and backend (:mod:`wmbench.tasks`, :mod:`wmbench.executor`)
→ the long results table (:mod:`wmbench.results`) — and owns the one step that writes before
any cell runs: the run folder's ``run.json`` and the records of the cells planning skipped.
Every cell is finished at most once: a finished cell is reused, so a killed run resumes.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

import pandas as pd

from wmbench.cache import atomic_write_text
from wmbench.config import canonical_json
from wmbench.errors import UserError
from wmbench.evaluate import skipped_record
from wmbench.executor import execute, make_backend
from wmbench.plan import RunPlan, plan_run
from wmbench.records import finished, write_cell
from wmbench.results import consolidate
from wmbench.spec import GridSpec, default_executor

log = logging.getLogger(__name__)


def start_run(run_plan: RunPlan) -> None:
    """Create the run folder, write ``run.json`` and the records of the skipped cells.

    A folder that cannot be written (no permission, full disk) raises :class:`UserError`, and the
    folders this call created are removed again: a failed start leaves no half-made run folder."""
    run_dir, opts = run_plan.run_dir, run_plan.opts
    created = [p for p in (run_dir, *run_dir.parents) if not p.exists()]
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "run.json", canonical_json(run_plan.manifest))
        for p in run_plan.planned:
            if p.skipped_reason and (opts.overwrite or finished(run_dir, p.cell.cell_id) is None):
                write_cell(run_dir, skipped_record(p.cell, p.skipped_reason, opts.run_name))
    except OSError as exc:
        if created:  # the folders this call made (deepest first) hold only what it wrote: remove them
            shutil.rmtree(run_dir, ignore_errors=True)
            for folder in created[1:]:
                with contextlib.suppress(OSError):
                    folder.rmdir()
        raise UserError(f"cannot write the run folder {run_dir}: {exc.strerror or exc}; give a writable --out "
                        "folder with free space") from None


def run(spec: GridSpec | Any = None, *args: Any, on_record: Optional[Callable[[Dict[str, Any]], None]] = None,
        **fields: Any) -> pd.DataFrame:
    """Run a grid and return its long results table (see :mod:`wmbench.results`).

    ``spec`` is a :class:`~wmbench.spec.GridSpec`, or the grid's fields directly: methods,
    attacks and datasets positionally, the rest by keyword (``GridSpec.of``). Everything is
    validated before anything is written: unknown names, malformed overrides, missing data and
    grids with no runnable cell raise :class:`~wmbench.errors.UserError`.

    The grid runs as a dependency graph (:mod:`wmbench.tasks`): each benign model, victim (and
    filtered key set) is built once by its own task before the cells that use it. With no
    ``executor`` in the spec, :func:`run` runs in this process (``serial``) unless
    ``$WMBENCH_EXECUTOR`` says otherwise; ``on_record`` is called with each cell's record as it
    finishes.

    Example::

        import wmbench
        df = wmbench.run("badnets", "knockoff", "fmnist", profile="quick", seeds=[0])
        df = wmbench.run(wmbench.GridSpec(methods=("badnets",), attacks=("knockoff",), executor="ray"))
    """
    if isinstance(spec, GridSpec):
        if args:
            raise UserError("give wmbench.run either a GridSpec or the grid's fields, not both")
        spec = spec.replace(**fields) if fields else spec
    else:
        spec = GridSpec.of(*(() if spec is None else (spec,)), *args, **fields)
    return launch(spec, on_record=on_record)


def launch(spec: GridSpec, combos: Optional[Sequence[Mapping[str, Any]]] = None,
           on_record: Optional[Callable[[Dict[str, Any]], None]] = None) -> pd.DataFrame:
    """Plan ``spec`` (``combos``: see :func:`~wmbench.plan.plan_run`), start its run folder, run
    what is left of it on the spec's executor (:func:`run`'s default when it names none) and
    return the long table of its cells."""
    executor = spec.executor_or(default_executor())
    run_plan = plan_run(spec, executor="ray" if executor == "auto" else executor, combos=combos)
    backend = make_backend(spec, default=executor)
    start_run(run_plan)
    log.info("%d cells planned, %d to run", len(run_plan.planned), len(run_plan.todo))
    if run_plan.todo:
        execute(run_plan.todo, dataclasses.asdict(run_plan.opts), backend=backend, retries=spec.retries,
                on_record=on_record, progress=spec.progress)
    frame = consolidate(run_plan.run_dir)
    ids = {p.cell.cell_id for p in run_plan.planned}
    return frame[frame["cell_id"].isin(ids)].reset_index(drop=True)
