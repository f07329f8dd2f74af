"""Weight quantization removal attack.

Paper: DeepTracer App. "Watermark Removal Attack Methods" ("compresses model weights to lower bit
representations ... bit size of 16, 8, 6, 4, 3, 2, and 1"; Tables 3 and 11), citing Lukas,
Jiao, Kerschbaum, "SoK: How Robust is Image Classification Deep Neural Network Watermarking?",
IEEE S&P 2022, https://arxiv.org/abs/2108.04974 (WRT ``weight_quantization.py``).

Idea: round every weight to one of ``2^b`` levels; the model keeps working at 6–8 bits while a
fragile watermark may not survive.

Scheme (the paper does not state it) [wmbench, Config parameters]: a clean uniform quantiser
per tensor (``granularity="tensor"``) or per output channel (``"channel"``):
``Δ = (max − min)/(2^b − 1)``, ``q = min + round((w − min)/Δ)·Δ``, so a tensor holds at most
``2^b`` distinct values; constant tensors are left as they are. Quantized: every floating-point
*parameter* (weights and biases; ``include_bias=False`` keeps biases); buffers (normalisation
statistics, the input mean/std) are not. The WRT quirk (edge values kept) is not reproduced.
``finetune_epochs`` (WRT: 1) fine-tunes after quantizing on the attacker's split with its labels
(the result is then no longer exactly on the grid). One snapshot per bit width; the cell's
suspect is the attacker's pick (fewest bits whose accuracy on held-out attacker data is within
``max_acc_drop``; see :func:`~wmbench.attacks.finetune.select_operating_point`) or the fixed
``bits``.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any, ClassVar, List, Mapping, Optional, Tuple

import torch
from torch import Tensor, nn

from wmbench.api import Attack, AttackContext, AttackOutcome
from wmbench.blackbox import Blackbox
from wmbench.config import TrainConfig
from wmbench.errors import UserError
from wmbench.registry import register_attack

from wmbench.attacks.finetune import (
    Snapshot, as_model, attacker_subset, finetune, frozen_copy, holdout, select_operating_point, split_accuracy,
)

PAPER_BITS = (16, 8, 6, 4, 3, 2, 1)


def quantize_tensor(w: Tensor, bits: int, per_channel: bool = False) -> Tensor:
    """Uniform quantization of ``w`` to ``2^bits`` levels between its min and max (per tensor, or per
    slice along dim 0 when ``per_channel``)."""
    if bits < 1:
        raise UserError(f"quantization needs at least 1 bit, got {bits}")
    if per_channel and w.dim() > 1:
        return torch.stack([quantize_tensor(row, bits) for row in w])
    lo, hi = w.min(), w.max()
    if not torch.isfinite(lo) or not torch.isfinite(hi) or hi <= lo:
        return w.clone()
    levels = 2 ** bits - 1
    w64 = w.double()
    step = (hi.double() - lo.double()) / levels
    q = lo.double() + torch.round((w64 - lo.double()) / step).clamp(0, levels) * step
    return q.to(w.dtype)


@torch.no_grad()
def quantize_model(model: nn.Module, bits: int, per_channel: bool = False, include_bias: bool = True) -> None:
    """Quantize every floating-point parameter of ``model`` in place."""
    for name, param in model.named_parameters():
        if not param.is_floating_point() or (not include_bias and name.endswith("bias")):
            continue
        param.copy_(quantize_tensor(param.detach(), bits, per_channel))


@dataclass(frozen=True)
class QuantizeConfig:
    """Weight quantization parameters (see the module docstring).

    bits_list: tuple = (16, 8, 6, 4, 3, 2, 1)  swept bit widths (the paper's), strongest last.
    granularity: str = "tensor"     "tensor" or "channel" (per output channel).
    include_bias: bool = True       quantize biases too.
    bits: int | None = None         fixed bit width of the cell's suspect; None = attacker's pick.
    max_acc_drop: float = 0.05      accuracy the attacker is willing to lose (fraction).
    eval_size: int = 2000           held-out attacker samples for the attacker's pick.
    finetune_epochs: int = 0        fine-tuning epochs after quantizing (WRT: 1).
    lr: float = 0.01                fine-tuning (SGD, momentum 0.9, weight decay 5e-4, batch 128).
    """

    bits_list: Tuple[int, ...] = PAPER_BITS
    granularity: str = "tensor"
    include_bias: bool = True
    bits: Optional[int] = None
    max_acc_drop: float = 0.05
    eval_size: int = 2000
    finetune_epochs: int = 0
    lr: float = 0.01

    PROFILES: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "smoke": {"bits_list": (8, 4, 2), "eval_size": 300},
        "quick": {},
        "paper": {},
    }

    def validate(self) -> None:
        if not self.bits_list or any(b < 1 or b > 32 for b in self.bits_list):
            raise UserError(f"attacks.quantize.bits_list must hold bit widths in 1..32, got {list(self.bits_list)}")
        if list(self.bits_list) != sorted(self.bits_list, reverse=True):
            raise UserError(f"attacks.quantize.bits_list must be decreasing (weakest first), got {list(self.bits_list)}")
        if self.granularity not in ("tensor", "channel"):
            raise UserError(f"attacks.quantize.granularity must be 'tensor' or 'channel', got {self.granularity!r}")
        if self.bits is not None and self.bits not in self.bits_list:
            raise UserError(f"attacks.quantize.bits must be one of bits_list {list(self.bits_list)} or null")
        if not 0.0 <= self.max_acc_drop <= 1.0 or self.eval_size < 1 or self.finetune_epochs < 0 or self.lr <= 0:
            raise UserError("attacks.quantize: max_acc_drop in [0, 1], eval_size >= 1, finetune_epochs >= 0, lr > 0")


@register_attack("quantize")
class Quantize(Attack):
    """Uniform weight quantization over a sweep of bit widths."""

    paper = "https://arxiv.org/abs/2108.04974"
    year = 2022
    category = "removal / quantization"
    needs = frozenset({"weights"})
    Config = QuantizeConfig

    def run(self, target: Blackbox | nn.Module, ctx: AttackContext) -> AttackOutcome:
        cfg: QuantizeConfig = self.config
        started = time.perf_counter()
        model = as_model(target, "quantize")
        data = attacker_subset(ctx.data.attacker, None, 0)
        train_split, eval_split = holdout(data, 0.2, ctx.seed_for("quantize", "holdout"), cap=cfg.eval_size)
        reference = split_accuracy(model, eval_split, ctx.device)
        snaps: List[Snapshot] = []
        points: List[Tuple[float, float]] = []
        for bits in cfg.bits_list:
            q = copy.deepcopy(model)
            quantize_model(q, bits, cfg.granularity == "channel", cfg.include_bias)
            if cfg.finetune_epochs:
                train = TrainConfig(epochs=cfg.finetune_epochs, batch_size=128, optimizer="sgd", lr=cfg.lr,
                                    momentum=0.9, weight_decay=5e-4, lr_step=0)
                finetune(q, (train_split.x, train_split.y), ctx, train, last_layer_only=False,
                         seed=ctx.seed_for("quantize", "order", bits), desc=f"quantize {bits} ft",
                         snapshot=lambda epoch, m: None)
            q.eval()
            snaps.append(("bits", float(bits), q))
            points.append((float(bits), split_accuracy(q, eval_split, ctx.device)))
        index = list(cfg.bits_list).index(cfg.bits) if cfg.bits is not None else \
            select_operating_point(points, reference, cfg.max_acc_drop)
        return AttackOutcome(model=frozen_copy(snaps[index][2]), queries=0, snapshots=snaps, metrics={
            "attack_wall_s": time.perf_counter() - started, "chosen_bits": points[index][0],
            "attacker_acc_before": reference, "attacker_acc_chosen": points[index][1]})
