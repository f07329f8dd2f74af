"""Weight pruning and fine-pruning removal attacks.

**Pruning.** Paper: Uchida, Nagai, Sakazawa, Satoh, "Embedding Watermarks into Deep Neural
Networks", ICMR 2017, https://arxiv.org/abs/1701.04082 (robustness to magnitude pruning);
DeepTracer App. "Watermark Removal Attack Methods": "setting a certain proportion of weights
with the smallest magnitude to zero ... as the pruning rate increases from 0% to 100%"
(Figs. 4 and 11). Implemented with :mod:`torch.nn.utils.prune`: ``l1_unstructured`` per layer
(``scope="layer"``, every pruned tensor loses ``rate`` of its entries) or
``global_unstructured`` (``scope="global"``, the smallest weights of all pruned tensors taken
together). One snapshot per rate gives the accuracy/WSR curve of the figures.

**Fine-pruning.** Paper: Liu, Dolan-Gavitt, Garg, "Fine-Pruning: Defending Against Backdooring
Attacks on Deep Neural Networks", RAID 2018, https://arxiv.org/abs/1805.12185 (code:
kangliucn/Fine-pruning-defense). The channels of the last convolutional layer with the lowest
mean activation on clean data ("dormant" channels) are pruned in increasing order of activation,
then the network is fine-tuned on clean data. Snapshots: the pruned model at each pruned
fraction up to ``rate`` (step ``prune_rate``), then after each fine-tuning epoch (step
``epoch``).

Choices the papers leave open [wmbench, each a Config parameter]:

- pruned tensors: the weights of every Conv and Linear layer, the head included (biases and
  normalisation layers are left alone; ``include_bias=True`` prunes biases too, as WRT does);
- after pruning the masks are made permanent (``prune.remove``); when ``finetune_epochs > 0``
  the masks stay active during fine-tuning so pruned weights stay zero;
- fine-tuning uses the attacker's split with its ground-truth labels (see
  :mod:`wmbench.attacks.finetune`), SGD lr 0.01, momentum 0.9, weight decay 5e-4;
- the suspect of the cell (its "attack" row) is the attacker's pick on the sweep: the strongest
  rate whose accuracy on a held-out slice of the attacker's data (``eval_size`` samples, never
  used for fine-tuning) is within ``max_acc_drop`` of the unpruned model's
  (:func:`~wmbench.attacks.finetune.select_operating_point`); ``rate`` fixes it instead;
- fine-pruning: activation = mean over samples and positions of ``max(0, conv output)`` of the
  last ``nn.Conv2d`` registered in the model; a channel is pruned by masking its filter and bias
  (its output is then exactly zero); default rate 0.8 (Liu et al. prune about 80 % of the last
  layer's channels; TrojanZoo 0.95, WRT 0.96), then ``finetune_epochs`` epochs (quick: 5).
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.nn.utils import prune

from wmbench.api import Attack, AttackContext, AttackOutcome
from wmbench.blackbox import Blackbox
from wmbench.config import TrainConfig
from wmbench.data import Split
from wmbench.errors import UserError
from wmbench.registry import register_attack

from wmbench.attacks.finetune import (
    Snapshot, as_model, attacker_subset, finetune, frozen_copy, holdout, select_operating_point, split_accuracy,
)

PAPER_RATES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def prunable_parameters(model: nn.Module, include_bias: bool = False) -> List[Tuple[nn.Module, str]]:
    """``(module, name)`` of every Conv/Linear weight (and bias when asked), in registration order."""
    out: List[Tuple[nn.Module, str]] = []
    for module in model.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            out.append((module, "weight"))
            if include_bias and module.bias is not None:
                out.append((module, "bias"))
    return out


def apply_magnitude_pruning(model: nn.Module, rate: float, scope: str = "layer", include_bias: bool = False) -> None:
    """Zero the ``rate`` fraction of smallest-magnitude weights of ``model`` in place.

    The pruning re-parametrisation (``weight_orig`` × ``weight_mask``) is left on; call
    :func:`make_permanent` to fold it (or fine-tune first, keeping pruned weights at zero).
    """
    if not 0.0 <= rate <= 1.0:
        raise UserError(f"pruning rate must be in [0, 1], got {rate}")
    params = prunable_parameters(model, include_bias)
    if scope == "global":
        prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=float(rate))
    elif scope == "layer":
        for module, name in params:
            prune.l1_unstructured(module, name, amount=float(rate))
    else:
        raise UserError(f"pruning scope must be 'layer' or 'global', got {scope!r}")


def make_permanent(model: nn.Module) -> None:
    """Fold every pruning mask into its tensor (``prune.remove``)."""
    for module in model.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):
                prune.remove(module, hook._tensor_name)


def zero_fraction(model: nn.Module, include_bias: bool = False) -> float:
    """Fraction of exactly-zero entries over the prunable tensors."""
    zeros = total = 0
    for module, name in prunable_parameters(model, include_bias):
        t = getattr(module, name)
        zeros += int((t == 0).sum())
        total += t.numel()
    return zeros / max(total, 1)


def _ft_config(epochs: int, batch_size: int, lr: float, optimizer: str, momentum: float, weight_decay: float) -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr, momentum=momentum,
                       weight_decay=weight_decay, lr_step=0)


# --------------------------------------------------------------------------------------------
# Magnitude pruning
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PruneConfig:
    """Magnitude pruning parameters (see the module docstring).

    rates: tuple = (0.0, 0.1, ..., 1.0)  swept pruning rates (the paper's 0–100 %); one snapshot each.
    scope: str = "layer"            "layer" (l1_unstructured per tensor) or "global" (global_unstructured).
    include_bias: bool = False      prune biases too (WRT).
    rate: float | None = None       fixed rate of the cell's suspect; None = the attacker's pick
                                    (strongest rate within ``max_acc_drop`` on held-out attacker data).
    max_acc_drop: float = 0.05      accuracy the attacker is willing to lose (fraction).
    eval_size: int = 2000           held-out attacker samples for the attacker's pick.
    finetune_epochs: int = 0        fine-tuning epochs after pruning (masks kept), per rate.
    lr: float = 0.01                fine-tuning: SGD learning rate...
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    n_samples: int | None = None    attacker samples for fine-tuning (None = all but the held-out slice).
    """

    rates: Tuple[float, ...] = PAPER_RATES
    scope: str = "layer"
    include_bias: bool = False
    rate: Optional[float] = None
    max_acc_drop: float = 0.05
    eval_size: int = 2000
    finetune_epochs: int = 0
    lr: float = 0.01
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    n_samples: Optional[int] = None

    PROFILES: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "smoke": {"rates": (0.0, 0.3, 0.6, 0.9), "eval_size": 300},
        "quick": {},
        "paper": {},
    }

    def validate(self) -> None:
        if not self.rates or any(not 0.0 <= r <= 1.0 for r in self.rates) or list(self.rates) != sorted(self.rates):
            raise UserError(f"attacks.prune.rates must be increasing values in [0, 1], got {list(self.rates)}")
        if self.scope not in ("layer", "global"):
            raise UserError(f"attacks.prune.scope must be 'layer' or 'global', got {self.scope!r}")
        if self.rate is not None and self.rate not in self.rates:
            raise UserError(f"attacks.prune.rate must be one of rates {list(self.rates)} or null, got {self.rate}")
        if not 0.0 <= self.max_acc_drop <= 1.0 or self.eval_size < 1 or self.finetune_epochs < 0:
            raise UserError("attacks.prune: max_acc_drop must be in [0, 1], eval_size >= 1, finetune_epochs >= 0")
        if self.optimizer not in ("sgd", "adam") or self.lr <= 0 or self.batch_size < 1:
            raise UserError("attacks.prune: optimizer must be 'sgd' or 'adam', lr > 0 and batch_size >= 1")


@register_attack("prune")
class Prune(Attack):
    """Magnitude weight pruning over a sweep of rates (optionally fine-tuned)."""

    paper = "https://arxiv.org/abs/1701.04082"
    year = 2017
    category = "removal / pruning"
    needs = frozenset({"weights"})
    Config = PruneConfig

    def run(self, target: Blackbox | nn.Module, ctx: AttackContext) -> AttackOutcome:
        cfg: PruneConfig = self.config
        started = time.perf_counter()
        model = as_model(target, "prune")
        data = attacker_subset(ctx.data.attacker, None, 0)
        train_split, eval_split = holdout(data, 0.2, ctx.seed_for("prune", "holdout"), cap=cfg.eval_size)
        if cfg.n_samples is not None:
            train_split = train_split.take(cfg.n_samples, ctx.seed_for("prune", "subset"))
        reference = split_accuracy(model, eval_split, ctx.device)
        snaps: List[Snapshot] = []
        points: List[Tuple[float, float]] = []
        for rate in cfg.rates:
            pruned = copy.deepcopy(model)
            apply_magnitude_pruning(pruned, rate, cfg.scope, cfg.include_bias)
            if cfg.finetune_epochs:
                train = _ft_config(cfg.finetune_epochs, cfg.batch_size, cfg.lr, cfg.optimizer, cfg.momentum,
                                   cfg.weight_decay)
                finetune(pruned, (train_split.x, train_split.y), ctx, train, last_layer_only=False,
                         seed=ctx.seed_for("prune", "order", rate), desc=f"prune {rate:g} ft",
                         snapshot=lambda epoch, m: None)
            make_permanent(pruned)
            pruned.eval()
            snaps.append(("rate", float(rate), pruned))
            points.append((float(rate), split_accuracy(pruned, eval_split, ctx.device)))
        index = list(cfg.rates).index(cfg.rate) if cfg.rate is not None else \
            select_operating_point(points, reference, cfg.max_acc_drop)
        chosen_rate, chosen_acc = points[index]
        return AttackOutcome(model=frozen_copy(snaps[index][2]), queries=0, snapshots=snaps, metrics={
            "attack_wall_s": time.perf_counter() - started, "chosen_rate": chosen_rate,
            "attacker_acc_before": reference, "attacker_acc_chosen": chosen_acc,
            "zero_fraction": zero_fraction(snaps[index][2], cfg.include_bias)})


# --------------------------------------------------------------------------------------------
# Fine-pruning
# --------------------------------------------------------------------------------------------

def last_conv(model: nn.Module) -> nn.Conv2d:
    """The last ``nn.Conv2d`` registered in ``model``."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise UserError(f"{type(model).__name__} has no Conv2d layer; fine-pruning needs one")
    return convs[-1]


@torch.no_grad()
def channel_activations(model: nn.Module, layer: nn.Conv2d, x: Tensor, device: torch.device,
                        batch_size: int = 512) -> Tensor:
    """Mean of ``max(0, layer output)`` per output channel over ``x`` (samples and positions)."""
    total = torch.zeros(layer.out_channels, dtype=torch.float64)
    count = 0
    store: Dict[str, Tensor] = {}
    handle = layer.register_forward_hook(lambda m, i, o: store.__setitem__("out", o))
    model.eval()
    model.to(device)
    try:
        for start in range(0, x.shape[0], batch_size):
            model(x[start : start + batch_size].to(device))
            out = store["out"].float().clamp_min(0)
            total += out.sum(dim=(0, 2, 3)).double().cpu()
            count += out.shape[0] * out.shape[2] * out.shape[3]
    finally:
        handle.remove()
    return (total / max(count, 1)).float()


def prune_channels(layer: nn.Conv2d, channels: Sequence[int]) -> None:
    """Mask the filters (and biases) of ``channels`` of ``layer`` (their outputs become zero)."""
    mask = torch.ones_like(layer.weight)
    mask[list(channels)] = 0
    prune.custom_from_mask(layer, "weight", mask)
    if layer.bias is not None:
        bias_mask = torch.ones_like(layer.bias)
        bias_mask[list(channels)] = 0
        prune.custom_from_mask(layer, "bias", bias_mask)


@dataclass(frozen=True)
class FinePruneConfig:
    """Fine-pruning parameters (see the module docstring).

    rate: float = 0.8               fraction of the last conv layer's channels pruned.
    curve_rates: tuple = (0.2, 0.4, 0.6)   extra pruned fractions recorded as snapshots (no fine-tuning).
    finetune_epochs: int = 10       fine-tuning epochs after pruning (WRT: 10).
    lr: float = 0.01
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    activation_size: int = 2000     clean attacker samples used to rank the channels.
    n_samples: int | None = None    attacker samples for fine-tuning (None = all).
    """

    rate: float = 0.8
    curve_rates: Tuple[float, ...] = (0.2, 0.4, 0.6)
    finetune_epochs: int = 10
    lr: float = 0.01
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    activation_size: int = 2000
    n_samples: Optional[int] = None

    PROFILES: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "smoke": {"finetune_epochs": 1, "activation_size": 300, "n_samples": 1000},
        "quick": {"finetune_epochs": 5},
        "paper": {},
    }

    def validate(self) -> None:
        if not 0.0 < self.rate < 1.0:
            raise UserError(f"attacks.fineprune.rate must be in (0, 1), got {self.rate}")
        if any(not 0.0 < r < self.rate for r in self.curve_rates):
            raise UserError(f"attacks.fineprune.curve_rates must lie in (0, rate), got {list(self.curve_rates)}")
        if self.finetune_epochs < 0 or self.activation_size < 1 or self.batch_size < 1 or self.lr <= 0:
            raise UserError("attacks.fineprune: finetune_epochs >= 0, activation_size >= 1, batch_size >= 1, lr > 0")
        if self.optimizer not in ("sgd", "adam"):
            raise UserError(f"attacks.fineprune.optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")


