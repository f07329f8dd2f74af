"""Shared pieces of the model-stealing attacks (JBDA, Knockoff, DFME, DFMS-HL, distillation).

Every stealing attack talks to the victim only through :class:`~wmbench.blackbox.Blackbox`
(which counts every image) and builds its student with the one training loop
(:func:`wmbench.training.fit`). What they share lives here, once:

- **access checks** (:func:`check_access`): a hard-label variant refuses a Blackbox that would
  return probabilities, a soft-label variant refuses a label-only one;
- **query pools** (:func:`query_pool`): the attacker's split of the victim's dataset, any
  registered dataset (cross-dataset stealing), optionally restricted to a subset of classes
  (partial functionality); :func:`pool_metrics` describes the pool for the results;
- **querying** (:func:`query_victim`, :func:`query_rows`): batched queries, optional Gaussian
  noise on every query (the noisy-query scenario), outputs normalised to probabilities (soft)
  or integer labels (hard);
- **transfer sets** (:class:`TransferSet`): queried pairs stored as rows of a pool (no copy of
  the images) or as explicit tensors, batched for :func:`~wmbench.training.fit`;
- **adversarial-training stealing** (:class:`FGSMAugment`, :func:`fgsm`): each epoch, FGSM
  examples of the current student are queried and added to the transfer set;
- **losses** (:func:`distillation_loss`) and **student training** (:func:`train_student`).

Scenarios are options of the attacks, never copies of them: ``query_set`` (cross-dataset),
``arch`` (cross-architecture), ``classes`` (partial functionality), ``query_noise`` (noisy
queries), ``adv_eps`` (adversarial-training stealing), ``optimizer``/``lr`` (unusual optimisers),
``query_sets`` (continuous distribution shift, Knockoff) and chains ``a+b`` (double-stage).
"""
from __future__ import annotations

import copy
import logging
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wmbench.api import AttackContext
from wmbench.blackbox import Blackbox
from wmbench.config import OPTIMIZERS, TrainConfig
from wmbench.data import ATTACKER_POOL, Split, conform, pool_parts, training_pool
from wmbench.errors import UserError
from wmbench.registry import DATASETS, MODELS

from wmbench.augment import Transform, check_transforms
from wmbench.training import Batch, BatchSource, LossFn, cross_entropy

log = logging.getLogger(__name__)

LABEL_MODES = ("soft", "hard")
#: Probabilities are clamped to this before taking logarithms (float32 softmax underflows to 0).
PROB_FLOOR = 1e-30


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------
def validate_stealing(section: str, cfg: Any) -> None:
    """Check the stealing options ``cfg`` has (each is optional), raising :class:`UserError`.

    ``section`` is the config section used in messages, e.g. ``"attacks.jbda"``.
    """
    has = lambda name: hasattr(cfg, name)  # noqa: E731
    if has("labels") and cfg.labels not in LABEL_MODES:
        raise UserError(f"{section}.labels must be 'soft' or 'hard', got {cfg.labels!r}")
    if has("budget") and cfg.budget is not None and cfg.budget < 1:
        raise UserError(f"{section}.budget must be a positive integer or null, got {cfg.budget}")
    names = DATASETS.names()
    available = f"available: {ATTACKER_POOL}, {', '.join(names)}, or several joined by '+'"
    unknown = lambda pool: any(p != ATTACKER_POOL and p not in names for p in pool_parts(pool))  # noqa: E731
    for key in ("query_set", "proxy_set"):
        value = getattr(cfg, key, None)
        if value is not None and unknown(value):
            raise UserError(f"unknown {section}.{key} {value!r}; {available}")
    if has("query_sets") and cfg.query_sets:
        for value in cfg.query_sets:
            if unknown(value):
                raise UserError(f"unknown dataset {value!r} in {section}.query_sets; {available}")
        if getattr(cfg, "query_set", None) is not None:
            raise UserError(f"{section}: give either query_set or query_sets (distribution shift), not both")
    if has("pool_transforms"):
        check_transforms(f"{section}.pool_transforms", cfg.pool_transforms)
    if has("classes") and cfg.classes is not None:
        if not cfg.classes or any(c < 0 for c in cfg.classes) or len(set(cfg.classes)) != len(cfg.classes):
            raise UserError(f"{section}.classes must be distinct non-negative class indices, got {list(cfg.classes)}")
    if has("query_noise") and not cfg.query_noise >= 0.0:
        raise UserError(f"{section}.query_noise must be a standard deviation >= 0, got {cfg.query_noise}")
    if has("adv_eps") and not cfg.adv_eps >= 0.0:
        raise UserError(f"{section}.adv_eps must be >= 0 (0 disables adversarial-training stealing), got {cfg.adv_eps}")
    if has("adv_fraction") and not 0.0 < cfg.adv_fraction <= 1.0:
        raise UserError(f"{section}.adv_fraction must be in (0, 1], got {cfg.adv_fraction}")
    if has("arch") and cfg.arch is not None:
        MODELS.get(cfg.arch)
    if has("optimizer") and cfg.optimizer not in OPTIMIZERS:
        raise UserError(f"{section}.optimizer must be one of {', '.join(OPTIMIZERS)}, got {cfg.optimizer!r}")
    for key in ("epochs", "batch_size", "query_batch_size"):
        if has(key) and getattr(cfg, key) < 1:
            raise UserError(f"{section}.{key} must be >= 1, got {getattr(cfg, key)}")
    for key in ("lr",):
        if has(key) and not getattr(cfg, key) > 0:
            raise UserError(f"{section}.{key} must be > 0, got {getattr(cfg, key)}")


