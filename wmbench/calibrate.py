"""``wmbench calibrate``: null models for calibrated false positives.

A verification threshold (DeepTracer: WSR ≥ 20 %) is only as good as its false-positive rate:
how often a model trained **without** the victim passes it. This launcher trains ``N`` such null
models per (dataset, architecture, victim seed) with the ``independent`` attack
(:mod:`wmbench.attacks.independent`) and verifies every listed method's key set on each of them;
``wmbench report`` turns the cells into each method's null WSR distribution, its false-positive
rate at the threshold with a Clopper–Pearson interval, and calibrated thresholds.

The ``N`` null models cycle through six recipes, so the null distribution is not one training
recipe's (the issue's list; the order is ours):

1. ``clean``  — plain training on the attacker's split, own seed;
2. ``mixup``  — mixup (α = 1);
3. ``cutmix`` — CutMix (β = 1);
4. ``short``  — half the training epochs (at least one);
5. ``arch``   — another architecture (``null_arch``; default AlexNet, or the CW net for
   AlexNet victims);
6. ``method`` — a model watermarked by another method (``null_method``, default ``noise``; the
   report leaves it out of that method's own null set, where it would not be a null model).

Model ``i`` uses recipe ``i mod 6`` with ``null_seed = i div 6``, so ``N = 10`` is
clean, mixup, cutmix, short, arch, method, then clean, mixup, cutmix, short with a second seed.
Null models never query the victim, so one null model serves every method of its data and seed
(:func:`wmbench.artifacts.victim_free`): ``N`` trainings, not ``N`` per method.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import pandas as pd

from wmbench.errors import UserError
from wmbench.plan import settings_of
from wmbench.registry import DATASETS, METHODS, MODELS
from wmbench.runner import launch
from wmbench.spec import GridSpec, expand_sweeps

RECIPES: Tuple[str, ...] = ("clean", "mixup", "cutmix", "short", "arch", "method")
DEFAULT_NULL_METHOD = "noise"
_KEY = "attacks.independent."


def default_null_arch(victim_arch: str) -> str:
    """The "other architecture" recipe's model: AlexNet (DeepTracer's surrogate architecture,
    which fits every built-in dataset), or the CW net where the victim is AlexNet."""
    return "cwnet" if victim_arch == "alexnet_cifar" else "alexnet_cifar"


def null_recipes(n: int, epochs: int, null_arch: str, null_method: str = DEFAULT_NULL_METHOD) -> List[Dict[str, Any]]:
    """The settings of ``n`` null models (see the module docstring), as flat ``attacks.independent.*``
    overrides; each also names its recipe (``attacks.independent.variant`` / ``arch`` / ``epochs``)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise UserError(f"--null-models must be a whole number, 2 or more (a rate needs several null models), got {n!r}")
    out: List[Dict[str, Any]] = []
    for i in range(n):
        recipe, null_seed = RECIPES[i % len(RECIPES)], i // len(RECIPES)
        combo: Dict[str, Any] = {_KEY + "variant": "clean", _KEY + "null_seed": null_seed}
        if recipe in ("mixup", "cutmix"):
            combo[_KEY + "variant"] = recipe
        elif recipe == "short":
            combo[_KEY + "epochs"] = max(1, epochs // 2)
        elif recipe == "arch":
            combo[_KEY + "arch"] = null_arch
        elif recipe == "method":
            combo[_KEY + "variant"] = f"method:{null_method}"
        out.append(combo)
    return out


def calibrate(spec: GridSpec, null_models: int = 10, null_arch: Optional[str] = None,
              null_method: str = DEFAULT_NULL_METHOD) -> pd.DataFrame:
    """Train ``null_models`` null models per dataset and victim seed of ``spec`` (its ``attacks``
    are replaced by ``independent``; its sweeps, if any, cross the recipes) and verify each of the
    spec's methods on them; returns the run's long table. Bad input raises :class:`UserError`."""
    METHODS.get(null_method)
    if null_arch is not None:
        MODELS.get(null_arch)
    spec = spec.replace(attacks=("independent",))
    _, settings = settings_of(spec)
    combos: List[Dict[str, Any]] = []
    for dataset in DATASETS.resolve_list(list(spec.datasets)):
        arch = null_arch or default_null_arch(settings.model.arch_for(dataset))
        recipes = null_recipes(null_models, settings.train.epochs, arch, null_method)
        combos += [r for r in recipes if r not in combos]
    return launch(spec, combos=[{**sweep, **recipe} for sweep in expand_sweeps(spec.sweeps) for recipe in combos])
