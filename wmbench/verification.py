"""Ownership verification statistics.

WSR = share of key samples the suspect labels with their watermark label (hard-label top-1
queries). Verdict: watermarked iff WSR >= threshold (DeepTracer: 20 %). Two one-sided
binomial p-values quantify the evidence:

- ``p_value_chance``: H0 "the suspect hits the watermark label by chance", p0 = 1/K.
- ``p_value_benign``: H0 "the suspect behaves like an independent benign model", p0 = the
  upper (1 - alpha/2) Clopper-Pearson bound of the benign model's WSR on the same keys. Using
  the bound rather than the point estimate keeps p0 > 0 when the benign model scores 0 hits
  (a point estimate of 0 would make any single hit infinitely significant). [wmbench choice]

The Clopper-Pearson interval is the exact two-sided (1 - alpha) interval of the suspect's WSR.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Dict, Optional, Tuple

from scipy import stats


@dataclass(frozen=True)
class Evidence:
    """The outcome of verifying one suspect with one key set."""

    wsr: float
    hits: int
    n_keys: int
    threshold: float
    detected: bool
    p_value_chance: float
    p_value_benign: float
    ci_low: float
    ci_high: float

    def as_metrics(self) -> Dict[str, float]:
        d = asdict(self)
        d["detected"] = float(self.detected)
        d.pop("hits")
        return {k: float(v) for k, v in d.items()}


def clopper_pearson(k: int, n: int, alpha: float = 0.05) -> Tuple[float, float]:
    """Exact two-sided (1 - alpha) binomial interval for k successes in n trials."""
    if n <= 0:
        return (float("nan"), float("nan"))
    lo = 0.0 if k == 0 else float(stats.beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(stats.beta.ppf(1 - alpha / 2, k + 1, n - k))
    return lo, hi


def binomial_tail(k: int, n: int, p0: float) -> float:
    """One-sided p-value P(X >= k) for X ~ Binomial(n, p0)."""
    if n <= 0:
        return float("nan")
    if k <= 0:
        return 1.0
    p0 = min(max(p0, 0.0), 1.0)
    return float(stats.binom.sf(k - 1, n, p0))


def evaluate_evidence(
    hits: int,
    n_keys: int,
    *,
    num_classes: int,
    threshold: float = 0.2,
    benign_hits: Optional[int] = None,
    benign_n: Optional[int] = None,
    alpha: float = 0.05,
) -> Evidence:
    """Build an :class:`Evidence` from hit counts (see the module docstring for the tests)."""
    wsr = hits / n_keys if n_keys else float("nan")
    lo, hi = clopper_pearson(hits, n_keys, alpha)
    p_chance = binomial_tail(hits, n_keys, 1.0 / num_classes)
    if benign_hits is not None and benign_n:
        p0 = clopper_pearson(benign_hits, benign_n, alpha)[1]
        p_benign = binomial_tail(hits, n_keys, p0)
    else:
        p_benign = float("nan")
    return Evidence(
        wsr=wsr,
        hits=int(hits),
        n_keys=int(n_keys),
        threshold=float(threshold),
        detected=bool(n_keys and not math.isnan(wsr) and wsr >= threshold),
        p_value_chance=p_chance,
        p_value_benign=p_benign,
        ci_low=lo,
        ci_high=hi,
    )
