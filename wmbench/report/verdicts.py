"""Verdicts a reviewer can trust: for every attacked cell, did the theft work, and was the
watermark verified on it?

A WSR says something about ownership only on a model worth stealing. A cell's suspect (the model
after its attack — stealing, removal, evasion, ambiguity or adaptive, alone or chained) is a
**successful theft** (``theft_ok``) when its test accuracy is at least ``(1 − theft_tolerance)``
times the same cell's victim accuracy: a *relative* bound, 10 % by default (a victim at 90 %
needs a suspect at ≥ 81 %). The Watermark-Robustness-Toolbox (Lukas et al., "SoK: How Robust is
Image Classification Deep Neural Network Watermarking?", S&P 2022) counts a removal attack as
successful when it costs at most 5 points of accuracy (absolute); we follow a relative bound in
the same spirit, so that the rule means the same on easy and hard datasets. Each cell then has
one outcome:

* ``detected`` — a successful theft, verified (the ``detected`` metric: WSR ≥ the threshold);
* ``evaded`` — a successful theft, not verified: the watermark failed;
* ``theft failed`` — the suspect is not a usable copy; no claim either way (its WSR is shown
  greyed: a 99 % WSR on a 25 %-accuracy model is evidence of nothing).

Cells of the attack ``none`` and null models (``independent``, which feed
:mod:`wmbench.report.calibration`) get no outcome. The long table's ``detected`` keeps its
meaning; :func:`verdicts` puts the new columns beside it, with the empirical p-value of the WSR
against the method's null models (:func:`wmbench.report.stats.empirical_p_value`) beside the
binomial ones. :func:`outcome_counts` counts outcomes over seeds per (method, attack, labels),
:func:`method_summary` over the grid per method, and :func:`leaderboard` ranks methods by their
evasion rate ``evaded / (detected + evaded)`` — evaded on the fewest successful thefts first,
ties broken by more successful thefts (more evidence), methods without a successful theft last.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import numpy as np
import pandas as pd

from wmbench.errors import UserError
from wmbench.report.calibration import DEFAULT_THRESHOLD, MIN_NULL, is_null_attack, null_models, null_wsrs
from wmbench.report.common import ATTACK_ORDER, DATASET_ORDER, LABELS_ORDER, METHOD_ORDER, finished
from wmbench.report.stats import TOLERANCE, clopper_pearson, empirical_p_value
from wmbench.report.tables import attack_family

__all__ = ["DEFAULT_THEFT_TOLERANCE", "OUTCOMES", "check_theft_tolerance", "working_copy", "outcome", "verdicts", "outcome_counts",
           "method_summary", "leaderboard", "majority_outcomes", "cell_outcomes", "VERDICT_COLUMNS"]

#: Default relative accuracy loss a theft may have and still count as a working copy.
DEFAULT_THEFT_TOLERANCE = 0.10
#: The outcomes, in display order.
OUTCOMES: Tuple[str, ...] = ("detected", "evaded", "theft failed")
_CELL = ["dataset", "model", "method", "attack", "labels", "seed"]
VERDICT_COLUMNS = [*_CELL[:5], "family", "seed", "victim_acc", "suspect_acc", "acc_ratio", "wsr", "threshold",
                   "detected", "theft_ok", "outcome", "p_value_chance", "p_value_benign", "p_value_null", "n_null"]
_ALPHA = 0.05


def check_theft_tolerance(value: object) -> float:
    """``value`` as a float in [0, 1); :class:`UserError` (one line) otherwise."""
    try:
        tolerance = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise UserError(f"theft tolerance must be a number in [0, 1), got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(tolerance) or not 0.0 <= tolerance < 1.0:
        raise UserError(f"theft tolerance must be a number in [0, 1) (relative accuracy loss of a working "
                        f"stolen copy, e.g. 0.1), got {value!r}")
    return tolerance


def working_copy(suspect_acc, victim_acc, theft_tolerance: float = DEFAULT_THEFT_TOLERANCE):
    """Whether the suspect is a successful theft (``theft_ok``): accuracy ≥ (1 − tolerance) × the
    victim's (fractions; scalars or pandas Series alike)."""
    return suspect_acc >= (1 - theft_tolerance) * victim_acc - TOLERANCE


def outcome(suspect_acc: float, victim_acc: float, detected: float,
            theft_tolerance: float = DEFAULT_THEFT_TOLERANCE) -> str:
    """The outcome of one cell from its fractions (see the module docstring); ``""`` when a value
    is missing."""
    if any(v is None or v != v for v in (suspect_acc, victim_acc, detected)):
        return ""
    if not working_copy(suspect_acc, victim_acc, theft_tolerance):
        return "theft failed"
    return "detected" if detected >= 0.5 else "evaded"


def _rank(values: pd.Series, order) -> pd.Series:
    return values.map(lambda v: order.index(str(v).split("[", 1)[0]) if str(v).split("[", 1)[0] in order
                      else len(order))


