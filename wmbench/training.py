"""The one training loop used by every method and attack.

Methods customise it through a **loss hook** (``loss_fn(model, batch) -> loss``) and a **batch
source** (``batches(epoch, generator) -> iterable of tuples of tensors``), never by copying
the loop. Data are in-memory tensors, so batching is a tensor index, not per-sample work.

How the loop uses its device is the :class:`Engine`'s business (speed, never what is trained):
on CUDA, tensor data live on the device (float images that are exactly ``k/255`` as ``uint8``),
convolutions run channels-last, evaluation uses large batches with one copy back to the host,
and ``torch.compile`` is one switch away. Every switch is a no-op on CPU, so CPU numbers are
bit-identical with or without them; on CUDA they change float rounding only.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import logging
import math
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wmbench.augment import compose
from wmbench.config import TrainConfig
from wmbench.errors import TrainingDiverged
from wmbench.utils import derive_seed
from wmbench.utils import generator as make_generator

log = logging.getLogger(__name__)

Batch = Tuple[Tensor, ...]
LossFn = Callable[[nn.Module, Batch], Tensor]
BatchSource = Callable[[int, torch.Generator], Iterable[Batch]]


@dataclass(frozen=True)
class Engine:
    """How :func:`fit`, :func:`predict_logits` and :func:`tensor_batches` use an accelerator.

    Speed only: none of these is part of a cell's identity. Each applies on CUDA alone (on CPU
    the loop runs exactly as without an engine), except ``compile``, which applies anywhere.

    Parameters
    ----------
    resident: bool = True       tensor data handed to :func:`fit` (or :func:`tensor_batches` with a
        ``device``) are copied to the device once; a batch is then a device-side index, with no
        host copy per step. Float images whose values are exactly ``k/255`` (every decoded 8-bit
        image) are held as ``uint8`` — a quarter of the memory — and turned back into the very
        same float32 values per batch (checked exactly when the data are moved; otherwise they
        stay float32).
    channels_last: bool = True  while :func:`fit` trains, the model and 4-D image batches in
        channels-last layout (the layout cuDNN's tensor-core convolutions use); the model is
        handed back in the standard layout, so code that views its weights with ``view`` (pruning) works.
    compile: bool = False       train through ``torch.compile(model, mode=compile_mode)`` (the
        model itself, its weights and state-dict keys are unchanged; the first steps pay for the
        compilation, so it pays off on long schedules only).
    compile_mode: str = "default"   ``default``, ``reduce-overhead`` or ``max-autotune``.
    eval_batch_size: int = 0    batch of :func:`predict_logits`; 0 = 512 on CPU (as ever) and
        8192 on CUDA, where outputs stay on the device until one copy at the end.
    """

    resident: bool = True
    channels_last: bool = True
    compile: bool = False
    compile_mode: str = "default"
    eval_batch_size: int = 0

    def __post_init__(self) -> None:
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"unknown compile mode {self.compile_mode!r}; accepted: {', '.join(COMPILE_MODES)}")
        if self.eval_batch_size < 0:
            raise ValueError(f"eval_batch_size must be 0 (automatic) or more, got {self.eval_batch_size}")

    def eval_batch(self, device: torch.device) -> int:
        if self.eval_batch_size:
            return self.eval_batch_size
        return 8192 if device.type == "cuda" else 512

    def as_dict(self) -> Dict[str, object]:
        return dataclasses.asdict(self)


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
_ENGINE: contextvars.ContextVar[Engine] = contextvars.ContextVar("wmbench_engine", default=Engine())


def current_engine() -> Engine:
    """The engine in force (the default :class:`Engine` unless :func:`use_engine` set one)."""
    return _ENGINE.get()


@contextlib.contextmanager
def use_engine(engine: Engine) -> Iterator[Engine]:
    """Run the enclosed training and evaluation with ``engine``."""
    token = _ENGINE.set(engine)
    try:
        yield engine
    finally:
        _ENGINE.reset(token)


def _as_stored(t: Tensor) -> Tuple[Tensor, bool]:
    """``(uint8 tensor, True)`` when the float tensor ``t`` is exactly ``u8.float() / 255`` for
    some ``u8`` (so :func:`_as_float` restores it bit for bit), else ``(t, False)``."""
    if not t.is_floating_point() or t.dtype != torch.float32 or t.numel() == 0:
        return t, False
    q = (t * 255).round_()
    if bool(((q < 0) | (q > 255)).any()):
        return t, False
    q = q.to(torch.uint8)
    if not torch.equal(_as_float(q), t):
        return t, False
    return q, True


def _as_float(q: Tensor) -> Tensor:
    return q.float().div_(255)


def to_device(tensors: Sequence[Tensor], device: torch.device) -> Tuple[Tuple[Tensor, ...], Tuple[bool, ...]]:
    """Move ``tensors`` to ``device`` once for device-side batching (see :attr:`Engine.resident`);
    returns the stored tensors and, for each, whether it is held as ``uint8`` images."""
    stored, packed = [], []
    for t in tensors:
        t = t.to(device)  # checked where the data will live (fast there), then packed
        q, is_packed = _as_stored(t) if t.dim() == 4 else (t, False)
        stored.append(q)
        packed.append(is_packed)
    return tuple(stored), tuple(packed)


def _on_device(device: torch.device) -> bool:
    return device.type != "cpu"


def cross_entropy(model: nn.Module, batch: Batch) -> Tensor:
    """Default loss: CE against integer labels, or soft CE against probability targets."""
    x, y = batch[0], batch[1]
    logits = model(x)
    if y.is_floating_point():
        return -(y * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    return F.cross_entropy(logits, y)


def tensor_batches(*tensors: Tensor, batch_size: int, shuffle: bool = True, drop_last: bool = False,
                   device: Optional[torch.device] = None) -> BatchSource:
    """A batch source over aligned in-memory tensors (shuffled each epoch with the loop's generator).

    With an accelerator ``device`` and the engine's ``resident`` switch on, the tensors move to the
    device at the first epoch and batches are gathered there; the order is drawn on the CPU from
    the same generator either way, so every device sees the same batches.
    """
    n = tensors[0].shape[0]
    if any(t.shape[0] != n for t in tensors):
        raise ValueError("tensor_batches: tensors must have the same first dimension")
    held: Dict[str, Tuple[Tuple[Tensor, ...], Tuple[bool, ...]]] = {}

    def batches(epoch: int, gen: torch.Generator) -> Iterator[Batch]:
        data, packed = tuple(tensors), (False,) * len(tensors)
        if (device is not None and _on_device(device) and current_engine().resident
                and all(isinstance(t, Tensor) for t in tensors)):  # an on-disk ImageArray is read per batch
            if "data" not in held:
                held["data"] = to_device(tensors, device)
            data, packed = held["data"]
        order = torch.randperm(n, generator=gen) if shuffle else torch.arange(n)
        order = order.to(data[0].device)
        stop = n - (n % batch_size) if drop_last else n
        for start in range(0, stop, batch_size):
            idx = order[start : start + batch_size]
            yield tuple(_as_float(t[idx]) if p else t[idx] for t, p in zip(data, packed))

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
    cfg: schedule (:class:`TrainConfig`): epochs, optimizer, lr, StepLR, bf16 autocast on CUDA, and
        ``augment``: the batched augmentation (:mod:`wmbench.augment`) of the images of every
        batch (its first tensor), on the device, drawn from its own generator seeded by ``seed``
        (so the shuffle is the same with and without it).
    loss_fn: ``loss_fn(model, batch) -> scalar``; batches arrive on ``device``.
    seed: seeds the shuffling generator (model init is the caller's business).
    params: parameters to optimise (default: all of ``model``'s).
    on_epoch_end: called with ``(epoch, model)``; may return extra metrics for the history.
    on_step_end: called with ``(global_step, model)`` after every optimizer step (e.g. weight
        masking in Function-coupled watermarks).

    Raises :class:`TrainingDiverged` when the loss is NaN or infinite.
    """
    engine = current_engine()
    source: BatchSource = data if callable(data) else tensor_batches(*data, batch_size=cfg.batch_size, device=device)
    model.to(device)
    channels_last = engine.channels_last and _on_device(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)  # back to the standard layout in ``finally``
    step_model: nn.Module = torch.compile(model, mode=engine.compile_mode) if engine.compile else model
    optimizer = make_optimizer(list(params) if params is not None else model.parameters(), cfg)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, cfg.lr_step, cfg.lr_gamma) if cfg.lr_step > 0 else None
    use_amp = bool(cfg.amp and device.type == "cuda")
    gen = make_generator(seed)
    augment = compose(cfg.augment, make_generator(derive_seed(seed, "augment"))) if cfg.augment else None
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
                if augment is not None and batch[0].dim() == 4 and batch[0].is_floating_point():
                    batch = (augment(batch[0]),) + tuple(batch[1:])
                if channels_last:
                    batch = tuple(_channels_last(t) for t in batch)
                with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
                    loss = loss_fn(step_model, batch)
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
        if channels_last:
            model.to(memory_format=torch.contiguous_format)
    model.eval()
    return history


def _channels_last(t: Tensor) -> Tensor:
    return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 and t.is_floating_point() else t


@torch.no_grad()
def predict_logits(model: nn.Module, x: Tensor, *, device: torch.device, batch_size: Optional[int] = None) -> Tensor:
    """Logits of ``model`` on ``x`` in eval mode, batched (``batch_size``: the engine's
    evaluation batch by default), returned on CPU."""
    model.eval()
    model.to(device)
    batch_size = batch_size or current_engine().eval_batch(device)
    if not _on_device(device):
        outs = [model(x[i : i + batch_size].to(device)).float().cpu() for i in range(0, x.shape[0], batch_size)]
        return torch.cat(outs) if outs else torch.empty(0)
    outs = [model(x[i : i + batch_size].to(device, non_blocking=True)).float() for i in range(0, x.shape[0], batch_size)]
    return torch.cat(outs).cpu() if outs else torch.empty(0)


def accuracy(model: nn.Module, x: Tensor, y: Tensor, *, device: torch.device, batch_size: Optional[int] = None) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)``."""
    if x.shape[0] == 0:
        return float("nan")
    return (predict_logits(model, x, device=device, batch_size=batch_size).argmax(1) == y).float().mean().item()
