"""Tables and reports built from a results DataFrame (see :func:`wmbench.results.load`).

Everything here is a pure function of the long/tidy results frame (one row per
``(cell, stage, metric)``) except :func:`write_report`, which writes files.

Pipeline
--------
1. :func:`finished` keeps the rows of finished cells: ``status == "ok"``, a numeric ``value``
   and a real metric (skipped/failed cells only carry ``metric == "status"`` rows).
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
The table functions (:func:`table1`, :func:`table2`, :func:`pivot`) return **percent**: the
fraction metrics (acc, wsr, fidelity, ci_low, ci_high) are multiplied by 100; other metrics
(p-values, thresholds, ``detected``, queries, seconds) keep their own unit. ``delta_acc`` and
the ``diff_*`` columns of :func:`compare_paper` are percentage points.

* Rendered tables (Markdown/terminal, LaTeX, HTML) show percentages with 2 decimals as
  ``mean ± std`` (just ``mean`` when there is a single seed).
* CSV files keep full precision, in percent, with separate ``<col>_mean`` / ``<col>_std``
  columns, so they can be re-read without parsing strings.

Table shapes
------------
Each table has the key columns ``dataset, model, method`` (one row per dataset and method;
``model`` is kept so different architectures on one dataset are never pooled), then
``<col>_mean`` and ``<col>_std`` per value column, then ``n_seeds`` (number of distinct
seeds contributing to the row). :func:`compare_paper` inserts ``paper_<col>`` and
``diff_<col>`` right after ``<col>_std``.

Figures are drawn by :mod:`wmbench.figures`; :func:`write_report` calls it (one PNG and PDF per
attack-strength sweep in ``OUT/figures/``) after writing the tables.
"""
from __future__ import annotations

import functools
import html as html_lib
import logging
import math
import os
import re
from importlib import resources
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
from tabulate import tabulate

from wmbench.errors import UserError

log = logging.getLogger(__name__)

__all__ = [
    "NO_CELLS",
    "finished",
    "table1",
    "table2",
    "pivot",
    "paper_table1",
    "paper_table2",
    "paper_dataset_name",
    "paper_method_name",
    "compare_paper",
    "to_markdown",
    "to_latex",
    "latex_document",
    "latex_escape",
    "to_csv",
    "to_html",
    "render",
    "write_report",
    "curve_table",
]

#: Message rendered instead of tables when no cell finished.
NO_CELLS = "no finished cells"

#: Metrics stored as fractions in [0, 1]; shown as percent.
FRACTION_METRICS = frozenset({"acc", "wsr", "fidelity", "ci_low", "ci_high"})

#: Key columns of every table, in order.
KEYS: Tuple[str, ...] = ("dataset", "model", "method")

TABLE1_COLUMNS: Tuple[str, ...] = ("benign_acc", "benign_wsr", "victim_acc", "delta_acc", "victim_wsr")

# Orders used to sort rows and columns like the paper; unknown names go last, alphabetically.
DATASET_ORDER: Tuple[str, ...] = ("fmnist", "cifar10", "cifar100")
METHOD_ORDER: Tuple[str, ...] = (
    "badnets", "composite", "abstract", "content", "noise", "unrelated", "ewe", "margin",
    "mea_defender", "deeptracer",
)
ATTACK_ORDER: Tuple[str, ...] = ("jbda", "knockoff", "dfme")
LABELS_ORDER: Tuple[str, ...] = ("soft", "hard", "")

# Names used by the paper tables (wmbench/paper_tables/*.csv). Names missing here are matched
# case-insensitively after removing non-alphanumerics (see _paper_name).
PAPER_DATASETS: Dict[str, str] = {"fmnist": "FMNIST", "cifar10": "CIFAR10", "cifar100": "CIFAR100"}
PAPER_METHODS: Dict[str, str] = {
    "badnets": "BadNets",
    "composite": "Composite",
    "abstract": "Abstract",
    "content": "Content",
    "noise": "Noise",
    "unrelated": "Unrelated",
    "ewe": "EWE",
    "margin": "Margin-based",
    "margin_based": "Margin-based",
    "mea_defender": "MEA-Defender",
    "deeptracer": "DeepTracer",
}

PAPER_TABLE1_FILE = "table1_harmlessness_effectiveness.csv"
PAPER_TABLE2_FILE = "table2_stealing_robustness.csv"

