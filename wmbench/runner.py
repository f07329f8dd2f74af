"""Expand a method × attack × dataset × seed grid into cells and run them.

A **cell** is one (method, attack[, label mode], dataset, seed, profile) with every setting
resolved; its id is the hash of its canonical JSON. A finished cell (``RUN/cells/ID.json`` with
status ok or skipped) is never run again unless ``overwrite``; a killed run therefore resumes
where it stopped without losing or duplicating work. Models are cached in the artifact store
(:mod:`wmbench.cache`): the benign model and the watermarked victim are built once per
(method, dataset, architecture, seed, profile) and reused by every attack cell.

Executors run a list of cells; ``serial`` (in process) and ``ray`` are provided, and the
executor is an interface (:class:`Executor`) so schedulers can be added.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import re
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Protocol, Sequence, Tuple

import pandas as pd
import torch

from wmbench import __version__
from wmbench.api import AttackContext, Context, KeySet, count_hits, private_copy
from wmbench.blackbox import Blackbox
from wmbench.cache import ArtifactStore, atomic_write_text
from wmbench.config import (
    PROFILE_NAMES, KeyFilterConfig, Settings, TrainConfig, VerifyConfig, build_settings, canonical_json, config_to_dict,
    load_config_file, merge_trees, parse_set, resolve, stable_hash,
)
from wmbench.data import DataBundle, Split, load_data
from wmbench.errors import UserError
from wmbench.models import model_from_spec
from wmbench.registry import ATTACKS, DATASETS, METHODS, MODELS, load_plugin
from wmbench.results import consolidate, finished, provenance, write_cell
from wmbench.training import accuracy, predict_logits
from wmbench.utils import derive_seed, resolve_device, seed_everything

log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class RunOptions:
    """Where and how cells run (not part of a cell's identity)."""

    run_dir: str
    cache_dir: str
    data_root: Optional[str] = None
    download: bool = False
    device: str = "auto"
    progress: Optional[bool] = None
    overwrite: bool = False
    plugins: Tuple[str, ...] = ()
    run_name: str = ""
    # "KIND/KEY" of artifacts this run already (re)built: reused even with ``overwrite``
    fresh_artifacts: Tuple[str, ...] = ()


@dataclass(frozen=True)
class PlannedCell:
    cell: Cell
    skipped_reason: str = ""


# --------------------------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------------------------

def _data_identity(settings: Settings) -> Dict[str, Any]:
    d = config_to_dict(settings.data)
    d.pop("root")
    d.pop("download")
    return d


def _bundle(dataset: str, data: Mapping[str, Any], options: Mapping[str, Any], root: Optional[str], download: bool) -> DataBundle:
    return load_data(dataset, root=root, download=download, options=dict(options), **data)


def incompatibility(method_cls: type, attack_cls: type, attack_config: Any, data: DataBundle) -> str:
    """Why a (method, attack) pair cannot run on ``data``; empty when it can."""
    if data.num_classes < method_cls.min_classes:
        return (f"{method_cls.name} needs at least {method_cls.min_classes} classes; "
                f"{data.name} has {data.num_classes}")
    needs = attack_cls.needs_for(attack_config)
    missing = set(needs) - set(method_cls.exposes)
    if missing:
        return (f"{attack_cls.name} needs victim access {sorted(needs)}; {method_cls.name}'s victim exposes only "
                f"{sorted(method_cls.exposes)}")
    return attack_cls(attack_config).incompatibility(method_cls, data) or ""


def split_chain(attack: str) -> List[str]:
    """``"knockoff+ftal"`` -> ``["knockoff", "ftal"]``: the second attack runs on the first's output."""
    parts = [p.strip() for p in attack.split("+")]
    if any(not p for p in parts):
        raise UserError(f"malformed attack chain {attack!r}; expected names joined by '+', e.g. knockoff+ftal")
    if "none" in parts and len(parts) > 1:
        raise UserError(f"'none' cannot be part of an attack chain ({attack!r})")
    return parts


def _stage_variants(settings: Settings, name: str) -> List[Any]:
    """The configs of one chain stage: one per label mode unless the user fixed ``labels``."""
    attack_cls = ATTACKS.get(name)
    config = settings.component("attacks", name, attack_cls.Config)
    fixed = ((settings.overrides.get("attacks") or {}).get(name) or {}).get("labels")
    if attack_cls.label_modes and fixed is None and hasattr(config, "labels"):
        return [dataclasses.replace(config, labels=m) for m in attack_cls.label_modes]
    return [config]


def plan(settings: Settings, methods: Sequence[str], attacks: Sequence[str], datasets: Sequence[str],
         seeds: Sequence[int], *, data_root: Optional[str] = None, download: bool = False,
         sweep: Optional[Mapping[str, Any]] = None) -> List[PlannedCell]:
    """Expand the grid into cells; incompatible cells carry a ``skipped_reason``."""
    planned: List[PlannedCell] = []
    data_id = _data_identity(settings)
    for dataset in datasets:
        options = settings.dataset_options(dataset)
        bundle = _bundle(dataset, data_id, options, data_root or settings.data.root, download or settings.data.download)
        arch = settings.model.arch_for(dataset)
        MODELS.get(arch)
        for method in methods:
            method_cls = METHODS.get(method)
            method_config = settings.component("methods", method, method_cls.Config)
            for attack in attacks:
                stages = split_chain(attack)
                for variant in itertools.product(*(_stage_variants(settings, n) for n in stages)):
                    # Only the first stage faces the watermarked victim's API; later stages attack
                    # a model the adversary already holds.
                    reason = incompatibility(method_cls, ATTACKS.get(stages[0]), variant[0], bundle)
                    labels = "+".join(getattr(v, "labels", "") for v in variant if getattr(v, "labels", ""))
                    for seed in seeds:
                        cell = Cell(
                            method=method, attack=attack, labels=labels,
                            dataset=dataset, seed=int(seed), profile=settings.profile, arch=arch,
                            method_config=config_to_dict(method_config),
                            attack_configs=tuple(config_to_dict(v) for v in variant),
                            dataset_options=options, data=data_id, train=config_to_dict(settings.train),
                            verify=config_to_dict(settings.verify), keys=config_to_dict(settings.keys),
                            sweep=dict(sweep or {}),
                        )
                        planned.append(PlannedCell(cell, reason))
    return planned


# --------------------------------------------------------------------------------------------
# Executing one cell
# --------------------------------------------------------------------------------------------

def _model_tensors(model: torch.nn.Module, prefix: str = "model/") -> Dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in model.state_dict().items()}


