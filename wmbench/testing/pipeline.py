"""Plugins, options and the one pipeline run that the end-to-end checks of :mod:`wmbench.testing` share.

:func:`resolve_plugin` turns a class or a registered name into ``(kind, name, class)``,
registering a class that is not registered yet. :func:`pipeline` runs a plugin's smoke cells
through :func:`wmbench.runner.run` (serial executor) once per plugin and options and keeps
their records; for an attack it also observes every call of the attack's ``run`` (what it
received, whether it changed it, how many queries it sent and reported).
"""
from __future__ import annotations

import atexit
import contextlib
import hashlib
import importlib
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

import torch
from torch import nn

from wmbench.api import Attack, WatermarkMethod
from wmbench.blackbox import Blackbox
from wmbench.errors import UserError
from wmbench.records import iter_records
from wmbench.registry import ATTACKS, METHODS
from wmbench.runner import run
from wmbench.spec import GridSpec

#: Settings that make the synthetic set a few seconds' work (used when ``dataset="synthetic"``).
TINY_SYNTHETIC: Tuple[str, ...] = ("datasets.synthetic.train_size=1500", "datasets.synthetic.test_size=400",
                                   "train.epochs=6")
#: The options every check accepts, with their defaults (see :mod:`wmbench.testing`).
DEFAULTS: Mapping[str, Any] = {"dataset": "synthetic", "profile": "smoke", "overrides": (), "seed": 0,
                               "device": "auto", "method": "badnets", "min_wsr": 0.8, "max_p_value": 1e-6,
                               "max_acc_drop": 0.1, "min_acc": None, "workdir": None}


def resolve_plugin(plugin: Any) -> Tuple[str, str, type]:
    """``(kind, registered name, class)`` of a plugin class, registered name or ``"module:Class"``;
    kind is "method" or "attack". A class that is not registered yet is registered under its own
    ``name`` (else its lower-cased class name); a name that another class holds is an error."""
    if isinstance(plugin, str) and ":" in plugin:
        module, _, attr = plugin.partition(":")
        plugin = getattr(importlib.import_module(module), attr)
    if isinstance(plugin, str):
        found = [(kind, reg) for kind, reg in (("method", METHODS), ("attack", ATTACKS)) if plugin in reg]
        if len(found) != 1:
            why = "is both a method and an attack; pass the class" if found else "is no registered method or attack"
            raise ValueError(f"{plugin!r} {why} (methods: {', '.join(METHODS.names())}; "
                             f"attacks: {', '.join(ATTACKS.names())})")
        kind, reg = found[0]
        return kind, plugin, reg.get(plugin)
    if isinstance(plugin, type) and issubclass(plugin, (WatermarkMethod, Attack)):
        kind, reg = ("method", METHODS) if issubclass(plugin, WatermarkMethod) else ("attack", ATTACKS)
        own = plugin.__dict__.get("name")
        own = own if isinstance(own, str) and own else ""
        for name in ([own] if own else []) + reg.names():
            with contextlib.suppress(Exception):
                if reg.get(name) is plugin:
                    return kind, name, plugin
        name = own or plugin.__name__.lower()
        if name in reg:
            raise ValueError(f"cannot register {plugin.__module__}.{plugin.__qualname__} as {kind} {name!r}: "
                             f"that name belongs to {reg.get(name).__qualname__}; give the class its own `name`")
        return kind, name, reg.register(name)(plugin)
    raise TypeError(f"a plugin is a WatermarkMethod or Attack subclass, a registered name or 'module:Class', "
                    f"got {plugin!r}")


def options(given: Mapping[str, Any]) -> Dict[str, Any]:
    """The checks' options: ``DEFAULTS`` updated with ``given``; ``overrides`` come after
    :data:`TINY_SYNTHETIC` on the synthetic set. Unknown options raise TypeError."""
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise TypeError(f"unknown option(s) {', '.join(unknown)}; accepted: {', '.join(DEFAULTS)}")
    opts = {**DEFAULTS, **given}
    extra = opts["overrides"]
    opts["overrides"] = ((TINY_SYNTHETIC if opts["dataset"] == "synthetic" else ())
                         + ((extra,) if isinstance(extra, str) else tuple(extra)))
    return opts


# --------------------------------------------------------------------------------------------
# where runs go
# --------------------------------------------------------------------------------------------
_ROOTS: Dict[Optional[str], Path] = {}
_OWNERS: Dict[Tuple[str, str], type] = {}


