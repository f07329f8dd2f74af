"""Fine-tuning removal attacks: FTLL, FTAL, RTLL, RTAL.

Paper: Adi, Baum, Cisse, Pinkas, Keshet, "Turning Your Weakness Into a Strength: Watermarking
Deep Neural Networks by Backdooring", USENIX Security 2018, https://arxiv.org/abs/1802.04633
(official code: adiyoss/WatermarkNN ``fine-tune.py``). DeepTracer (App. "Watermark Removal
Attack Methods") applies the four variants to victims (Fig. 10) and stolen models (Fig. 3).

Idea: continue training the suspect on the adversary's own data so that the watermark task is
forgotten while the main task is kept.

- **FTLL** fine-tunes only the last layer (``model.head``); every other layer is frozen.
- **FTAL** fine-tunes all layers.
- **RTLL** re-initialises the head, then trains only the head.
- **RTAL** re-initialises the head, then trains all layers.

Settings. Dataclass defaults follow Adi et al.'s code (``paper`` profile): SGD, lr 0.01 (the
README's value), momentum 0.9, weight decay 5e-4, batch 100, 20 epochs. The ``quick`` profile
(shared/reference/attacks.md §3.1 CPU plan, fixed before any watermark result was seen) runs 5
epochs at batch 128. The suspect after every epoch is a snapshot, so each cell yields the curve
accuracy/WSR against epochs (DeepTracer Figs. 3 and 10).

Choices the papers leave open [wmbench, each a Config parameter]:

- data: the attacker's split ``ctx.data.attacker`` (WRT convention: a disjoint third of the
  training distribution; when chained after a stealing attack it is that attack's query pool);
  ``n_samples`` caps it with a seeded subset;
- labels (``targets``): ``"ground_truth"`` — the attacker's split carries its true labels, and
  we give them to all four variants (the issue's convention; WRT gives victim labels to RT*,
  available as ``"model"``: the input model's own top-1 predictions on that data);
- frozen layers in FTLL/RTLL are also put in eval mode (no BatchNorm statistics update, no
  dropout), so everything outside the head stays bit-identical;
- the head is re-initialised with its layer's default initialiser (``reset_parameters``) under a
  seed derived from the cell;
- RT* is measured as it is (black-box, WRT) — ``restore_head=True`` swaps the original head back
  before measuring, as Adi et al.'s code does;
- no checkpoint selection: the last epoch is the suspect.

This module also holds the small helpers the other removal attacks share: :func:`finetune`
(the one fine-tuning routine, built on :func:`wmbench.training.fit`), :func:`reinit_head`,
:func:`attacker_subset` and :func:`select_operating_point` (the attacker's choice of setting on a
strength sweep).
"""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from wmbench.api import Attack, AttackContext, AttackOutcome
from wmbench.blackbox import Blackbox
from wmbench.config import TrainConfig
from wmbench.data import Split
from wmbench.errors import UserError
from wmbench.registry import register_attack
from wmbench.training import Batch, LossFn, cross_entropy, predict_logits

log = logging.getLogger(__name__)

MODES = ("ftll", "ftal", "rtll", "rtal")
TARGETS = ("ground_truth", "model")

Snapshot = Tuple[str, float, nn.Module]


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------

def as_model(target: Blackbox | nn.Module, attack: str) -> nn.Module:
    """A private deep copy of a white-box target (attacks never modify their input)."""
    if isinstance(target, Blackbox) or not isinstance(target, nn.Module):
        raise TypeError(f"{attack} needs the model's weights (an nn.Module), got {type(target).__name__}")
    return copy.deepcopy(target)


def frozen_copy(model: nn.Module) -> nn.Module:
    """A detached deep copy in eval mode (a snapshot)."""
    snap = copy.deepcopy(model)
    snap.eval()
    return snap


def attacker_subset(split: Split, n: Optional[int], seed: int) -> Split:
    """The attacker's split, or a seeded random subset of ``n`` samples."""
    if len(split) == 0:
        raise UserError("the attacker's split is empty; this attack needs attacker data (data.attacker_fraction)")
    return split.take(n, seed)


def holdout(split: Split, fraction: float, seed: int, cap: Optional[int] = None) -> Tuple[Split, Split]:
    """A seeded ``(rest, held_out)`` partition; ``held_out`` has ``fraction`` of the samples (at most ``cap``)."""
    n = len(split)
    n_out = max(1, min(n - 1, round(fraction * n)))
    if cap is not None:
        n_out = min(n_out, cap)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    return split.subset(order[n_out:]), split.subset(order[:n_out])