def _model_from(tensors: Mapping[str, torch.Tensor], spec: Mapping[str, Any], prefix: str = "model/") -> torch.nn.Module:
    model = model_from_spec(dict(spec))
    model.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    model.eval()
    return model


def _keys_from(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> KeySet:
    return KeySet.from_tensors({k[len("keys/"):]: v for k, v in tensors.items() if k.startswith("keys/")},
                               meta.get("keys_meta", {}))


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
                                  ("data", cell.data, _data_identity(defaults)),
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


def watermark_summary(keys: KeySet, max_list: int = 32, max_str: int = 160) -> Dict[str, Any]:
    """The facts a reader of a cell needs about its watermark: key-set sizes and the short,
    JSON-able entries of ``keys.meta`` (target label, source classes, trigger source...).
    Long entries (index lists, per-sample values) stay in the victim artifact's ``keys_meta``
    and are left out here."""

    def short(value: Any) -> bool:
        if isinstance(value, (bool, int, float)) or value is None:
            return True
        if isinstance(value, str):
            return len(value) <= max_str
        if isinstance(value, (list, tuple)):
            return len(value) <= max_list and all(isinstance(v, (bool, int, float, str)) for v in value)
        return False

    out: Dict[str, Any] = {"n_verify_keys": int(keys.verify_y.shape[0]), "n_embed": int(keys.embed_y.shape[0])}
    out.update({k: (list(v) if isinstance(v, tuple) else v) for k, v in sorted(keys.meta.items()) if short(v)})
    return out


class _CellLog:
    """Attach a per-cell log file to the ``wmbench`` logger for the duration of a cell."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> "_CellLog":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handler = logging.FileHandler(self.path, mode="w")
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.logger = logging.getLogger("wmbench")
        self.old_level = self.logger.level
        self.logger.setLevel(logging.INFO)
        self.logger.addHandler(self.handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.old_level)
        self.handler.close()


# The specs below name the shared artifacts in the store; the scheduler (wmbench.scheduler) uses
# them to build each artifact once, as its own task, before the cells that need it.

def benign_spec(cell: Cell) -> Dict[str, Any]:
    """Store spec of a cell's benign model (shared by every method and attack of the cell's
    dataset, data, architecture, training schedule and seed)."""
    return {"dataset": cell.dataset, "dataset_options": cell.dataset_options, "data": cell.data,
            "arch": cell.arch, "train": cell.train, "seed": cell.seed, "wmbench": __version__}


def victim_spec(cell: Cell) -> Dict[str, Any]:
    """Store spec of a cell's watermarked victim and its key set."""
    return {**benign_spec(cell), "method": cell.method, "method_config": cell.method_config}


def uses_key_filter(cell: Cell) -> bool:
    """Whether the cell's keys go through the two-stage filter (surrogate + filtered keys)."""
    key_cfg = resolve(KeyFilterConfig, cell.profile, cell.keys, section="keys")
    return (key_cfg.filter or METHODS.get(cell.method).default_key_filter) == "two_stage"


def filtered_keys_spec(cell: Cell) -> Dict[str, Any]:
    """Store spec of a cell's filtered key set (only used when :func:`uses_key_filter`)."""
    return {**victim_spec(cell), "keys": cell.keys}


