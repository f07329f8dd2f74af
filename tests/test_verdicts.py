"""Verdicts, calibration and the paper-shaped tables, on a results table built by hand.

The frame comes from hand-written cell records (:func:`wmbench.results.to_frame`) whose
verification metrics are computed as a real cell computes them
(:func:`wmbench.verification.evaluate_evidence`, alpha = 0.05). Every expected value below is
worked out by hand (closed forms, or scipy called with hand-derived arguments).
"""
from __future__ import annotations

import json
import math
import statistics
from typing import Any, Dict, List, Optional

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from wmbench import report
from wmbench.errors import UserError
from wmbench.results import to_frame
from wmbench.verification import evaluate_evidence

N_KEYS = 100
VICTIM_ACC = 0.90
ALPHA = 0.05


def _evidence(hits: int) -> Dict[str, float]:
    return evaluate_evidence(hits, N_KEYS, num_classes=10, threshold=0.2, benign_hits=2, benign_n=N_KEYS,
                             alpha=ALPHA).as_metrics()


def _record(method: str, attack: str, labels: str, seed: int, suspect: Optional[tuple] = None,
            sweep: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """One cell record; ``suspect`` = (test accuracy, key hits of 100) of the attacked model."""
    metrics: Dict[str, Dict[str, float]] = {"benign": {"acc": 0.91, **_evidence(2)},
                                            "victim": {"acc": VICTIM_ACC, **_evidence(100)}}
    if suspect is not None:
        metrics["attack"] = {"acc": suspect[0], "fidelity": 0.9, "queries": 1000.0, **_evidence(suspect[1])}
    tag = "-".join(str(v) for v in (sweep or {}).values())
    return {"cell_id": f"{method}-{attack}-{labels}-{seed}-{tag}", "run": "hand", "status": "ok",
            "cell": {"method": method, "attack": attack, "labels": labels, "dataset": "fmnist", "arch": "naivenet",
                     "seed": seed, "profile": "smoke", "sweep": sweep or {}},
            "metrics": metrics, "variant": {}, "queries": 0, "wall_s": 1.0,
            "provenance": {"wmbench_version": "0", "git_sha": "x", "torch_version": "2", "device": "cpu",
                           "host": "h", "schema_version": 2}}


#: badnets' null models: recipe -> WSR (hits of 100). method:badnets is badnets' own watermark,
#: so it is no null model for badnets and must be left out.
NULLS = {"clean": 2, "mixup": 5, "cutmix": 25, "method:noise": 0, "method:badnets": 97}


def _records() -> List[Dict[str, Any]]:
    records = []
    for method in ("badnets", "deeptracer", "content", "noise"):
        records.append(_record(method, "none", "", 0))
    # badnets: one cell of each outcome, plus a removal attack exactly at the accuracy bound
    records += [
        _record("badnets", "knockoff", "soft", 0, (0.85, 10)),  # 0.85 ≥ 0.81, WSR 10 % < 20 %: evaded
        _record("badnets", "dfme", "soft", 0, (0.25, 99)),  # 0.25 < 0.81: theft failed despite 99 % WSR
        _record("badnets", "ftal", "", 0, (0.82, 30)),  # removal, 0.82 ≥ 0.81, 30 %: detected
        _record("badnets", "prune", "", 0, (0.81, 5)),  # exactly 0.9 × 0.9: still a successful theft; evaded
    ]
    for seed, (acc, hits) in enumerate([(0.88, 95), (0.86, 91), (0.87, 93)]):  # detected on 3 seeds
        if seed:
            records.append(_record("badnets", "none", "", seed))
        records.append(_record("badnets", "jbda", "soft", seed, (acc, hits)))
    for variant, hits in NULLS.items():
        records.append(_record("badnets", "independent", "", 0, (0.89, hits),
                               sweep={"attacks.independent.variant": variant}))
    # the leaderboard: content 0 of 3 evaded, deeptracer 0 of 1, badnets 2 of 6, noise no successful theft
    records += [_record("deeptracer", "knockoff", "soft", 0, (0.87, 90)),
                _record("deeptracer", "dfme", "soft", 0, (0.30, 80))]
    records += [_record("content", attack, labels, 0, (0.86, 60))
                for attack, labels in (("knockoff", "soft"), ("jbda", "soft"), ("ftal", ""))]
    records.append(_record("content", "independent", "", 0, (0.89, 1), sweep={"attacks.independent.variant": "clean"}))
    records.append(_record("noise", "dfme", "soft", 0, (0.20, 70)))
    return records


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return to_frame(_records())


@pytest.fixture(scope="module")
def verdict_rows(frame) -> pd.DataFrame:
    return report.verdicts(frame)


def _cell(rows: pd.DataFrame, method: str, attack: str, labels: str = "", seed: int = 0) -> pd.Series:
    hit = rows[(rows["method"] == method) & (rows["attack"] == attack) & (rows["labels"] == labels)
               & (rows["seed"] == seed)]
    assert len(hit) == 1, (method, attack, labels, seed)
    return hit.iloc[0]


# ------------------------------------------------------------------------------------------
# Theft success and outcomes
# ------------------------------------------------------------------------------------------
def test_outcomes_of_each_kind(verdict_rows):
    evaded = _cell(verdict_rows, "badnets", "knockoff", "soft")
    assert evaded["outcome"] == "evaded" and bool(evaded["theft_ok"]) and not bool(evaded["detected"])
    assert evaded["acc_ratio"] == pytest.approx(0.85 / 0.90) and evaded["wsr"] == pytest.approx(10.0)
    assert evaded["victim_acc"] == pytest.approx(90.0) and evaded["suspect_acc"] == pytest.approx(85.0)
    failed = _cell(verdict_rows, "badnets", "dfme", "soft")
    assert failed["outcome"] == "theft failed" and not bool(failed["theft_ok"]) and bool(failed["detected"])
    detected = _cell(verdict_rows, "badnets", "jbda", "soft")
    assert detected["outcome"] == "detected" and bool(detected["theft_ok"]) and bool(detected["detected"])
    # removal attacks get outcomes too; the bound is inclusive: 0.81 = (1 − 0.1) × 0.90
    assert _cell(verdict_rows, "badnets", "ftal")["outcome"] == "detected"
    assert _cell(verdict_rows, "badnets", "ftal")["family"] == "other"
    assert _cell(verdict_rows, "badnets", "prune")["outcome"] == "evaded"
    # none and independent cells get no outcome
    assert not verdict_rows["attack"].isin(["none"]).any()
    assert not verdict_rows["attack"].str.startswith("independent").any()
    # the binomial p-values travel with the cell: P(X ≥ 95) for X ~ Bin(100, 1/10)
    assert detected["p_value_chance"] == pytest.approx(stats.binom.sf(94, 100, 0.1))


def test_theft_tolerance_moves_the_bound(frame):
    # tolerance 0.05: the bound is 0.95 × 0.90 = 0.855, so knockoff's 0.85 is no longer a working copy
    rows = report.verdicts(frame, theft_tolerance=0.05)
    assert _cell(rows, "badnets", "knockoff", "soft")["outcome"] == "theft failed"
    # tolerance 0.8: even dfme's 25 % (≥ 0.2 × 0.9 = 18 %) counts, and its 99 % WSR is detected
    assert _cell(report.verdicts(frame, theft_tolerance=0.8), "badnets", "dfme", "soft")["outcome"] == "detected"


@pytest.mark.parametrize("bad", [-0.1, 1.0, float("nan"), float("inf"), "x", True])
def test_bad_theft_tolerance_is_a_user_error(frame, bad, tmp_path):
    with pytest.raises(UserError) as info:
        report.verdicts(frame, theft_tolerance=bad)
    assert "\n" not in str(info.value) and "[0, 1)" in str(info.value)
    with pytest.raises(UserError):
        report.render(frame, theft_tolerance=bad)
    with pytest.raises(UserError):
        report.write_report(frame, tmp_path / "out", theft_tolerance=bad)
    assert not (tmp_path / "out").exists()  # nothing written, not even the folder


def test_counts_summary_and_leaderboard(verdict_rows):
    counts = report.outcome_counts(verdict_rows)
    jbda = counts[(counts["method"] == "badnets") & (counts["attack"] == "jbda")].iloc[0]
    assert (jbda["cells"], jbda["detected"], jbda["evaded"], jbda["theft_failed"]) == (3, 3, 0, 0)
    assert jbda["majority"] == "detected" and jbda["wsr"] == pytest.approx(93.0)
    summary = report.method_summary(verdict_rows).set_index("method")
    bad = summary.loc["badnets"]
    # knockoff evaded, dfme failed, jbda 3 × detected, ftal detected, prune evaded
    assert (bad["cells"], bad["detected"], bad["evaded"], bad["theft_failed"]) == (7, 4, 2, 1)
    assert (bad["stealing_detected"], bad["stealing_evaded"], bad["stealing_theft_failed"]) == (3, 1, 1)
    assert (bad["other_detected"], bad["other_evaded"], bad["other_theft_failed"]) == (1, 1, 0)
    board = report.leaderboard(verdict_rows)
    # 0/3 before 0/1 (a tie on the rate goes to more successful thefts), then 2/6, then no theft at all
    assert list(board["method"]) == ["content", "deeptracer", "badnets", "noise"]
    assert list(board["rank"]) == [1, 2, 3, 4]
    row = board.set_index("method").loc["badnets"]
    assert row["thefts"] == 6 and row["evasion_rate"] == pytest.approx(100 * 2 / 6)
    assert row["evasion_low"] == pytest.approx(100 * stats.beta.ppf(0.025, 2, 5))
    assert row["evasion_high"] == pytest.approx(100 * stats.beta.ppf(0.975, 3, 4))
    assert math.isnan(board.set_index("method").loc["noise", "evasion_rate"])


# ------------------------------------------------------------------------------------------
# Calibration from null models
# ------------------------------------------------------------------------------------------
def test_null_models_leave_out_the_methods_own_watermark(frame):
    nulls = report.null_models(frame)
    bad = nulls[nulls["method"] == "badnets"]
    assert len(bad) == 4 and sorted(bad["wsr"]) == pytest.approx([0.0, 0.02, 0.05, 0.25])
    assert not bad["attack"].str.contains("method:badnets").any()
    assert (bad["alpha"] == ALPHA).all()  # recovered from each cell's Clopper–Pearson interval


def test_false_positive_rate_and_its_clopper_pearson_interval(frame):
    cal = report.calibration(frame).set_index("method")
    bad = cal.loc["badnets"]
    assert bad["n_null"] == 4 and bad["false_positives"] == 1  # only cutmix's 25 % reaches 20 %
    assert bad["fpr"] == pytest.approx(25.0)
    # k = 1 of n = 4: lower = Beta(1, 4).ppf(α/2) = 1 − (1 − α/2)^(1/4); upper = Beta(2, 3).ppf(1 − α/2)
    assert bad["fpr_low"] == pytest.approx(100 * (1 - (1 - ALPHA / 2) ** (1 / 4)))
    assert bad["fpr_high"] == pytest.approx(100 * stats.beta.ppf(1 - ALPHA / 2, 2, 3))
    assert bad["wsr_mean"] == pytest.approx(100 * 0.08) and bad["wsr_max"] == pytest.approx(25.0)
    # WRT-style: a normal fit, mean + z(0.95) · sd
    nulls = [0.0, 0.02, 0.05, 0.25]
    z = statistics.NormalDist().inv_cdf(1 - ALPHA)
    assert bad["normal_threshold"] == pytest.approx(100 * (statistics.mean(nulls) + z * statistics.stdev(nulls)))
    # 4 null models cannot calibrate anything: zero of N bounds the FPR by 1 − (α/2)^(1/N) ≤ α only for N ≥ 72
    m = math.ceil(math.log(ALPHA / 2) / math.log(1 - ALPHA))
    assert m == 72 and 1 - (ALPHA / 2) ** (1 / m) <= ALPHA < 1 - (ALPHA / 2) ** (1 / (m - 1))
    assert report.min_null_models(ALPHA) == m and bad["needed_null_models"] == m
    assert math.isnan(bad["calibrated_threshold"])
    assert bad["note"] == "not attainable with 4 null models (needs ≥ 72)"
    # ten null models: the upper bound of zero false positives is 1 − 0.025^(1/10) ≈ 0.31
    assert report.calibrated_threshold([0.0] * 10, ALPHA)[2] == "not attainable with 10 null models (needs ≥ 72)"
    assert 1 - 0.025 ** 0.1 == pytest.approx(0.3085, abs=1e-4)


def test_calibrated_threshold_when_enough_null_models():
    nulls = [0.01] * 70 + [0.03] * 10  # N = 80 ≥ 72
    # one false positive is too many (Beta(2, 79).ppf(0.975) ≈ 0.068 > 0.05), zero is enough:
    assert stats.beta.ppf(0.975, 2, 79) > ALPHA >= 1 - (ALPHA / 2) ** (1 / 80)
    # so t is the smallest achievable WSR above every null WSR: 4 hits of 100 keys
    t, needed, note = report.calibrated_threshold(nulls, ALPHA, n_keys=[100])
    assert (t, needed, note) == (pytest.approx(0.04), 72, "")
    # without n_keys: just above the largest null WSR
    t, _, note = report.calibrated_threshold(nulls, ALPHA)
    assert t == pytest.approx(0.03 + 1e-6) and note == ""


def test_fewer_than_two_null_models(frame):
    cal = report.calibration(frame).set_index("method")
    assert cal.loc["content", "n_null"] == 1 and cal.loc["content", "note"] == "needs ≥ 2 null models"
    assert math.isnan(cal.loc["content", "fpr"])
    with pytest.raises(UserError, match="needs ≥ 2 null models"):
        report.calibration(frame, strict=True)
    with pytest.raises(UserError, match="no null-model cells"):
        report.calibration(frame[frame["attack"] != "independent"], strict=True)
    md = report.render(frame)
    assert "Left out, needs ≥ 2 null models: content (fmnist/naivenet)" in md


def test_empirical_p_values_against_the_null_models(verdict_rows):
    # null WSRs 0, 2, 5, 25 %: p = (1 + #{null ≥ observed}) / (N + 1)
    assert _cell(verdict_rows, "badnets", "knockoff", "soft")["p_value_null"] == pytest.approx((1 + 1) / 5)
    assert _cell(verdict_rows, "badnets", "jbda", "soft")["p_value_null"] == pytest.approx(1 / 5)
    assert _cell(verdict_rows, "badnets", "prune")["p_value_null"] == pytest.approx((1 + 2) / 5)  # 5 % ≥ 5 %
    assert _cell(verdict_rows, "badnets", "prune")["n_null"] == 4
    deep = _cell(verdict_rows, "deeptracer", "knockoff", "soft")
    assert deep["n_null"] == 0 and math.isnan(deep["p_value_null"])
    assert math.isnan(_cell(verdict_rows, "content", "ftal")["p_value_null"])  # 1 null model: too few


# ------------------------------------------------------------------------------------------
# Seeds, intervals, bold
# ------------------------------------------------------------------------------------------
def test_t_interval_half_width(frame):
    # jbda soft WSR over 3 seeds: 95, 91, 93 → mean 93, sd 2, half-width t(0.975, 2) · 2 / √3
    expected = 4.302652729911275 * 2 / math.sqrt(3)
    assert stats.t.ppf(0.975, 2) == pytest.approx(4.302652729911275)
    assert report.t_half_width([95, 91, 93]) == pytest.approx(expected)
    assert math.isnan(report.t_half_width([95]))
    t2 = report.table2_shaped(frame, {})
    column = t2.columns.index(("JBDA", "Soft", "WSR"))
    value = [r for r in t2.rows if r.keys[-1] == "BadNets"][0].values[column]
    assert (value.mean, value.n) == (pytest.approx(93.0), 3) and value.half == pytest.approx(expected)
    assert f"93.00 ± {expected:.2f}" in report.render(frame)
    assert "95 % t-interval" in report.render(frame)  # said in the notes


def test_bold_only_when_significant_else_every_tie():
    # intervals [88, 92] and [70, 74] are disjoint: only the best is bold
    assert report.best_marks([90, 72, 50], [2, 2, 1], "max") == [True, False, False]
    # [88, 92] and [85, 91] overlap: both bold, and so is any other value overlapping the best
    assert report.best_marks([90, 88, 50], [2, 3, 1], "max") == [True, True, False]
    assert report.best_marks([10, 12], [float("nan"), float("nan")], "min") == [True, False]  # one seed: points
    assert report.best_marks([90, 99], [1, 1], "max", eligible=[True, False]) == [False, False]  # needs 2
    assert report.best_marks([90, 80, 99], [1, 1, 1], "max", eligible=[True, True, False]) == [True, False, False]


# ------------------------------------------------------------------------------------------
# Rendering
# ------------------------------------------------------------------------------------------
def test_latex_table2_in_the_papers_shape(frame):
    tex = report.render(frame, fmt="latex", standalone=True)
    table2 = tex[tex.index("Robustness against model stealing"):]
    table2 = table2[: table2.index("\\end{table}")]
    assert "\\toprule" in table2 and "\\bottomrule" in table2
    assert "\\multicolumn{2}{c}{JBDA}" in table2 and "\\multicolumn{2}{c}{Soft}" in table2
    assert "\\cmidrule(lr){3-4}" in table2
    assert "\\textsuperscript{\\dag}" in table2 and "\\dag{} evaded" in table2  # the mark and its legend
    assert "\\textcolor{gray}{" in table2 and "Values in grey: theft failed" in table2
    assert "\\resizebox{\\ifdim\\width>\\linewidth" in table2
    assert "\\usepackage{xcolor}" in tex and "longtable}{" not in table2


def test_html_has_colspan_headers_and_marks(frame):
    html = report.render(frame, fmt="html", standalone=True)
    assert '<th colspan="2">JBDA</th>' in html and '<th rowspan="3">Method</th>' in html
    assert '<span class="failed">' in html and "<sup>†</sup>" in html and ".failed{color:#999}" in html


def test_markdown_marks_and_legend(frame):
    md = report.render(frame)
    assert "Knockoff Soft WSR" in md and "10.00 †" in md and "(99.00)" in md
    assert "Values in (parentheses): theft failed" in md


def test_compare_paper_adds_a_second_line_per_method(frame):
    md = report.render(frame, compare="paper")
    table1 = md[md.index("## Table 1"):md.index("## Table 2")]
    lines = [line for line in table1.splitlines() if line.startswith("|")][2:]
    methods = [line.split("|")[2].strip() for line in lines]
    assert methods[:2] == ["BadNets", "*paper*"]  # the paper's BadNets under ours
    assert "*10.47*" in lines[1]  # BadNets' benign WSR in the paper's Table 1
    tex = report.render(frame, fmt="latex", compare="paper")
    assert "{\\small\\textit{paper}}" in tex and "{\\small\\textit{10.47}}" in tex
    html = report.render(frame, fmt="html", compare="paper")
    assert '<tr class="paper">' in html


def test_removal_table_rows_are_attacks(frame):
    removal = report.removal_shaped(frame, {})
    assert removal.columns[:2] == [("BadNets", "Acc"), ("BadNets", "WSR")]
    labels = [r.keys[-1] for r in removal.rows]
    assert labels[0] == "no attack (victim)" and {"ftal", "prune"} <= set(labels)


def test_write_report_writes_verdicts_and_calibration(frame, tmp_path):
    names = {p.name for p in report.write_report(frame, tmp_path, formats=("csv", "md"))}
    assert {"verdicts.csv", "calibration.csv", "table2.csv", "report.md"} <= names
    written = pd.read_csv(tmp_path / "verdicts.csv", keep_default_na=False, na_values=[""])
    assert list(written.columns) == report.verdicts(frame).columns.tolist()
    assert set(written["outcome"]) == {"detected", "evaded", "theft failed"}
    md = (tmp_path / "report.md").read_text()
    for title in ("## Verdicts", "leaderboard", "## False positives (calibration)", "not attainable with 4 null"):
        assert title in md


def test_cli_theft_tolerance(frame, tmp_path, capsys):
    from wmbench.cli import main

    run = tmp_path / "run"
    (run / "cells").mkdir(parents=True)
    for record in _records():
        (run / "cells" / f"{record['cell_id']}.json").write_text(json.dumps(record))
    before = sorted(p.name for p in run.rglob("*"))
    for bad in ("1.5", "-0.1", "nan"):
        assert main(["report", str(run), "--theft-tolerance", bad]) == 2
        captured = capsys.readouterr()
        assert captured.err.startswith("wmbench: error: ") and captured.err.count("\n") == 1
        assert captured.out == ""
        assert sorted(p.name for p in run.rglob("*")) == before  # nothing written
    assert main(["report", str(run), "--theft-tolerance", "0.05", "--no-write"]) == 0
    out = capsys.readouterr().out
    assert "≥ 95 % of the victim's" in out and sorted(p.name for p in run.rglob("*")) == before


def test_same_outcome_for_a_frame_without_detected_metric(frame):
    # foreign tables may lack `detected`: WSR ≥ threshold is used instead
    stripped = frame[frame["metric"] != "detected"]
    assert report.verdicts(stripped)["outcome"].tolist() == report.verdicts(frame)["outcome"].tolist()
    assert np.isfinite(report.verdicts(stripped)["wsr"]).all()


def test_latex_keeps_16_columns_in_one_float_and_numbers_continuations_as_the_same_table():
    """The paper's Table 2 with distillation and DFMS-HL beside it (16 value columns) is one float,
    shrunk to the page width; a wider table splits at attack boundaries, and its later parts
    keep the table's number ("(continued)", the counter stepped back) instead of taking the next."""
    from wmbench.report.formats_shaped import MAX_LATEX_COLUMNS, shaped_latex
    from wmbench.report.shaped import Row, Shaped, Value

    def table(attacks: int) -> Shaped:
        columns = [(f"Attack{a}", labels, metric) for a in range(attacks) for labels in ("Soft", "Hard")
                   for metric in ("Acc", "WSR")]
        return Shaped(key="table2", title="Table 2: robustness", row_headers=("Dataset", "Method"),
                      columns=columns, rows=[Row(("FMNIST", "BadNets"), [Value(mean=50.0) for _ in columns])],
                      label="tab:t2")

    assert MAX_LATEX_COLUMNS == 16
    one = shaped_latex(table(4))  # 16 value columns
    assert one.count("\\begin{table}") == 1 and "continued" not in one and "addtocounter" not in one
    assert "\\resizebox{\\ifdim\\width>\\linewidth" in one
    two = shaped_latex(table(5))  # 20 value columns: 16 + 4
    parts = two.split("\\end{table}")[:-1]
    assert len(parts) == 2
    assert "\\caption{Robustness}" in parts[0] and "\\label{tab:t2}" in parts[0] and "Attack3" in parts[0]
    assert "\\addtocounter{table}{-1}\n\\caption{Robustness (continued)}" in parts[1]
    assert "Attack4" in parts[1] and "Attack3" not in parts[1] and "\\label" not in parts[1]