def _sorted(frame: pd.DataFrame, extra: List[str]) -> pd.DataFrame:
    if frame.empty:
        return frame.reset_index(drop=True)
    keys = frame.assign(_d=_rank(frame["dataset"], DATASET_ORDER), _m=_rank(frame["method"], METHOD_ORDER))
    order = ["_d", "dataset", "model", "_m", "method"]
    if "attack" in frame.columns:
        keys = keys.assign(_f=keys["family"].map({"stealing": 0}).fillna(1), _a=_rank(keys["attack"], ATTACK_ORDER),
                           _l=_rank(keys["labels"], LABELS_ORDER))
        order += ["_f", "_a", "attack", "_l", "labels"]
    keys = keys.sort_values(order + extra, kind="stable")
    return keys.drop(columns=[c for c in keys.columns if c.startswith("_")]).reset_index(drop=True)


def verdicts(df: Optional[pd.DataFrame], theft_tolerance: float = DEFAULT_THEFT_TOLERANCE) -> pd.DataFrame:
    """One row per attacked cell (see the module docstring) with the columns of
    :data:`VERDICT_COLUMNS`: the cell's keys and attack ``family`` (:func:`attack_family`),
    ``victim_acc``, ``suspect_acc``, ``wsr``, ``threshold`` (percent), ``acc_ratio`` (suspect /
    victim accuracy), ``detected`` (WSR ≥ threshold: the ``detected`` metric, or the comparison
    where a foreign table lacks it), ``theft_ok``, ``outcome`` (one of :data:`OUTCOMES`; empty
    when an accuracy is missing), the binomial ``p_value_chance`` / ``p_value_benign`` of the
    cell, and ``p_value_null``, the empirical p-value against the ``n_null`` null models of the
    same (dataset, model, method) (NaN with fewer than 2)."""
    tolerance = check_theft_tolerance(theft_tolerance)
    rows = finished(df)
    attacked = rows[(rows["stage"] == "attack") & (rows["attack"] != "none") & ~rows["attack"].map(is_null_attack)]
    if attacked.empty:
        return pd.DataFrame(columns=VERDICT_COLUMNS)
    metrics = ["acc", "wsr", "detected", "threshold", "p_value_chance", "p_value_benign"]
    cells = attacked[attacked["metric"].isin(metrics)].pivot_table(
        index=_CELL, columns="metric", values="value", aggfunc="mean").reset_index()
    for metric in metrics:
        if metric not in cells.columns:
            cells[metric] = np.nan
    victims = rows[(rows["stage"] == "victim") & (rows["metric"] == "acc")]
    victim_acc = victims.groupby(["dataset", "model", "method", "seed"])["value"].mean().rename("victim_acc")
    cells = cells.join(victim_acc, on=["dataset", "model", "method", "seed"])
    threshold = cells["threshold"].fillna(DEFAULT_THRESHOLD)
    verified = cells["detected"].where(cells["detected"].notna(), (cells["wsr"] >= threshold - TOLERANCE).astype(float))
    verified = verified.where(cells["wsr"].notna() | cells["detected"].notna())
    known = cells["acc"].notna() & cells["victim_acc"].notna()
    ok = working_copy(cells["acc"], cells["victim_acc"], tolerance)
    outcomes = [outcome(a, v, d, tolerance) for a, v, d in zip(cells["acc"], cells["victim_acc"], verified)]
    families = {a: attack_family(a) for a in cells["attack"].unique()}
    nulls = null_wsrs(null_models(df))
    p_null, n_null = [], []
    for key, wsr in zip(zip(cells["dataset"], cells["model"], cells["method"]), cells["wsr"]):
        sample = nulls.get(key, [])
        n_null.append(len(sample))
        p_null.append(empirical_p_value(wsr, sample) if len(sample) >= MIN_NULL else float("nan"))
    out = pd.DataFrame({
        **{c: cells[c] for c in _CELL[:5]}, "family": cells["attack"].map(families), "seed": cells["seed"],
        "victim_acc": 100 * cells["victim_acc"], "suspect_acc": 100 * cells["acc"],
        "acc_ratio": cells["acc"] / cells["victim_acc"], "wsr": 100 * cells["wsr"], "threshold": 100 * threshold,
        "detected": pd.array([None if pd.isna(v) else bool(v >= 0.5) for v in verified], dtype="boolean"),
        "theft_ok": pd.array([None if not k else bool(o) for k, o in zip(known, ok)], dtype="boolean"),
        "outcome": outcomes, "p_value_chance": cells["p_value_chance"], "p_value_benign": cells["p_value_benign"],
        "p_value_null": p_null, "n_null": n_null,
    })
    return _sorted(out, ["seed"])


def _counts(frame: pd.DataFrame, keys: List[str]) -> pd.DataFrame:
    """Per ``keys``: ``cells`` and the count of each outcome (``theft_failed`` for theft failed)."""
    counts = pd.crosstab([frame[k] for k in keys], frame["outcome"]).reindex(columns=list(OUTCOMES), fill_value=0)
    counts.columns = ["detected", "evaded", "theft_failed"]
    counts.insert(0, "cells", frame.groupby(keys).size().reindex(counts.index).astype(int))
    return counts.astype(int).reset_index()