def stage_spec(cell: Cell, index: int) -> Dict[str, Any]:
    """Store spec of the model stolen by the first ``index + 1`` stages of the cell's chain."""
    spec: Dict[str, Any] = dict(victim_spec(cell))
    for i, (name, config) in enumerate(zip(cell.attack_stages[:index + 1], cell.attack_configs)):
        spec = {**spec, f"attack{i}": name, f"attack{i}_config": config}
    return spec


def chain_prefix(cell: Cell, stages: int) -> Cell:
    """The cell that runs only the first ``stages`` stages of ``cell``'s attack chain."""
    configs = tuple(cell.attack_configs[:stages])
    labels = "+".join(str(c.get("labels", "")) for c in configs if c.get("labels", ""))
    return dataclasses.replace(cell, attack="+".join(cell.attack_stages[:stages]), attack_configs=configs,
                               labels=labels)


@dataclass
class PreparedVictim:
    """What :func:`prepare_victim` built or loaded: the shared artifacts of a cell and the
    context to evaluate and attack them. ``victim``/``keys`` are None when only the benign model
    was asked for; ``candidates`` are the unfiltered keys when the key filter is on."""

    cell: Cell
    device: torch.device
    data: DataBundle
    store: ArtifactStore
    ctx: Context
    train_cfg: TrainConfig
    verify_cfg: VerifyConfig
    method_cls: type
    method: Any
    benign: torch.nn.Module
    victim: Optional[torch.nn.Module] = None
    keys: Optional[KeySet] = None
    candidates: Optional[KeySet] = None
    filter_metrics: Dict[str, float] = field(default_factory=dict)
    get: Callable[..., Tuple[Dict[str, torch.Tensor], Dict[str, Any]]] = field(default=lambda *a: ({}, {}), repr=False)


#: What :func:`prepare_victim` builds: only the benign model, up to the victim, or everything
#: up to the (filtered) verification keys.
PREPARE_STEPS = ("benign", "victim", "keys")


def prepare_victim(cell: Cell, opts: RunOptions, upto: str = "keys") -> PreparedVictim:
    """Build (or load from the store) the benign model, the watermarked victim with its keys and,
    when the key filter is on, the surrogate and filtered keys of ``cell``: the part of a cell
    that every attack cell of the same (method, dataset, architecture, seed, profile) shares.

    ``upto`` stops after ``"benign"`` or ``"victim"``. With ``opts.overwrite`` artifacts are
    rebuilt, except those named in ``opts.fresh_artifacts`` (``"KIND/KEY"``, already rebuilt
    by this run).
    """
    if upto not in PREPARE_STEPS:
        raise ValueError(f"upto must be one of {PREPARE_STEPS}, got {upto!r}")
    device = resolve_device(opts.device)
    data = _bundle(cell.dataset, cell.data, cell.dataset_options, opts.data_root, opts.download)
    store = ArtifactStore(opts.cache_dir)
    train_cfg = resolve(TrainConfig, cell.profile, cell.train, section="train")
    verify_cfg = resolve(VerifyConfig, cell.profile, cell.verify, section="verify")
    ctx = Context(data=data, arch=cell.arch, train=train_cfg, verify=verify_cfg, seed=cell.seed, device=device,
                  store=store, profile=cell.profile, progress=opts.progress)
    method_cls = METHODS.get(cell.method)
    method = method_cls(resolve(method_cls.Config, cell.profile, cell.method_config, section=f"methods.{cell.method}"))
    rebuild = opts.overwrite
    fresh = set(opts.fresh_artifacts)

    base_spec = benign_spec(cell)

    def build_benign():
        seed_everything(ctx.seed_for("benign", "init"))
        model = ctx.new_model(seed=ctx.seed_for("benign", "init"))
        ctx.fit(model, (data.owner.x, data.owner.y), seed=ctx.seed_for("benign", "order"), desc="benign")
        return _model_tensors(model), {"model_spec": model.spec}

    def build_victim():
        keys = method.keygen(ctx)
        victim = method.embed(ctx, keys)
        keys = method.finalize_keys(ctx, victim, keys)
        tensors = {**_model_tensors(victim), **{"keys/" + k: v for k, v in keys.tensors().items()}}
        return tensors, {"model_spec": victim.spec, "keys_meta": dict(keys.meta)}

    def get(kind: str, spec: Mapping[str, Any], build: Callable):
        if rebuild and f"{kind}/{store.key(spec)}" not in fresh:
            tensors, meta = build()
            store.save(kind, spec, tensors, meta)
            return tensors, meta
        return store.get_or_build(kind, spec, build)

    tensors, meta = get("benign", base_spec, build_benign)
    benign = _model_from(tensors, meta["model_spec"])
    ctx.benign_provider = lambda: benign
    prepared = PreparedVictim(cell=cell, device=device, data=data, store=store, ctx=ctx, train_cfg=train_cfg,
                              verify_cfg=verify_cfg, method_cls=method_cls, method=method, benign=benign, get=get)
    if upto == "benign":
        return prepared
    v_spec = victim_spec(cell)
    tensors, meta = get("victim", v_spec, build_victim)
    victim = _model_from(tensors, meta["model_spec"])
    keys = _keys_from(tensors, meta)
    prepared.victim, prepared.keys = victim, keys
    if upto == "victim":
        return prepared

    key_cfg = resolve(KeyFilterConfig, cell.profile, cell.keys, section="keys")
    candidates: Optional[KeySet] = None
    filter_metrics: Dict[str, float] = {}
    if (key_cfg.filter or method_cls.default_key_filter) == "two_stage":
        from wmbench.methods.keyfilter import filter_keys, train_surrogate

        def build_surrogate():
            model = train_surrogate(ctx, victim, key_cfg)
            return _model_tensors(model), {"model_spec": model.spec}

        def build_filtered():
            surrogate_settings = {k: v for k, v in cell.keys.items() if k.startswith("surrogate_")}
            tensors, meta = get("surrogate", {**v_spec, "surrogate": surrogate_settings}, build_surrogate)
            surrogate = _model_from(tensors, meta["model_spec"])
            filtered, stats = filter_keys(ctx, keys, victim, surrogate, benign, key_cfg.top_m, key_cfg.min_keys)
            verify_only = {k: v for k, v in filtered.tensors().items() if k.startswith("verify")}
            stats = {**stats, "surrogate_acc": accuracy(surrogate, data.test.x, data.test.y, device=device)}
            return ({**_model_tensors(surrogate), **{"keys/" + k: v for k, v in verify_only.items()}},
                    {"model_spec": surrogate.spec, "keys_meta": dict(filtered.meta), "stats": stats})

        tensors, meta = get("filtered_keys", filtered_keys_spec(cell), build_filtered)
        candidates = keys
        empty_embed = {"embed_x": keys.embed_x[:0], "embed_y": keys.embed_y[:0]}
        keys = KeySet.from_tensors({**empty_embed, **{k[5:]: v for k, v in tensors.items() if k.startswith("keys/")}},
                                   meta.get("keys_meta", {}))
        filter_metrics = {k: float(v) for k, v in meta.get("stats", {}).items()}
        if not keys.verify_y.numel():  # recorded (keys_final = 0, WSR NaN, not detected), not hidden
            log.warning("key filtering left no key (%s): the watermark did not transfer to the surrogate",
                        filter_metrics)
    prepared.keys, prepared.candidates, prepared.filter_metrics = keys, candidates, filter_metrics
    return prepared


