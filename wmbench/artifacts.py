"""Artifacts: the models and key sets a cell shares with other cells, named and built once.

Every cell needs the **benign** model of its (dataset, data, architecture, training schedule,
seed), the watermarked **victim** and key set of its method and method settings, and, when the
two-stage key filter is on, the owner's surrogate and the **filtered keys**; attack chains also
share the **stolen** models of their first stages. Each is stored in the artifact store
(:mod:`wmbench.cache`) under the hash of its spec (the ``*_spec`` functions below), so two cells
or two processes needing the same artifact build it once. :func:`prepare_victim` builds or
loads a cell's benign model, victim and keys; the executor (:mod:`wmbench.tasks`) calls it as
an artifact task of its own before the cells that need it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import torch

from wmbench.api import Context, KeySet
from wmbench.cache import ArtifactStore
from wmbench.cell import Cell
from wmbench.config import KeyFilterConfig, TrainConfig, VerifyConfig, resolve
from wmbench.data import DataBundle
from wmbench.models import model_from_spec
from wmbench.plan import RunOptions, load_bundle
from wmbench.registry import ATTACKS, METHODS
from wmbench.training import accuracy
from wmbench.utils import resolve_device, seed_everything
from wmbench.version import __version__

log = logging.getLogger(__name__)

#: Artifact kinds that are tasks of their own, in dependency order.
ARTIFACT_KINDS: Tuple[str, ...] = ("benign", "victim", "filtered_keys", "stolen")


def model_tensors(model: torch.nn.Module, prefix: str = "model/") -> Dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in model.state_dict().items()}


def model_from(tensors: Mapping[str, torch.Tensor], spec: Mapping[str, Any], prefix: str = "model/") -> torch.nn.Module:
    model = model_from_spec(dict(spec))
    model.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    model.eval()
    return model


def keys_from(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> KeySet:
    return KeySet.from_tensors({k[len("keys/"):]: v for k, v in tensors.items() if k.startswith("keys/")},
                               meta.get("keys_meta", {}))


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


def victim_free(cell: Cell) -> bool:
    """Whether the first stage of the cell's chain needs no access to the victim and knows nothing
    of its watermark (the ``independent`` null models): what it builds depends on the data, the
    seed and its own settings only."""
    if cell.attack == "none":
        return False
    name = cell.attack_stages[0]
    attack_cls = ATTACKS.get(name)
    config = resolve(attack_cls.Config, cell.profile, cell.attack_configs[0], section=f"attacks.{name}")
    return not attack_cls.needs_for(config) and not attack_cls.knows_watermark


def stage_spec(cell: Cell, index: int) -> Dict[str, Any]:
    """Store spec of the model stolen by the first ``index + 1`` stages of the cell's chain.

    A chain whose first stage never touches the victim (:func:`victim_free`) starts from the
    benign spec, so its models are shared by the cells of every method (the null models)."""
    spec: Dict[str, Any] = dict(benign_spec(cell) if victim_free(cell) else victim_spec(cell))
    for i, (name, config) in enumerate(zip(cell.attack_stages[:index + 1], cell.attack_configs)):
        spec = {**spec, f"attack{i}": name, f"attack{i}_config": config}
    return spec


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
    data = load_bundle(cell.dataset, cell.data, cell.dataset_options, opts.data_root, opts.download)
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
        return model_tensors(model), {"model_spec": model.spec}

    def build_victim():
        keys = method.keygen(ctx)
        victim = method.embed(ctx, keys)
        keys = method.finalize_keys(ctx, victim, keys)
        tensors = {**model_tensors(victim), **{"keys/" + k: v for k, v in keys.tensors().items()}}
        return tensors, {"model_spec": victim.spec, "keys_meta": dict(keys.meta)}

    def get(kind: str, spec: Mapping[str, Any], build: Callable):
        if rebuild and f"{kind}/{store.key(spec)}" not in fresh:
            return store.build(kind, spec, build)
        return store.get_or_build(kind, spec, build)

    tensors, meta = get("benign", base_spec, build_benign)
    benign = model_from(tensors, meta["model_spec"])
    ctx.benign_provider = lambda: benign
    prepared = PreparedVictim(cell=cell, device=device, data=data, store=store, ctx=ctx, train_cfg=train_cfg,
                              verify_cfg=verify_cfg, method_cls=method_cls, method=method, benign=benign, get=get)
    if upto == "benign":
        return prepared
    v_spec = victim_spec(cell)
    tensors, meta = get("victim", v_spec, build_victim)
    victim = model_from(tensors, meta["model_spec"])
    keys = keys_from(tensors, meta)
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
            return model_tensors(model), {"model_spec": model.spec}

        def build_filtered():
            surrogate_settings = {k: v for k, v in cell.keys.items() if k.startswith("surrogate_")}
            tensors, meta = get("surrogate", {**v_spec, "surrogate": surrogate_settings}, build_surrogate)
            surrogate = model_from(tensors, meta["model_spec"])
            filtered, stats = filter_keys(ctx, keys, victim, surrogate, benign, key_cfg.top_m, key_cfg.min_keys)
            verify_only = {k: v for k, v in filtered.tensors().items() if k.startswith("verify")}
            stats = {**stats, "surrogate_acc": accuracy(surrogate, data.test.x, data.test.y, device=device)}
            return ({**model_tensors(surrogate), **{"keys/" + k: v for k, v in verify_only.items()}},
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
