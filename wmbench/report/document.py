"""The report's sections: which tables the document holds, in which order, with which titles and
notes — and the display versions (rounded, labelled) of the verdict and calibration tables.

:func:`sections` is the one list of :class:`Section` that :func:`wmbench.report.render` prints in
every format and :func:`wmbench.report.write_report` writes: the paper-shaped Table 1, Table 2 and
removal table (:mod:`wmbench.report.shaped`), *Verdicts* (outcome counts per method and attack,
the per-method summary, the leaderboard; :mod:`wmbench.report.verdicts`), *False positives*
(calibration from null models, :mod:`wmbench.report.calibration`, and the rate per null-model
recipe), the key filter's effect and the attack-strength curves. Each section keeps the numeric
table for CSV beside what is rendered.
"""
from __future__ import annotations

import math
from typing import List, Mapping, Optional, Sequence

import pandas as pd

from wmbench.errors import UserError
from wmbench.report.calibration import MIN_NULL, calibration
from wmbench.report.common import finished
from wmbench.report.paper import compare_paper
from wmbench.report.shaped import Shaped, has_values, removal_shaped, table1_shaped, table2_shaped
from wmbench.report.tables import curve_table, filter_table, fpr_table, table1, table2, value_columns
from wmbench.report.verdicts import (
    cell_outcomes, check_theft_tolerance, leaderboard, method_summary, outcome_counts, verdicts,
)

__all__ = ["Section", "sections", "counts_display", "summary_display", "leaderboard_display",
           "calibration_display"]


class Section:
    """One titled table of the report: ``table`` (numeric, for CSV), and what is rendered —
    ``shaped`` (a paper-shaped table) or ``display`` (a DataFrame of text; ``table`` when None) —
    with ``notes`` under it and ``best`` (bold rule overrides for :func:`~wmbench.report.formats.to_latex`).
    ``latex_note``: in LaTeX only the title and this note instead of the table (one too long and
    wide for paper, which the figures and CSV carry)."""

    def __init__(self, key: str, title: str, table: pd.DataFrame, best: Optional[Mapping[str, Optional[str]]] = None,
                 shaped: Optional[Shaped] = None, display: Optional[pd.DataFrame] = None,
                 notes: Sequence[str] = (), latex_note: str = ""):
        self.key, self.title, self.table, self.best = key, title, table, best
        self.shaped, self.display, self.notes, self.latex_note = shaped, display, list(notes), latex_note


def _num(x: object, digits: int = 2) -> str:
    try:
        value = float(x)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "–"
    return f"{round(value, digits) + 0.0:.{digits}f}" if math.isfinite(value) else "–"


def _p(x: object) -> str:
    try:
        value = float(x)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "–"
    if not math.isfinite(value):
        return "–"
    return "0" if value == 0 else f"{value:.2g}"


def counts_display(counts: pd.DataFrame) -> pd.DataFrame:
    """:func:`~wmbench.report.verdicts.outcome_counts` as text columns (narrow enough for a page:
    ``dataset (model)``, the attack id with its label access, ``d/e/f`` counts)."""
    return pd.DataFrame({
        "dataset": [f"{d} ({m})" for d, m in zip(counts["dataset"], counts["model"])], "method": counts["method"],
        "attack": [a + (f" / {lab}" if lab else "") for a, lab in zip(counts["attack"], counts["labels"])],
        "seeds": counts["cells"].astype(str),
        "d/e/f": [f"{d}/{e}/{f}" for d, e, f in zip(counts["detected"], counts["evaded"], counts["theft_failed"])],
        "verdict": counts["majority"], "acc ratio (%)": [_num(100 * x, 1) for x in counts["acc_ratio"]],
        "WSR (%)": [_num(x) for x in counts["wsr"]], "p chance": [_p(x) for x in counts["p_value_chance"]],
        "p benign": [_p(x) for x in counts["p_value_benign"]], "p null": [_p(x) for x in counts["p_value_null"]],
    })


