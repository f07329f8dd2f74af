"""Tests for wmbench.report on a small hand-built results frame."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from wmbench import report

# Per (method, seed): benign acc/wsr and victim acc/wsr (fractions).
STAGES: Dict[Tuple[str, int], Dict[Tuple[str, str], float]] = {
    ("badnets", 0): {("benign", "acc"): 0.9100, ("benign", "wsr"): 0.10, ("victim", "acc"): 0.9050, ("victim", "wsr"): 0.99},
    ("badnets", 1): {("benign", "acc"): 0.9200, ("benign", "wsr"): 0.12, ("victim", "acc"): 0.9130, ("victim", "wsr"): 1.00},
    ("deeptracer", 0): {("benign", "acc"): 0.9150, ("benign", "wsr"): 0.00, ("victim", "acc"): 0.9140, ("victim", "wsr"): 1.00},
    ("deeptracer", 1): {("benign", "acc"): 0.9160, ("benign", "wsr"): 0.00, ("victim", "acc"): 0.9160, ("victim", "wsr"): 1.00},
}
# Per (method, labels, seed): stolen acc/wsr after knockoff (fractions).
STOLEN: Dict[Tuple[str, str, int], Tuple[float, float]] = {
    ("badnets", "soft", 0): (0.80, 0.40), ("badnets", "soft", 1): (0.82, 0.30),
    ("badnets", "hard", 0): (0.55, 0.10), ("badnets", "hard", 1): (0.57, 0.14),
    ("deeptracer", "soft", 0): (0.85, 1.00), ("deeptracer", "soft", 1): (0.87, 0.98),
    ("deeptracer", "hard", 0): (0.60, 0.95), ("deeptracer", "hard", 1): (0.62, 0.97),
}


def _row(cell: str, method: str, attack: str, labels: str, seed: int, stage: str, metric: str,
         value: float, status: str = "ok") -> dict:
    return {
        "run": "test-run", "cell_id": cell, "method": method, "attack": attack, "labels": labels,
        "dataset": "fmnist", "model": "naivenet", "seed": seed, "profile": "smoke", "stage": stage,
        "metric": metric, "value": value, "status": status,
        "skipped_reason": "" if status == "ok" else "not applicable",
        "method_params_hash": "m", "attack_params_hash": "a", "wmbench_version": "0.1.0",
        "git_sha": "abc", "torch_version": "2.2", "device": "cpu", "host": "h",
        "started_at": "2025-01-01T00:00:00", "wall_s": 1.0, "queries": 0, "schema_version": 1,
    }


def _results() -> pd.DataFrame:
    rows: List[dict] = []
    for (method, seed), stages in STAGES.items():
        for attack, labels in (("none", ""), ("knockoff", "soft"), ("knockoff", "hard")):
            cell = f"{method}-{attack}-{labels}-{seed}"
            # Benign/victim rows are repeated in every attack cell of the same method and seed.
            for (stage, metric), value in stages.items():
                rows.append(_row(cell, method, attack, labels, seed, stage, metric, value))
            if attack == "none":  # identity "attack": must not appear in Table 2
                rows.append(_row(cell, method, attack, labels, seed, "attack", "acc", stages[("victim", "acc")]))
                rows.append(_row(cell, method, attack, labels, seed, "attack", "wsr", stages[("victim", "wsr")]))
                continue
            acc, wsr = STOLEN[(method, labels, seed)]
            rows.append(_row(cell, method, attack, labels, seed, "attack", "acc", acc))
            rows.append(_row(cell, method, attack, labels, seed, "attack", "wsr", wsr))
            rows.append(_row(cell, method, attack, labels, seed, "attack", "fidelity", 0.9))
            rows.append(_row(cell, method, attack, labels, seed, "attack", "queries", 1000.0))
    rows.append(_row("deeptracer-dfme-hard-0", "deeptracer", "dfme", "hard", 0, "attack", "status",
                     np.nan, status="skipped"))
    return pd.DataFrame(rows)


@pytest.fixture()
def results() -> pd.DataFrame:
    return _results()


def _row_of(table: pd.DataFrame, method: str) -> pd.Series:
    rows = table[table["method"] == method]
    assert len(rows) == 1
    return rows.iloc[0]


def _std(a: float, b: float) -> float:
    return float(np.std([a, b], ddof=1))


# ----------------------------------------------------------------------------------------
def test_table1_values_and_deltas(results):
    t1 = report.table1(results)
    assert list(t1["method"]) == ["badnets", "deeptracer"]
    assert (t1["dataset"] == "fmnist").all() and (t1["n_seeds"] == 2).all()
    bad = _row_of(t1, "badnets")
    assert bad["benign_acc_mean"] == pytest.approx(91.5)
    assert bad["benign_acc_std"] == pytest.approx(_std(91.0, 92.0))
    assert bad["benign_wsr_mean"] == pytest.approx(11.0)
    assert bad["victim_acc_mean"] == pytest.approx(90.9)
    assert bad["victim_wsr_mean"] == pytest.approx(99.5)
    # delta per seed: -0.5 and -0.7 percentage points
    assert bad["delta_acc_mean"] == pytest.approx(-0.6)
    assert bad["delta_acc_std"] == pytest.approx(_std(-0.5, -0.7))
    assert bad["delta_acc_mean"] == pytest.approx(bad["victim_acc_mean"] - bad["benign_acc_mean"])
    deep = _row_of(t1, "deeptracer")
    assert deep["benign_wsr_mean"] == pytest.approx(0.0)
    assert deep["delta_acc_mean"] == pytest.approx(-0.05)
    assert deep["victim_wsr_std"] == pytest.approx(0.0)
    value_cols = [c for c in t1.columns if c.endswith("_mean")]
    assert value_cols == [f"{c}_mean" for c in report.TABLE1_COLUMNS]


def test_repeated_benign_victim_rows_are_deduplicated(results):
    # Each benign/victim row appears three times (one per attack cell); with ddof=1 a naive
    # aggregation over 6 rows would give a different std than over the 2 seeds.
    t1 = report.table1(results)
    assert _row_of(t1, "badnets")["benign_acc_std"] == pytest.approx(0.7071067811865476)
    assert report.table1(pd.concat([results, results])).equals(t1)


def test_single_seed_has_no_std(results):
    t1 = report.table1(results[results["seed"] == 0])
    assert (t1["n_seeds"] == 1).all()
    assert t1["benign_acc_std"].isna().all()
    assert "±" not in report.to_markdown(t1)


def test_disagreeing_repeats_warn_and_average(results, caplog):
    changed = results.copy()
    mask = (changed["method"] == "badnets") & (changed["seed"] == 0) & (changed["stage"] == "benign") \
        & (changed["metric"] == "acc") & (changed["attack"] == "none")
    changed.loc[mask, "value"] = 0.9400
    with caplog.at_level("WARNING", logger="wmbench.report"):
        t1 = report.table1(changed)
    assert "disagree" in caplog.text
    # seed 0 benign acc = mean(94, 91, 91) = 92; seed 1 = 92
    assert _row_of(t1, "badnets")["benign_acc_mean"] == pytest.approx(92.0)


def test_variants_from_set_overrides_are_labelled_not_averaged(results, caplog):
    """Cells of one method run with different --set values in one folder (recorded as
    method_variant / attack_variant) become separate, labelled rows instead of being averaged."""
    plain = results.assign(method_variant="", attack_variant="")
    other = plain[plain["method"] == "badnets"].copy()
    other["cell_id"] = other["cell_id"] + "-fixed"
    other["method_variant"] = "poison_rate=0.05"
    other.loc[other["metric"] == "acc", "value"] -= 0.05
    budget = plain[(plain["method"] == "deeptracer") & (plain["attack"] == "knockoff")].copy()
    budget["cell_id"] = budget["cell_id"] + "-budget"
    budget["attack_variant"] = "budget=500"
    frame = pd.concat([plain, other, budget], ignore_index=True)
    with caplog.at_level("WARNING", logger="wmbench.report"):
        t1 = report.table1(frame)
        t2 = report.table2(frame)
    assert "disagree" not in caplog.text
    assert list(t1["method"]) == ["badnets", "badnets[poison_rate=0.05]", "deeptracer"]
    assert _row_of(t1, "badnets")["victim_acc_mean"] == pytest.approx(90.9)
    assert _row_of(t1, "badnets[poison_rate=0.05]")["victim_acc_mean"] == pytest.approx(85.9)
    assert any("knockoff[budget=500]" in str(c) for c in t2.columns) or \
        (t2.astype(str).apply(lambda col: col.str.contains("budget=500", regex=False)).any().any())
    # A single variant per group is not labelled (a run with one --set reads as before).
    alone = report.table1(plain.assign(method_variant="epochs=3"))
    assert list(alone["method"]) == ["badnets", "deeptracer"]


def test_table2_columns_and_values(results):
    t2 = report.table2(results)
    value_cols = [c[: -len("_mean")] for c in t2.columns if c.endswith("_mean")]
    assert value_cols == ["knockoff_soft_acc", "knockoff_soft_wsr", "knockoff_hard_acc", "knockoff_hard_wsr"]
    assert not any(c.startswith(("none", "dfme")) for c in t2.columns)  # "none" excluded, dfme only skipped
    bad = _row_of(t2, "badnets")
    assert bad["knockoff_soft_acc_mean"] == pytest.approx(81.0)
    assert bad["knockoff_soft_wsr_mean"] == pytest.approx(35.0)
    assert bad["knockoff_soft_wsr_std"] == pytest.approx(_std(40.0, 30.0))
    assert bad["knockoff_hard_wsr_mean"] == pytest.approx(12.0)
    assert _row_of(t2, "deeptracer")["knockoff_soft_wsr_mean"] == pytest.approx(99.0)
    assert (t2["n_seeds"] == 2).all()
    with_fid = report.table2(results, metrics=("acc", "wsr", "fidelity"))
    assert with_fid["knockoff_hard_fidelity_mean"].tolist() == pytest.approx([90.0, 90.0])


def test_pivot(results):
    wsr = report.pivot(results)
    assert [c for c in wsr.columns if c.endswith("_mean")] == ["knockoff/soft_mean", "knockoff/hard_mean"]
    assert _row_of(wsr, "badnets")["knockoff/soft_mean"] == pytest.approx(35.0)
    victim = report.pivot(results, metric="acc", stage="victim")
    assert _row_of(victim, "badnets")["acc_mean"] == pytest.approx(90.9)
    queries = report.pivot(results, metric="queries")
    assert _row_of(queries, "badnets")["knockoff/soft_mean"] == pytest.approx(1000.0)  # not scaled


def test_paper_tables_and_names():
    p1, p2 = report.paper_table1(), report.paper_table2()
    assert len(p1) == 30 and len(p2) == 180
    assert set(report.PAPER_METHODS.values()) <= set(p1["method"])
    assert report.paper_method_name("margin") == "Margin-based"
    assert report.paper_method_name("mea_defender") == "MEA-Defender"
    assert report.paper_method_name("Mea Defender") == "MEA-Defender"
    assert report.paper_method_name("ewe") == "EWE"
    assert report.paper_method_name("nonexistent") is None
    assert report.paper_dataset_name("cifar100") == "CIFAR100"
    assert report.paper_dataset_name("digits") is None


def test_compare_paper(results):
    c1, c2 = report.compare_paper(report.table1(results), report.table2(results))
    bad1 = _row_of(c1, "badnets")
    assert bad1["paper_benign_wsr"] == pytest.approx(10.47)
    assert bad1["diff_benign_wsr"] == pytest.approx(11.0 - 10.47)
    cols = list(c1.columns)
    assert cols.index("paper_benign_wsr") == cols.index("benign_wsr_std") + 1
    assert cols.index("diff_benign_wsr") == cols.index("benign_wsr_std") + 2
    bad2 = _row_of(c2, "badnets")
    assert bad2["paper_knockoff_soft_wsr"] == pytest.approx(38.91)
    assert bad2["diff_knockoff_soft_wsr"] == pytest.approx(35.0 - 38.91)
    assert _row_of(c2, "deeptracer")["paper_knockoff_hard_wsr"] == pytest.approx(100.0)
    # Rows the paper lacks get NaN.
    other = results.assign(dataset="digits")
    o1, _ = report.compare_paper(report.table1(other), report.table2(other))
    assert o1["paper_benign_wsr"].isna().all() and o1["diff_benign_wsr"].isna().all()

    # Rendered: the paper's figures as a second, italic "paper" row under ours (no extra columns);
    # CSV keeps the paper_* / diff_* columns.
    md = report.render(results, compare="paper")
    assert "*paper*" in md and "*38.91*" in md and "paper_knockoff_soft_wsr" not in md
    csv = report.render(results, fmt="csv", compare="paper")
    assert "paper_knockoff_soft_wsr" in csv and "diff_knockoff_soft_wsr" in csv


def _latex_rows(latex: str) -> List[List[str]]:
    body = latex.split("\\midrule", 1)[1].split("\\bottomrule", 1)[0]
    return [[c.strip() for c in line.rstrip(" \\").split(" & ")]
            for line in body.splitlines() if line.strip().endswith("\\\\")]


def _balanced(text: str) -> bool:
    depth = 0
    for ch in re.sub(r"\\[{}]", "", text):
        depth += ch == "{"
        depth -= ch == "}"
        if depth < 0:
            return False
    return depth == 0


def test_latex(results):
    t1 = report.table1(results)
    latex = report.to_latex(t1, caption="Table 1 (harmlessness_effectiveness, %)", label="tab:t1")
    for rule in ("\\toprule", "\\midrule", "\\bottomrule"):
        assert rule in latex
    assert _balanced(latex)
    assert "benign\\_acc" in latex and "harmlessness\\_effectiveness, \\%" in latex
    assert re.search(r"(?<!\\)_", latex) is None  # every underscore escaped
    assert "\\label{tab:t1}" in latex
    header = latex.split("\\toprule", 1)[1].split("\\\\", 1)[0]
    names = [h.strip() for h in header.split(" & ")]
    rows = {r[names.index("method")]: r for r in _latex_rows(latex)}
    wsr, benign_wsr = names.index("victim\\_wsr"), names.index("benign\\_wsr")
    # ± is the half-width of the 95 % t-interval over the 2 seeds: t(0.975, 1) · sd / √2
    half = lambda a, b: stats.t.ppf(0.975, 1) * np.std([a, b], ddof=1) / np.sqrt(2)  # noqa: E731
    assert f"{half(99, 100):.2f}" == "6.35"
    assert rows["deeptracer"][wsr] == "\\textbf{\\boldmath$100.00 \\pm 0.00$}"
    # 99.50 ± 6.35 overlaps 100.00 ± 0: not significantly worse, so both are bold (tied)
    assert rows["badnets"][wsr] == "\\textbf{\\boldmath$99.50 \\pm 6.35$}"
    assert rows["deeptracer"][benign_wsr].startswith("\\textbf")  # lower is better
    assert rows["badnets"][benign_wsr].startswith("\\textbf")  # 11 ± 12.71 overlaps 0 ± 0
    # a significant difference: only the best is bold
    t1_apart = t1.assign(victim_wsr_mean=[50.0, 100.0])
    rows = {r[names.index("method")]: r for r in _latex_rows(report.to_latex(t1_apart))}
    assert rows["deeptracer"][wsr].startswith("\\textbf") and not rows["badnets"][wsr].startswith("\\textbf")

    document = report.render(results, fmt="latex", standalone=True)
    assert document.startswith("\\documentclass{article}")
    assert "\\usepackage{booktabs}" in document
    assert document.index("\\begin{document}") < document.index("\\begin{tabular}")
    assert document.rstrip().endswith("\\end{document}")
    # Table 1, Table 2 (paper-shaped), the verdict counts, the per-method summary, the leaderboard
    assert document.count("\\begin{table}") == 5 and _balanced(document)
    assert "\\usepackage{xcolor}" in document and "\\multicolumn{2}{c}{Benign model}" in document
    assert re.search(r"(?<!\\)_", document) is None


def test_markdown_html_csv(results):
    md = report.render(results)
    for name in ("BadNets", "DeepTracer", "Knockoff Soft WSR", "Table 1", "Table 2", "91.50 ± 6.35", "Verdicts"):
        assert name in md
    assert "|" in md and "none_" not in md and "None" not in md
    html = report.render(results, fmt="html", standalone=True)
    assert html.startswith("<!DOCTYPE html>") and html.count("<table") == 5 and "deeptracer" in html
    csv = report.to_csv(report.table1(results))
    assert csv.splitlines()[0].startswith("dataset,model,method,benign_acc_mean,benign_acc_std")
    assert "91.5," in csv


def test_write_report(results, tmp_path):
    out = tmp_path / "report"
    paths = report.write_report(results, out, compare="paper")
    tables = sorted(p.name for p in paths if p.parent == out)
    assert tables == sorted(["report.md", "report.tex", "table1.csv", "table2.csv", "report.html", "verdicts.csv"])
    figures = [p for p in paths if p.parent != out]
    assert figures and all(p.parent == out / "figures" and p.suffix in (".png", ".pdf") for p in figures)
    assert any(p.name.startswith("heatmap_wsr_") for p in figures)
    assert "figures/heatmap_wsr_" in (out / "report.md").read_text()
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths)
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    t1 = pd.read_csv(out / "table1.csv")
    assert t1.loc[t1["method"] == "badnets", "paper_benign_wsr"].item() == pytest.approx(10.47)
    t2 = pd.read_csv(out / "table2.csv")
    assert t2.loc[t2["method"] == "badnets", "knockoff_soft_wsr_mean"].item() == pytest.approx(35.0)
    only_md = report.write_report(results, tmp_path / "md", formats=("md",))
    assert [p.name for p in only_md if p.parent == tmp_path / "md"] == ["report.md"]
    with pytest.raises(ValueError):
        report.write_report(results, tmp_path / "bad", formats=("pdf",))
    with pytest.raises(ValueError):
        report.render(results, compare="other")


@pytest.mark.parametrize("fmt", ["md", "latex", "html", "csv"])
def test_empty_and_all_failed_frames(results, fmt):
    failed = results[results["cell_id"] == "deeptracer-dfme-hard-0"]
    for frame in (pd.DataFrame(), pd.DataFrame(columns=results.columns), failed):
        assert report.NO_CELLS in report.render(frame, fmt=fmt)
        assert report.NO_CELLS in report.render(frame, fmt=fmt, standalone=True)
    assert report.table1(failed).empty and report.table2(failed).empty


def test_write_report_empty(tmp_path):
    paths = report.write_report(pd.DataFrame(), tmp_path)
    assert len(paths) == 6  # report.md/.tex/.html, table1.csv, table2.csv, verdicts.csv (header only)
    assert pd.read_csv(tmp_path / "verdicts.csv").empty
    assert report.NO_CELLS in (tmp_path / "report.md").read_text()
    assert (tmp_path / "report.tex").read_text().rstrip().endswith("\\end{document}")


def test_attack_only_results_have_table2_without_table1(results):
    only_attack = results[results["stage"] == "attack"]
    md = report.render(only_attack)
    assert "Table 2" in md and report.NO_CELLS in md


def _pdflatex(tex: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", tex.name],
                          cwd=tex.parent, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex not installed")
def test_latex_compiles(results, tmp_path):
    report.write_report(results, tmp_path, formats=("latex",), compare="paper")
    done = _pdflatex(tmp_path / "report.tex")
    assert done.returncode == 0, done.stdout[-3000:]
    assert (tmp_path / "report.pdf").is_file()


def test_latex_escapes_text_in_every_column():
    # A curves-style table: 'attack' and 'step_name' hold text that is not a grouping key.
    table = pd.DataFrame({"dataset": ["fmnist", "fmnist"], "method": ["mea_defender", "mea_defender"],
                          "attack": ["dfms_hl", "pre_randcrop"], "step_name": ["queries", "crop_ratio"],
                          "step": [100.0, 0.5], "wsr": [99.5, 3.0]})
    latex = report.to_latex(table)
    body = latex[latex.index("\\midrule"):]
    assert "dfms\\_hl" in body and "pre\\_randcrop" in body and "crop\\_ratio" in body
    assert re.search(r"(?<!\\)_", body) is None
    assert "$99.50$" in body or "99.5" in body


def test_table2_keeps_stealing_attacks_and_the_removal_table_the_rest(results, tmp_path):
    extra = []
    for attack, labels in (("ftal", ""), ("knockoff+ftal", "soft"), ("knockoff+jbda", "soft+hard"),
                           ("independent", ""), ("knockoff[budget=500]", "soft")):
        cell = f"deeptracer-{attack}-{labels}-0"
        for metric, value in (("acc", 0.8), ("wsr", 0.5)):
            extra.append(_row(cell, "deeptracer", attack, labels, 0, "attack", metric, value))
    frame = pd.concat([results, pd.DataFrame(extra)], ignore_index=True)
    assert report.attack_family("knockoff+jbda") == "stealing"
    assert report.attack_family("knockoff[budget=500]") == "stealing"
    assert report.attack_family("knockoff+ftal") == "other" and report.attack_family("ftal") == "other"
    assert report.attack_family("independent") == "null" and report.attack_family("no_such_attack") == "other"
    t2 = " ".join(report.table2(frame).columns)
    assert "knockoff_soft_wsr" in t2 and "knockoff+jbda_soft+hard_wsr" in t2 and "knockoff[budget=500]" in t2
    assert "ftal" not in t2 and "independent" not in t2
    removal = " ".join(report.table2(frame, family="other").columns)
    assert "ftal_wsr_mean" in removal and "knockoff+ftal_soft_wsr_mean" in removal
    assert "knockoff_soft" not in removal and "independent" not in removal
    written = [p.name for p in report.write_report(frame, tmp_path, formats=("md", "csv"))]
    assert "table_removal.csv" in written
    assert "Robustness against removal" in (tmp_path / "report.md").read_text()
    # the removal attacks get their own heat-map; the stealing one keeps only stealing attacks
    assert "heatmap_wsr_removal_fmnist_naivenet.png" in written and "heatmap_wsr_fmnist_naivenet.png" in written
    from wmbench.report.figures_grid import heatmap_frame

    assert "ftal" not in " ".join(heatmap_frame(frame)[("fmnist", "naivenet")].columns)


def test_long_tables_become_longtables_and_figures_are_flushed():
    long = pd.DataFrame({"dataset": ["fmnist"] * 60, "model": ["naivenet"] * 60, "method": [f"m{i}" for i in range(60)],
                         "acc_mean": np.linspace(10, 90, 60), "acc_std": np.nan, "n_seeds": 1})
    text = report.to_latex(long, "Curves", "tab:c")
    assert "\\begin{longtable}" in text and "\\endhead" in text and "\\begin{table}" not in text
    assert "\\begin{table}" in report.to_latex(long.head(5), "Short")
    assert "\\usepackage{longtable}" in report.latex_document(text)
    from wmbench.report.figures_grid import figures_latex

    tex = figures_latex([Path(f"/r/figures/f{i}.pdf") for i in range(13)], "/r")
    assert tex.count("\\clearpage") == 2 and tex.count("\\begin{figure}") == 13