def _evaluate_cell(cell: Cell, opts: RunOptions
                   ) -> Tuple[Dict[str, Dict[str, float]], int, str, List[Dict[str, Any]], Dict[str, Any]]:
    """Metrics per stage, total queries, device, curve rows of the last stage, and the
    watermark summary (:func:`watermark_summary`) of the cell."""
    prepared = prepare_victim(cell, opts)
    device, data, store, ctx = prepared.device, prepared.data, prepared.store, prepared.ctx
    train_cfg, verify_cfg, method = prepared.train_cfg, prepared.verify_cfg, prepared.method
    benign, victim, keys, candidates = prepared.benign, prepared.victim, prepared.keys, prepared.candidates
    filter_metrics, get = prepared.filter_metrics, prepared.get
    assert victim is not None and keys is not None
    victim_spec_ = victim_spec(cell)

    verify_kw = dict(num_classes=data.num_classes, verify=verify_cfg, device=device)
    label_api = lambda model: Blackbox(model, num_classes=data.num_classes, input_shape=ctx.input_shape,
                                       mode="labels", device=device)
    benign_hits = count_hits(benign, keys.verify_x, keys.verify_y, device=device)
    test = data.test

    def unfiltered(model: torch.nn.Module) -> Dict[str, float]:
        """WSR on the unfiltered candidate keys, when a filter is on (the filter's effect)."""
        if candidates is None:
            return {}
        hits = count_hits(label_api(model), candidates.verify_x, candidates.verify_y, device=device)
        return {"wsr_unfiltered": hits / max(1, candidates.verify_y.numel())}

    metrics: Dict[str, Dict[str, float]] = {}
    metrics["benign"] = {"acc": accuracy(benign, test.x, test.y, device=device),
                         **method.verify(label_api(benign), keys, **verify_kw).as_metrics(), **unfiltered(benign)}
    metrics["victim"] = {"acc": accuracy(victim, test.x, test.y, device=device),
                         **method.verify(label_api(victim), keys, benign_hits=benign_hits, **verify_kw).as_metrics(),
                         **unfiltered(victim), **filter_metrics}
    queries = 0
    curve: List[Dict[str, Any]] = []
    if cell.attack != "none":
        def evaluate(model: torch.nn.Module) -> Dict[str, float]:
            pred = predict_logits(model, test.x, device=device).argmax(1)
            out = {"acc": (pred == test.y).float().mean().item(),
                   "fidelity": (pred == victim_pred).float().mean().item(),
                   **method.verify(label_api(model), keys, benign_hits=benign_hits, **verify_kw).as_metrics(),
                   **unfiltered(model)}
            flag_rate = getattr(model, "flag_rate", None)
            if callable(flag_rate):  # query-detection suspects: share of the key queries flagged
                out["key_flag_rate"] = float(flag_rate(keys.verify_x))
            return out

        victim_pred = predict_logits(victim, test.x, device=device).argmax(1)
        empty = Split(data.test.x[:0], data.test.y[:0])
        attacker_view = dataclasses.replace(data, owner=empty, test=empty)
        spec: Dict[str, Any] = dict(victim_spec_)
        current = victim
        stages = cell.attack_stages
        for index, (name, config_dict) in enumerate(zip(stages, cell.attack_configs)):
            attack_cls = ATTACKS.get(name)
            attack = attack_cls(resolve(attack_cls.Config, cell.profile, config_dict, section=f"attacks.{name}"))
            actx = AttackContext(data=attacker_view, arch=cell.arch, train=train_cfg, verify=verify_cfg,
                                 seed=derive_seed(cell.seed, "attack", index, name), device=device, store=store,
                                 profile=cell.profile, progress=opts.progress, victim_arch=cell.arch,
                                 data_root=opts.data_root, download=opts.download,
                                 watermark={"method": cell.method, "method_config": dict(cell.method_config),
                                            "keys_meta": dict(keys.meta)} if attack_cls.knows_watermark else {})
            spec = {**spec, f"attack{index}": name, f"attack{index}_config": config_dict}
            last = index == len(stages) - 1

            def build_stolen(attack=attack, attack_cls=attack_cls, actx=actx, target_model=current, last=last,
                             raw=False):
                needs = attack_cls.needs_for(attack.config)
                if "weights" in needs:
                    target: Any = private_copy(target_model)
                else:
                    mode = "labels" if set(needs) == {"labels"} else "probs"
                    target = Blackbox(target_model, num_classes=data.num_classes, input_shape=ctx.input_shape,
                                      mode=mode, device=device)
                started = time.perf_counter()
                outcome = attack.run(target, actx)
                extra = {k: float(v) for k, v in outcome.metrics.items()}
                extra.update(queries=float(outcome.queries), attack_s=time.perf_counter() - started)
                points = [{"step_name": step_name, "step": float(step), **evaluate(model)}
                          for step_name, step, model in outcome.snapshots] if last else []
                meta = {"attack_metrics": extra, "curve": points}
                if raw:
                    return outcome.model, meta
                return _model_tensors(outcome.model), {"model_spec": outcome.model.spec, **meta}

            if attack_cls.cacheable:
                tensors, meta = get("stolen", spec, build_stolen)
                current = _model_from(tensors, meta["model_spec"])
            else:
                current, meta = build_stolen(raw=True)
            attack_metrics = meta.get("attack_metrics", {})
            stage_queries = int(attack_metrics.get("queries", 0))
            queries += stage_queries
            stage_metrics = {**evaluate(current), "queries": float(stage_queries),
                             "wall_s": float(attack_metrics.get("attack_s", float("nan"))),
                             **{k: v for k, v in attack_metrics.items() if k not in ("queries", "attack_s")}}
            metrics["attack" if last else f"stage{index + 1}"] = stage_metrics
            if last:
                curve = list(meta.get("curve", []))
    return metrics, queries, str(device), curve, watermark_summary(keys)



