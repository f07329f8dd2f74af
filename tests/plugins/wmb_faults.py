"""Fault injection for tests/test_kill_points.py: SIGKILL the process at a chosen point, once.

Imported with ``--plugin wmb_faults`` by the driver and, through the plugin list, by every Ray
worker that runs a task. With ``$WMB_FAULT`` set it installs one kill point; the point fires at
most once across all processes (``$WMB_FAULT_MARK``: a marker file created with ``O_EXCL`` just
before the kill, so Ray's retry of the killed task and the resumed run go through). The spec is
``key=value`` pairs separated by commas:

- ``role``: ``driver`` (the ``wmbench run`` process only), ``worker`` (a Ray worker only) or
  ``any``. The driver is the process that imported this module first: it puts its pid in
  ``$WMB_FAULT_DRIVER``, which the Ray workers it starts inherit.
- ``at=write``: inside :func:`wmbench.cache.atomic_write_bytes` (every record, artifact, table and
  ``run.json`` goes through it) for a path matching ``path`` (an ``fnmatch`` pattern), at ``phase``
  ``torn`` (the temporary file is written and synced, not yet renamed) or ``after`` (renamed: the
  file is complete, whatever the caller meant to do next is not done).
- ``at=step``: after an optimizer step (torch's global step hook: training of any artifact, attack
  or cell), once ``after_cells`` cell records exist in ``$WMB_FAULT_RUN/cells``.
- ``at=finished``: in the driver's progress view, when a task's result has come back.
- ``n``: the point fires on its n-th hit in a process (default 1).

The ``fault_oom`` attack runs out of memory where ``$WMB_FAULT_OOM_MB`` is set: it caps the
process's address space ``RLIMIT_AS`` at what it uses plus that many MiB, then allocates a
tensor of twice that, and restores the cap (torch raises ``RuntimeError: ... can't allocate
memory``, as it does when a machine's memory is exhausted). Without the variable it returns an
unchanged copy of its target, so a rerun completes the cell.
"""
from __future__ import annotations

import fnmatch
import os
import resource
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Dict, Mapping

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

import wmbench.cache
import wmbench.progress
import wmbench.results
from wmbench.api import Attack, AttackOutcome, private_copy
from wmbench.registry import register_attack

DRIVER_ENV = "WMB_FAULT_DRIVER"


@dataclass(frozen=True)
class _NoConfig:
    """No parameters."""

    PROFILES: ClassVar[Mapping[str, Mapping[str, Any]]] = {"smoke": {}, "quick": {}, "paper": {}}


@register_attack("fault_oom")
class OutOfMemory(Attack):
    """Runs out of memory where ``$WMB_FAULT_OOM_MB`` is set; else an unchanged copy."""

    needs = frozenset({"weights"})
    hidden = True
    cacheable = False
    Config = _NoConfig

    def run(self, target, ctx):
        spare_mb = os.environ.get("WMB_FAULT_OOM_MB")
        if spare_mb:
            spare = int(spare_mb) * 1024 * 1024
            soft, hard = resource.getrlimit(resource.RLIMIT_AS)
            resource.setrlimit(resource.RLIMIT_AS, (_address_space() + spare, hard))
            try:
                torch.ones(2 * spare, dtype=torch.uint8)
            finally:
                resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        return AttackOutcome(model=private_copy(target), queries=0)


def _address_space() -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def _parse(spec: str) -> Dict[str, str]:
    return dict(item.split("=", 1) for item in spec.split(",") if item)


def _kill() -> None:
    """Fire once across all processes: claim the marker, then die like an OOM-killed process."""
    try:
        fd = os.open(os.environ["WMB_FAULT_MARK"], os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.write(fd, f"{os.getpid()}\n".encode())
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)


class _Counter:
    def __init__(self, n: int) -> None:
        self.n, self.hits = n, 0

    def hit(self) -> bool:
        self.hits += 1
        return self.hits == self.n


def _install(point: Dict[str, str]) -> None:
    counter = _Counter(int(point.get("n", "1")))
    at = point["at"]
    if at == "write":
        pattern, phase = point["path"], point["phase"]
        original = wmbench.cache.atomic_write_bytes

        def atomic_write_bytes(path: Path, data: bytes) -> None:
            if not fnmatch.fnmatch(str(path), pattern) or not counter.hit():
                return original(path, data)
            if phase == "torn":  # what atomic_write_bytes has done when killed before its rename
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(path.parent / f".{path.name}.killed.tmp", "wb") as fh:
                    fh.write(data[: len(data) // 2])
                    fh.flush()
                    os.fsync(fh.fileno())
                _kill()
            original(path, data)
            if phase == "after":
                _kill()

        wmbench.cache.atomic_write_bytes = atomic_write_bytes
        wmbench.results.atomic_write_bytes = atomic_write_bytes  # imported by name there
    elif at == "step":
        cells = Path(os.environ["WMB_FAULT_RUN"]) / "cells"
        after_cells = int(point.get("after_cells", "0"))

        def hook(optimizer: Any, args: Any, kwargs: Any) -> None:
            if len(list(cells.glob("*.json"))) >= after_cells and counter.hit():
                _kill()

        register_optimizer_step_post_hook(hook)
    elif at == "finished":
        original_finished = wmbench.progress.Progress.finished

        def finished(self: Any, task: Any, result: Any) -> None:
            original_finished(self, task, result)
            if counter.hit():
                _kill()

        wmbench.progress.Progress.finished = finished
    else:
        raise ValueError(f"unknown fault point at={at!r}")


def _setup() -> None:
    spec = os.environ.get("WMB_FAULT")
    if not spec:
        return
    driver = os.environ.setdefault(DRIVER_ENV, str(os.getpid())) == str(os.getpid())
    point = _parse(spec)
    role = point.get("role", "any")
    if role == "any" or (role == "driver") == driver:
        _install(point)


_setup()