def reinit_head(model: nn.Module, seed: int) -> None:
    """Re-initialise ``model.head`` with its default initialiser under ``seed`` (global RNG untouched)."""
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Linear):
        raise UserError(f"{type(model).__name__} has no nn.Linear 'head'; RTLL/RTAL need one")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        head.reset_parameters()


def model_labels(model: nn.Module, x: Tensor, device: torch.device) -> Tensor:
    """The model's own top-1 labels on ``x`` (pseudo-labels)."""
    return predict_logits(model, x, device=device).argmax(1)


def split_accuracy(model: nn.Module, split: Split, device: torch.device) -> float:
    if len(split) == 0:
        return float("nan")
    return (predict_logits(model, split.x, device=device).argmax(1) == split.y).float().mean().item()


def _head_only_loss(base: LossFn) -> LossFn:
    """Keep every module but the head in eval mode (fit() sets train mode each epoch)."""

    def loss_fn(model: nn.Module, batch: Batch) -> Tensor:
        for name, module in model.named_children():
            if name != "head":
                module.eval()
        return base(model, batch)

    return loss_fn


def finetune(
    model: nn.Module,
    data: Sequence[Tensor] | Callable,
    ctx: AttackContext,
    train: TrainConfig,
    *,
    last_layer_only: bool,
    seed: int,
    desc: str,
    loss_fn: LossFn = cross_entropy,
    snapshot: Optional[Callable[[int, nn.Module], Optional[Snapshot]]] = None,
) -> Tuple[List[Snapshot], List[Dict[str, float]]]:
    """Fine-tune ``model`` in place with the shared engine and return ``(snapshots, history)``.

    ``last_layer_only`` trains ``model.head`` alone (other parameters frozen and their modules
    in eval mode, so they stay bit-identical). ``snapshot(epoch, model)`` may return a
    ``(step_name, step, model)`` snapshot after each epoch (default: ``("epoch", e, copy)``).
    """
    snaps: List[Snapshot] = []
    take = snapshot or (lambda epoch, m: ("epoch", float(epoch), frozen_copy(m)))

    def on_epoch_end(epoch: int, m: nn.Module) -> None:
        snap = take(epoch, m)
        if snap is not None:
            snaps.append(snap)

    params: Optional[List[Tensor]] = None
    frozen: List[nn.Parameter] = []
    if last_layer_only:
        head = getattr(model, "head", None)
        if not isinstance(head, nn.Linear):
            raise UserError(f"{type(model).__name__} has no nn.Linear 'head'; FTLL/RTLL need one")
        head_ids = {id(p) for p in head.parameters()}
        frozen = [p for p in model.parameters() if id(p) not in head_ids and p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
        params = list(head.parameters())
        loss_fn = _head_only_loss(loss_fn)
    try:
        history = ctx.fit(model, data, cfg=train, loss_fn=loss_fn, seed=seed, desc=desc,
                          params=params, on_epoch_end=on_epoch_end)
    finally:
        for p in frozen:
            p.requires_grad_(True)
    model.eval()
    return snaps, history


def select_operating_point(points: Sequence[Tuple[float, float]], reference: float, max_drop: float) -> int:
    """The attacker's choice on a strength sweep: the index of the strongest setting whose
    accuracy (on the attacker's own held-out data) is within ``max_drop`` of ``reference``.

    ``points`` are ``(strength, accuracy)`` pairs ordered from weakest to strongest. When no
    setting keeps the accuracy, the weakest one (index 0) is chosen.
    """
    chosen = 0
    for i, (_, acc) in enumerate(points):
        if acc >= reference - max_drop:
            chosen = i
    return chosen


# --------------------------------------------------------------------------------------------
# The four fine-tuning attacks
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FineTuneConfig:
    """Fine-tuning parameters (defaults = Adi et al.'s code; see the module docstring).

    epochs: int = 20
    batch_size: int = 100
    optimizer: str = "sgd"          "sgd" or "adam".
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_step: int = 0                StepLR period in epochs; 0 = constant learning rate.
    lr_gamma: float = 0.1
    n_samples: int | None = None    attacker samples used (None = the whole attacker split).
    targets: str = "ground_truth"   "ground_truth" (the split's labels) or "model" (the input
                                    model's top-1 labels on that data).
    restore_head: bool = False      RT*: swap the original head back before measuring (Adi).
    """

    epochs: int = 20
    batch_size: int = 100
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_step: int = 0
    lr_gamma: float = 0.1
    n_samples: Optional[int] = None
    targets: str = "ground_truth"
    restore_head: bool = False

    PROFILES: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "smoke": {"epochs": 2, "batch_size": 64, "n_samples": 1000},
        "quick": {"epochs": 5, "batch_size": 128},
        "paper": {},
    }

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise UserError("fine-tuning attacks: epochs and batch_size must be >= 1 and lr > 0")
        if self.optimizer not in ("sgd", "adam"):
            raise UserError(f"fine-tuning attacks: optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        if self.targets not in TARGETS:
            raise UserError(f"fine-tuning attacks: targets must be one of {', '.join(TARGETS)}, got {self.targets!r}")
        if self.n_samples is not None and self.n_samples < 1:
            raise UserError(f"fine-tuning attacks: n_samples must be a positive integer or null, got {self.n_samples}")

    def train_config(self) -> TrainConfig:
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, optimizer=self.optimizer, lr=self.lr,
                           momentum=self.momentum, weight_decay=self.weight_decay, lr_step=self.lr_step,
                           lr_gamma=self.lr_gamma)


