"""Query-only access to a victim, counting every image sent.

Modelled on knockoffnets' ``Blackbox``: the attacker gets outputs, never weights. Modes:

- ``probs``: softmax probabilities (soft-label stealing);
- ``log_probs``: log-softmax;
- ``topk:K``: probabilities with all but the top-K zeroed and renormalised;
- ``rounded:D``: probabilities rounded to D decimals;
- ``labels``: top-1 class index only (hard-label stealing never sees probabilities).

Every image counts as one query, including augmented copies and probe points. A budget,
when set, is enforced: a call that would exceed it raises :class:`BudgetExceeded`.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wmbench.errors import UserError

MODES = ("probs", "log_probs", "labels", "topk", "rounded")


class BudgetExceeded(RuntimeError):
    """The attack asked for more queries than its budget."""


def _parse_mode(mode: str) -> Tuple[str, int]:
    name, _, arg = mode.partition(":")
    if name not in MODES:
        raise UserError(f"unknown blackbox mode {mode!r}; accepted: probs, log_probs, labels, topk:K, rounded:D")
    if name in ("topk", "rounded"):
        if not arg.isdigit() or int(arg) < (1 if name == "topk" else 0):
            raise UserError(f"blackbox mode {mode!r} needs an integer, e.g. {name}:2")
        return name, int(arg)
    return name, 0


class Blackbox:
    """Black-box view of ``model``.

    Parameters
    ----------
    model: the victim (kept private; the blackbox exposes no parameters).
    num_classes: int    size of the output space.
    input_shape: tuple  (C, H, W) of accepted queries.
    mode: str = "probs"
    budget: int | None = None   maximum number of images; None = unlimited.
    device: torch.device         where the victim runs.
    batch_size: int = 512        internal batching of large queries (counts are per image).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        num_classes: int,
        input_shape: Tuple[int, int, int],
        mode: str = "probs",
        budget: Optional[int] = None,
        device: torch.device = torch.device("cpu"),
        batch_size: int = 512,
    ) -> None:
        self.__model = model
        self._mode, self._arg = _parse_mode(mode)
        self.mode = mode
        self.num_classes = int(num_classes)
        self.input_shape = tuple(input_shape)
        self.budget = budget
        self.device = device
        self.batch_size = batch_size
        self._queries = 0

    @property
    def queries(self) -> int:
        """Images queried so far."""
        return self._queries

    @property
    def remaining(self) -> Optional[int]:
        return None if self.budget is None else self.budget - self._queries

    @property
    def hard_label(self) -> bool:
        return self._mode == "labels"

    def __getstate__(self):  # never ship the victim to another process by accident
        raise TypeError("a Blackbox cannot be pickled")

    @torch.no_grad()
    def __call__(self, x: Tensor) -> Tensor:
        """Query a batch ``x`` [N, C, H, W] in [0, 1]; returns outputs on CPU."""
        if x.dim() != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"queries must have shape [N, {', '.join(map(str, self.input_shape))}], got {list(x.shape)}")
        n = int(x.shape[0])
        if self.budget is not None and self._queries + n > self.budget:
            raise BudgetExceeded(f"query budget {self.budget} exceeded ({self._queries} used, {n} more asked)")
        self._queries += n
        model = self.__model
        model.eval()
        model.to(self.device)  # a victim loaded from the artifact store arrives on the CPU
        outs = []
        for i in range(0, n, self.batch_size):
            logits = model(x[i : i + self.batch_size].to(self.device)).float()
            outs.append(self._postprocess(logits))
        if not outs:
            return torch.empty(0, dtype=torch.long) if self._mode == "labels" else torch.empty(0, self.num_classes)
        return torch.cat(outs).cpu()  # one copy back from an accelerator, not one per batch

    def _postprocess(self, logits: Tensor) -> Tensor:
        if self._mode == "labels":
            return logits.argmax(dim=1)
        if self._mode == "log_probs":
            return F.log_softmax(logits, dim=1)
        probs = F.softmax(logits, dim=1)
        if self._mode == "topk":
            k = min(self._arg, probs.shape[1])
            top = probs.topk(k, dim=1)
            out = torch.zeros_like(probs).scatter_(1, top.indices, top.values)
            return out / out.sum(dim=1, keepdim=True)
        if self._mode == "rounded":
            return torch.round(probs * 10**self._arg) / 10**self._arg
        return probs