def run_cell(cell_dict: Mapping[str, Any], opts_dict: Mapping[str, Any]) -> Dict[str, Any]:
    """Run one cell and write its record; returns the record. Never raises for a cell failure:
    the traceback is recorded with status ``failed`` and the rest of the grid goes on."""
    cell = Cell.from_dict(cell_dict)
    opts = RunOptions(**opts_dict)
    for module in opts.plugins:
        load_plugin(module)
    run_dir = Path(opts.run_dir)
    started_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    started = time.perf_counter()
    record: Dict[str, Any] = {
        "cell_id": cell.cell_id, "run": opts.run_name, "cell": cell.as_dict(), "started_at": started_at,
        "method_params_hash": stable_hash(cell.method_config, 12),
        "attack_params_hash": stable_hash(cell.attack_configs, 12),
    }
    device = str(resolve_device(opts.device))
    with _CellLog(run_dir / "logs" / f"{cell.cell_id}.log"):
        log.info("cell %s: %s × %s[%s] on %s seed %d (%s) %s", cell.cell_id, cell.method, cell.attack, cell.labels,
                 cell.dataset, cell.seed, cell.profile, cell.sweep_label)
        try:
            metrics, queries, device, curve, watermark = _evaluate_cell(cell, opts)
            record.update(status="ok", metrics=metrics, queries=queries, curve=curve, watermark=watermark,
                          variant=cell_variant(cell))
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # recorded, shown by `wmbench show`, retried on the next run
            log.exception("cell %s failed", cell.cell_id)
            record.update(status="failed", metrics={}, error=f"{type(exc).__name__}: {exc}",
                          traceback=traceback.format_exc())
    record["wall_s"] = time.perf_counter() - started
    record["provenance"] = provenance(device)
    write_cell(run_dir, record)
    return record


