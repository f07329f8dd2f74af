"""Watermark ambiguity (forging) attack: the adversary embeds its own watermark.

Paper: DeepTracer App. "Robustness against Watermark Ambiguity Attacks" (Table 12), following
MEA-Defender (Lv et al., IEEE S&P 2024, https://arxiv.org/abs/2401.15239): "the adversary uses
20% of training samples to embed their counterfeit watermark, while the remaining 80% serve as
query samples for model stealing attack"; both parties' WSRs are reported (FMNIST: pirate
11.16 %, owner 100 %).

Idea: with two watermarks in one model, ownership claims conflict; a robust owner watermark
stays verifiable while the counterfeit one should not dominate.

Implementation. The adversary uses a registered watermark method (``method``, default
``badnets`` with another target and patch position than the owner's defaults) on its own data:
the method's ``keygen`` runs on a bundle whose *owner* part is the attacker's split minus a
held-out slice and whose *test* part is that held-out slice (the adversary's verification keys
come from images it never trains on). The resulting watermark samples are mixed into the
adversary's clean data (with their true labels) — replacing their clean originals when the
method says so (``replaced_index``, BadNets' default) — and the input model (a victim, or a
stolen model when chained: ``knockoff+ambiguity``) is fine-tuned on that mix (all layers). The
owner's WSR is measured by the runner; the adversary's own WSR on its own keys is reported in
the metrics as ``pirate_wsr`` (with ``pirate_detected`` and ``pirate_wsr_before``, its WSR on the
input model before embedding).

Choices the paper leaves open [wmbench, each a Config parameter]:

- the counterfeit method: ``badnets`` with ``method_config`` ``{"target": 0, "position":
  "top_left", "poison_rate": 0.2}`` — target 0 and the top-left corner differ from BadNets'
  defaults (target 1, bottom right); ``poison_rate`` 0.2 makes 20 % of the adversary's data
  carry the counterfeit watermark (the paper's 20 %). Other methods take their own settings
  through ``method_config`` (their ``keygen`` decides how many watermark samples there are);
- embedding happens by fine-tuning the (already stolen) model rather than jointly with the
  stealing loss — the chain ``knockoff+ambiguity`` gives the paper's scenario in two steps;
- fine-tuning: SGD lr 0.01, momentum 0.9, weight decay 5e-4, batch 128; ``epochs`` 20
  (``quick``: 5), one snapshot per epoch;
- a method whose ``keygen`` needs a benign model gets the input model as its stand-in (the
  adversary has no other model).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, Mapping, Optional

import torch
from torch import nn

from wmbench.api import Attack, AttackContext, AttackOutcome, Context, KeySet
from wmbench.blackbox import Blackbox
from wmbench.config import TrainConfig, resolve
from wmbench.data import DataBundle, Split
from wmbench.errors import UserError
from wmbench.registry import METHODS, register_attack

from wmbench.attacks.finetune import as_model, attacker_subset, finetune, frozen_copy, holdout


def _default_method_config() -> Dict[str, Any]:
    return {"target": 0, "position": "top_left", "poison_rate": 0.2}


@dataclass(frozen=True)
class AmbiguityConfig:
    """Ambiguity-attack parameters (see the module docstring).

    method: str = "badnets"         the adversary's watermark (a registered method).
    method_config: dict = {"target": 0, "position": "top_left", "poison_rate": 0.2}
                                    overrides of that method's Config (profile defaults below them).
    key_fraction: float = 0.1       share of the attacker's data held out for the adversary's keys.
    epochs: int = 20
    batch_size: int = 128
    lr: float = 0.01                SGD, momentum 0.9, weight decay 5e-4.
    n_samples: int | None = None    attacker samples used (None = the whole split).
    """

    method: str = "badnets"
    method_config: Dict[str, Any] = field(default_factory=_default_method_config)
    key_fraction: float = 0.1
    epochs: int = 20
    batch_size: int = 128
    lr: float = 0.01
    n_samples: Optional[int] = None

    PROFILES: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "smoke": {"epochs": 2, "n_samples": 1200},
        "quick": {"epochs": 5},
        "paper": {},
    }

    def validate(self) -> None:
        if self.method not in METHODS.names():
            raise UserError(f"unknown attacks.ambiguity.method {self.method!r}; available: {', '.join(METHODS.names())}")
        if not isinstance(self.method_config, Mapping):
            raise UserError("attacks.ambiguity.method_config must be a mapping of the method's settings")
        if not 0.0 < self.key_fraction < 0.5:
            raise UserError(f"attacks.ambiguity.key_fraction must be in (0, 0.5), got {self.key_fraction}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise UserError("attacks.ambiguity: epochs and batch_size must be >= 1 and lr > 0")
        if self.n_samples is not None and self.n_samples < 10:
            raise UserError("attacks.ambiguity.n_samples must be >= 10 or null")


@register_attack("ambiguity")
class Ambiguity(Attack):
    """The adversary embeds its own (counterfeit) watermark by fine-tuning (see the module docstring)."""

    paper = "https://arxiv.org/abs/2401.15239"
    year = 2024
    category = "ambiguity"
    needs = frozenset({"weights"})
    Config = AmbiguityConfig

    def run(self, target: Blackbox | nn.Module, ctx: AttackContext) -> AttackOutcome:
        cfg: AmbiguityConfig = self.config
        started = time.perf_counter()
        model = as_model(target, "ambiguity")
        data = attacker_subset(ctx.data.attacker, cfg.n_samples, ctx.seed_for("ambiguity", "subset"))
        own, held = holdout(data, cfg.key_fraction, ctx.seed_for("ambiguity", "keys"))
        method_cls = METHODS.get(cfg.method)
        method = method_cls(resolve(method_cls.Config, ctx.profile, dict(cfg.method_config),
                                    section=f"attacks.ambiguity.method_config ({cfg.method})"))
        bundle = dataclasses.replace(ctx.data, owner=own, test=held, attacker=Split(held.x[:0], held.y[:0]))
        adv_ctx = Context(data=bundle, arch=ctx.arch, train=ctx.train, verify=ctx.verify,
                          seed=ctx.seed_for("ambiguity", "adversary"), device=ctx.device, store=ctx.store,
                          profile=ctx.profile, progress=ctx.progress)
        stand_in = frozen_copy(model)
        adv_ctx.benign_provider = lambda: stand_in  # used by methods that select with a benign model
        keys: KeySet = method.keygen(adv_ctx)
        if keys.verify_x.shape[0] == 0:
            raise UserError(f"attacks.ambiguity: {cfg.method} produced no verification keys on the attacker's data")

        keep = torch.ones(len(own), dtype=torch.bool)
        replaced = keys.meta.get("replaced_index") or []
        if replaced:
            keep[torch.as_tensor(replaced, dtype=torch.long)] = False
        x = torch.cat([own.x[keep], keys.embed_x])
        y = torch.cat([own.y[keep], keys.embed_y])
        kw = dict(num_classes=ctx.data.num_classes, verify=ctx.verify, device=ctx.device)

        def pirate(m: nn.Module) -> Dict[str, float]:
            api = Blackbox(m, num_classes=ctx.data.num_classes, input_shape=ctx.input_shape, mode="labels",
                           device=ctx.device)
            return method.verify(api, keys, **kw).as_metrics()

        before = pirate(model)
        train = TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, optimizer="sgd", lr=cfg.lr, momentum=0.9,
                            weight_decay=5e-4, lr_step=0)
        snaps, history = finetune(model, (x, y), ctx, train, last_layer_only=False,
                                  seed=ctx.seed_for("ambiguity", "order"), desc="ambiguity")
        after = pirate(model)
        return AttackOutcome(model=model, queries=0, snapshots=snaps, metrics={
            "attack_wall_s": time.perf_counter() - started,
            "pirate_wsr": after["wsr"], "pirate_detected": after["detected"], "pirate_wsr_before": before["wsr"],
            "pirate_p_value_chance": after["p_value_chance"], "pirate_n_keys": float(keys.verify_y.shape[0]),
            "pirate_samples": float(keys.embed_x.shape[0]), "train_samples": float(x.shape[0]),
            "final_loss": history[-1]["loss"]})
