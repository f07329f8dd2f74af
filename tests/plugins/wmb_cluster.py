"""A plugin for tests/test_cluster.py: the Ray worker that runs a ``cluster_dies_after_record``
cell dies right after writing the cell's finished record, before its result reaches the driver
(what losing a node at that moment does)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import wmbench.evaluate
from wmbench.api import Attack, AttackOutcome, private_copy
from wmbench.records import ray_node
from wmbench.registry import register_attack

NAME = "cluster_dies_after_record"


@dataclass(frozen=True)
class _NoConfig:
    """No parameters."""

    PROFILES: ClassVar[Mapping[str, Mapping[str, Any]]] = {"smoke": {}, "quick": {}, "paper": {}}


@register_attack(NAME)
class DiesAfterRecord(Attack):
    """Returns an unchanged copy; its worker dies once the cell's record is written."""

    needs = frozenset({"weights"})
    hidden = True
    cacheable = False
    Config = _NoConfig

    def run(self, target, ctx):
        return AttackOutcome(model=private_copy(target), queries=0)


_write_cell = wmbench.evaluate.write_cell


def _write_then_die(run_dir, record):
    path = _write_cell(run_dir, record)
    # only in a Ray task (never the test process itself), only once the record says ok
    if record.get("status") == "ok" and record.get("cell", {}).get("attack") == NAME and ray_node():
        os._exit(1)
    return path


wmbench.evaluate.write_cell = _write_then_die