def summary_display(summary: pd.DataFrame) -> pd.DataFrame:
    """:func:`~wmbench.report.verdicts.method_summary` as text columns (``d / e / f`` triples)."""
    def triple(prefix: str) -> List[str]:
        return [f"{d}/{e}/{f}" for d, e, f in zip(summary[f"{prefix}detected"], summary[f"{prefix}evaded"],
                                                       summary[f"{prefix}theft_failed"])]
    return pd.DataFrame({"dataset": summary["dataset"], "model": summary["model"], "method": summary["method"],
                         "cells": summary["cells"].astype(str), "all d/e/f": triple(""),
                         "stealing d/e/f": triple("stealing_"), "removal, evasion d/e/f": triple("other_")})


def leaderboard_display(board: pd.DataFrame) -> pd.DataFrame:
    """:func:`~wmbench.report.verdicts.leaderboard` as text columns."""
    rate = [f"{_num(r, 1)} [{_num(lo, 1)}, {_num(hi, 1)}]" if r == r else "–"
            for r, lo, hi in zip(board["evasion_rate"], board["evasion_low"], board["evasion_high"])]
    return pd.DataFrame({"dataset": board["dataset"], "model": board["model"], "rank": board["rank"].astype(str),
                         "method": board["method"], "successful thefts": board["thefts"].astype(str),
                         "detected": board["detected"].astype(str), "evaded": board["evaded"].astype(str),
                         "evasion rate (%) [95 % CI]": rate, "theft failed": board["theft_failed"].astype(str)})


