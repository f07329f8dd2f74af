"""Plugins used by tests/test_grid.py: an attack that always fails, one that fails once, and a
BadNets variant that counts its embeddings (to prove an artifact is built only once)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping

from wmbench.api import Attack, AttackOutcome, private_copy
from wmbench.methods.badnets import BadNets
from wmbench.registry import register_attack, register_method


@dataclass(frozen=True)
class _NoConfig:
    """No parameters."""

    PROFILES: ClassVar[Mapping[str, Mapping[str, Any]]] = {"smoke": {}, "quick": {}, "paper": {}}


@register_attack("grid_failing")
class FailingAttack(Attack):
    """Raises on every run (failure isolation); counts its attempts in ``$WMB_GRID_LOG``."""

    needs = frozenset({"weights"})
    hidden = True
    Config = _NoConfig

    def run(self, target, ctx):
        _note("attempt grid_failing")
        raise RuntimeError("grid_failing: planned failure")


@register_attack("grid_flaky")
class FlakyAttack(Attack):
    """Fails on its first run in a run folder, then returns an unchanged copy (retries)."""

    needs = frozenset({"weights"})
    hidden = True
    cacheable = False
    Config = _NoConfig

    def run(self, target, ctx):
        marker = Path(os.environ["WMB_GRID_LOG"] + f".flaky{ctx.seed}")
        if not marker.exists():
            marker.write_text("failed once")
            raise RuntimeError("grid_flaky: first attempt fails")
        return AttackOutcome(model=private_copy(target), queries=0)


@register_method("grid_counting")
class CountingBadNets(BadNets):
    """BadNets that appends one line to ``$WMB_GRID_LOG`` per embedding."""

    hidden = True

    def embed(self, ctx, keys):
        _note(f"embed seed={ctx.seed} pid={os.getpid()}")
        return super().embed(ctx, keys)


def _note(line: str) -> None:
    path = os.environ.get("WMB_GRID_LOG")
    if path:
        with open(path, "a") as fh:  # O_APPEND: one whole line per call, also across processes
            fh.write(line + "\n")


@register_method("grid_broken")
class BrokenBadNets(BadNets):
    """BadNets whose embedding always fails (a failed artifact fails only the cells needing it)."""

    hidden = True

    def embed(self, ctx, keys):
        _note("embed grid_broken")
        raise RuntimeError("grid_broken: embedding failed")
