"""The report: assembles the tables of a results DataFrame (see :func:`wmbench.results.load`) into
one document per format (:func:`render`) and writes the report files and figures
(:func:`write_report`).

The parts, each with one job, import one way (``common`` <- ``tables`` <- ``paper``;
``common`` <- ``formats``; ``common``, ``tables`` <- ``figures``, ``figures_grid``), and only
this module imports them all:

* :mod:`wmbench.report.common` — :func:`finished` (the rows every table and figure starts from),
  display orders, LaTeX escaping, atomic writes;
* :mod:`wmbench.report.tables` — statistics and table shaping (Table 1, Table 2, pivots, curves,
  false positives, key filtering), in percent;
* :mod:`wmbench.report.paper` — the paper's tables and :func:`compare_paper`;
* :mod:`wmbench.report.formats` — one table as Markdown, LaTeX, HTML or CSV, and the documents;
* :mod:`wmbench.report.figures` / :mod:`wmbench.report.figures_grid` — curve figures, WSR
  heat-maps and ``--sweep`` figures, and their sections in the report files.

The names below are re-exported here, so ``from wmbench import report; report.table1(df)`` works.
"""
from __future__ import annotations

import html as html_lib
import logging
import os
from pathlib import Path
from typing import List, Mapping, Optional, Sequence

import pandas as pd

from wmbench.errors import UserError
from wmbench.report.common import (
    ATTACK_ORDER, DATASET_ORDER, FRACTION_METRICS, KEYS, LABELS_ORDER, METHOD_ORDER, NO_CELLS, atomic_write,
    finished, latex_escape,
)
from wmbench.report.figures import write_figures
from wmbench.report.figures_grid import embed_figures, write_grid_figures
from wmbench.report.formats import (
    FORMATS, LATEX_LONG_ROWS, format_kind, html_document, latex_document, to_csv, to_html, to_latex, to_markdown,
)
from wmbench.report.paper import (
    PAPER_DATASETS, PAPER_METHODS, PAPER_TABLE1_FILE, PAPER_TABLE2_FILE, compare_paper, paper_dataset_name,
    paper_method_name, paper_table1, paper_table2,
)
from wmbench.report.tables import (
    CURVE_METRICS, TABLE1_COLUMNS, attack_family, curve_table, filter_table, fpr_table, of_family, pivot, table1,
    table2, value_columns,
)

log = logging.getLogger(__name__)

__all__ = [
    # common
    "NO_CELLS", "FRACTION_METRICS", "KEYS", "DATASET_ORDER", "METHOD_ORDER", "ATTACK_ORDER", "LABELS_ORDER",
    "finished", "latex_escape",
    # tables
    "TABLE1_COLUMNS", "CURVE_METRICS", "table1", "table2", "pivot", "curve_table", "fpr_table", "filter_table",
    "attack_family", "of_family",
    # paper
    "PAPER_DATASETS", "PAPER_METHODS", "PAPER_TABLE1_FILE", "PAPER_TABLE2_FILE", "paper_table1", "paper_table2",
    "paper_dataset_name", "paper_method_name", "compare_paper",
    # formats
    "FORMATS", "LATEX_LONG_ROWS", "to_markdown", "to_latex", "latex_document", "to_csv", "to_html",
    # the document
    "render", "write_report",
]


class _Section:
    """One titled table of the report."""

    def __init__(self, key: str, title: str, table: pd.DataFrame,
                 best: Optional[Mapping[str, Optional[str]]] = None):
        self.key, self.title, self.table, self.best = key, title, table, best


def _sections(df: pd.DataFrame, compare: Optional[str] = None) -> List[_Section]:
    """The report's tables; empty list when no cell finished."""
    if compare not in (None, "paper"):
        raise UserError(f"unknown compare={compare!r}; accepted: None, 'paper'")
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
                                 {b: "max" for b in value_columns(wsr)}))
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
                                 curves, {b: None for b in value_columns(curves)}))
    fpr = fpr_table(df)
    if not fpr.empty:
        sections.append(_Section("fpr", "False positives: independent clean models on the key set (%)", fpr,
                                 {"fpr": "min", "wsr_mean": "min", "wsr_max": "min"}))
    return sections


#: LaTeX labels of the sections that are cross-referenced.
_LATEX_LABELS = {"table1": "tab:wmbench-table1", "table2": "tab:wmbench-table2", "wsr_pivot": "tab:wmbench-wsr",
                 "removal": "tab:wmbench-removal"}


def _render_sections(sections: List[_Section], fmt: str, standalone: bool) -> str:
    kind = format_kind(fmt)
    if kind == "md":
        parts = [f"## {s.title}\n\n{to_markdown(s.table)}\n" for s in sections] or [f"{NO_CELLS}\n"]
        body = "\n".join(parts)
        if standalone:
            body = ("# wmbench report\n\nValues in %; mean ± std over seeds "
                    "(std only with more than one seed).\n\n" + body)
        return body
    if kind == "latex":
        parts = [to_latex(s.table, s.title, _LATEX_LABELS.get(s.key, ""), s.best) for s in sections]
        body = "\n".join(parts) if parts else f"{NO_CELLS}\n"
        return latex_document(body) if standalone else body
    if kind == "html":
        parts = [f"<h2>{html_lib.escape(s.title)}</h2>\n{to_html(s.table)}" for s in sections]
        body = "\n".join(parts) if parts else f"<p>{NO_CELLS}</p>"
        return html_document(body) if standalone else body + "\n"
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
    :func:`wmbench.report.figures.write_figures` (``figures/curve_*.png`` and ``.pdf``).
    """
    kinds = []
    for fmt in formats:
        kind = format_kind(fmt)
        if kind not in kinds:
            kinds.append(kind)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sections = _sections(df, compare)
    tables = {s.key: s.table for s in sections}
    written: List[Path] = []
    names = {"md": "report.md", "latex": "report.tex", "html": "report.html"}
    for kind in kinds:
        if kind == "csv":
            for key in ("table1", "table2"):
                table = tables.get(key, pd.DataFrame(columns=[*KEYS, "n_seeds"]))
                written.append(atomic_write(out / f"{key}.csv", to_csv(table)))
            if "removal" in tables:
                written.append(atomic_write(out / "table_removal.csv", to_csv(tables["removal"])))
        else:
            written.append(atomic_write(out / names[kind], _render_sections(sections, kind, standalone=True)))
    # Curve figures: one PNG and one PDF per attack-strength sweep, in OUT/figures/; the curves
    # table also goes to curves.csv.
    if "csv" in kinds and "curves" in tables:
        written.append(atomic_write(out / "curves.csv", to_csv(tables["curves"])))
    written += write_figures(df, out)
    # Grid figures: WSR heat-map over method × attack and --sweep figures; then every figure goes
    # into report.md (links), report.html (inline) and report.tex.
    written += write_grid_figures(df, out)
    embed_figures(out, written)
    for path in written:
        log.info("wrote %s", path)
    return written