@register_attack("fineprune")
class FinePrune(Attack):
    """Fine-pruning (Liu et al. 2018): prune dormant last-conv channels, then fine-tune."""

    paper = "https://arxiv.org/abs/1805.12185"
    year = 2018
    category = "removal / pruning"
    needs = frozenset({"weights"})
    Config = FinePruneConfig

    def run(self, target: Blackbox | nn.Module, ctx: AttackContext) -> AttackOutcome:
        cfg: FinePruneConfig = self.config
        started = time.perf_counter()
        model = as_model(target, "fineprune")
        data = attacker_subset(ctx.data.attacker, cfg.n_samples, ctx.seed_for("fineprune", "subset"))
        probe = data.take(cfg.activation_size, ctx.seed_for("fineprune", "probe"))
        layer = last_conv(model)
        activation = channel_activations(model, layer, probe.x, ctx.device)
        order = torch.argsort(activation).tolist()  # most dormant first
        snaps: List[Snapshot] = []
        for rate in cfg.curve_rates:
            partial = copy.deepcopy(model)
            prune_channels(last_conv(partial), order[: round(rate * len(order))])
            make_permanent(partial)
            snaps.append(("prune_rate", float(rate), frozen_copy(partial)))
        n_pruned = round(cfg.rate * len(order))
        prune_channels(layer, order[:n_pruned])
        snaps.append(("prune_rate", float(cfg.rate), _permanent_copy(model)))
        history: List[Dict[str, float]] = []
        if cfg.finetune_epochs:
            train = _ft_config(cfg.finetune_epochs, cfg.batch_size, cfg.lr, cfg.optimizer, cfg.momentum,
                               cfg.weight_decay)
            more, history = finetune(model, (data.x, data.y), ctx, train, last_layer_only=False,
                                     seed=ctx.seed_for("fineprune", "order"), desc="fineprune ft",
                                     snapshot=lambda epoch, m: ("epoch", float(epoch), _permanent_copy(m)))
            snaps += more
        make_permanent(model)
        model.eval()
        return AttackOutcome(model=model, queries=0, snapshots=snaps, metrics={
            "attack_wall_s": time.perf_counter() - started, "pruned_channels": float(n_pruned),
            "channels": float(len(order)),
            "dormant_activation_max": float(activation[order[n_pruned - 1]]) if n_pruned else 0.0,
            "final_loss": history[-1]["loss"] if history else float("nan")})


def _permanent_copy(model: nn.Module) -> nn.Module:
    """A deep copy of a model under pruning re-parametrisation, with the masks folded in."""
    for module in model.modules():  # the masked tensors are non-leaf: refresh them detached to copy
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, prune.BasePruningMethod):
                setattr(module, hook._tensor_name, hook.apply_mask(module).detach())
    snap = copy.deepcopy(model)
    make_permanent(snap)
    snap.eval()
    return snap
