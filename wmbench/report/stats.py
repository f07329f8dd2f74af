"""The report's statistics, as small pure functions of numbers: t-intervals over seeds, the rule
that decides which values are bold, Clopper–Pearson intervals of rates, empirical p-values and
the two calibrated thresholds of a null distribution.

Rules (the report's notes repeat them):

* **Seeds.** A value over ``n`` seeds is shown as ``mean ± h`` with ``h`` the half-width of the
  two-sided 95 % t-interval, ``h = t_{0.975, n−1} · sd / √n`` (sample sd, ``ddof=1``); one seed
  has no interval (``h`` is NaN and only the mean is shown).
* **Significance.** Two values differ significantly only when their intervals do not overlap.
  This is conservative: two 95 % intervals can overlap while a two-sample t-test still rejects at
  5 %, so "not significant" here does not mean "equal". A value without an interval (one seed)
  counts as the point ``[mean, mean]``.
* **Bold** (:func:`best_marks`). Per column (per block of rows), the best value is bold alone
  when it is significantly better than the runner-up; otherwise every value whose interval
  overlaps the best one's is bold (they are statistically tied with it). Values marked
  ineligible (e.g. the WSR of a failed theft, which is evidence of nothing) are never bold and
  never the runner-up.
* **Rates.** Proportions ``k / n`` get the exact two-sided Clopper–Pearson interval at level
  ``1 − alpha`` (:func:`wmbench.verification.clopper_pearson`).
"""
from __future__ import annotations

import math
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np
from scipy import stats

from wmbench.verification import clopper_pearson

__all__ = [
    "T_LEVEL", "t_half_width", "mean_and_half_width", "intervals_overlap", "best_marks", "clopper_pearson",
    "empirical_p_value", "min_null_models", "normal_threshold", "TOLERANCE",
]

#: Level of the t-intervals over seeds.
T_LEVEL = 0.95

#: Slack of the ``>=`` comparisons between WSRs (fractions ``hits / n_keys``) and thresholds, so
#: that a WSR equal to a threshold up to float rounding counts as reaching it.
TOLERANCE = 1e-9


def t_half_width(values: Iterable[float], level: float = T_LEVEL) -> float:
    """Half-width of the two-sided ``level`` t-interval of the mean of ``values`` (NaNs dropped):
    ``t.ppf((1 + level) / 2, n − 1) · sd / √n``; NaN with fewer than two values."""
    x = np.asarray([v for v in values if v is not None and not _nan(v)], dtype=float)
    if x.size < 2:
        return float("nan")
    return float(stats.t.ppf((1 + level) / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))


def mean_and_half_width(values: Iterable[float], level: float = T_LEVEL) -> Tuple[float, float, int]:
    """``(mean, t half-width, n)`` of the finite values (NaN mean when there are none)."""
    x = [float(v) for v in values if v is not None and not _nan(v)]
    mean = float(np.mean(x)) if x else float("nan")
    return mean, t_half_width(x, level), len(x)


def _nan(value: object) -> bool:
    try:
        return math.isnan(float(value))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return True


def _bounds(mean: float, half: float) -> Tuple[float, float]:
    h = 0.0 if _nan(half) else float(half)
    return mean - h, mean + h


def intervals_overlap(a: Tuple[float, float], b: Tuple[float, float]) -> bool:
    """Whether the intervals ``mean ± half`` given as ``(mean, half)`` pairs overlap (touching
    counts as overlapping); a NaN half-width is a point."""
    lo_a, hi_a = _bounds(*a)
    lo_b, hi_b = _bounds(*b)
    return lo_a <= hi_b and lo_b <= hi_a


def best_marks(means: Sequence[float], halves: Sequence[float], direction: Optional[str],
               eligible: Optional[Sequence[bool]] = None, decimals: int = 2) -> List[bool]:
    """Which values are bold under the rule of the module docstring.

    ``direction`` is ``"max"`` or ``"min"`` (None: nothing is bold). Means are compared at
    ``decimals`` (as shown). Needs at least two eligible finite values, else nothing is bold.
    """
    n = len(means)
    marks = [False] * n
    if direction not in ("max", "min"):
        return marks
    ok = [i for i in range(n) if not _nan(means[i]) and (eligible is None or eligible[i])]
    if len(ok) < 2:
        return marks
    sign = 1.0 if direction == "max" else -1.0
    ranked = sorted(ok, key=lambda i: -sign * round(float(means[i]), decimals))
    best, runner = ranked[0], ranked[1]
    shown = {i: round(float(means[i]), decimals) for i in ok}
    tied = [i for i in ok if shown[i] == shown[best]]
    if len(tied) == 1 and not intervals_overlap((means[best], halves[best]), (means[runner], halves[runner])):
        marks[best] = True
        return marks
    for i in ok:
        if shown[i] == shown[best] or intervals_overlap((means[best], halves[best]), (means[i], halves[i])):
            marks[i] = True
    return marks


def empirical_p_value(observed: float, null: Sequence[float]) -> float:
    """The empirical p-value of ``observed`` against the null sample: ``(1 + #{null ≥ observed})
    / (N + 1)`` (the +1 counts the observation itself, so p is never 0); NaN without a null
    sample or observation."""
    values = [float(v) for v in null if not _nan(v)]
    if not values or _nan(observed):
        return float("nan")
    at_least = sum(v >= float(observed) - TOLERANCE for v in values)
    return (1 + at_least) / (len(values) + 1)


def min_null_models(alpha: float) -> int:
    """The fewest null models ``M`` with which a threshold can be calibrated at level ``alpha``:
    zero false positives among ``M`` must give a two-sided Clopper–Pearson upper bound
    ``1 − (alpha/2)^(1/M) ≤ alpha``, i.e. ``M ≥ ln(alpha/2) / ln(1 − alpha)`` (72 for 0.05)."""
    m = max(1, math.ceil(math.log(alpha / 2) / math.log(1 - alpha)) - 1)
    while clopper_pearson(0, m, alpha)[1] > alpha:  # exact, whatever the float rounding above
        m += 1
    return m


def normal_threshold(null: Sequence[float], alpha: float) -> float:
    """The Watermark-Robustness-Toolbox-style threshold: a normal distribution fitted to the null
    WSRs, ``mean + z_{1−alpha} · sd`` (sample sd); NaN with fewer than two null values."""
    values = np.asarray([v for v in null if not _nan(v)], dtype=float)
    if values.size < 2:
        return float("nan")
    return float(values.mean() + stats.norm.ppf(1 - alpha) * values.std(ddof=1))
