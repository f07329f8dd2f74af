"""Statistics and table shaping: the report's tables as DataFrames, from the long results frame.

Every function is a pure function of the long/tidy results frame (:func:`wmbench.results.load`,
one row per ``(cell, stage, metric)``); rendering is :mod:`wmbench.report.formats`' job.

Pipeline
--------
1. :func:`~wmbench.report.common.finished` keeps the rows of finished cells: ``status == "ok"``,
   a numeric ``value`` and a real metric (skipped/failed cells only carry ``metric == "status"``
   rows).
2. Repeats are collapsed to one value per seed. Benign and victim rows are written into every
   attack cell of the same (method, dataset, model, seed), so they are keyed by
   ``(dataset, model, method, seed, stage, metric)``; attack rows additionally by
   ``(attack, labels)``. Identical repeats collapse to themselves; repeats that disagree are
   averaged and a warning is logged.
3. Seeds are aggregated as mean and sample standard deviation (``ddof=1``; NaN when only one
   seed exists). ``delta_acc`` is computed per seed (victim − benign, a paired difference)
   before aggregation, so its mean equals ``victim_acc_mean − benign_acc_mean`` when both
   stages exist for the same seeds, and its std is the std of the paired differences.

Units
-----
The tables (:func:`table1`, :func:`table2`, :func:`pivot`, ...) are in **percent**: the fraction
metrics (acc, wsr, fidelity, ci_low, ci_high) are multiplied by 100; other metrics (p-values,
thresholds, ``detected``, queries, seconds) keep their own unit. ``delta_acc`` and the
``diff_*`` columns of :func:`wmbench.report.paper.compare_paper` are percentage points.

Table shapes
------------
Each table has the key columns ``dataset, model, method`` (one row per dataset and method;
``model`` is kept so different architectures on one dataset are never pooled), then
``<col>_mean`` and ``<col>_std`` per value column, then ``n_seeds`` (number of distinct
seeds contributing to the row).
"""
from __future__ import annotations

import logging
from typing import List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from wmbench.report.common import (
    ATTACK_ORDER, DATASET_ORDER, FRACTION_METRICS, KEYS, LABELS_ORDER, METHOD_ORDER, REVERSED_STEPS, finished,
    finished_rows,
)

log = logging.getLogger(__name__)

TABLE1_COLUMNS: Tuple[str, ...] = ("benign_acc", "benign_wsr", "victim_acc", "delta_acc", "victim_wsr")

#: Metrics shown by :func:`curve_table`, in order (those present).
CURVE_METRICS: Tuple[str, ...] = ("acc", "fidelity", "wsr", "key_flag_rate")

_CURVE_PERCENT = frozenset({"acc", "wsr", "fidelity", "ci_low", "ci_high", "key_flag_rate"})


# ----------------------------------------------------------------------------------------
# Aggregation
# ----------------------------------------------------------------------------------------
def _scale(values: pd.Series, metrics: pd.Series) -> pd.Series:
    """Fractions -> percent for the metrics in :data:`FRACTION_METRICS`."""
    return values.where(~metrics.isin(FRACTION_METRICS), values * 100.0)