def calibration_display(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`~wmbench.report.calibration.calibration` rows with ≥ 2 null models as text columns."""
    rows = table[table["n_null"] >= MIN_NULL]
    calibrated = [_num(t) if t == t else note for t, note in zip(rows["calibrated_threshold"], rows["note"])]
    return pd.DataFrame({
        "dataset": rows["dataset"], "model": rows["model"], "method": rows["method"],
        "null models": rows["n_null"].astype(int).astype(str), "threshold (%)": [_num(x) for x in rows["threshold"]],
        "FPR [CI] (%)": [f"{_num(f)} [{_num(lo)}, {_num(hi)}]" for f, lo, hi in
                         zip(rows["fpr"], rows["fpr_low"], rows["fpr_high"])],
        "WSR mean ± sd": [f"{_num(m)} ± {_num(s)}" for m, s in zip(rows["wsr_mean"], rows["wsr_sd"])],
        "WSR med/q90/max": [f"{_num(a)} / {_num(b)} / {_num(c)}" for a, b, c in
                            zip(rows["wsr_median"], rows["wsr_q90"], rows["wsr_max"])],
        "calibrated (%)": calibrated,
        "WRT-style (%)": [_num(x) for x in rows["normal_threshold"]],
    })


def _calibration_notes(table: pd.DataFrame) -> List[str]:
    alphas = sorted({float(a) for a in table["alpha"].dropna()})
    level = ", ".join(f"{a:g}" for a in alphas) or "0.05"
    notes = [f"Null models: cells of the independent attack (trained without the victim), pooled over victim seeds; "
             f"a null model watermarked by the verified method itself is left out. FPR: share of null models with "
             f"WSR ≥ the threshold, with its two-sided Clopper–Pearson interval at level 1 − α (α = {level}). WSR: "
             "the null models' WSR distribution. Calibrated: the smallest achievable WSR threshold whose FPR upper "
             "bound is ≤ α; zero false positives among N null models bound the FPR only by 1 − (α/2)^(1/N), hence "
             "the number of null models it needs. WRT-style: the threshold of a normal fit to the null WSRs, "
             "mean + z(1 − α) · sd, as in the Watermark-Robustness-Toolbox (Lukas et al., S&P 2022); it assumes "
             "normal null WSRs and is not calibrated."]
    few = table[table["n_null"] < MIN_NULL]
    if not few.empty:
        names = ", ".join(f"{m} ({d}/{mo})" for d, mo, m in zip(few["dataset"], few["model"], few["method"]))
        notes.append(f"Left out, needs ≥ {MIN_NULL} null models: {names}.")
    return notes


def _verdict_notes(tolerance: float) -> List[str]:
    bound = f"{100 * (1 - tolerance):g} %"
    return [f"A theft is successful when the suspect's test accuracy is ≥ {bound} of the victim's (theft tolerance "
            f"{tolerance:g}, relative). d/e/f: cells detected / evaded / theft failed. detected: successful and "
            "verified (WSR ≥ threshold); evaded: successful, not verified — the watermark failed; theft failed: no "
            "usable copy, no claim. verdict: the outcome of more than half of the seeds, else mixed. acc ratio: "
            "suspect / victim accuracy; it and WSR are means over seeds. p chance / p benign: the binomial p-values "
            "of the WSR against chance and against the benign model; p null: the empirical p-value "
            "(1 + #{null WSR ≥ WSR}) / (N + 1) against the method's null models (False positives). Each p: the "
            "largest over seeds. Per cell: verdicts.csv."]


def sections(df: pd.DataFrame, compare: Optional[str] = None, theft_tolerance: float = 0.1) -> List[Section]:
    """The report's sections (see the module docstring); empty when no cell finished."""
    if compare not in (None, "paper"):
        raise UserError(f"unknown compare={compare!r}; accepted: None, 'paper'")
    tolerance = check_theft_tolerance(theft_tolerance)
    rows = finished(df)
    if rows.empty:
        return []
    verdict_rows = verdicts(df, tolerance)
    outcomes = cell_outcomes(verdict_rows)
    t1, t2 = table1(rows), table2(rows)
    if compare == "paper":
        t1, t2 = compare_paper(t1, t2)
    out = [Section("table1", "Table 1: harmlessness and effectiveness (%)", t1, shaped=table1_shaped(rows, compare))]
    shaped2 = table2_shaped(rows, outcomes, compare, tolerance)
    if has_values(shaped2):
        out.append(Section("table2", shaped2.title, t2, shaped=shaped2))
    removal = removal_shaped(rows, outcomes, tolerance)
    if has_values(removal):
        out.append(Section("removal", removal.title, table2(rows, family="other"), shaped=removal))
    counts = outcome_counts(verdict_rows)
    if not counts.empty:
        out.append(Section("verdicts", "Verdicts: outcome of each method and attack (cells counted over seeds)",
                           counts, display=counts_display(counts), notes=_verdict_notes(tolerance)))
        summary = method_summary(verdict_rows)
        out.append(Section("verdict_summary", "Verdicts: per method over the grid", summary,
                           display=summary_display(summary),
                           notes=["Cells detected / evaded / theft failed (d/e/f) over every attack and seed: all "
                                  "of them, those of stealing attacks, and those of removal, evasion, ambiguity and "
                                  "adaptive attacks (alone or after stealing)."]))
        board = leaderboard(verdict_rows)
        out.append(Section("leaderboard", "Verdicts: leaderboard (evaded on the fewest successful thefts)", board,
                           display=leaderboard_display(board), notes=[
                               "Evasion rate = evaded / (detected + evaded), with its Clopper–Pearson 95 % interval; "
                               "ranked by the rate, ties by more successful thefts; methods without a successful "
                               "theft last."]))
    cal = calibration(df)
    if not cal.empty:
        out.append(Section("calibration", "False positives (calibration): null models per method", cal,
                           display=calibration_display(cal), notes=_calibration_notes(cal)))
    fpr = fpr_table(df)
    if not fpr.empty:
        out.append(Section("fpr", "False positives per null-model recipe (%)", fpr,
                           {"fpr": "min", "wsr_mean": "min", "wsr_max": "min"}))
    effect = filter_table(df)
    if not effect.empty:
        out.append(Section("filter", "Key filtering: WSR on filtered keys vs unfiltered candidates (%)", effect, {}))
    curves = curve_table(df)
    if not curves.empty:
        out.append(Section("curves", "Curves: accuracy, fidelity and WSR along each attack's strength sweep (%)",
                           curves, {b: None for b in value_columns(curves)},
                           latex_note="Drawn in the figures; every point is in curves.csv."))
    return out