FORMATS: Dict[str, str] = {
    "md": "md", "markdown": "md", "terminal": "md", "github": "md",
    "latex": "latex", "tex": "latex",
    "csv": "csv",
    "html": "html",
}

_MISSING = "–"
_REQUIRED = ("stage", "metric", "value", "method", "dataset")


# ----------------------------------------------------------------------------------------
# Cleaning and aggregation
# ----------------------------------------------------------------------------------------
def _empty_long() -> pd.DataFrame:
    cols = ["run", "cell_id", "method", "attack", "labels", "dataset", "model", "seed", "profile",
            "stage", "metric", "value", "status"]
    return pd.DataFrame({c: pd.Series(dtype="float64" if c == "value" else "object") for c in cols})


def finished(df: Optional[pd.DataFrame]) -> pd.DataFrame:
    """Rows of finished cells only, with a numeric ``value`` and normalised key columns.

    Drops rows whose ``status`` is not ``"ok"``, ``metric == "status"`` rows and NaN values.
    Missing optional columns get defaults (``model=""``, ``attack="none"``, ``labels=""``,
    ``seed=0``); ``labels``/``attack``/``model`` NaNs become ``""``/``"none"``/``""``.
    """
    if df is None or df.empty or not set(_REQUIRED) <= set(df.columns):
        return _empty_long()
    out = df
    if "status" in out.columns:
        out = out[out["status"].fillna("ok").astype(str) == "ok"]
    out = out.assign(value=pd.to_numeric(out["value"], errors="coerce"))
    out = out[out["value"].notna() & (out["metric"].astype(str) != "status")]
    defaults = {"model": "", "attack": "none", "labels": "", "seed": 0}
    fills = {}
    for col, default in defaults.items():
        if col not in out.columns:
            fills[col] = default
        elif col != "seed":
            fills[col] = out[col].fillna(default).astype(str)
    out = out.assign(**fills)
    out = out.assign(dataset=out["dataset"].astype(str), method=out["method"].astype(str),
                     stage=out["stage"].astype(str), metric=out["metric"].astype(str))
    # Per-step curves are drawn as figures, not pooled into the tables. A swept cell is its own
    # variant: swept attack settings label the attack ("knockoff[budget=1000]"), every other swept
    # setting (method, train, keys, ...) labels the method, since it changes the victim.
    out = out[out["stage"] != "curve"]
    if "sweep" in out.columns:
        labels = out["sweep"].fillna("").astype(str).map(_split_sweep)
        attack_label = labels.map(lambda pair: pair[1])
        method_label = labels.map(lambda pair: pair[0])
        out = out.assign(
            attack=out["attack"].where(attack_label == "", out["attack"] + "[" + attack_label + "]"),
            method=out["method"].where(method_label == "", out["method"] + "[" + method_label + "]"),
            sweep="",  # labelled once: finished(finished(df)) must not label again
        )
    # Cells of one method (or attack) run with different --set values in one folder are variants
    # too: where a (dataset, model, method) group holds several method variants they label the
    # method ("mea_defender[weighting=fixed]"), and likewise for attacks, instead of being averaged.
    for col, group, variant in (("method", ["dataset", "model", "method"], "method_variant"),
                                ("attack", ["dataset", "model", "method", "attack", "labels"], "attack_variant")):
        if variant not in out.columns or out.empty:
            continue
        names = out[variant].fillna("").astype(str)
        several = names.groupby([out[c] for c in group], sort=False).transform("nunique") > 1
        tag = several & (names != "")
        out = out.assign(**{col: out[col].where(~tag, out[col] + "[" + names + "]"), variant: ""})
    if "profile" in out.columns and out["profile"].dropna().nunique() > 1:
        log.warning("pooling results from several profiles: %s",
                    ", ".join(sorted(map(str, out["profile"].dropna().unique()))))
    return out.reset_index(drop=True)


def _split_sweep(sweep: str) -> Tuple[str, str]:
    """``"attacks.knockoff.budget=1000,methods.deeptracer.margin=5"`` -> (method label, attack label)
    with the section prefixes dropped: ``("margin=5", "budget=1000")``."""
    method_parts, attack_parts = [], []
    for item in filter(None, sweep.split(",")):
        key, _, value = item.partition("=")
        parts = key.split(".")
        short = f"{parts[-1]}={value}" if parts[0] in ("methods", "attacks", "datasets") else f"{key}={value}"
        (attack_parts if parts[0] == "attacks" else method_parts).append(short)
    return ",".join(method_parts), ",".join(attack_parts)