def _root(workdir: Optional[str]) -> Path:
    """One fresh folder per process (inside ``workdir`` when given, else a temporary one removed
    at exit), so no model of an earlier run is ever reused."""
    key = None if workdir is None else str(workdir)
    if key not in _ROOTS:
        if key is not None:
            Path(key).mkdir(parents=True, exist_ok=True)
        _ROOTS[key] = Path(tempfile.mkdtemp(prefix="wmbench-testing-", dir=key))
        if key is None:
            atexit.register(shutil.rmtree, _ROOTS[key], True)
    return _ROOTS[key]


def _store(root: Path, kind: str, name: str, cls: type) -> Path:
    """The shared artifact store, or a store of its own for a second class under a used name
    (artifacts are named by plugin name, so it would otherwise get the first class's models)."""
    owner = _OWNERS.setdefault((kind, name), cls)
    return root / "artifacts" if owner is cls else root / f"artifacts-{kind}-{name}-{id(cls):x}"


# --------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------
def _fingerprint(target: Any) -> Dict[str, torch.Tensor]:
    """Copies of every parameter and buffer of ``target``, or of the model a Blackbox wraps."""
    models = [target] if isinstance(target, nn.Module) else [v for v in vars(target).values() if isinstance(v, nn.Module)]
    return {f"{i}.{k}": v.detach().clone() for i, m in enumerate(models) for k, v in m.state_dict().items()}


@contextlib.contextmanager
def _observe(cls: type, seen: List[Dict[str, Any]]) -> Iterator[None]:
    """Wrap ``cls.run`` while the pipeline calls it: what it received, changed and reported."""
    inner, own = cls.run, cls.__dict__.get("run")

    def observed_run(self: Attack, target: Any, ctx: Any) -> Any:
        before = _fingerprint(target)
        box = isinstance(target, Blackbox)
        start = target.queries if box else 0
        outcome = inner(self, target, ctx)
        after = _fingerprint(target)
        seen.append({"labels": str(getattr(self.config, "labels", "") or ""), "blackbox": box,
                     "hard_label": box and target.hard_label, "needs": type(self).needs_for(self.config),
                     "answered": target.queries - start if box else None, "reported": outcome.queries,
                     "changed": sorted(k for k in before.keys() | after.keys()
                                       if k not in before or k not in after or not torch.equal(before[k], after[k]))})
        return outcome

    cls.run = observed_run
    try:
        yield
    finally:
        if own is not None:
            cls.run = own
        else:
            del cls.run


_RUNS: Dict[Any, Dict[str, Any]] = {}


def pipeline(kind: str, name: str, cls: type, opts: Mapping[str, Any]) -> Dict[str, Any]:
    """Run the plugin's smoke cells once per plugin and options (a method: method × ``none``; an
    attack: ``opts["method"]`` × attack, one cell per label mode). Returns ``records`` (finished
    cells), ``problems`` (why cells did not finish), ``seen`` (observed attack runs) and ``out``."""
    key = (kind, name, cls, repr(sorted(opts.items())))
    if key in _RUNS:
        return _RUNS[key]
    root = _root(opts["workdir"])
    out = root / "runs" / f"{kind}-{name}-{hashlib.sha1(key[3].encode()).hexdigest()[:10]}"
    spec = GridSpec(methods=(name if kind == "method" else opts["method"],),
                    attacks=("none" if kind == "method" else name,), datasets=(opts["dataset"],),
                    seeds=(opts["seed"],), profile=opts["profile"], overrides=opts["overrides"], out=str(out),
                    cache_dir=str(_store(root, kind, name, cls)), executor="serial", progress=False,
                    device=opts["device"])
    result: Dict[str, Any] = {"records": [], "seen": [], "problems": [], "out": out}
    with _observe(cls, result["seen"]) if kind == "attack" else contextlib.nullcontext():
        try:
            run(spec)
        except UserError as exc:
            result["problems"].append(f"the pipeline refused to run it: {exc}")
    for record in (iter_records(out) if (out / "cells").is_dir() else []):
        label = f"cell {record['cell']['method']} × {record['cell']['attack']}" + (
            f"[{record['cell']['labels']}]" if record["cell"].get("labels") else "")
        if record["status"] == "ok":
            result["records"].append(record)
        elif record["status"] == "skipped":
            result["problems"].append(f"{label} was skipped: {record.get('skipped_reason')}")
        else:
            tail = " | ".join(line.strip() for line in str(record.get("traceback", "")).strip().splitlines()[-3:])
            result["problems"].append(f"{label} failed: {record.get('error')} [{tail}] (record in {out}/cells)")
    _RUNS[key] = result
    return result
