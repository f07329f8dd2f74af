"""False positives, calibrated: each method's null distribution of WSRs and what it says about
the verification threshold.

A *null model* is a model trained without any access to the victim: a cell of the
``independent`` attack (:mod:`wmbench.attacks.independent`; ``wmbench calibrate`` runs many,
with recipes told apart by their sweep or variant label — clean, mixup, cutmix, fewer epochs,
another architecture, another method's watermark). Verifying a method's key set on it measures
how often an innocent model is flagged. Per (dataset, model, method), pooled over victim seeds
(each seed has its own key set; the false-positive rate is a property of the method's procedure,
key sampling included), :func:`calibration` reports:

* ``n_null`` null models and their WSR distribution (mean, sd, median, 90 % quantile, max);
* the false-positive rate at the method's threshold, ``FPR = #{null WSR ≥ threshold} / N``, with
  its exact two-sided Clopper–Pearson interval at level ``1 − alpha``;
* the **calibrated threshold**: the smallest achievable threshold ``t`` (the null WSRs and the
  WSR grid ``j / n_keys``; without ``n_keys`` the null WSRs and "just above the largest one")
  whose FPR upper bound is ``≤ alpha``. Zero false positives among ``N`` gives the upper bound
  ``1 − (alpha/2)^(1/N)`` (0.31 for ``N = 10``), so no threshold is attainable with fewer than
  ``M`` null models (:func:`~wmbench.report.stats.min_null_models`, 72 for ``alpha = 0.05``):
  the table says so plainly (``not attainable with N null models (needs ≥ M)``);
* the **normal-fit threshold** in the style of the Watermark-Robustness-Toolbox (Lukas et al.,
  S&P 2022): a normal distribution fitted to the null WSRs, ``mean + z_{1−alpha} · sd``. It is
  attainable with any ``N ≥ 2`` but only as good as the normal fit (WSRs are bounded and often
  piled up at 0), so it is labelled as such, never called calibrated.

``alpha`` is the cells' verification alpha (``verify.alpha``): an ``alpha`` metric if the results
carry one, else recovered exactly from each cell's recorded Clopper–Pearson interval of its WSR
(``ci_low``/``ci_high`` with ``n_keys``), else 0.05. A null model watermarked by the very method
being verified (recipe ``method:NAME`` with NAME that method) is not a null model for it and is
left out. Fewer than :data:`MIN_NULL` null models: no statistics, the note ``needs ≥ 2 null
models`` (``strict=True`` raises :class:`~wmbench.errors.UserError` instead).
"""
from __future__ import annotations

import re
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
from scipy import stats as sps

from wmbench.errors import UserError
from wmbench.report.common import DATASET_ORDER, DEFAULT_THRESHOLD, METHOD_ORDER, finished
from wmbench.report.stats import TOLERANCE, clopper_pearson, min_null_models, normal_threshold

__all__ = ["NULL_ATTACK", "MIN_NULL", "DEFAULT_ALPHA", "DEFAULT_THRESHOLD", "is_null_attack", "null_models",
           "calibration", "calibrated_threshold", "null_wsrs"]

#: Attack names starting with this are null models.
NULL_ATTACK = "independent"
#: Fewest null models for a false-positive rate.
MIN_NULL = 2
DEFAULT_ALPHA = 0.05
#: The verification threshold (fraction) when the results carry none (the paper's 20 %).
_GROUP = ["dataset", "model", "method"]
_OWN = re.compile(r"variant=method:([A-Za-z0-9_\-]+)")


def is_null_attack(attack: object) -> bool:
    """Whether ``attack`` (possibly labelled, ``independent[variant=mixup]``) is a null model."""
    return str(attack).startswith(NULL_ATTACK)


def _own_method_cells(df: pd.DataFrame) -> set:
    """Cell ids of null models watermarked by the method their cell verifies (``method:NAME``)."""
    if df is None or df.empty or "cell_id" not in df.columns:
        return set()
    cells = df[df["attack"].astype(str).map(is_null_attack)].drop_duplicates("cell_id")
    own = set()
    for _, row in cells.iterrows():
        text = ",".join(str(row.get(c, "") or "") for c in ("sweep", "attack_variant", "attack"))
        names = _OWN.findall(text)
        if str(row["method"]).split("[", 1)[0] in names:
            own.add(row["cell_id"])
    return own