#: Metrics shown by :func:`curve_table`, in order (those present).
CURVE_METRICS: Tuple[str, ...] = ("acc", "fidelity", "wsr", "key_flag_rate")


def curve_table(df: pd.DataFrame) -> pd.DataFrame:
    """Attack-strength sweeps (the runner's ``curve`` rows), in percent.

    One row per (dataset, model, method, attack, labels, step_name, step) — e.g. pruning rates,
    quantization bits, fine-tuning epochs — with ``<metric>_mean``/``_std`` for the metrics of
    :data:`CURVE_METRICS` present, then ``n_seeds``. Swept cells are labelled as in the other
    tables. Empty when the frame has no curve rows. The same sweeps are drawn by
    :func:`wmbench.figures.write_figures`.
    """
    from wmbench.figures import curve_frame

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
    from wmbench.figures import REVERSED_STEPS  # weakest setting first (e.g. 16 bits before 1)

    strength = out["step"].where(~out["step_name"].isin(REVERSED_STEPS), -out["step"])
    out = out.assign(_d=_rank(out["dataset"], DATASET_ORDER), _m=_rank(out["method"], METHOD_ORDER), _s=strength)
    out = out.sort_values(["_d", "dataset", "model", "attack", "labels", "_m", "method", "step_name", "_s"],
                          kind="stable")
    return out.drop(columns=["_d", "_m", "_s"]).reset_index(drop=True)


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


def _stat_columns(bases: Iterable[str]) -> List[str]:
    return [f"{b}_{s}" for b in bases for s in ("mean", "std")]


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


def _attack_name(attack: str, labels: str, sep: str = "_") -> str:
    return f"{attack}{sep}{labels}" if labels else attack


# ----------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------
def table1(df: pd.DataFrame) -> pd.DataFrame:
    """The paper's Table 1 (harmlessness and effectiveness), in percent.

    One row per (dataset, model, method); value columns ``benign_acc``, ``benign_wsr``,
    ``victim_acc``, ``delta_acc`` (victim − benign, per seed) and ``victim_wsr``, each as
    ``<col>_mean`` and ``<col>_std``, then ``n_seeds``.
    """
    rows = finished(df)
    rows = rows[rows["stage"].isin(["benign", "victim"]) & rows["metric"].isin(["acc", "wsr"])]
    per_seed = _per_seed(rows, [*KEYS, "stage"])
    if per_seed.empty:
        return _wide_stats(pd.DataFrame(), TABLE1_COLUMNS)
    long = _to_long(per_seed, per_seed["stage"] + "_" + per_seed["metric"])
    acc = long[long["column"].isin(["benign_acc", "victim_acc"])]
    acc = acc.pivot_table(index=[*KEYS, "seed"], columns="column", values="value")
    if {"benign_acc", "victim_acc"} <= set(acc.columns):
        delta = (acc["victim_acc"] - acc["benign_acc"]).dropna().rename("value").reset_index()
        long = pd.concat([long, delta.assign(column="delta_acc")], ignore_index=True)
    return _wide_stats(long, TABLE1_COLUMNS)


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
    rows = finished(df)
    rows = of_family(rows[(rows["stage"] == "attack") & (rows["attack"] != "none") & rows["metric"].isin(metrics)],
                     family)
    per_seed = _per_seed(rows, [*KEYS, "attack", "labels"])
    if per_seed.empty:
        return _wide_stats(pd.DataFrame(), ())
    names = [_attack_name(a, lab) for a, lab in zip(per_seed["attack"], per_seed["labels"])]
    long = _to_long(per_seed, pd.Series(names, index=per_seed.index) + "_" + per_seed["metric"])
    order = [f"{_attack_name(a, lab)}_{m}" for a, lab in _attack_combos(per_seed) for m in metrics]
    return _wide_stats(long, order)


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
        names = [_attack_name(a, lab, "/") for a, lab in zip(per_seed["attack"], per_seed["labels"])]
        order = [_attack_name(a, lab, "/") for a, lab in _attack_combos(per_seed)]
        return _wide_stats(_to_long(per_seed, pd.Series(names, index=per_seed.index)), order)
    per_seed = _per_seed(rows, list(KEYS))
    if per_seed.empty:
        return _wide_stats(pd.DataFrame(), ())
    return _wide_stats(_to_long(per_seed, pd.Series(metric, index=per_seed.index)), [metric])


