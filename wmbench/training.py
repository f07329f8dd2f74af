"""The one training loop used by every method and attack.

Methods customise it through a **loss hook** (``loss_fn(model, batch) -> loss``) and a **batch
source** (``batches(epoch, generator) -> iterable of tuples of tensors``), never by copying
the loop. Data are in-memory tensors, so batching is a tensor index, not per-sample work.
"""
from __future__ import annotations

import logging
import math
import sys
import time
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wmbench.config import TrainConfig
from wmbench.errors import TrainingDiverged
from wmbench.utils import generator as make_generator

log = logging.getLogger(__name__)

Batch = Tuple[Tensor, ...]
LossFn = Callable[[nn.Module, Batch], Tensor]
BatchSource = Callable[[int, torch.Generator], Iterable[Batch]]


def cross_entropy(model: nn.Module, batch: Batch) -> Tensor:
    """Default loss: CE against integer labels, or soft CE against probability targets."""
    x, y = batch[0], batch[1]
    logits = model(x)
    if y.is_floating_point():
        return -(y * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    return F.cross_entropy(logits, y)


def tensor_batches(*tensors: Tensor, batch_size: int, shuffle: bool = True, drop_last: bool = False) -> BatchSource:
    """A batch source over aligned in-memory tensors (shuffled each epoch with the loop's generator)."""
    n = tensors[0].shape[0]
    if any(t.shape[0] != n for t in tensors):
        raise ValueError("tensor_batches: tensors must have the same first dimension")

    def batches(epoch: int, gen: torch.Generator) -> Iterator[Batch]:
        order = torch.randperm(n, generator=gen) if shuffle else torch.arange(n)
        stop = n - (n % batch_size) if drop_last else n
        for start in range(0, stop, batch_size):
            idx = order[start : start + batch_size]
            yield tuple(t[idx] for t in tensors)

    return batches


def make_optimizer(params: Iterable[Tensor], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    # Unusual optimisers of the paper's stealing scenarios (torch defaults besides lr and weight decay).
    if cfg.optimizer == "adagrad":
        return torch.optim.Adagrad(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamax":
        return torch.optim.Adamax(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; accepted: adam, sgd, adagrad, adamax, rmsprop")


def _show_progress(progress: Optional[bool]) -> bool:
    if progress is not None:
        return progress
    return sys.stderr.isatty()


def fit(
    model: nn.Module,
    data: Union[BatchSource, Sequence[Tensor]],
    cfg: TrainConfig,
    *,
    loss_fn: LossFn = cross_entropy,
    device: torch.device = torch.device("cpu"),
    seed: int = 0,
    desc: str = "train",
    progress: Optional[bool] = None,
    params: Optional[Iterable[Tensor]] = None,
    on_epoch_end: Optional[Callable[[int, nn.Module], Optional[Dict[str, float]]]] = None,
    on_step_end: Optional[Callable[[int, nn.Module], None]] = None,
) -> List[Dict[str, float]]:
    """Train ``model`` in place and return per-epoch metrics.

    Parameters
    ----------
    model: the network (moved to ``device``).
    data: a batch source, or a sequence of aligned tensors (``(x, y)``) batched by ``cfg.batch_size``.
    cfg: schedule (:class:`TrainConfig`): epochs, optimizer, lr, StepLR, bf16 autocast on CUDA.
    loss_fn: ``loss_fn(model, batch) -> scalar``; batches arrive on ``device``.
    seed: seeds the shuffling generator (model init is the caller's business).
    params: parameters to optimise (default: all of ``model``'s).
    on_epoch_end: called with ``(epoch, model)``; may return extra metrics for the history.
    on_step_end: called with ``(global_step, model)`` after every optimizer step (e.g. weight
        masking in Function-coupled watermarks).

    Raises :class:`TrainingDiverged` when the loss is NaN or infinite.
    """
    source: BatchSource = data if callable(data) else tensor_batches(*data, batch_size=cfg.batch_size)
    model.to(device)
    optimizer = make_optimizer(list(params) if params is not None else model.parameters(), cfg)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, cfg.lr_step, cfg.lr_gamma) if cfg.lr_step > 0 else None
    use_amp = bool(cfg.amp and device.type == "cuda")
    gen = make_generator(seed)
    history: List[Dict[str, float]] = []
    show = _show_progress(progress)
    bar = None
    if show:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.epochs, desc=desc, leave=False, file=sys.stderr)
    non_blocking = device.type == "cuda"
    global_step = 0
    try:
        for epoch in range(cfg.epochs):
            model.train()
            started = time.perf_counter()
            total = torch.zeros((), device=device)
            steps = 0
            for batch in source(epoch, gen):
                batch = tuple(t.to(device, non_blocking=non_blocking) for t in batch)
                with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
                    loss = loss_fn(model, batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.detach()
                steps += 1
                global_step += 1
                if on_step_end is not None:
                    on_step_end(global_step, model)
            if scheduler is not None:
                scheduler.step()
            mean_loss = (total / max(steps, 1)).item()
            if not math.isfinite(mean_loss):
                raise TrainingDiverged(
                    f"{desc}: loss became {mean_loss} in epoch {epoch + 1}; lower the learning rate "
                    f"(now {cfg.lr}) or check the inputs"
                )
            record = {"epoch": epoch + 1, "loss": mean_loss, "epoch_s": time.perf_counter() - started}
            if on_epoch_end is not None:
                record.update(on_epoch_end(epoch + 1, model) or {})
            history.append(record)
            log.info("%s epoch %d/%d loss %.4f", desc, epoch + 1, cfg.epochs, mean_loss)
            if bar is not None:
                bar.set_postfix(loss=f"{mean_loss:.4f}")
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    model.eval()
    return history


@torch.no_grad()
def predict_logits(model: nn.Module, x: Tensor, *, device: torch.device, batch_size: int = 512) -> Tensor:
    """Logits of ``model`` on ``x`` in eval mode, batched, returned on CPU."""
    model.eval()
    model.to(device)
    outs = [model(x[i : i + batch_size].to(device)).float().cpu() for i in range(0, x.shape[0], batch_size)]
    return torch.cat(outs) if outs else torch.empty(0)


def accuracy(model: nn.Module, x: Tensor, y: Tensor, *, device: torch.device, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)``."""
    if x.shape[0] == 0:
        return float("nan")
    return (predict_logits(model, x, device=device, batch_size=batch_size).argmax(1) == y).float().mean().item()