def _infer_alpha(wsr: float, n_keys: float, ci_low: float, ci_high: float) -> float:
    """The level ``alpha`` of a recorded Clopper–Pearson interval of ``k = wsr · n`` hits."""
    if not all(np.isfinite([wsr, n_keys])) or n_keys < 1:
        return float("nan")
    n = int(round(n_keys))
    k = int(round(wsr * n))
    alpha = float("nan")
    if k < n and np.isfinite(ci_high) and ci_high < 1:
        alpha = 2 * (1 - sps.beta.cdf(ci_high, k + 1, n - k))
    elif k > 0 and np.isfinite(ci_low) and ci_low > 0:
        alpha = 2 * sps.beta.cdf(ci_low, k, n - k + 1)
    return round(float(alpha), 6) if 0 < alpha < 1 else float("nan")


def null_models(df: Optional[pd.DataFrame]) -> pd.DataFrame:
    """One row per null model (fractions): ``dataset, model, method, attack`` (the recipe's
    label), ``labels, seed, wsr, threshold, n_keys, alpha``. Null models of the verified method's
    own watermark are left out (see the module docstring)."""
    cols = [*_GROUP, "attack", "labels", "seed", "wsr", "threshold", "n_keys", "alpha"]
    if df is None or df.empty or "attack" not in df.columns:
        return pd.DataFrame(columns=cols)
    own = _own_method_cells(df)
    rows = finished(df)  # labels (sweeps, variants) as in every other table of the report
    rows = rows[rows["attack"].map(is_null_attack) & (rows["stage"] == "attack")]
    if own:
        rows = rows[~rows["cell_id"].isin(own)]
    if rows.empty:
        return pd.DataFrame(columns=cols)
    wide = rows.pivot_table(index=[*_GROUP, "attack", "labels", "seed"], columns="metric", values="value",
                            aggfunc="mean").reset_index()
    for metric in ("wsr", "threshold", "n_keys", "alpha", "ci_low", "ci_high"):
        if metric not in wide.columns:
            wide[metric] = np.nan
    wide = wide[wide["wsr"].notna()]
    inferred = [_infer_alpha(*v) for v in zip(wide["wsr"], wide["n_keys"], wide["ci_low"], wide["ci_high"])]
    wide["alpha"] = wide["alpha"].where(wide["alpha"].notna(), pd.Series(inferred, index=wide.index, dtype=float))
    return wide[cols].reset_index(drop=True)


def null_wsrs(nulls: pd.DataFrame) -> Dict[Tuple[str, str, str], List[float]]:
    """``(dataset, model, method) -> [null WSR, ...]`` (fractions) from :func:`null_models`."""
    return {key: list(group["wsr"].astype(float)) for key, group in nulls.groupby(_GROUP, sort=False)}


def calibrated_threshold(null: Sequence[float], alpha: float, n_keys: Sequence[int] = ()) -> Tuple[float, int, str]:
    """``(t, M, note)``: the smallest achievable threshold ``t`` (fraction) whose false-positive
    rate among the null WSRs has a two-sided Clopper–Pearson upper bound ``≤ alpha``, the fewest
    null models ``M`` that can reach such a bound, and a note when there is no such ``t`` (then NaN).

    Candidates are the null WSRs and the WSR grid ``j / n`` for every ``n`` in ``n_keys``; without
    ``n_keys`` the null WSRs and one value just above the largest (any WSR above it).
    """
    values = np.sort(np.asarray([v for v in null if np.isfinite(v)], dtype=float))
    n, needed = values.size, min_null_models(alpha)
    if n < needed:
        return float("nan"), needed, f"not attainable with {n} null models (needs ≥ {needed})"
    candidates = set(values.tolist())
    sizes = sorted({int(k) for k in n_keys if np.isfinite(k) and k >= 1})
    if sizes:
        for size in sizes:
            candidates.update(j / size for j in range(size + 1))
    else:
        candidates.add(float(values[-1]) + 1e-6)
    for t in sorted(c for c in candidates if c <= 1.0 + TOLERANCE):
        k = int(n - np.searchsorted(values, t - TOLERANCE, side="left"))
        if clopper_pearson(k, n, alpha)[1] <= alpha:
            return float(t), needed, ""
    return float("nan"), needed, "not attainable: the null models reach the largest achievable WSR"