def _value_columns(table: pd.DataFrame) -> List[str]:
    """Base names ``<col>`` of the ``<col>_mean`` columns, in column order."""
    return [c[: -len("_mean")] for c in table.columns if str(c).endswith("_mean")]


# ----------------------------------------------------------------------------------------
# Paper tables
# ----------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _read_paper_csv(name: str) -> pd.DataFrame:
    source = resources.files("wmbench").joinpath("paper_tables").joinpath(name)
    with source.open("r", encoding="utf-8") as handle:
        return pd.read_csv(handle, keep_default_na=False, na_values=[""])


def paper_table1() -> pd.DataFrame:
    """The paper's Table 1 as shipped in ``wmbench/paper_tables`` (percent, paper names)."""
    return _read_paper_csv(PAPER_TABLE1_FILE).copy()


def paper_table2() -> pd.DataFrame:
    """The paper's Table 2 in long form: dataset, method, attack, labels, stolen_acc, stolen_wsr."""
    return _read_paper_csv(PAPER_TABLE2_FILE).copy()


def _norm(name: object) -> str:
    return re.sub(r"[^0-9a-z]", "", str(name).lower())


def _paper_name(name: str, explicit: Mapping[str, str], candidates: Iterable[str]) -> Optional[str]:
    """Explicit map first, then a case-insensitive match ignoring non-alphanumerics."""
    if name in explicit:
        return explicit[name]
    wanted = _norm(name)
    for key, value in explicit.items():
        if _norm(key) == wanted:
            return value
    for candidate in candidates:
        if _norm(candidate) == wanted:
            return candidate
    return None


def paper_dataset_name(dataset: str) -> Optional[str]:
    """The paper's name for a wmbench dataset id (``"fmnist"`` -> ``"FMNIST"``), or None."""
    return _paper_name(dataset, PAPER_DATASETS, paper_table1()["dataset"].unique())


def paper_method_name(method: str) -> Optional[str]:
    """The paper's name for a wmbench method id (``"margin"`` -> ``"Margin-based"``), or None."""
    return _paper_name(method, PAPER_METHODS, paper_table1()["method"].unique())


def _paper_wide1() -> pd.DataFrame:
    return paper_table1().set_index(["dataset", "method"])[list(TABLE1_COLUMNS)]


def _paper_wide2() -> pd.DataFrame:
    paper = paper_table2()
    parts = []
    for metric in ("acc", "wsr"):
        part = paper.assign(column=[f"{_attack_name(a, lab)}_{metric}" for a, lab in
                                    zip(paper["attack"], paper["labels"].fillna(""))],
                            value=paper[f"stolen_{metric}"])
        parts.append(part[["dataset", "method", "column", "value"]])
    return pd.concat(parts).pivot_table(index=["dataset", "method"], columns="column", values="value")


