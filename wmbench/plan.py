"""Planning: a :class:`~wmbench.spec.GridSpec` becomes the list of cells to run. Writes nothing.

:func:`plan_run` loads the spec's plugins, resolves every name against the registries, builds
the settings of each sweep combination, expands methods × attacks (× label modes) × datasets ×
seeds into :class:`~wmbench.cell.Cell` objects, marks the incompatible ones with a reason, and
leaves out the cells already finished in the run folder (resume) unless ``overwrite``. Any bad
input raises :class:`~wmbench.errors.UserError` before a file is touched.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from wmbench.cell import Cell, data_identity
from wmbench.config import Settings, build_settings, identity_dict, load_config_file, merge_trees, parse_set
from wmbench.data import ATTACKER_POOL, DataBundle, load_data, pool_parts
from wmbench.errors import UserError
from wmbench.records import finished
from wmbench.registry import ATTACKS, DATASETS, METHODS, MODELS, load_plugin
from wmbench.spec import GridSpec, default_run_dir, expand_sweeps, split_chain
from wmbench.version import __version__

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOptions:
    """Where and how cells run (not part of a cell's identity); travels to workers as a dict."""

    run_dir: str
    cache_dir: str
    data_root: Optional[str] = None
    download: bool = False
    device: str = "auto"
    compile: bool = False
    cell_timeout: Optional[float] = None
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


@dataclass
class RunPlan:
    """A validated grid: every planned cell, the ones still to run, and where they run."""

    planned: List[PlannedCell]
    todo: List[Dict[str, Any]]  # cell dicts, unique, not finished yet (all of them with overwrite)
    opts: RunOptions
    run_dir: Path
    manifest: Dict[str, Any]  # what run.json records


def load_bundle(dataset: str, data: Mapping[str, Any], options: Mapping[str, Any], root: Optional[str],
                download: bool) -> DataBundle:
    """The data of a cell (``data``: its data identity, ``options``: its dataset options)."""
    return load_data(dataset, root=root, download=download, options=dict(options), **data)


def incompatibility(method_cls: type, attack_cls: type, attack_config: Any, data: DataBundle,
                    method_config: Any = None) -> str:
    """Why a (method, attack) pair cannot run on ``data``; empty when it can."""
    if data.num_classes < method_cls.min_classes:
        return (f"{method_cls.name} needs at least {method_cls.min_classes} classes; "
                f"{data.name} has {data.num_classes}")
    problem = class_problem(method_cls.name, method_config, data) if method_config is not None else ""
    if problem:
        return problem
    needs = attack_cls.needs_for(attack_config)
    missing = set(needs) - set(method_cls.exposes)
    if missing:
        return (f"{attack_cls.name} needs victim access {sorted(needs)}; {method_cls.name}'s victim exposes only "
                f"{sorted(method_cls.exposes)}")
    return attack_cls(attack_config).incompatibility(method_cls, data) or ""


#: Method options that name a class of the dataset (checked against it when planning).
CLASS_INDEX_FIELDS: Tuple[str, ...] = ("target", "source")


def check_names(settings: Settings) -> None:
    """The registry names inside the shared sections: the key filter's surrogate architecture and
    query set (``None`` or ``attacker``: the owner's own data; several joined by ``+``)."""
    MODELS.get(settings.keys.surrogate_arch)
    for part in pool_parts(settings.keys.surrogate_query_set):
        if part != ATTACKER_POOL:
            DATASETS.get(part)


def class_problem(method: str, config: Any, data: DataBundle) -> str:
    """Why a class-index option of a method config (:data:`CLASS_INDEX_FIELDS`) is not a class of
    ``data``; empty when each is."""
    for name in CLASS_INDEX_FIELDS:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and not 0 <= value < data.num_classes:
            return f"methods.{method}.{name} must be a class index 0..{data.num_classes - 1} of {data.name}, got {value}"
    return ""


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
    """Expand one settings' grid into cells; incompatible cells carry a ``skipped_reason``."""
    planned: List[PlannedCell] = []
    check_names(settings)
    data_id = data_identity(settings)
    for dataset in datasets:
        options = settings.dataset_options(dataset)
        bundle = load_bundle(dataset, data_id, options, data_root or settings.data.root,
                             download or settings.data.download)
        arch = settings.model.arch_for(dataset)
        MODELS.get(arch)
        train = settings.train
        if train.augment is None:  # the dataset's recipe
            train = dataclasses.replace(train, augment=tuple(getattr(DATASETS.get(dataset), "train_augment", ())))
        for method in methods:
            method_cls = METHODS.get(method)
            method_config = settings.component("methods", method, method_cls.Config)
            for attack in attacks:
                stages = split_chain(attack)
                for variant in itertools.product(*(_stage_variants(settings, n) for n in stages)):
                    # Only the first stage faces the watermarked victim's API; later stages attack
                    # a model the adversary already holds.
                    reason = incompatibility(method_cls, ATTACKS.get(stages[0]), variant[0], bundle, method_config)
                    labels = "+".join(getattr(v, "labels", "") for v in variant if getattr(v, "labels", ""))
                    for seed in seeds:
                        cell = Cell(
                            method=method, attack=attack, labels=labels,
                            dataset=dataset, seed=int(seed), profile=settings.profile, arch=arch,
                            method_config=identity_dict(method_config),
                            attack_configs=tuple(identity_dict(v) for v in variant),
                            dataset_options=options, data=data_id, train=identity_dict(train),
                            verify=identity_dict(settings.verify), keys=identity_dict(settings.keys),
                            sweep=dict(sweep or {}),
                        )
                        planned.append(PlannedCell(cell, reason))
    return planned


def validate_overrides(settings: Settings) -> None:
    """Every ``methods.NAME``/``attacks.NAME``/``datasets.NAME`` override must name a registered
    component and resolve, even when that component is not in this grid (typos fail loudly)."""
    for kind, registry in (("methods", METHODS), ("attacks", ATTACKS)):
        for name in settings.overrides.get(kind) or {}:
            settings.component(kind, name, registry.get(name).Config)
    for name in settings.overrides.get("datasets") or {}:
        DATASETS.get(name)


def resolve_attacks(names: Sequence[str]) -> List[str]:
    """The spec's attack names with ``all`` expanded; every chain stage must be registered."""
    names = list(names)
    if names == ["all"]:
        names = ATTACKS.resolve_list("all")
    for chain in names:
        for part in split_chain(chain):
            ATTACKS.get(part)
    return names


def run_dir_of(spec: GridSpec) -> Path:
    """The run folder of ``spec`` as the user gave it (``--out``), else ``results/<datasets>-<profile>``."""
    return Path(spec.out) if spec.out else default_run_dir(DATASETS.resolve_list(list(spec.datasets)), spec.profile)


def settings_of(spec: GridSpec) -> Tuple[Dict[str, Any], Settings]:
    """Load the spec's plugins, then its settings: the merged ``--config`` / ``--set`` tree and
    the resolved shared sections of its profile."""
    for module in spec.plugins:
        load_plugin(module)
    tree = merge_trees(load_config_file(spec.config) if spec.config else None, parse_set(spec.overrides))
    return tree, build_settings(spec.profile, tree)


def _as_set_value(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


def plan_run(spec: GridSpec, executor: str = "", combos: Optional[Sequence[Mapping[str, Any]]] = None) -> RunPlan:
    """Validate and expand ``spec`` (``executor``: what ``run.json`` records); writes nothing.

    ``combos`` (flat ``{key: value}`` settings, one set of cells each) replaces the cross product
    of the spec's sweeps when a launcher needs an explicit list (:mod:`wmbench.calibrate`).

    Raises :class:`UserError` for unknown names, malformed overrides, missing data and grids with
    no runnable cell. Paths in the returned options are absolute (tasks may run elsewhere).
    """
    tree, settings = settings_of(spec)
    method_names = METHODS.resolve_list(list(spec.methods))
    attack_names = resolve_attacks(spec.attacks)
    dataset_names = DATASETS.resolve_list(list(spec.datasets))
    validate_overrides(settings)
    data_root = spec.data_root or settings.data.root
    download = spec.download or settings.data.download
    planned: List[PlannedCell] = []
    for combo in (expand_sweeps(spec.sweeps) if combos is None else combos):
        combo_tree = merge_trees(tree, parse_set([f"{k}={_as_set_value(v)}" for k, v in combo.items()]))
        planned += plan(build_settings(spec.profile, combo_tree), method_names, attack_names, dataset_names,
                        spec.seeds, data_root=data_root, download=download, sweep=combo)
    runnable = [p for p in planned if not p.skipped_reason]
    if not runnable:
        reasons = sorted({p.skipped_reason for p in planned})
        raise UserError("no runnable cell: " + "; ".join(reasons))
    for p in planned:
        if p.skipped_reason:
            log.warning("skipping %s × %s on %s: %s", p.cell.method, p.cell.attack, p.cell.dataset, p.skipped_reason)

    run_dir = run_dir_of(spec).absolute()
    cache_dir = Path(spec.cache_dir).absolute() if spec.cache_dir else run_dir / "artifacts"
    for flag, folder in (("--out", run_dir), ("--cache-dir", cache_dir)):
        taken = next((p for p in (folder, *folder.parents) if p.exists()), None)
        if taken is not None and not taken.is_dir():
            raise UserError(f"{flag} {folder}: {taken} is a file; give a folder (it is created if missing)")
    opts = RunOptions(run_dir=str(run_dir), cache_dir=str(cache_dir),
                      data_root=str(Path(data_root).absolute()) if data_root else None, download=download,
                      device=spec.device, compile=spec.compile, cell_timeout=spec.cell_timeout,
                      progress=spec.progress, overwrite=spec.overwrite, plugins=spec.plugins,
                      run_name=run_dir.name)
    manifest = {
        "methods": method_names, "attacks": attack_names, "datasets": dataset_names, "seeds": list(spec.seeds),
        "profile": spec.profile, "overrides": list(spec.overrides), "sweeps": list(spec.sweeps), "config": spec.config,
        "executor": executor, "wmbench_version": __version__}
    todo: List[Dict[str, Any]] = []
    seen = set()
    for p in planned:
        if p.skipped_reason or p.cell.cell_id in seen:
            continue
        seen.add(p.cell.cell_id)
        if not spec.overwrite and finished(run_dir, p.cell.cell_id) is not None:
            log.info("cell %s already finished; reusing it", p.cell.cell_id)
            continue
        todo.append(p.cell.as_dict())
    return RunPlan(planned=planned, todo=todo, opts=opts, run_dir=run_dir, manifest=manifest)