def training_targets(model: nn.Module, split: Split, targets: str, device: torch.device) -> Tensor:
    """Labels to fine-tune on: the split's ground truth, or the model's own predictions."""
    return split.y if targets == "ground_truth" else model_labels(model, split.x, device)


def run_finetune(model: nn.Module, ctx: AttackContext, cfg: FineTuneConfig, mode: str) -> AttackOutcome:
    """FTLL/FTAL/RTLL/RTAL on a private copy of ``model`` (see the module docstring)."""
    if mode not in MODES:
        raise UserError(f"unknown fine-tuning mode {mode!r}; accepted: {', '.join(MODES)}")
    started = time.perf_counter()
    data = attacker_subset(ctx.data.attacker, cfg.n_samples, ctx.seed_for(mode, "subset"))
    y = training_targets(model, data, cfg.targets, ctx.device)
    original_head = copy.deepcopy(model.head)
    if mode.startswith("rt"):
        reinit_head(model, ctx.seed_for(mode, "head"))

    def with_head(m: nn.Module) -> nn.Module:
        snap = frozen_copy(m)
        if cfg.restore_head:
            snap.head = copy.deepcopy(original_head)
        return snap

    snaps, history = finetune(model, (data.x, y), ctx, cfg.train_config(), last_layer_only=mode.endswith("ll"),
                              seed=ctx.seed_for(mode, "order"), desc=mode,
                              snapshot=lambda epoch, m: ("epoch", float(epoch), with_head(m)))
    suspect = with_head(model)
    return AttackOutcome(model=suspect, queries=0, snapshots=snaps, metrics={
        "attack_wall_s": time.perf_counter() - started, "n_samples": float(len(data)),
        "final_loss": history[-1]["loss"]})


class _FineTune(Attack):
    """Shared implementation of the four fine-tuning attacks (``mode`` set by each subclass)."""

    mode: ClassVar[str] = ""
    paper = "https://arxiv.org/abs/1802.04633"
    year = 2018
    category = "removal / fine-tuning"
    needs = frozenset({"weights"})
    Config = FineTuneConfig

    def run(self, target: Blackbox | nn.Module, ctx: AttackContext) -> AttackOutcome:
        return run_finetune(as_model(target, self.mode.upper()), ctx, self.config, self.mode)


@register_attack("ftll")
class FTLL(_FineTune):
    """Fine-tune the last layer only (Adi et al. 2018)."""

    mode = "ftll"


@register_attack("ftal")
class FTAL(_FineTune):
    """Fine-tune all layers (Adi et al. 2018)."""

    mode = "ftal"


@register_attack("rtll")
class RTLL(_FineTune):
    """Re-initialise the last layer and train it alone (Adi et al. 2018)."""

    mode = "rtll"


@register_attack("rtal")
class RTAL(_FineTune):
    """Re-initialise the last layer and train all layers (Adi et al. 2018)."""

    mode = "rtal"