def _with_paper(table: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """Insert ``paper_<col>``/``diff_<col>`` after ``<col>_std`` for columns the paper has."""
    if table.empty:
        return table.copy()
    rows = list(zip((paper_dataset_name(d) for d in table["dataset"]),
                    (paper_method_name(m) for m in table["method"])))
    out = table.copy()
    order: List[str] = []
    for col in table.columns:
        order.append(col)
        base = str(col)[: -len("_std")] if str(col).endswith("_std") else None
        if base is None or f"{base}_mean" not in table.columns or base not in paper.columns:
            continue
        lookup = paper[base].to_dict()
        values = np.array([lookup.get(key, np.nan) for key in rows], dtype=float)
        out[f"paper_{base}"] = values
        out[f"diff_{base}"] = out[f"{base}_mean"].to_numpy(dtype=float) - values
        order += [f"paper_{base}", f"diff_{base}"]
    return out[order]


def compare_paper(t1: pd.DataFrame, t2: pd.DataFrame) -> Tuple[pd.DataFrame, pd.DataFrame]:
    """Put the paper's figures beside ours.

    For every value column the paper reports (Table 1 columns; ``<attack>_<labels>_acc/wsr``
    for JBDA, Knockoff and DFME), adds ``paper_<col>`` (percent) and ``diff_<col>`` (ours −
    paper, percentage points) after ``<col>_std``. Rows the paper lacks (other datasets or
    methods) get NaN; value columns the paper never reports get no extra columns.
    """
    return _with_paper(t1, _paper_wide1()), _with_paper(t2, _paper_wide2())


# ----------------------------------------------------------------------------------------
# Cell formatting
# ----------------------------------------------------------------------------------------
def _finite(x: object) -> bool:
    try:
        return math.isfinite(float(x))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def _best_direction(base: str) -> Optional[str]:
    """``"max"``/``"min"`` when a column has a better end, else None.

    Lower is better for ``benign_wsr`` (no false ownership claims); higher is better for
    ``delta_acc``, the victim/attack accuracies and WSRs, and fidelity. Benign accuracy and
    other columns are not ranked.
    """
    if base == "benign_wsr":
        return "min"
    if base.startswith("benign_"):
        return None
    if base == "delta_acc" or base.endswith(("_acc", "_wsr", "fidelity")):
        return "max"
    return None


def _best_mask(table: pd.DataFrame, base: str, direction: Optional[str]) -> pd.Series:
    """True where ``<base>_mean`` is the best (at 2 decimals) within its dataset; needs ≥ 2 rows."""
    false = pd.Series(False, index=table.index)
    if direction not in ("max", "min"):
        return false
    values = pd.to_numeric(table[f"{base}_mean"], errors="coerce").round(2)
    groups = values.groupby(table["dataset"])
    best = groups.transform(direction)
    enough = groups.transform("count") >= 2
    return (values == best) & enough & values.notna()


def _f2(x: object, signed: bool = False) -> str:
    """Two decimals, without a "-0.00" for values that round to zero."""
    value = round(float(x), 2) + 0.0  # + 0.0 turns -0.0 into 0.0
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def _fmt_number(x: object, signed: bool = False) -> str:
    return _f2(x, signed) if _finite(x) else _MISSING


def _plain_stat(mean: object, std: object, bold: bool) -> str:
    if not _finite(mean):
        return _MISSING
    return f"{_f2(mean)} ± {_f2(std)}" if _finite(std) else _f2(mean)


def _latex_stat(mean: object, std: object, bold: bool) -> str:
    if not _finite(mean):
        return "--"
    body = f"{_f2(mean)} \\pm {_f2(std)}" if _finite(std) else _f2(mean)
    return f"\\textbf{{\\boldmath${body}$}}" if bold else f"${body}$"


def _latex_number(x: object, signed: bool = False) -> str:
    return f"${_fmt_number(x, signed)}$" if _finite(x) else "--"


_LATEX_ESCAPES = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "±": r"$\pm$", "–": "--", "×": r"$\times$",
}


def _latex_value(value: object) -> str:
    """A non-key cell: the formatters' output (``$..$``, ``\\textbf{..}``, ``--``) and plain numbers
    verbatim; any other text (e.g. an attack name in a curves table) escaped."""
    text = str(value)
    if text == "--" or (text.startswith("$") and text.endswith("$")) or text.startswith("\\textbf{\\boldmath$"):
        return text
    try:
        float(text)
        return text
    except ValueError:
        return latex_escape(text)


def latex_escape(text: object) -> str:
    """Escape LaTeX special characters (``_ % & # $ { } ~ ^ \\``) in plain text."""
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in str(text))


def _display(
    table: pd.DataFrame,
    stat: Callable[[object, object, bool], str],
    number: Callable[..., str],
    best: Optional[Mapping[str, Optional[str]]] = None,
) -> pd.DataFrame:
    """Strings for rendering: ``<col>_mean``/``_std`` pairs merge into one ``<col>`` cell."""
    out: Dict[str, List[str]] = {}
    for col in table.columns:
        name = str(col)
        if name.endswith("_std") and f"{name[:-4]}_mean" in table.columns:
            continue
        if name.endswith("_mean"):
            base = name[: -len("_mean")]
            direction = best.get(base) if best is not None and base in best else _best_direction(base)
            bold = _best_mask(table, base, direction)
            stds = table[f"{base}_std"] if f"{base}_std" in table.columns else pd.Series(np.nan, index=table.index)
            out[base] = [stat(m, s, b) for m, s, b in zip(table[name], stds, bold)]
        elif name.startswith("paper_"):
            out[name] = [number(x) for x in table[name]]
        elif name.startswith("diff_"):
            out[name] = [number(x, signed=True) for x in table[name]]
        elif name == "n_seeds":
            out[name] = [str(int(x)) if _finite(x) else _MISSING for x in table[name]]
        else:
            out[name] = ["" if pd.isna(x) else str(x) for x in table[name]]
    return pd.DataFrame(out, index=table.index)


