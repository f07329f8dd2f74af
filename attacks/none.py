"""The null attack: the suspect is the victim itself (measures the watermark before any attack)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

from torch import nn

from wmbench.api import Attack, AttackContext, AttackOutcome
from wmbench.blackbox import Blackbox
from wmbench.registry import register_attack


@dataclass(frozen=True)
class NoAttackConfig:
    """No parameters."""

    PROFILES: ClassVar[Mapping[str, Mapping[str, Any]]] = {"smoke": {}, "quick": {}, "paper": {}}


@register_attack("none")
class NoAttack(Attack):
    """No attack: the runner records only the benign and victim stages for this cell."""

    paper = ""
    year = 0
    category = "none"
    needs = frozenset({"labels"})
    Config = NoAttackConfig

    def run(self, target: Blackbox | nn.Module, ctx: AttackContext) -> AttackOutcome:
        raise RuntimeError("the null attack has no suspect model; the runner skips its attack stage")
