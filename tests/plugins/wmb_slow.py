"""A plugin for the --cell-timeout tests: the ``sleepy`` attack sleeps ``$WMB_SLEEPY_SECONDS``
(read when it runs, so a rerun of the very same cell can sleep less), then returns an unchanged
copy of its target. With ``$WMB_SLEEPY_LOG`` set it appends ``start`` to that file before sleeping
and ``end`` after, so a test can tell a stopped attempt (no ``end``) and count attempts."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

from wmbench.api import Attack, AttackOutcome, private_copy
from wmbench.registry import register_attack


@dataclass(frozen=True)
class SleepyConfig:
    """No parameters."""

    PROFILES: ClassVar[Mapping[str, Mapping[str, Any]]] = {"smoke": {}, "quick": {}, "paper": {}}


@register_attack("sleepy")
class Sleepy(Attack):
    """Sleeps, then returns an unchanged copy (a stand-in for a hanging cell)."""

    needs = frozenset({"weights"})
    hidden = True
    cacheable = False
    Config = SleepyConfig

    def run(self, target, ctx):
        _note("start")
        time.sleep(float(os.environ.get("WMB_SLEEPY_SECONDS", "0")))
        _note("end")
        return AttackOutcome(model=private_copy(target), queries=0)


def _note(event: str) -> None:
    path = os.environ.get("WMB_SLEEPY_LOG")
    if path:
        with open(path, "a") as fh:
            fh.write(event + "\n")