# ----------------------------------------------------------------------------------------
# Renderers of one table
# ----------------------------------------------------------------------------------------
def to_markdown(table: pd.DataFrame, tablefmt: str = "github") -> str:
    """A table as Markdown (tabulate's ``github`` format, also used for terminal output)."""
    if table.empty:
        return NO_CELLS
    shown = _display(table, _plain_stat, _fmt_number)
    return tabulate(shown, headers="keys", tablefmt=tablefmt, showindex=False, disable_numparse=True)


#: Tables with more rows than this are rendered as a ``longtable`` (breaks across pages).
LATEX_LONG_ROWS = 40


def to_latex(
    table: pd.DataFrame,
    caption: str = "",
    label: str = "",
    best: Optional[Mapping[str, Optional[str]]] = None,
) -> str:
    """A table as a LaTeX ``table`` float with a booktabs ``tabular``.

    ``mean ± std`` cells are ``$m \\pm s$``; the best value per column and dataset is in
    ``\\textbf{\\boldmath$...$}`` (``best`` maps a column base name to ``"max"``/``"min"``/None
    and overrides the default rule of :func:`_best_direction`). The caption and all cell text
    are escaped; the label is used verbatim. The tabular sits in a ``\\resizebox`` that shrinks
    it to ``\\linewidth`` when wider (never enlarges), so the preamble needs ``booktabs`` and
    ``graphicx``. Tables longer than :data:`LATEX_LONG_ROWS` rows (e.g. the curves table) are a
    ``longtable`` in ``\\scriptsize`` instead, which breaks across pages (needs ``longtable``).
    """
    if table.empty:
        return f"\\begin{{center}}{latex_escape(caption)}: {NO_CELLS}\\end{{center}}\n" if caption else NO_CELLS + "\n"
    shown = _display(table, _latex_stat, _latex_number, best)
    text_cols = [c for c in shown.columns if c in KEYS]
    align = "".join("l" if c in text_cols else "r" for c in shown.columns)
    header = " & ".join(latex_escape(c) for c in shown.columns) + r" \\"
    long = len(shown) > LATEX_LONG_ROWS
    if long:  # taller than a page: a longtable breaks across pages (a float would not fit)
        lines = ["{\\scriptsize\\setlength{\\tabcolsep}{3pt}", f"\\begin{{longtable}}{{{align}}}"]
        if caption or label:
            lines.append((f"\\caption{{{latex_escape(caption)}}}" if caption else "")
                         + (f"\\label{{{label}}}" if label else "") + r" \\")
        lines += ["\\toprule", header, "\\midrule", "\\endfirsthead",
                  "\\toprule", header, "\\midrule", "\\endhead",
                  "\\bottomrule", "\\endlastfoot"]
    else:
        lines = ["\\begin{table}[htbp]", "\\centering"]
        if caption:
            lines.append(f"\\caption{{{latex_escape(caption)}}}")
        if label:
            lines.append(f"\\label{{{label}}}")
        # Shrink (never enlarge) tables wider than the text block.
        lines.append("\\resizebox{\\ifdim\\width>\\linewidth\\linewidth\\else\\width\\fi}{!}{%")
        lines += [f"\\begin{{tabular}}{{{align}}}", "\\toprule", header, "\\midrule"]
    previous = None
    for position, (_, row) in enumerate(shown.iterrows()):
        dataset = row.get("dataset")
        if position and dataset != previous:
            lines.append("\\midrule")
        cells = [latex_escape(v) if c in text_cols else _latex_value(v) for c, v in row.items()]
        if "dataset" in shown.columns and dataset == previous:
            cells[list(shown.columns).index("dataset")] = ""
        lines.append(" & ".join(cells) + r" \\")
        previous = dataset
    if long:
        lines += ["\\end{longtable}}"]
    else:
        lines += ["\\bottomrule", "\\end{tabular}%", "}", "\\end{table}"]
    return "\n".join(lines) + "\n"


