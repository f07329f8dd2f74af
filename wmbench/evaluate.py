"""Cell evaluation: run one cell — its victim, every attack stage, every verification — and record it.

:func:`run_cell` is the body of every cell task. It loads the cell's shared artifacts
(:func:`wmbench.artifacts.prepare_victim`), measures the benign model and the victim, runs the
attack chain stage by stage (a stealing stage sees only a :class:`~wmbench.blackbox.Blackbox`
and the attacker's split; a cacheable stage's model is stored as a ``stolen`` artifact),
verifies each suspect with the method's key set, and writes the cell's record
(:mod:`wmbench.records`). A failure inside a cell is recorded with its traceback, never raised.
"""
from __future__ import annotations

import dataclasses
import logging
import time
import traceback
from pathlib import Path
from typing import Any, Dict, List, Mapping, Tuple

import torch

from wmbench.api import AttackContext, KeySet, count_hits, private_copy
from wmbench.artifacts import model_from, model_tensors, prepare_victim, stage_spec, victim_free
from wmbench.blackbox import Blackbox
from wmbench.cell import Cell, cell_variant
from wmbench.config import resolve
from wmbench.data import Split
from wmbench.plan import RunOptions
from wmbench.records import new_record, now, provenance, write_cell
from wmbench.registry import ATTACKS, load_plugin
from wmbench.training import accuracy, predict_logits
from wmbench.utils import derive_seed, resolve_device

log = logging.getLogger(__name__)


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


class CellLog:
    """Attach a per-cell log file to the ``wmbench`` logger for the duration of a cell."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> "CellLog":
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


def evaluate_cell(cell: Cell, opts: RunOptions
                   ) -> Tuple[Dict[str, Dict[str, float]], int, str, List[Dict[str, Any]], Dict[str, Any]]:
    """Metrics per stage, total queries, device, curve rows of the last stage, and the
    watermark summary (:func:`watermark_summary`) of the cell."""
    prepared = prepare_victim(cell, opts)
    device, data, store, ctx = prepared.device, prepared.data, prepared.store, prepared.ctx
    train_cfg, verify_cfg, method = prepared.train_cfg, prepared.verify_cfg, prepared.method
    benign, victim, keys, candidates = prepared.benign, prepared.victim, prepared.keys, prepared.candidates
    filter_metrics, get = prepared.filter_metrics, prepared.get
    assert victim is not None and keys is not None

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
        current = victim
        stages = cell.attack_stages
        # A victim-free chain's models are shared by every method's cells (their store spec has no
        # victim): curve points measured with this cell's key set must not travel with them.
        shared = victim_free(cell)
        for index, (name, config_dict) in enumerate(zip(stages, cell.attack_configs)):
            attack_cls = ATTACKS.get(name)
            attack = attack_cls(resolve(attack_cls.Config, cell.profile, config_dict, section=f"attacks.{name}"))
            actx = AttackContext(data=attacker_view, arch=cell.arch, train=train_cfg, verify=verify_cfg,
                                 seed=derive_seed(cell.seed, "attack", index, name), device=device, store=store,
                                 profile=cell.profile, progress=opts.progress, victim_arch=cell.arch,
                                 data_root=opts.data_root, download=opts.download,
                                 watermark={"method": cell.method, "method_config": dict(cell.method_config),
                                            "keys_meta": dict(keys.meta)} if attack_cls.knows_watermark else {})
            spec = stage_spec(cell, index)
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
                          for step_name, step, model in outcome.snapshots] if last and not shared else []
                meta = {"attack_metrics": extra, "curve": points}
                if raw:
                    return outcome.model, meta
                return model_tensors(outcome.model), {"model_spec": outcome.model.spec, **meta}

            if attack_cls.cacheable:
                tensors, meta = get("stolen", spec, build_stolen)
                current = model_from(tensors, meta["model_spec"])
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
    started = time.perf_counter()
    record = new_record(cell, opts.run_name, "failed", started_at=now())
    device = str(resolve_device(opts.device))
    with CellLog(run_dir / "logs" / f"{cell.cell_id}.log"):
        log.info("cell %s: %s × %s[%s] on %s seed %d (%s) %s", cell.cell_id, cell.method, cell.attack, cell.labels,
                 cell.dataset, cell.seed, cell.profile, cell.sweep_label)
        try:
            metrics, queries, device, curve, watermark = evaluate_cell(cell, opts)
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


def failed_cell_record(cell_dict: Mapping[str, Any], opts_dict: Mapping[str, Any], error: str,
                       tb: str = "") -> Dict[str, Any]:
    """Write and return the ``failed`` record of a cell that could not run (a dependency failed,
    or its worker died)."""
    record = new_record(Cell.from_dict(cell_dict), opts_dict.get("run_name", ""), "failed", started_at=now(),
                        metrics={}, error=error, traceback=tb, wall_s=0.0, provenance=provenance(""))
    write_cell(Path(opts_dict["run_dir"]), record)
    return record


def skipped_record(cell: Cell, reason: str, run_name: str) -> Dict[str, Any]:
    """The record of a cell planning found incompatible (not written here)."""
    return new_record(cell, run_name, "skipped", skipped_reason=reason, metrics={}, provenance=provenance(""))