def majority_outcomes(counts: pd.DataFrame) -> List[str]:
    """The outcome of more than half of the ``cells`` of each row of :func:`outcome_counts`,
    else ``"mixed"`` (``""`` without cells)."""
    out = []
    for _, row in counts.iterrows():
        found = [o for o, c in zip(OUTCOMES, ("detected", "evaded", "theft_failed")) if row[c] > row["cells"] / 2]
        out.append(found[0] if found else ("mixed" if row["cells"] else ""))
    return out


def outcome_counts(verdict_rows: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, model, method, family, attack, labels), over seeds: ``cells``, ``detected``,
    ``evaded``, ``theft_failed``, the ``majority`` outcome (:func:`majority_outcomes`), the mean
    ``acc_ratio`` and ``wsr`` (percent), and the largest p-value of each kind over the seeds
    (``p_value_chance``, ``p_value_benign``, ``p_value_null``: "every seed at least this
    significant")."""
    keys = ["dataset", "model", "method", "family", "attack", "labels"]
    rows = verdict_rows[verdict_rows["outcome"] != ""]
    if rows.empty:
        return pd.DataFrame(columns=[*keys, "cells", "detected", "evaded", "theft_failed", "majority", "acc_ratio",
                                     "wsr", "p_value_chance", "p_value_benign", "p_value_null"])
    counts = _counts(rows, keys)
    stats = rows.groupby(keys).agg(acc_ratio=("acc_ratio", "mean"), wsr=("wsr", "mean"),
                                   p_value_chance=("p_value_chance", "max"), p_value_benign=("p_value_benign", "max"),
                                   p_value_null=("p_value_null", "max")).reset_index()
    out = counts.merge(stats, on=keys, how="left")
    out.insert(out.columns.get_loc("theft_failed") + 1, "majority", majority_outcomes(out))
    return _sorted(out, [])


def method_summary(verdict_rows: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, model, method), over the whole grid: ``cells``, ``detected``, ``evaded``,
    ``theft_failed``, then the same three for the stealing family (``stealing_*``) and for the
    rest (removal, evasion, ambiguity, adaptive; ``other_*``)."""
    keys = ["dataset", "model", "method"]
    rows = verdict_rows[verdict_rows["outcome"] != ""]
    if rows.empty:
        return pd.DataFrame(columns=[*keys, "cells", "detected", "evaded", "theft_failed"])
    out = _counts(rows, keys)
    for family in ("stealing", "other"):
        part = rows[rows["family"] == family]
        sub = _counts(part, keys).drop(columns="cells") if not part.empty else pd.DataFrame(columns=keys)
        sub = sub.rename(columns={c: f"{family}_{c}" for c in ("detected", "evaded", "theft_failed")})
        out = out.merge(sub, on=keys, how="left")
        for c in ("detected", "evaded", "theft_failed"):
            out[f"{family}_{c}"] = out.get(f"{family}_{c}", pd.Series(0, index=out.index)).fillna(0).astype(int)
    return _sorted(out, [])


def leaderboard(verdict_rows: pd.DataFrame, alpha: float = _ALPHA) -> pd.DataFrame:
    """Methods ranked per (dataset, model) by evasion rate (see the module docstring): ``rank``,
    ``method``, ``thefts`` (successful: detected + evaded), ``detected``, ``evaded``,
    ``theft_failed``, ``evasion_rate`` with its Clopper–Pearson interval ``evasion_low`` /
    ``evasion_high`` at level ``1 − alpha`` (percent; NaN without a successful theft)."""
    summary = method_summary(verdict_rows)
    cols = ["dataset", "model", "rank", "method", "thefts", "detected", "evaded", "theft_failed", "evasion_rate",
            "evasion_low", "evasion_high"]
    if summary.empty:
        return pd.DataFrame(columns=cols)
    thefts = summary["detected"] + summary["evaded"]
    bounds = [clopper_pearson(int(e), int(t), alpha) if t else (np.nan, np.nan)
              for e, t in zip(summary["evaded"], thefts)]
    board = summary.assign(thefts=thefts, evasion_rate=100 * summary["evaded"] / thefts.where(thefts > 0),
                           evasion_low=[100 * b[0] for b in bounds], evasion_high=[100 * b[1] for b in bounds])
    board = board.assign(_none=board["thefts"] == 0, _t=-board["thefts"], _d=_rank(board["dataset"], DATASET_ORDER))
    board = board.sort_values(["_d", "dataset", "model", "_none", "evasion_rate", "_t", "method"], kind="stable")
    board["rank"] = board.groupby(["dataset", "model"]).cumcount() + 1
    return board[cols].reset_index(drop=True)


def cell_outcomes(verdict_rows: pd.DataFrame) -> Dict[Tuple[str, str, str, str, str], str]:
    """``(dataset, model, method, attack, labels) -> majority outcome`` over seeds: what a table
    cell of that method and attack is marked with."""
    counts = outcome_counts(verdict_rows)
    return {tuple(k): m for k, m in zip(counts[["dataset", "model", "method", "attack", "labels"]].itertuples(
        index=False, name=None), counts["majority"])}