def skipped_record(planned: PlannedCell, run_name: str) -> Dict[str, Any]:
    cell = planned.cell
    return {
        "cell_id": cell.cell_id, "run": run_name, "cell": cell.as_dict(), "status": "skipped",
        "skipped_reason": planned.skipped_reason, "metrics": {}, "provenance": provenance(""),
        "method_params_hash": stable_hash(cell.method_config, 12), "attack_params_hash": stable_hash(cell.attack_configs, 12),
    }


# --------------------------------------------------------------------------------------------
# Executors
# --------------------------------------------------------------------------------------------

class Executor(Protocol):
    """Runs ``run_cell`` over cells and yields their records as they finish."""

    def map(self, cells: Sequence[Dict[str, Any]], opts: Dict[str, Any]) -> Iterator[Dict[str, Any]]:
        ...


class SerialExecutor:
    """Runs the cells one after another in this process (the debugging executor)."""

    def map(self, cells: Sequence[Dict[str, Any]], opts: Dict[str, Any]) -> Iterator[Dict[str, Any]]:
        for cell in cells:
            yield run_cell(cell, opts)


class RayExecutor:
    """Runs cells as Ray tasks on a local instance (or ``address``), ``cpus_per_cell`` each.

    The artifact store's file locks keep two tasks from training the same model; torch in
    each task uses as many threads as the task has CPUs.
    """

    def __init__(self, address: Optional[str] = None, cpus_per_cell: float = 1.0, num_cpus: Optional[int] = None):
        self.address = address
        self.cpus_per_cell = cpus_per_cell
        self.num_cpus = num_cpus

    def map(self, cells: Sequence[Dict[str, Any]], opts: Dict[str, Any]) -> Iterator[Dict[str, Any]]:
        try:
            import ray
        except ImportError:
            raise UserError("the ray executor needs the optional extra: pip install 'wmbench[ray]'") from None
        if not ray.is_initialized():
            kwargs: Dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if self.address:
                kwargs["address"] = self.address
            else:
                kwargs["num_cpus"] = self.num_cpus or len(os.sched_getaffinity(0))
            ray.init(**kwargs)
        threads = max(1, int(self.cpus_per_cell))

        def _task(cell: Dict[str, Any], options: Dict[str, Any]) -> Dict[str, Any]:
            torch.set_num_threads(threads)
            return run_cell(cell, options)

        remote = ray.remote(num_cpus=self.cpus_per_cell, num_gpus=0)(_task)
        pending = [remote.remote(cell, opts) for cell in cells]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])


def make_executor(name: str, **kwargs: Any) -> Executor:
    if name == "serial":
        return SerialExecutor()
    if name == "ray":
        return RayExecutor(**kwargs)
    raise UserError(f"unknown executor {name!r}; accepted: serial, ray")


# --------------------------------------------------------------------------------------------
# The public entry point
# --------------------------------------------------------------------------------------------

def _as_list(value: str | Sequence[str]) -> str | List[str]:
    return value if isinstance(value, str) else list(value)


def default_run_dir(datasets: Sequence[str], profile: str, root: str = "results") -> Path:
    """``results/<datasets>-<profile>``: the same command always lands in the same folder."""
    name = "-".join(sorted(datasets)) + f"-{profile}"
    return Path(root) / re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def parse_seeds(seeds: str | Sequence[int]) -> List[int]:
    if isinstance(seeds, str):
        try:
            values = [int(s) for s in seeds.split(",") if s.strip()]
        except ValueError:
            raise UserError(f"malformed --seeds {seeds!r}; expected comma-separated integers such as 0,1,2") from None
    else:
        values = [int(s) for s in seeds]
    if not values or any(v < 0 for v in values):
        raise UserError(f"--seeds needs one or more non-negative integers, got {seeds!r}")
    return values