def _mode(values: pd.Series, default: float) -> float:
    values = values.dropna()
    return float(values.round(6).mode().iloc[0]) if not values.empty else default


def calibration(df: Optional[pd.DataFrame], alpha: Optional[float] = None, strict: bool = False) -> pd.DataFrame:
    """The calibration table: one row per (dataset, model, method) with null models (see the
    module docstring). Percent for WSRs, rates and thresholds. Columns: ``dataset, model, method,
    n_null, alpha, threshold, wsr_mean, wsr_sd, wsr_median, wsr_q90, wsr_max, false_positives,
    fpr, fpr_low, fpr_high, calibrated_threshold, needed_null_models, normal_threshold, note``.

    ``alpha`` None: the cells' own (see the module docstring). ``strict=True`` (a user asked for a
    calibration) raises :class:`UserError` when there is no null model at all or a method has
    fewer than :data:`MIN_NULL`; otherwise such rows carry only ``n_null`` and the ``note``.
    """
    nulls = null_models(df)
    if alpha is not None and not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
        raise UserError(f"alpha must be in (0, 1), got {alpha!r}")
    if nulls.empty:
        if strict:
            raise UserError("no null-model cells (attack 'independent') in these results; run `wmbench calibrate` "
                            "or add --attacks independent")
        return pd.DataFrame(columns=_COLUMNS)
    thresholds = _thresholds(df)
    rows = []
    for key, group in nulls.groupby(_GROUP, sort=False):
        wsr = group["wsr"].astype(float).to_numpy()
        n = wsr.size
        row: Dict[str, object] = dict(zip(_GROUP, key), n_null=n)
        if n < MIN_NULL:
            if strict:
                raise UserError(f"{key[2]} on {key[0]} ({key[1]}): {n} null model; a false-positive rate needs ≥ "
                                f"{MIN_NULL} null models (wmbench calibrate --null-models N)")
            rows.append({**row, "note": f"needs ≥ {MIN_NULL} null models"})
            continue
        a = float(alpha) if alpha is not None else _mode(group["alpha"], DEFAULT_ALPHA)
        threshold = thresholds.get(key, _mode(group["threshold"], DEFAULT_THRESHOLD))
        fp = int((wsr >= threshold - TOLERANCE).sum())
        low, high = clopper_pearson(fp, n, a)
        t, needed, note = calibrated_threshold(wsr, a, group["n_keys"].astype(float).tolist())
        rows.append({**row, "alpha": a, "threshold": 100 * threshold, "wsr_mean": 100 * wsr.mean(),
                     "wsr_sd": 100 * wsr.std(ddof=1), "wsr_median": 100 * float(np.median(wsr)),
                     "wsr_q90": 100 * float(np.quantile(wsr, 0.9)), "wsr_max": 100 * wsr.max(),
                     "false_positives": fp, "fpr": 100 * fp / n, "fpr_low": 100 * low, "fpr_high": 100 * high,
                     "calibrated_threshold": 100 * t, "needed_null_models": needed,
                     "normal_threshold": 100 * normal_threshold(wsr, a), "note": note})
    out = pd.DataFrame(rows).reindex(columns=_COLUMNS)
    rank = {"dataset": DATASET_ORDER, "method": METHOD_ORDER}
    keys = {c: out[c].map(lambda v, o=rank[c]: o.index(str(v).split("[")[0]) if str(v).split("[")[0] in o
                          else len(o)) for c in rank}
    out = out.assign(_d=keys["dataset"], _m=keys["method"]).sort_values(["_d", "dataset", "model", "_m", "method"])
    return out.drop(columns=["_d", "_m"]).reset_index(drop=True)


_COLUMNS = [*_GROUP, "n_null", "alpha", "threshold", "wsr_mean", "wsr_sd", "wsr_median", "wsr_q90", "wsr_max",
            "false_positives", "fpr", "fpr_low", "fpr_high", "calibrated_threshold", "needed_null_models",
            "normal_threshold", "note"]


def _thresholds(df: Optional[pd.DataFrame]) -> Dict[Tuple[str, str, str], float]:
    """The verification threshold (fraction) of each (dataset, model, method): the most common
    ``threshold`` metric of its finished cells."""
    rows = finished(df)
    rows = rows[rows["metric"] == "threshold"]
    return {key: _mode(group["value"], DEFAULT_THRESHOLD) for key, group in rows.groupby(_GROUP, sort=False)}

