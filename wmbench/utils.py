"""Seeding and device helpers (BackdoorBox-style seeding; no hard-coded device)."""
from __future__ import annotations

import hashlib
import os
import random
from typing import Union

import numpy as np
import torch


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA).

    ``deterministic=True`` also asks torch for deterministic kernels (slower on GPU) and
    sets ``CUBLAS_WORKSPACE_CONFIG`` as cuBLAS requires for that.
    """
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def derive_seed(base: int, *labels: object) -> int:
    """A 31-bit seed derived from ``base`` and labels, so independent components (attacker,
    surrogate, key generation) get independent but reproducible streams."""
    text = ":".join([str(base)] + [str(l) for l in labels])
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) & 0x7FFFFFFF


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def resolve_device(device: Union[str, torch.device, None] = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else is passed to torch."""
    if isinstance(device, torch.device):
        return device
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