def train_config(cfg: Any, **changes: Any) -> TrainConfig:
    """The :class:`TrainConfig` of an attack config with the usual schedule fields."""
    values = dict(epochs=cfg.epochs, batch_size=cfg.batch_size, optimizer=cfg.optimizer, lr=cfg.lr,
                  momentum=cfg.momentum, weight_decay=cfg.weight_decay, lr_step=cfg.lr_step, lr_gamma=cfg.lr_gamma)
    values.update(changes)
    return TrainConfig(**values)


# --------------------------------------------------------------------------------------------
# Access
# --------------------------------------------------------------------------------------------
def check_access(target: Any, labels: str, attack: str) -> Blackbox:
    """``target`` as a :class:`Blackbox` whose output mode matches ``labels``.

    Hard-label variants must never see probabilities, so they refuse a Blackbox that returns
    them; soft-label variants refuse a label-only one (they would silently train on labels).
    """
    if not isinstance(target, Blackbox):
        raise TypeError(f"{attack} needs black-box query access (a wmbench.blackbox.Blackbox), got {type(target).__name__}")
    if labels == "hard" and not target.hard_label:
        raise ValueError(f"hard-label {attack} must receive a Blackbox in 'labels' mode (got mode {target.mode!r}); "
                         "a hard-label attacker never sees probabilities")
    if labels == "soft" and target.hard_label:
        raise ValueError(f"soft-label {attack} needs probabilities; the Blackbox is in 'labels' mode")
    return target


def student_model(ctx: AttackContext, arch: Optional[str], *labels: object) -> nn.Module:
    """A freshly initialised stolen model: ``arch`` or the victim's architecture, seeded."""
    return ctx.new_model(arch or ctx.victim_arch or ctx.arch, seed=ctx.seed_for(*labels))


def snapshot(model: nn.Module) -> nn.Module:
    """A frozen copy of ``model`` for :attr:`AttackOutcome.snapshots`."""
    copied = copy.deepcopy(model)
    copied.eval()
    return copied


# --------------------------------------------------------------------------------------------
# Query pools
# --------------------------------------------------------------------------------------------
def query_pool(ctx: AttackContext, query_set: Optional[str], classes: Optional[Sequence[int]] = None) -> Split:
    """The attacker's query pool, shaped like the victim's inputs.

    ``query_set`` None (or ``"attacker"``) is the attacker's split of the victim's dataset
    (disjoint from the owner's data); any registered dataset name uses that dataset's whole
    training split (its owner and attacker parts), converted to the victim's channels and size;
    several joined by ``+`` (``"attacker+mnist"``) pool their images, in that order (labels are each
    set's own; they are never shown to the victim). ``classes`` keeps only the pool images whose
    (pool) label is in the list: the partial functionality scenario, where the attacker holds
    data of some classes only.
    """
    parts = []
    for part in pool_parts(query_set):
        if part == ATTACKER_POOL:
            parts.append(ctx.data.attacker)
        else:
            parts.append(conform(training_pool(part, root=ctx.data_root, download=ctx.download), ctx.data.channels,
                                 ctx.data.size))
    pool = parts[0] if len(parts) == 1 else _joined(parts, query_set)
    if classes is not None:
        mask = torch.isin(pool.y, torch.as_tensor(list(classes), dtype=pool.y.dtype))
        pool = pool.subset(mask)
    if len(pool) == 0:
        raise UserError(f"the query pool {query_set or ATTACKER_POOL!r} is empty"
                        + (f" after keeping classes {list(classes)}" if classes is not None else ""))
    log.info("query pool %s: %d images%s", query_set or f"{ctx.data.name}/{ATTACKER_POOL}", len(pool),
             f", classes {list(classes)}" if classes is not None else "")
    return pool


