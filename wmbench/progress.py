"""The live progress line of a grid run (stderr): tasks done with an ETA, and cells done /
running / failed / total. Backends report to it; it knows nothing of how tasks run."""
from __future__ import annotations

import logging
import sys
from typing import Any, Mapping

from wmbench.tasks import Task, TaskGraph

log = logging.getLogger(__name__)


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