def _per_seed(df: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """One value per ``(keys, seed, metric)``; repeats collapse to their mean (warns if they differ)."""
    group = [*keys, "seed", "metric"]
    if df.empty:
        return pd.DataFrame(columns=[*group, "value"])
    values = df.groupby(group, dropna=False, sort=False)["value"]
    spread = values.max() - values.min()
    disagree = spread[spread > 1e-9]
    if not disagree.empty:
        log.warning("%d repeated (key, seed, metric) groups disagree; averaging them, e.g. %s",
                    len(disagree), disagree.index[0])
    return values.mean().reset_index()


def _rank(series: pd.Series, order: Sequence[str]) -> pd.Series:
    """Position in ``order`` of each name, variants ("badnets[poison_rate=0.05]") beside their
    base name; unknown names last."""
    position = {name: i for i, name in enumerate(order)}
    return series.map(lambda name: position.get(str(name).split("[", 1)[0], len(order)))


def _sort_rows(table: pd.DataFrame) -> pd.DataFrame:
    """Sort rows in the paper's dataset and method order (unknown names last, alphabetical)."""
    if table.empty:
        return table.reset_index(drop=True)
    ranked = table.assign(_d=_rank(table["dataset"], DATASET_ORDER), _m=_rank(table["method"], METHOD_ORDER))
    ranked = ranked.sort_values(["_d", "dataset", "model", "_m", "method"], kind="stable")
    return ranked.drop(columns=["_d", "_m"]).reset_index(drop=True)


def _wide_stats(long: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """Aggregate per-seed values into ``<col>_mean``/``<col>_std`` columns plus ``n_seeds``.

    ``long`` has the :data:`KEYS` columns plus ``seed``, ``column`` and ``value``; ``columns``
    gives the output order (columns without data are left out).
    """
    keys = list(KEYS)
    present = [c for c in columns if c in set(long["column"])] if not long.empty else []
    if not present:
        return pd.DataFrame(columns=[*keys, "n_seeds"])
    stats = long.groupby([*keys, "column"], sort=False)["value"].agg(["mean", "std"])
    means, stds = stats["mean"].unstack("column"), stats["std"].unstack("column")
    out = pd.DataFrame({name: frame[col] for col in present  # one block: no fragmentation warnings
                        for name, frame in ((f"{col}_mean", means), (f"{col}_std", stds))})
    out["n_seeds"] = long.groupby(keys)["seed"].nunique().reindex(out.index).astype(int)
    return _sort_rows(out.reset_index())


def _to_long(per_seed: pd.DataFrame, column: pd.Series) -> pd.DataFrame:
    """Per-seed rows -> the ``KEYS + seed + column + value`` shape used by :func:`_wide_stats`."""
    return per_seed.assign(column=column, value=_scale(per_seed["value"], per_seed["metric"]))[
        [*KEYS, "seed", "column", "value"]
    ]


def _attack_order_key(attack: str, labels: str) -> Tuple[int, str, int, str]:
    a = ATTACK_ORDER.index(attack) if attack in ATTACK_ORDER else len(ATTACK_ORDER)
    lab = LABELS_ORDER.index(labels) if labels in LABELS_ORDER else len(LABELS_ORDER)
    return (a, attack, lab, labels)


def _attack_combos(df: pd.DataFrame) -> List[Tuple[str, str]]:
    combos = {(a, lab) for a, lab in zip(df["attack"], df["labels"])}
    return sorted(combos, key=lambda c: _attack_order_key(*c))


def attack_name(attack: str, labels: str, sep: str = "_") -> str:
    """The column name of an attack run with a label access: ``knockoff_soft`` (``attack`` alone
    when labels is empty)."""
    return f"{attack}{sep}{labels}" if labels else attack


def value_columns(table: pd.DataFrame) -> List[str]:
    """Base names ``<col>`` of the ``<col>_mean`` columns, in column order."""
    return [c[: -len("_mean")] for c in table.columns if str(c).endswith("_mean")]


# ----------------------------------------------------------------------------------------
# Attack families
# ----------------------------------------------------------------------------------------
def attack_family(attack: str) -> str:
    """``"stealing"`` when every stage of the (chained, possibly variant-labelled) attack is a
    registered stealing attack, ``"null"`` for null-model attacks (false-positive controls),
    ``"other"`` otherwise (removal, evasion, ambiguity, adaptive, chains ending in one of them,
    and attacks this process does not know)."""
    from wmbench.registry import ATTACKS

    categories = []
    for stage in str(attack).split("[", 1)[0].split("+"):
        try:
            categories.append(str(ATTACKS.get(stage.strip()).category))
        except Exception:  # noqa: BLE001 - an unregistered plugin attack
            categories.append("")
    if categories and all(c == "stealing" for c in categories):
        return "stealing"
    if any(c.startswith("null") for c in categories):
        return "null"
    return "other"


def of_family(rows: pd.DataFrame, family: Optional[str]) -> pd.DataFrame:
    """The rows whose ``attack`` is of :func:`attack_family` ``family`` (all rows when None);
    each distinct attack name is classified once."""
    if family is None or rows.empty:
        return rows
    families = {a: attack_family(a) for a in rows["attack"].unique()}
    return rows[rows["attack"].map(families) == family]


# ----------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------
def table1_long(df: pd.DataFrame) -> pd.DataFrame:
    """Table 1's values per seed: ``dataset, model, method, seed, column, value`` (percent) with
    ``column`` one of :data:`TABLE1_COLUMNS` (``delta_acc`` per seed: victim − benign)."""
    rows = finished(df)
    rows = rows[rows["stage"].isin(["benign", "victim"]) & rows["metric"].isin(["acc", "wsr"])]
    per_seed = _per_seed(rows, [*KEYS, "stage"])
    if per_seed.empty:
        return pd.DataFrame(columns=[*KEYS, "seed", "column", "value"])
    long = _to_long(per_seed, per_seed["stage"] + "_" + per_seed["metric"])
    acc = long[long["column"].isin(["benign_acc", "victim_acc"])]
    acc = acc.pivot_table(index=[*KEYS, "seed"], columns="column", values="value")
    if {"benign_acc", "victim_acc"} <= set(acc.columns):
        delta = (acc["victim_acc"] - acc["benign_acc"]).dropna().rename("value").reset_index()
        long = pd.concat([long, delta.assign(column="delta_acc")], ignore_index=True)
    return long


def table1(df: pd.DataFrame) -> pd.DataFrame:
    """The paper's Table 1 (harmlessness and effectiveness), in percent.

    One row per (dataset, model, method); value columns ``benign_acc``, ``benign_wsr``,
    ``victim_acc``, ``delta_acc`` (victim − benign, per seed) and ``victim_wsr``, each as
    ``<col>_mean`` and ``<col>_std``, then ``n_seeds``.
    """
    long = table1_long(df)
    return _wide_stats(long if not long.empty else pd.DataFrame(), TABLE1_COLUMNS)


def table2(df: pd.DataFrame, metrics: Sequence[str] = ("acc", "wsr"), family: Optional[str] = "stealing"
           ) -> pd.DataFrame:
    """The paper's Table 2 (robustness against stealing): stolen-model metrics per attack.

    One row per (dataset, model, method); for every attack present except ``"none"`` and every
    label access it was run with, columns ``<attack>_<labels>_<metric>_mean`` / ``_std``
    (``<attack>_<metric>`` when labels is empty), attacks in the paper's order (jbda, knockoff,
    dfme, then others alphabetically), soft before hard; then ``n_seeds``. Percent for
    fraction metrics. ``family`` keeps the attacks of one :func:`attack_family`: ``"stealing"``
    (the paper's Table 2, the default), ``"other"`` (the removal / evasion table of the
    report) or None (every attack).
    """
    long = table2_long(df, metrics, family)
    if long.empty:
        return _wide_stats(pd.DataFrame(), ())
    order = [f"{attack_name(a, lab)}_{m}" for a, lab in _attack_combos(long) for m in metrics]
    return _wide_stats(long, order)


def table2_long(df: pd.DataFrame, metrics: Sequence[str] = ("acc", "wsr"), family: Optional[str] = "stealing",
                stage: str = "attack") -> pd.DataFrame:
    """:func:`table2`'s values per seed: ``dataset, model, method, attack, labels, metric, seed,
    column, value`` (percent for fraction metrics; ``column`` as in :func:`table2`). ``stage``
    picks another stage of the attacked cells (``"stage1"``: a chain's model after its first attack)."""
    rows = finished(df)
    rows = of_family(rows[(rows["stage"] == stage) & (rows["attack"] != "none") & rows["metric"].isin(metrics)],
                     family)
    per_seed = _per_seed(rows, [*KEYS, "attack", "labels"])
    if per_seed.empty:
        return pd.DataFrame(columns=[*KEYS, "attack", "labels", "metric", "seed", "column", "value"])
    names = [attack_name(a, lab) for a, lab in zip(per_seed["attack"], per_seed["labels"])]
    column = pd.Series(names, index=per_seed.index) + "_" + per_seed["metric"]
    return per_seed.assign(column=column, value=_scale(per_seed["value"], per_seed["metric"]))[
        [*KEYS, "attack", "labels", "metric", "seed", "column", "value"]]


def pivot(df: pd.DataFrame, metric: str = "wsr", stage: str = "attack") -> pd.DataFrame:
    """Generic method × attack pivot of one metric, per dataset.

    For ``stage="attack"`` the value columns are named ``<attack>/<labels>`` (``<attack>``
    when labels is empty; ``"none"`` excluded); for the benign/victim stages there is a single
    value column named after ``metric``. Same ``_mean``/``_std``/``n_seeds`` layout as
    :func:`table1`; percent for fraction metrics.
    """
    rows = finished(df)
    rows = rows[(rows["stage"] == stage) & (rows["metric"] == metric)]
    if stage == "attack":
        rows = rows[rows["attack"] != "none"]
        per_seed = _per_seed(rows, [*KEYS, "attack", "labels"])
        if per_seed.empty:
            return _wide_stats(pd.DataFrame(), ())
        names = [attack_name(a, lab, "/") for a, lab in zip(per_seed["attack"], per_seed["labels"])]
        order = [attack_name(a, lab, "/") for a, lab in _attack_combos(per_seed)]
        return _wide_stats(_to_long(per_seed, pd.Series(names, index=per_seed.index)), order)
    per_seed = _per_seed(rows, list(KEYS))
    if per_seed.empty:
        return _wide_stats(pd.DataFrame(), ())
    return _wide_stats(_to_long(per_seed, pd.Series(metric, index=per_seed.index)), [metric])


def fpr_table(df: pd.DataFrame) -> pd.DataFrame:
    """False positives (DeepTracer Table 17): WSR of independently trained clean models (the
    ``independent`` null attack) on each method's key set, and the share flagged as stolen."""
    rows = finished(df)
    rows = rows[rows["attack"].str.startswith("independent") & (rows["stage"] == "attack")]
    if rows.empty:
        return pd.DataFrame()
    wide = rows.pivot_table(index=["dataset", "model", "method", "attack", "seed"], columns="metric",
                            values="value", aggfunc="mean").reset_index()
    for metric in ("wsr", "detected"):  # absent from hand-made or foreign results
        if metric not in wide.columns:
            wide[metric] = np.nan
    grouped = wide.groupby(["dataset", "model", "method", "attack"], sort=True)
    out = grouped.agg(wsr_mean=("wsr", "mean"), wsr_max=("wsr", "max"), fpr=("detected", "mean"),
                      n_models=("wsr", "size")).reset_index()
    for col in ("wsr_mean", "wsr_max", "fpr"):
        out[col] = 100 * out[col]
    return out.rename(columns={"attack": "null model"})


def filter_table(df: pd.DataFrame) -> pd.DataFrame:
    """The key filter's effect (DeepTracer Figure 6): WSR on filtered keys beside WSR on the
    unfiltered candidates, for the benign, victim and attacked models (mean over seeds, %)."""
    rows = finished(df)
    rows = rows[rows["metric"].isin(["wsr", "wsr_unfiltered"])]
    if rows.empty or not (rows["metric"] == "wsr_unfiltered").any():
        return pd.DataFrame()
    rows = rows[rows["cell_id"].isin(rows.loc[rows["metric"] == "wsr_unfiltered", "cell_id"])]
    rows = rows.assign(model_kind=rows["stage"].where(rows["stage"] != "attack", rows["attack"] + "/" + rows["labels"]))
    table = rows.pivot_table(index=["dataset", "method", "model_kind"], columns="metric", values="value",
                             aggfunc="mean").reset_index()
    table = table.rename(columns={"model_kind": "model", "wsr": "wsr_filtered"})
    for col in ("wsr_filtered", "wsr_unfiltered"):
        # wsr_filtered is absent when filtering left no key anywhere (WSR NaN, dropped by finished())
        table[col] = 100 * table[col] if col in table.columns else np.nan
    return table


# ----------------------------------------------------------------------------------------
# Attack-strength curves
# ----------------------------------------------------------------------------------------
def curve_frame(df: Optional[pd.DataFrame]) -> pd.DataFrame:
    """The finished curve rows: columns ``dataset, model, method, attack, labels, seed, step_name,
    step, metric, value`` with fractions in percent (swept cells labelled as in the report)."""
    rows = finished_rows(df, "curve")
    cols = ["dataset", "model", "method", "attack", "labels", "seed", "step_name", "step", "metric", "value"]
    if rows.empty or "step_name" not in rows.columns:
        return pd.DataFrame(columns=cols)
    rows = rows[rows["step_name"].fillna("").astype(str) != ""]
    rows = rows.assign(step=pd.to_numeric(rows["step"], errors="coerce"))
    rows = rows[rows["step"].notna()]
    value = rows["value"].where(~rows["metric"].isin(_CURVE_PERCENT), rows["value"] * 100.0)
    return rows.assign(value=value)[cols].reset_index(drop=True)


def curve_table(df: pd.DataFrame) -> pd.DataFrame:
    """Attack-strength sweeps (the runner's ``curve`` rows), in percent.

    One row per (dataset, model, method, attack, labels, step_name, step) — e.g. pruning rates,
    quantization bits, fine-tuning epochs — with ``<metric>_mean``/``_std`` for the metrics of
    :data:`CURVE_METRICS` present, then ``n_seeds``. Swept cells are labelled as in the other
    tables. Empty when the frame has no curve rows. The same sweeps are drawn by
    :func:`wmbench.report.figures.write_figures`.
    """
    curves = curve_frame(df)
    curves = curves[curves["metric"].isin(CURVE_METRICS)]
    if curves.empty:
        return pd.DataFrame()
    keys = ["dataset", "model", "method", "attack", "labels", "step_name", "step"]
    per_seed = curves.groupby([*keys, "seed", "metric"], sort=False)["value"].mean().reset_index()
    stats = per_seed.groupby([*keys, "metric"], sort=False)["value"].agg(["mean", "std"]).unstack("metric")
    out = pd.DataFrame(index=stats.index)
    for metric in CURVE_METRICS:
        if ("mean", metric) in stats.columns:
            out[f"{metric}_mean"] = stats[("mean", metric)]
            out[f"{metric}_std"] = stats[("std", metric)]
    out["n_seeds"] = per_seed.groupby(keys)["seed"].nunique().reindex(out.index).astype(int)
    out = out.reset_index()
    # weakest setting first (e.g. 16 bits before 1)
    strength = out["step"].where(~out["step_name"].isin(REVERSED_STEPS), -out["step"])
    out = out.assign(_d=_rank(out["dataset"], DATASET_ORDER), _m=_rank(out["method"], METHOD_ORDER), _s=strength)
    out = out.sort_values(["_d", "dataset", "model", "attack", "labels", "_m", "method", "step_name", "_s"],
                          kind="stable")
    return out.drop(columns=["_d", "_m", "_s"]).reset_index(drop=True)
