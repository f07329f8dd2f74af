"""The cell: one fully resolved unit of work, its identity and its human-readable labels.

A **cell** is one (method, attack[, label mode], dataset, seed, profile) with every setting
resolved; its id is the hash of its canonical JSON and the wmbench version. Planning
(:mod:`wmbench.plan`) creates cells, evaluation (:mod:`wmbench.evaluate`) runs them, and the
results table (:mod:`wmbench.results`) labels old records with :func:`cell_variant` — which is
why the labelling lives here, beside the configuration code, and not in the runner.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Sequence, Tuple

from wmbench.config import Settings, build_settings, canonical_json, config_to_dict, identity_dict, stable_hash
from wmbench.registry import ATTACKS, METHODS
from wmbench.version import __version__


@dataclass(frozen=True)
class Cell:
    """One fully resolved unit of work (see the module docstring)."""

    method: str
    attack: str  # one attack name, or a chain "a+b" applied in order
    labels: str  # label access of the chain's stages that have one, joined by "+"
    dataset: str
    seed: int
    profile: str
    arch: str
    method_config: Mapping[str, Any]
    attack_configs: Tuple[Mapping[str, Any], ...]  # one per chain stage
    dataset_options: Mapping[str, Any]
    data: Mapping[str, Any]
    train: Mapping[str, Any]
    verify: Mapping[str, Any]
    keys: Mapping[str, Any] = field(default_factory=dict)  # key filtering (KeyFilterConfig)
    sweep: Mapping[str, Any] = field(default_factory=dict)  # the swept settings of this cell

    @property
    def attack_stages(self) -> List[str]:
        return self.attack.split("+")

    @property
    def sweep_label(self) -> str:
        return ",".join(f"{k}={v}" for k, v in sorted(self.sweep.items()))

    def as_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def cell_id(self) -> str:
        return stable_hash({"cell": self.as_dict(), "wmbench": __version__})

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Cell":
        values = {f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d}
        values["attack_configs"] = tuple(values["attack_configs"])
        return cls(**values)


def describe(cell: Mapping[str, Any]) -> str:
    """``"badnets × knockoff[soft] on fmnist seed 0 [budget=1000]"`` for a cell dict."""
    labels = f"[{cell.get('labels')}]" if cell.get("labels") else ""
    sweep = ",".join(f"{k}={v}" for k, v in sorted((cell.get("sweep") or {}).items()))
    return (f"{cell['method']} × {cell['attack']}{labels} on {cell['dataset']} seed {cell['seed']}"
            + (f" [{sweep}]" if sweep else ""))


def chain_prefix(cell: Cell, stages: int) -> Cell:
    """The cell that runs only the first ``stages`` stages of ``cell``'s attack chain."""
    configs = tuple(cell.attack_configs[:stages])
    labels = "+".join(str(c.get("labels", "")) for c in configs if c.get("labels", ""))
    return dataclasses.replace(cell, attack="+".join(cell.attack_stages[:stages]), attack_configs=configs,
                               labels=labels)


def data_identity(settings: Settings) -> Dict[str, Any]:
    """The ``data`` section of a cell: the data settings that change results (not where the
    files are, nor whether they may be downloaded)."""
    d = identity_dict(settings.data)
    d.pop("root")
    d.pop("download")
    return d


def _diff(values: Mapping[str, Any], defaults: Mapping[str, Any], prefix: str, skip: Sequence[str]) -> List[str]:
    def show(v: Any) -> str:
        return v if isinstance(v, str) else canonical_json(v)

    return [f"{prefix}{k}={show(v)}" for k, v in sorted(values.items())
            if f"{prefix}{k}" not in skip and (k not in defaults or canonical_json(v) != canonical_json(defaults[k]))]


def cell_variant(cell: Cell) -> Dict[str, str]:
    """What the cell changes against its profile's defaults, as readable ``key=value`` lists:
    ``method`` (method options, plus ``train.*``, ``data.*``, ``verify.*``, ``keys.*`` and
    dataset options, all of which change the victim) and ``attack`` (the attack options but
    ``labels``; ``stage.key=value`` in a chain). Swept keys are left out (the sweep labels them).
    Reports use these to tell apart cells of one method or attack run with different ``--set``
    values instead of averaging them."""
    defaults = build_settings(cell.profile)
    swept = [k.partition(".")[2] if k.startswith(("methods.", "attacks.")) else k for k in cell.sweep]
    swept_method = [k.partition(".")[2] for k in swept if k.startswith(f"{cell.method}.")]
    method_cls = METHODS.get(cell.method)
    method = _diff(cell.method_config, config_to_dict(defaults.component("methods", cell.method, method_cls.Config)),
                   "", swept_method)
    for section, values, base in (("train", cell.train, config_to_dict(defaults.train)),
                                  ("data", cell.data, data_identity(defaults)),
                                  ("verify", cell.verify, config_to_dict(defaults.verify)),
                                  ("keys", cell.keys, config_to_dict(defaults.keys)),
                                  (f"datasets.{cell.dataset}", cell.dataset_options, {})):
        method += _diff(values, base, f"{section}.", list(cell.sweep))
    attack: List[str] = []
    stages = cell.attack_stages
    for name, config in zip(stages, cell.attack_configs):
        if name == "none":
            continue
        base = config_to_dict(defaults.component("attacks", name, ATTACKS.get(name).Config))
        prefix = f"{name}." if len(stages) > 1 else ""
        swept_attack = [prefix + k.partition(".")[2] for k in swept if k.startswith(f"{name}.")]
        attack += _diff({k: v for k, v in config.items() if k != "labels"}, base, prefix, swept_attack)
    return {"method": ",".join(method), "attack": ",".join(attack)}