def _yaml(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


def expand_sweeps(sweeps: Sequence[str]) -> List[Dict[str, Any]]:
    """``["attacks.knockoff.budget=1000,5000", "train.epochs=[2,4]"]`` -> the grid of combinations,
    each a flat ``{key: value}``; ``[{}]`` when there is no sweep. Each combination becomes its own
    cells (resumable and schedulable like any other)."""
    axes: List[Tuple[str, List[Any]]] = []
    for item in sweeps:
        key, sep, raw = item.partition("=")
        if not sep or "." not in key:
            raise UserError(f"malformed --sweep {item!r}; expected section.key=v1,v2,... (e.g. attacks.knockoff.budget=1000,5000)")
        parsed = parse_set([f"{key}={raw}"])
        node: Any = parsed
        for part in key.split("."):
            node = node[part]
        values = list(node) if isinstance(node, list) else [parse_set([f"{key}={v}"]) for v in raw.split(",")]
        if not isinstance(node, list):
            flat = []
            for tree in values:
                leaf: Any = tree
                for part in key.split("."):
                    leaf = leaf[part]
                flat.append(leaf)
            values = flat
        if not values:
            raise UserError(f"--sweep {item!r} has no values")
        axes.append((key, values))
    combos: List[Dict[str, Any]] = [{}]
    for key, values in axes:
        combos = [{**c, key: v} for c in combos for v in values]
    return combos


def validate_overrides(settings: Settings) -> None:
    """Every ``methods.NAME``/``attacks.NAME``/``datasets.NAME`` override must name a registered
    component and resolve, even when that component is not in this grid (typos fail loudly)."""
    for kind, registry in (("methods", METHODS), ("attacks", ATTACKS)):
        for name in settings.overrides.get(kind) or {}:
            settings.component(kind, name, registry.get(name).Config)
    for name in settings.overrides.get("datasets") or {}:
        DATASETS.get(name)


DEFAULT_EXECUTOR_ENV = "WMBENCH_EXECUTOR"
#: ``auto`` is Ray when it is installed, else serial (with a warning).
EXECUTORS = ("ray", "serial", "auto")


def default_executor(cli: bool = False) -> str:
    """The executor used when none is given: ``$WMBENCH_EXECUTOR``, else ``"auto"`` (Ray) for the
    command line and ``"serial"`` for :func:`run` (in process: predictable in notebooks/scripts)."""
    return os.environ.get(DEFAULT_EXECUTOR_ENV) or ("auto" if cli else "serial")


@dataclass
class RunPlan:
    """A validated grid: every planned cell, the ones still to run, and where they run."""

    planned: List[PlannedCell]
    todo: List[Dict[str, Any]]  # cell dicts, unique, not finished yet (all of them with overwrite)
    opts: RunOptions
    run_dir: Path
    manifest: Dict[str, Any]  # what run.json records


def plan_run(
    methods: str | Sequence[str] = "badnets",
    attacks: str | Sequence[str] = "none",
    datasets: str | Sequence[str] = "fmnist",
    *,
    seeds: str | Sequence[int] = (0,),
    profile: str = "quick",
    overrides: Sequence[str] = (),
    sweeps: Sequence[str] = (),
    config: Optional[str] = None,
    data_root: Optional[str] = None,
    download: bool = False,
    out: Optional[str | os.PathLike] = None,
    cache_dir: Optional[str | os.PathLike] = None,
    overwrite: bool = False,
    plugins: Sequence[str] = (),
    device: str = "auto",
    progress: Optional[bool] = None,
    executor: str = "",
) -> RunPlan:
    """Validate and expand a grid (the first half of :func:`run`); writes nothing.

    Raises :class:`UserError` for unknown names, malformed overrides, missing data and grids with
    no runnable cell. Paths in the returned options are absolute (tasks may run elsewhere).
    """
    for module in plugins:
        load_plugin(module)
    if profile not in PROFILE_NAMES:
        raise UserError(f"unknown profile {profile!r}; available: {', '.join(PROFILE_NAMES)}")
    method_names = METHODS.resolve_list(_as_list(methods))
    attack_names = _as_list(attacks)
    attack_names = attack_names.split(",") if isinstance(attack_names, str) else attack_names
    attack_names = [a.strip() for a in attack_names if a.strip()]
    if attack_names == ["all"]:
        attack_names = ATTACKS.resolve_list("all")
    for chain in attack_names:
        for part in split_chain(chain):
            ATTACKS.get(part)
    dataset_names = DATASETS.resolve_list(_as_list(datasets))
    seed_list = parse_seeds(seeds)
    tree = merge_trees(load_config_file(config) if config else None, parse_set(overrides))
    settings = build_settings(profile, tree)
    validate_overrides(settings)
    data_root = data_root or settings.data.root
    download = download or settings.data.download
    planned: List[PlannedCell] = []
    for combo in expand_sweeps(sweeps):
        combo_settings = build_settings(profile, merge_trees(tree, parse_set([f"{k}={_yaml(v)}" for k, v in combo.items()])))
        planned += plan(combo_settings, method_names, attack_names, dataset_names, seed_list, data_root=data_root,
                        download=download, sweep=combo)
    runnable = [p for p in planned if not p.skipped_reason]
    if not runnable:
        reasons = sorted({p.skipped_reason for p in planned})
        raise UserError("no runnable cell: " + "; ".join(reasons))
    for p in planned:
        if p.skipped_reason:
            log.warning("skipping %s × %s on %s: %s", p.cell.method, p.cell.attack, p.cell.dataset, p.skipped_reason)

    run_dir = Path(out) if out else default_run_dir(dataset_names, profile)
    run_dir = run_dir.absolute()
    opts = RunOptions(run_dir=str(run_dir), cache_dir=str(Path(cache_dir).absolute() if cache_dir else run_dir / "artifacts"),
                      data_root=str(Path(data_root).absolute()) if data_root else None, download=download,
                      device=device, progress=progress, overwrite=overwrite, plugins=tuple(plugins),
                      run_name=run_dir.name)
    manifest = {
        "methods": method_names, "attacks": attack_names, "datasets": dataset_names, "seeds": seed_list,
        "profile": profile, "overrides": list(overrides), "sweeps": list(sweeps), "config": config, "executor": executor,
        "wmbench_version": __version__}
    todo: List[Dict[str, Any]] = []
    seen = set()
    for p in planned:
        if p.skipped_reason or p.cell.cell_id in seen:
            continue
        seen.add(p.cell.cell_id)
        if not overwrite and finished(run_dir, p.cell.cell_id) is not None:
            log.info("cell %s already finished; reusing it", p.cell.cell_id)
            continue
        todo.append(p.cell.as_dict())
    return RunPlan(planned=planned, todo=todo, opts=opts, run_dir=run_dir, manifest=manifest)


def start_run(run_plan: RunPlan) -> None:
    """Create the run folder, write ``run.json`` and the records of the skipped cells."""
    run_dir, opts = run_plan.run_dir, run_plan.opts
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "run.json", canonical_json(run_plan.manifest))
    for p in run_plan.planned:
        if p.skipped_reason and (opts.overwrite or finished(run_dir, p.cell.cell_id) is None):
            write_cell(run_dir, skipped_record(p, opts.run_name))