def latex_document(body: str, title: str = "wmbench report") -> str:
    """Wrap LaTeX fragments in a standalone ``article`` that compiles as-is."""
    return "\n".join([
        "\\documentclass{article}",
        "\\usepackage[utf8]{inputenc}",
        "\\usepackage{booktabs}",
        "\\usepackage{graphicx}",
        "\\usepackage{longtable}",
        "\\begin{document}",
        f"\\section*{{{latex_escape(title)}}}",
        "Values in \\%; mean $\\pm$ std over seeds (std only with more than one seed).",
        "",
        body.rstrip("\n"),
        "\\end{document}",
        "",
    ])


def to_csv(table: pd.DataFrame) -> str:
    """A table as CSV: full precision, percent, separate ``_mean``/``_std`` columns."""
    return table.to_csv(index=False)


def to_html(table: pd.DataFrame) -> str:
    """A table as an HTML ``<table>`` (``DataFrame.to_html``; cells as in Markdown)."""
    if table.empty:
        return f"<p>{NO_CELLS}</p>"
    shown = _display(table, _plain_stat, _fmt_number)
    return shown.to_html(index=False, escape=True, border=0, classes="wmbench")


def _html_document(body: str, title: str = "wmbench report") -> str:
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:2em}"
             "th,td{padding:2px 8px;border-bottom:1px solid #ccc;text-align:right}"
             "th{border-bottom:2px solid #333}")
    return (f"<!DOCTYPE html>\n<html>\n<head>\n<meta charset=\"utf-8\">\n<title>{html_lib.escape(title)}"
            f"</title>\n<style>{style}</style>\n</head>\n<body>\n<h1>{html_lib.escape(title)}</h1>\n"
            "<p>Values in %; mean ± std over seeds (std only with more than one seed).</p>\n"
            f"{body}\n</body>\n</html>\n")


# ----------------------------------------------------------------------------------------
# Whole report
# ----------------------------------------------------------------------------------------
class _Section:
    """One titled table of the report."""

    def __init__(self, key: str, title: str, table: pd.DataFrame,
                 best: Optional[Mapping[str, Optional[str]]] = None):
        self.key, self.title, self.table, self.best = key, title, table, best


def _check_compare(compare: Optional[str]) -> None:
    if compare not in (None, "paper"):
        raise UserError(f"unknown compare={compare!r}; accepted: None, 'paper'")


def _sections(df: pd.DataFrame, compare: Optional[str] = None) -> List[_Section]:
    """The report's tables; empty list when no cell finished."""
    _check_compare(compare)
    rows = finished(df)
    if rows.empty:
        return []
    t1, t2 = table1(rows), table2(rows)
    if compare == "paper":
        t1, t2 = compare_paper(t1, t2)
    sections = [_Section("table1", "Table 1: harmlessness and effectiveness (%)", t1)]
    if not t2.empty:
        sections.append(_Section("table2", "Table 2: robustness against model stealing (%)", t2))
    wsr = pivot(rows, metric="wsr", stage="attack")
    if not wsr.empty:
        sections.append(_Section("wsr_pivot", "WSR after attack, method x attack/labels (%)", wsr,
                                 {b: "max" for b in _value_columns(wsr)}))
    removal = table2(rows, family="other")
    if not removal.empty:
        sections.append(_Section("removal", "Robustness against removal, evasion, ambiguity and adaptive attacks "
                                 "(on the victim, or chained after stealing) (%)", removal))
    effect = filter_table(df)
    if not effect.empty:
        sections.append(_Section("filter", "Key filtering: WSR on filtered keys vs unfiltered candidates (%)",
                                 effect, {}))
    curves = curve_table(df)
    if not curves.empty:
        sections.append(_Section("curves", "Curves: accuracy, fidelity and WSR along each attack's strength sweep (%)",
                                 curves, {b: None for b in _value_columns(curves)}))
    fpr = fpr_table(df)
    if not fpr.empty:
        sections.append(_Section("fpr", "False positives: independent clean models on the key set (%)", fpr,
                                 {"fpr": "min", "wsr_mean": "min", "wsr_max": "min"}))
    return sections