def _joined(parts: Sequence[Split], name: Optional[str]) -> Split:
    if any(p.on_disk for p in parts):
        raise UserError(f"the pool {name!r} joins a set kept on disk with others; join sets that fit in memory, "
                        "or query the large set on its own")
    return Split(torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts]))


def pool_metrics(pool: Split, query_set: Optional[str], prefix: str = "pool") -> Dict[str, float]:
    """Numbers describing a query pool for :attr:`AttackOutcome.metrics` (its dataset is the
    ``query_set`` of the cell's attack config; None = the attacker split, i.e. in-distribution)."""
    return {
        f"{prefix}_size": float(len(pool)),
        f"{prefix}_classes": float(torch.unique(pool.y).numel()),
        f"{prefix}_in_distribution": float(all(part == ATTACKER_POOL for part in pool_parts(query_set))),
    }


def cycled_order(n: int, count: int, gen: torch.Generator) -> Tensor:
    """``count`` indices into ``range(n)``: random without replacement, repeating once exhausted."""
    repeats = -(-count // n)
    return torch.cat([torch.randperm(n, generator=gen) for _ in range(repeats)])[:count]


# --------------------------------------------------------------------------------------------
# Querying
# --------------------------------------------------------------------------------------------
def add_query_noise(x: Tensor, std: float, gen: Optional[torch.Generator]) -> Tensor:
    """``x`` plus Gaussian noise of standard deviation ``std`` (pixel space), clamped to [0, 1]."""
    if std <= 0:
        return x
    noise = torch.randn(x.shape, generator=gen, dtype=x.dtype) if gen is not None else torch.randn_like(x)
    return (x + std * noise.to(x.device)).clamp_(0.0, 1.0)


def as_targets(out: Tensor, target: Blackbox, labels: str) -> Tensor:
    """Victim outputs as training targets: probabilities (soft) or int64 labels (hard)."""
    if labels == "hard":
        if out.is_floating_point():
            raise RuntimeError("a hard-label attack received probabilities; the Blackbox must be in 'labels' mode")
        return out.long()
    if not out.is_floating_point():
        raise RuntimeError("a soft-label attack received labels; the Blackbox must return probabilities")
    if target.mode == "log_probs":
        return out.exp()
    return out


def query_victim(target: Blackbox, x: Tensor, *, labels: str, noise: float = 0.0,
                 gen: Optional[torch.Generator] = None, batch_size: int = 256) -> Tuple[Tensor, Tensor]:
    """Query ``x`` in batches of ``batch_size``; returns ``(images sent, targets)``.

    With ``noise > 0`` the images sent (and returned) carry fresh Gaussian noise; otherwise the
    returned images are ``x`` itself. Every image counts as one query (the Blackbox counts).
    """
    sent: List[Tensor] = []
    outs: List[Tensor] = []
    for start in range(0, x.shape[0], batch_size):
        chunk = add_query_noise(x[start:start + batch_size].detach().cpu(), noise, gen)
        if noise > 0:
            sent.append(chunk)
        outs.append(as_targets(target(chunk), target, labels))
    if not outs:
        empty = torch.empty(0, dtype=torch.long) if labels == "hard" else torch.empty(0, target.num_classes)
        return x[:0].detach().cpu(), empty
    return (torch.cat(sent) if noise > 0 else x.detach().cpu()), torch.cat(outs)


def query_rows(target: Blackbox, source: Tensor, index: Tensor, *, labels: str, noise: float = 0.0,
               gen: Optional[torch.Generator] = None, batch_size: int = 256,
               transform: Optional[Transform] = None) -> Tuple[Optional[Tensor], Tensor]:
    """Query ``source[index]`` streaming: one batch of images is gathered at a time.

    ``transform`` (:func:`wmbench.augment.compose`) changes each batch before the
    noise. Returns ``(images sent or None, targets)``: None when the images sent are the pool rows
    (no transform, no noise: no copy is kept); otherwise the images actually sent.
    """
    changed = noise > 0 or transform is not None
    sent: List[Tensor] = []
    outs: List[Tensor] = []
    for start in range(0, index.shape[0], batch_size):
        chunk = source[index[start:start + batch_size]]
        if transform is not None:
            chunk = transform(chunk)
        chunk = add_query_noise(chunk, noise, gen)
        if changed:
            sent.append(chunk)
        outs.append(as_targets(target(chunk), target, labels))
    if not outs:
        return (source[:0] if changed else None), (torch.empty(0, dtype=torch.long) if labels == "hard"
                                                    else torch.empty(0, target.num_classes))
    return (torch.cat(sent) if changed else None), torch.cat(outs)


def log_probs_from(probs: Tensor) -> Tensor:
    """``log p`` from victim probabilities (clamped, since float32 softmax can underflow to 0)."""
    return probs.clamp_min(PROB_FLOOR).log()


def recovered_logits(probs: Tensor) -> Tensor:
    """``log p`` minus its per-sample mean: the victim's logits up to a constant (DFME)."""
    logp = log_probs_from(probs)
    return logp - logp.mean(dim=1, keepdim=True)


# --------------------------------------------------------------------------------------------
# Transfer sets
# --------------------------------------------------------------------------------------------
class TransferSet:
    """Queried ``(image, victim output)`` pairs, in segments.

    A segment is either rows of a pool (``add(pool.x, y, index=rows)``: the pool tensor is
    referenced, never copied, so a transfer set over a 50k pool costs the outputs only) or
    explicit images (``add(x, y)``: augmented, noisy or generated queries). Outputs are all
    probabilities or all int64 labels.
    """

    def __init__(self) -> None:
        self._x: List[Tensor] = []
        self._index: List[Optional[Tensor]] = []
        self._y: List[Tensor] = []
        self._offsets: List[int] = [0]

    def __len__(self) -> int:
        return self._offsets[-1]

    def add(self, x: Tensor, y: Tensor, index: Optional[Tensor] = None) -> None:
        n = int(index.shape[0]) if index is not None else int(x.shape[0])
        if int(y.shape[0]) != n:
            raise ValueError(f"TransferSet.add: {n} images but {int(y.shape[0])} outputs")
        if self._y and (y.is_floating_point() != self._y[0].is_floating_point()):
            raise ValueError("TransferSet.add: mixing probability and label outputs")
        if n == 0:
            return
        self._x.append(x)
        self._index.append(index)
        self._y.append(y)
        self._offsets.append(self._offsets[-1] + n)

    @property
    def targets(self) -> Tensor:
        """All outputs, in order."""
        return torch.cat(self._y) if self._y else torch.empty(0)

    def gather(self, ids: Tensor) -> Tuple[Tensor, Tensor]:
        """Images and outputs of rows ``ids`` (a 1-D long tensor), in that order."""
        ids = ids.long()
        offsets = torch.tensor(self._offsets)
        seg = torch.searchsorted(offsets, ids, right=True) - 1
        first = self._x[0]
        shape = first.shape[1:]
        x = torch.empty((ids.shape[0], *shape), dtype=first.dtype)
        y0 = self._y[0]
        y = torch.empty((ids.shape[0], *y0.shape[1:]), dtype=y0.dtype)
        for s in torch.unique(seg).tolist():
            mask = seg == s
            local = ids[mask] - self._offsets[s]
            index = self._index[s]
            rows = index[local] if index is not None else local
            x[mask] = self._x[s][rows]
            y[mask] = self._y[s][local]
        return x, y

    def batches(self, batch_size: int, before_epoch: Optional[Callable[[int], None]] = None) -> BatchSource:
        """A batch source for :func:`~wmbench.training.fit`: a fresh shuffle each epoch (drawn
        from the loop's generator) over the pairs held at the start of the epoch.
        ``before_epoch(epoch)`` runs first (e.g. adversarial augmentation adding pairs)."""

        def source(epoch: int, gen: torch.Generator):
            if before_epoch is not None:
                before_epoch(epoch)
            n = len(self)
            order = torch.randperm(n, generator=gen)
            for start in range(0, n, batch_size):
                yield self.gather(order[start:start + batch_size])

        return source


# --------------------------------------------------------------------------------------------
# Adversarial-training stealing
# --------------------------------------------------------------------------------------------
def fgsm(model: nn.Module, x: Tensor, y: Tensor, eps: float, *, device: torch.device) -> Tensor:
    """FGSM examples of ``model``: ``clamp(x + eps·sign ∇x CE(model(x), y), 0, 1)`` (pixel space).

    ``y``: int labels or probability targets (soft cross-entropy). Parameter gradients are not
    touched (the gradient is taken with respect to the input only). Returned on CPU.
    """
    was_training = model.training
    model.eval()
    xs = x.to(device).detach().requires_grad_(True)
    with torch.enable_grad():
        loss = cross_entropy(model, (xs, y.to(device)))
        (grad,) = torch.autograd.grad(loss, xs)
    model.train(was_training)
    return (xs.detach() + eps * grad.sign()).clamp_(0.0, 1.0).cpu()


class FGSMAugment:
    """Adversarial-training stealing: at the start of every epoch from ``start_epoch`` on,
    FGSM examples (``eps``) of the current student are crafted for a random ``fraction`` of the
    originally queried pairs, queried (counted like every query) and added to the transfer set.
    Used as ``before_epoch`` of :meth:`TransferSet.batches`."""

    def __init__(self, target: Blackbox, transfer: TransferSet, model: nn.Module, *, eps: float, fraction: float,
                 labels: str, device: torch.device, gen: torch.Generator, noise: float = 0.0,
                 query_batch_size: int = 256, start_epoch: int = 1) -> None:
        self.target, self.transfer, self.model = target, transfer, model
        self.eps, self.fraction, self.labels, self.device = eps, fraction, labels, device
        self.gen, self.noise, self.query_batch_size, self.start_epoch = gen, noise, query_batch_size, start_epoch
        self.base = len(transfer)
        self.queries = 0

    def __call__(self, epoch: int) -> None:
        if epoch < self.start_epoch or self.base == 0:
            return
        k = max(1, int(round(self.fraction * self.base)))
        ids = torch.randperm(self.base, generator=self.gen)[:k]
        x, y = self.transfer.gather(ids)
        x_adv = torch.cat([fgsm(self.model, x[i:i + 512], y[i:i + 512], self.eps, device=self.device)
                           for i in range(0, k, 512)])
        sent, out = query_victim(self.target, x_adv, labels=self.labels, noise=self.noise, gen=self.gen,
                                 batch_size=self.query_batch_size)
        self.transfer.add(sent, out)
        self.queries += k
        log.info("adversarial stealing: epoch %d, %d FGSM queries (eps %g)", epoch, k, self.eps)


# --------------------------------------------------------------------------------------------
# Losses and student training
# --------------------------------------------------------------------------------------------
def distillation_loss(temperature: float, t2_scale: bool = True) -> LossFn:
    """Hinton distillation with no ground-truth term, from victim *probabilities*:
    ``T²·KL(q_T ‖ softmax(z_s/T))`` with ``q_T = softmax(log p / T) ∝ p^(1/T)``."""
    if not temperature > 0:
        raise UserError(f"distillation temperature must be > 0, got {temperature}")
    scale = temperature ** 2 if t2_scale else 1.0

    def loss_fn(model: nn.Module, batch: Batch) -> Tensor:
        x, p = batch[0], batch[1]
        q = F.softmax(log_probs_from(p) / temperature, dim=1)
        log_s = F.log_softmax(model(x) / temperature, dim=1)
        kl = (q * (q.clamp_min(PROB_FLOOR).log() - log_s)).sum(dim=1).mean()
        return scale * kl

    return loss_fn


def train_student(ctx: AttackContext, student: nn.Module, transfer: TransferSet, cfg: TrainConfig, *,
                  loss_fn: LossFn = cross_entropy, seed: int, desc: str,
                  augment: Optional[Callable[[int], None]] = None) -> List[Dict[str, float]]:
    """Train ``student`` on ``transfer`` with the shared loop (soft CE on probabilities, CE on
    labels, or ``loss_fn``); ``augment(epoch)`` may add pairs before each epoch."""
    return ctx.fit(student, transfer.batches(cfg.batch_size, before_epoch=augment), cfg=cfg, loss_fn=loss_fn,
                   seed=seed, desc=desc)