def run(
    methods: str | Sequence[str] = "badnets",
    attacks: str | Sequence[str] = "none",
    datasets: str | Sequence[str] = "fmnist",
    *,
    seeds: str | Sequence[int] = (0,),
    profile: str = "quick",
    overrides: Sequence[str] = (),
    sweeps: Sequence[str] = (),
    config: Optional[str] = None,
    data_root: Optional[str] = None,
    download: bool = False,
    out: Optional[str | os.PathLike] = None,
    cache_dir: Optional[str | os.PathLike] = None,
    executor: Optional[str] = None,
    ray_address: Optional[str] = None,
    cpus_per_cell: float = 1.0,
    gpus_per_cell: Optional[float] = None,
    retries: int = 1,
    overwrite: bool = False,
    plugins: Sequence[str] = (),
    device: str = "auto",
    progress: Optional[bool] = None,
    on_record: Optional[Callable[[Dict[str, Any]], None]] = None,
) -> pd.DataFrame:
    """Run a grid and return its long results table (see :mod:`wmbench.results`).

    Everything is validated before anything is written: unknown names, malformed overrides,
    missing data and grids with no runnable cell raise :class:`UserError`.

    The grid runs as a dependency graph (:mod:`wmbench.scheduler`): each benign model, victim
    (and filtered key set) is built once by its own task before the cells that use it.
    ``executor`` is ``"ray"`` (an embedded local Ray instance, or the cluster at
    ``ray_address``/``$RAY_ADDRESS``; the command line's default), ``"serial"`` (in this process;
    the default here unless ``$WMBENCH_EXECUTOR`` says otherwise) or ``"auto"`` (Ray if installed). ``cpus_per_cell``/``gpus_per_cell`` are each task's Ray resources
    (``gpus_per_cell=None``: 1 where the cluster has GPUs, else 0); a failed cell is retried
    ``retries`` times, then recorded as failed.

    Example::

        import wmbench
        df = wmbench.run("badnets", "knockoff", "fmnist", profile="quick", seeds=[0], executor="serial")
    """
    executor = executor or default_executor()
    if executor not in EXECUTORS:
        raise UserError(f"unknown executor {executor!r}; accepted: {', '.join(EXECUTORS)}")
    explicit = executor != "auto"
    executor = "ray" if executor == "auto" else executor
    if retries < 0:
        raise UserError(f"--retries must be 0 or more, got {retries}")
    run_plan = plan_run(methods, attacks, datasets, seeds=seeds, profile=profile, overrides=overrides, sweeps=sweeps,
                        config=config, data_root=data_root, download=download, out=out, cache_dir=cache_dir,
                        overwrite=overwrite, plugins=plugins, device=device, progress=progress, executor=executor)
    from wmbench import scheduler

    backend = scheduler.make_backend(executor, explicit=explicit, address=ray_address, cpus_per_cell=cpus_per_cell,
                                     gpus_per_cell=gpus_per_cell, device=device, plugins=plugins)
    start_run(run_plan)
    log.info("%d cells planned, %d to run", len(run_plan.planned), len(run_plan.todo))
    if run_plan.todo:
        scheduler.execute(run_plan.todo, dataclasses.asdict(run_plan.opts), backend=backend, retries=retries,
                          on_record=on_record, progress=progress)
    frame = consolidate(run_plan.run_dir)
    ids = {p.cell.cell_id for p in run_plan.planned}
    return frame[frame["cell_id"].isin(ids)].reset_index(drop=True)