def _render_sections(sections: List[_Section], fmt: str, standalone: bool) -> str:
    kind = FORMATS.get(fmt)
    if kind is None:
        raise UserError(f"unknown report format {fmt!r}; accepted: {', '.join(FORMATS)}")
    if kind == "md":
        parts = [f"## {s.title}\n\n{to_markdown(s.table)}\n" for s in sections] or [f"{NO_CELLS}\n"]
        body = "\n".join(parts)
        if standalone:
            body = ("# wmbench report\n\nValues in %; mean ± std over seeds "
                    "(std only with more than one seed).\n\n" + body)
        return body
    if kind == "latex":
        labels = {"table1": "tab:wmbench-table1", "table2": "tab:wmbench-table2", "wsr_pivot": "tab:wmbench-wsr",
                  "removal": "tab:wmbench-removal"}
        parts = [to_latex(s.table, s.title, labels.get(s.key, ""), s.best) for s in sections]
        body = "\n".join(parts) if parts else f"{NO_CELLS}\n"
        return latex_document(body) if standalone else body
    if kind == "html":
        parts = [f"<h2>{html_lib.escape(s.title)}</h2>\n{to_html(s.table)}" for s in sections]
        body = "\n".join(parts) if parts else f"<p>{NO_CELLS}</p>"
        return _html_document(body) if standalone else body + "\n"
    parts = [f"# {s.title}\n{to_csv(s.table)}" for s in sections]
    return "\n".join(parts) if parts else f"# {NO_CELLS}\n"


def render(df: pd.DataFrame, fmt: str = "md", compare: Optional[str] = None, standalone: bool = False) -> str:
    """Table 1, Table 2 and (with attack rows) the WSR pivot, in one format.

    ``fmt``: ``"md"`` (also ``"markdown"``/``"terminal"``), ``"latex"``, ``"html"`` or
    ``"csv"``. ``compare="paper"`` adds the paper's figures and the differences beside ours.
    ``standalone=True`` gives a complete document for latex/html (and a title for md).
    Renders :data:`NO_CELLS` when nothing finished.
    """
    return _render_sections(_sections(df, compare), fmt, standalone)


def _atomic_write(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` via a temporary file in the same directory and ``os.replace``."""
    from wmbench.cache import atomic_write_text

    atomic_write_text(path, text)
    return path


def write_report(
    df: pd.DataFrame,
    out_dir: os.PathLike | str,
    formats: Sequence[str] = ("md", "latex", "csv", "html"),
    compare: Optional[str] = None,
) -> List[Path]:
    """Write the report files into ``out_dir`` (created if missing) and return their paths.

    ``md`` -> ``report.md``; ``latex`` -> ``report.tex`` (standalone document); ``csv`` ->
    ``table1.csv`` and ``table2.csv`` (percent, full precision; header only when empty), and
    ``table_removal.csv`` when removal / evasion attacks ran;
    ``html`` -> ``report.html``. Each file is written atomically. With curve rows (attack-strength
    sweeps), ``csv`` also writes ``curves.csv`` and every call writes the figures of
    :func:`wmbench.figures.write_figures` (``figures/curve_*.png`` and ``.pdf``).
    """
    kinds = []
    for fmt in formats:
        kind = FORMATS.get(fmt)
        if kind is None:
            raise UserError(f"unknown report format {fmt!r}; accepted: {', '.join(FORMATS)}")
        if kind not in kinds:
            kinds.append(kind)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sections = _sections(df, compare)
    written: List[Path] = []
    names = {"md": "report.md", "latex": "report.tex", "html": "report.html"}
    for kind in kinds:
        if kind == "csv":
            tables = {s.key: s.table for s in sections}
            for key in ("table1", "table2"):
                table = tables.get(key, pd.DataFrame(columns=[*KEYS, "n_seeds"]))
                written.append(_atomic_write(out / f"{key}.csv", to_csv(table)))
            if "removal" in tables:
                written.append(_atomic_write(out / "table_removal.csv", to_csv(tables["removal"])))
        else:
            written.append(_atomic_write(out / names[kind], _render_sections(sections, kind, standalone=True)))
    # Figures (wmbench.figures): one PNG and one PDF per attack-strength sweep, in OUT/figures/;
    # the curves table also goes to curves.csv.
    tables = {s.key: s.table for s in sections}
    if "csv" in kinds and "curves" in tables:
        written.append(_atomic_write(out / "curves.csv", to_csv(tables["curves"])))
    from wmbench.figures import write_figures

    written += write_figures(df, out)
    # Grid figures (wmbench.figures_grid): WSR heat-map over method × attack and --sweep figures;
    # then every figure goes into report.md (links), report.html (inline) and report.tex.
    from wmbench.figures_grid import embed_figures, write_grid_figures

    written += write_grid_figures(df, out)
    embed_figures(out, written)
    for path in written:
        log.info("wrote %s", path)
    return written
