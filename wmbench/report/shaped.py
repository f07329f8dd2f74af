"""Tables in the paper's shape: Table 1, Table 2 and the removal table as :class:`Shaped` tables
(row headers, grouped column headers, one :class:`Value` per cell with its marks), for
:mod:`wmbench.report.formats_shaped` to print as LaTeX (booktabs, ``\\multicolumn`` groups), HTML
(``colspan``) or Markdown (flattened headers).

* :func:`table1_shaped` — rows = methods per dataset; columns *Benign model* {Acc, WSR} and
  *Watermarked model* {Acc, ΔAcc, WSR}.
* :func:`table2_shaped` — rows = methods per dataset; column groups = stealing attack ×
  {Soft, Hard} label access × {Acc, WSR} (DeepTracer's Table 2).
* :func:`removal_shaped` — rows = removal / evasion / ambiguity / adaptive attacks (labelled with
  their sweep or variant and the strength they chose, ``chosen_*`` metrics), grouped by what they
  were applied to (the victim, or a stolen model for chains such as ``distill+ftal``), each group
  led by a reference row (the victim, or the stolen model before the removal: the chain's
  ``stage<k>`` rows, pooled over the group's cells — one stolen model when only the last attack
  differs); columns = method × {Acc, WSR}.

Every value is ``mean ± half-width`` of the 95 % t-interval over seeds
(:func:`wmbench.report.stats.mean_and_half_width`); bold follows
:func:`wmbench.report.stats.best_marks`, per dataset block: in Table 1 lower benign WSR and higher
victim accuracy, ΔAcc and WSR are better; in Table 2 only the WSR columns are ranked (a stolen
model's accuracy is the attacker's result, not the watermark's); in the removal table the methods
are the columns, so the best WSR is marked per row. A cell is marked by the outcome of more than
half of its seeds (:func:`wmbench.report.verdicts.cell_outcomes`): *evaded* puts † on the WSR,
*theft failed* greys Acc and WSR and keeps them out of the ranking; an evaded WSR takes part in
the ranking (it may be the best of a column) but is never bold. ``compare="paper"`` adds a
``paper`` row under each method the paper reports, with the paper's figures.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from wmbench.report.common import DATASET_ORDER, KEYS, METHOD_ORDER, finished
from wmbench.report.paper import paper_dataset_name, paper_method_name, paper_value
from wmbench.report.stats import best_marks, mean_and_half_width
from wmbench.report.tables import _attack_combos, _rank, attack_name, of_family, table1_long, table2_long

__all__ = ["Value", "Row", "Shaped", "table1_shaped", "table2_shaped", "removal_shaped", "ATTACK_NAMES",
           "LABEL_NAMES", "display_method", "display_attack"]

#: Display names of attacks in the paper's tables (others keep their id).
ATTACK_NAMES: Dict[str, str] = {"jbda": "JBDA", "knockoff": "Knockoff", "dfme": "DFME", "dfms_hl": "DFMS-HL",
                                "distill": "Distillation"}
LABEL_NAMES: Dict[str, str] = {"soft": "Soft", "hard": "Hard", "": "–"}
_T1 = (("Benign model", "Acc", "benign_acc", None), ("Benign model", "WSR", "benign_wsr", "min"),
       ("Watermarked model", "Acc", "victim_acc", "max"), ("Watermarked model", "ΔAcc", "delta_acc", "max"),
       ("Watermarked model", "WSR", "victim_wsr", "max"))


@dataclass
class Value:
    """One table cell: mean, t half-width (NaN: one seed) and seed count, and its marks."""

    mean: float = float("nan")
    half: float = float("nan")
    n: int = 0
    bold: bool = False
    evaded: bool = False
    failed: bool = False


@dataclass
class Row:
    """One table row: its row-header cells (``keys``) and values. ``kind``: ``"main"``,
    ``"paper"`` (the paper's figures under the row before) or ``"reference"`` (a baseline row)."""

    keys: Tuple[str, ...]
    values: List[Value]
    kind: str = "main"


@dataclass
class Shaped:
    """A table in the paper's shape. ``columns`` holds each value column's header path (all of
    one depth; equal neighbouring prefixes become one spanning header)."""

    key: str
    title: str
    row_headers: Tuple[str, ...]
    columns: List[Tuple[str, ...]]
    rows: List[Row] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    label: str = ""
    marks: bool = False  # whether evaded / theft-failed marks (and their legend) apply
    theft_tolerance: float = 0.1


def display_method(method: str) -> str:
    """The paper's name of a method (``margin`` -> ``Margin-based``), variants kept:
    ``MEA-Defender [weighting=fixed]``."""
    base, _, variant = str(method).partition("[")
    name = paper_method_name(base) or base
    return f"{name} [{variant}" if variant else name


def display_attack(attack: str) -> str:
    """``knockoff[budget=500]`` -> ``Knockoff [budget=500]``; chains joined with ``+``."""
    base, _, variant = str(attack).partition("[")
    name = "+".join(ATTACK_NAMES.get(s, s) for s in base.split("+"))
    return f"{name} [{variant}" if variant else name


def _blocks(frame: pd.DataFrame) -> List[Tuple[str, str]]:
    """The (dataset, model) pairs of ``frame`` in the paper's dataset order."""
    if frame.empty:
        return []
    pairs = frame[["dataset", "model"]].drop_duplicates()
    pairs = pairs.assign(_d=_rank(pairs["dataset"], DATASET_ORDER)).sort_values(["_d", "dataset", "model"])
    return list(pairs[["dataset", "model"]].itertuples(index=False, name=None))


def _block_label(dataset: str, model: str, pairs: Sequence[Tuple[str, str]]) -> str:
    name = paper_dataset_name(dataset) or dataset
    several = sum(1 for d, _ in pairs if d == dataset) > 1
    return f"{name} ({model})" if several else name


def _methods(frame: pd.DataFrame) -> List[str]:
    names = pd.Series(frame["method"].unique())
    ranked = pd.DataFrame({"method": names, "_m": _rank(names, METHOD_ORDER)})
    return list(ranked.sort_values(["_m", "method"])["method"])


def _values(long: pd.DataFrame, keys: Sequence[str]) -> Dict[tuple, Value]:
    """``long`` (one value per seed) -> one :class:`Value` per ``keys`` tuple."""
    out: Dict[tuple, Value] = {}
    for key, group in long.groupby(list(keys), sort=False):
        mean, half, n = mean_and_half_width(group["value"])
        out[key if isinstance(key, tuple) else (key,)] = Value(mean, half, n)
    return out


def _bold(values: Sequence[Value], direction: Optional[str]) -> None:
    marks = best_marks([v.mean for v in values], [v.half for v in values], direction,
                       eligible=[not v.failed for v in values])
    for value, mark in zip(values, marks):
        value.bold = mark and not value.evaded


def _paper_row(keys: Tuple[str, ...], numbers: Sequence[float]) -> Optional[Row]:
    if not any(math.isfinite(x) for x in numbers):
        return None
    blank = ("",) * (len(keys) - 1)
    return Row(blank + ("paper",), [Value(x) for x in numbers], kind="paper")


def table1_shaped(df: pd.DataFrame, compare: Optional[str] = None) -> Shaped:
    """Table 1 (harmlessness and effectiveness) in the paper's shape (see the module docstring)."""
    table = Shaped("table1", "Table 1: harmlessness and effectiveness (%)", ("Dataset", "Method"),
                   [(group, name) for group, name, _, _ in _T1], label="tab:wmbench-table1")
    long = table1_long(df)
    if long.empty:
        return table
    values = _values(long, [*KEYS, "column"])
    pairs = _blocks(long)
    for dataset, model in pairs:
        block = long[(long["dataset"] == dataset) & (long["model"] == model)]
        rows = []
        for method in _methods(block):
            cells = [values.get((dataset, model, method, col), Value()) for _, _, col, _ in _T1]
            rows.append(Row((_block_label(dataset, model, pairs), display_method(method)), cells))
            if compare == "paper":
                paper = _paper_row(rows[-1].keys, [paper_value(1, dataset, method, c) for _, _, c, _ in _T1])
                rows += [paper] if paper else []
        main = [r for r in rows if r.kind == "main"]
        for index, (_, _, _, direction) in enumerate(_T1):
            _bold([r.values[index] for r in main], direction)
        table.rows += rows
    return table


def _mark(value: Value, outcome: str, wsr: bool) -> None:
    if outcome == "theft failed":
        value.failed = True
    elif outcome == "evaded" and wsr:
        value.evaded = True


def table2_shaped(df: pd.DataFrame, outcomes: Mapping[tuple, str], compare: Optional[str] = None,
                  theft_tolerance: float = 0.1) -> Shaped:
    """Table 2 (robustness against model stealing) in the paper's shape (module docstring);
    ``outcomes`` maps (dataset, model, method, attack, labels) to the cell's majority outcome."""
    table = Shaped("table2", "Table 2: robustness against model stealing (%)", ("Dataset", "Method"), [],
                   label="tab:wmbench-table2", marks=True, theft_tolerance=theft_tolerance)
    long = table2_long(df)
    if long.empty:
        return table
    combos = _attack_combos(long)
    table.columns = [(display_attack(a), LABEL_NAMES.get(lab, lab), m) for a, lab in combos for m in ("Acc", "WSR")]
    values = _values(long, [*KEYS, "attack", "labels", "metric"])
    pairs = _blocks(long)
    for dataset, model in pairs:
        block = long[(long["dataset"] == dataset) & (long["model"] == model)]
        rows = []
        for method in _methods(block):
            cells = []
            for attack, labels in combos:
                outcome = outcomes.get((dataset, model, method, attack, labels), "")
                for metric in ("acc", "wsr"):
                    value = values.get((dataset, model, method, attack, labels, metric), Value())
                    _mark(value, outcome, metric == "wsr")
                    cells.append(value)
            rows.append(Row((_block_label(dataset, model, pairs), display_method(method)), cells))
            if compare == "paper":
                numbers = [paper_value(2, dataset, method, f"{attack_name(a, lab)}_{m}")
                           for a, lab in combos for m in ("acc", "wsr")]
                paper = _paper_row(rows[-1].keys, numbers)
                rows += [paper] if paper else []
        main = [r for r in rows if r.kind == "main"]
        for index in range(1, len(table.columns), 2):  # the WSR columns
            _bold([r.values[index] for r in main], "max")
        table.rows += rows
    return table


def _chosen(rows: pd.DataFrame) -> Dict[Tuple[str, str, str, str], str]:
    """``(dataset, model, attack, labels) -> "rate 0.6"``: the strength an attack chose
    (``chosen_*`` metrics), one value or a range over methods and seeds."""
    rows = rows[(rows["stage"] == "attack") & rows["metric"].str.startswith("chosen_")]
    out: Dict[Tuple[str, str, str, str], str] = {}
    for key, group in rows.groupby(["dataset", "model", "attack", "labels"], sort=False):
        parts = []
        for metric, values in group.groupby("metric", sort=True)["value"]:
            lo, hi = float(values.min()), float(values.max())
            text = f"{lo:.3g}" if math.isclose(lo, hi) else f"{lo:.3g}–{hi:.3g}"
            parts.append(f"{metric[len('chosen_'):]} {text}")
        out[key] = ", ".join(parts)
    return out


def _reference_values(long: pd.DataFrame, method_order: Sequence[str]) -> List[Value]:
    """Acc/WSR per method from per-seed rows with columns method, seed, metric, value."""
    cells = []
    for method in method_order:
        for metric in ("acc", "wsr"):
            part = long[(long["method"] == method) & (long["metric"] == metric)]
            per_seed = part.groupby("seed")["value"].mean()
            mean, half, n = mean_and_half_width(per_seed)
            cells.append(Value(mean, half, n))
    return cells


def removal_shaped(df: pd.DataFrame, outcomes: Mapping[tuple, str], theft_tolerance: float = 0.1) -> Shaped:
    """The removal / evasion table (rows = attacks, columns = method × {Acc, WSR}; module docstring)."""
    table = Shaped("removal", "Robustness against removal, evasion, ambiguity and adaptive attacks (%)",
                   ("Dataset", "Applied to", "Attack"), [], label="tab:wmbench-removal", marks=True,
                   theft_tolerance=theft_tolerance)
    long = table2_long(df, family="other")
    if long.empty:
        return table
    methods = _methods(long)
    table.columns = [(display_method(m), name) for m in methods for name in ("Acc", "WSR")]
    values = _values(long, [*KEYS, "attack", "labels", "metric"])
    rows_all = finished(df)
    chosen = _chosen(of_family(rows_all[rows_all["stage"] == "attack"], "other"))
    victims = table1_long(df)
    victims = victims[victims["column"].isin(["victim_acc", "victim_wsr"])]
    victims = victims.assign(metric=victims["column"].str[len("victim_"):])
    pairs = _blocks(long)
    stage_rows: Dict[int, pd.DataFrame] = {}
    for dataset, model in pairs:
        block = long[(long["dataset"] == dataset) & (long["model"] == model)]
        label = _block_label(dataset, model, pairs)
        groups: Dict[Tuple[str, str], List[Tuple[str, str]]] = {}
        for attack, labels in _attack_combos(block):
            stages = attack.split("[", 1)[0].split("+")
            prefix = ("+".join(stages[:-1]), labels) if len(stages) > 1 else ("", "")
            groups.setdefault(prefix, []).append((attack, labels))
        for (prefix, labels), combos in sorted(groups.items(), key=lambda item: (item[0][0] != "", item[0])):
            if prefix:
                applied = f"stolen ({display_attack(prefix)}{', ' + labels if labels else ''})"
                depth = len(prefix.split("+"))
                if depth not in stage_rows:  # the chains' models before their last attack
                    stage_rows[depth] = table2_long(df, family=None, stage=f"stage{depth}")
                ref = stage_rows[depth]
                ref = ref[(ref["dataset"] == dataset) & (ref["model"] == model) & (ref["labels"] == labels)
                          & ref["attack"].isin([a for a, _ in combos])]
                reference = Row((label, applied, f"{display_attack(prefix)} (before removal)"),
                                _reference_values(ref, methods), kind="reference")
            else:
                applied = "victim"
                ref = victims[(victims["dataset"] == dataset) & (victims["model"] == model)]
                reference = Row((label, applied, "no attack (victim)"), _reference_values(ref, methods),
                                kind="reference")
            table.rows.append(reference)
            for attack, labels_ in combos:
                cells = []
                for method in methods:
                    outcome = outcomes.get((dataset, model, method, attack, labels_), "")
                    for metric in ("acc", "wsr"):
                        value = values.get((dataset, model, method, attack, labels_, metric), Value())
                        _mark(value, outcome, metric == "wsr")
                        cells.append(value)
                _bold(cells[1::2], "max")
                stage = attack.split("[", 1)[0].split("+")[-1]
                variant = attack.partition("[")[2]
                name = stage + (f" [{variant}" if variant else "")
                strength = chosen.get((dataset, model, attack, labels_), "")
                table.rows.append(Row((label, applied, name + (f" ({strength})" if strength else "")), cells))
    return table


def has_values(table: Shaped) -> bool:
    """Whether ``table`` has a row with a finite value."""
    return any(np.isfinite(v.mean) for r in table.rows for v in r.values)
