"""The report: assembles the tables of a results DataFrame (see :func:`wmbench.results.load`) into
one document per format (:func:`render`) and writes the report files and figures
(:func:`write_report`).

The parts, each with one job, import one way (``common`` <- ``stats`` <- ``tables`` <-
``paper`` <- ``calibration`` <- ``verdicts`` <- ``shaped`` <- ``formats_shaped``; ``formats``
after ``stats``; ``document`` above them all; ``figures``, ``figures_grid`` beside), and only
this module imports them all:

* :mod:`wmbench.report.common` — :func:`finished` (the rows every table and figure starts from),
  display orders, LaTeX escaping, atomic writes;
* :mod:`wmbench.report.stats` — t-intervals over seeds, the bold (significance) rule,
  Clopper–Pearson rates, empirical p-values, calibrated thresholds;
* :mod:`wmbench.report.tables` — table shaping (Table 1, Table 2 and the removal table as wide
  frames, pivots, curves, false positives per recipe, key filtering), in percent;
* :mod:`wmbench.report.paper` — the paper's tables and :func:`compare_paper`;
* :mod:`wmbench.report.calibration` — null models: false-positive rates, calibrated thresholds;
* :mod:`wmbench.report.verdicts` — theft success and each attacked cell's outcome (detected,
  evaded, theft failed), counts, per-method summary, leaderboard;
* :mod:`wmbench.report.shaped` / :mod:`wmbench.report.formats_shaped` — Table 1, Table 2 and the
  removal table in the paper's shape, and their LaTeX, HTML and Markdown;
* :mod:`wmbench.report.formats` — one DataFrame table as Markdown, LaTeX, HTML or CSV, and the
  documents;
* :mod:`wmbench.report.document` — the document's sections, titles and notes;
* :mod:`wmbench.report.figures` / :mod:`wmbench.report.figures_grid` — curve figures, WSR
  heat-maps and ``--sweep`` figures, and their sections in the report files.

The names below are re-exported here, so ``from wmbench import report; report.table1(df)`` works.
"""
from __future__ import annotations

import html as html_lib
import logging
import os
from pathlib import Path
from typing import List, Optional, Sequence

import pandas as pd

from wmbench.report.calibration import MIN_NULL, calibrated_threshold, calibration, null_models
from wmbench.report.common import (
    ATTACK_ORDER, DATASET_ORDER, FRACTION_METRICS, KEYS, LABELS_ORDER, METHOD_ORDER, NO_CELLS, atomic_write,
    finished, latex_escape,
)
from wmbench.report.document import Section, sections
from wmbench.report.figures import write_figures
from wmbench.report.figures_grid import embed_figures, write_grid_figures
from wmbench.report.figures_theft import write_theft_figures
from wmbench.report.formats import (
    FORMATS, LATEX_LONG_ROWS, VALUES_NOTE, format_kind, html_document, latex_document, to_csv, to_html, to_latex,
    to_markdown,
)
from wmbench.report.formats_shaped import shaped_html, shaped_latex, shaped_markdown
from wmbench.report.paper import (
    PAPER_DATASETS, PAPER_METHODS, PAPER_TABLE1_FILE, PAPER_TABLE2_FILE, compare_paper, paper_dataset_name,
    paper_method_name, paper_table1, paper_table2, paper_value,
)
from wmbench.report.shaped import Shaped, removal_shaped, table1_shaped, table2_shaped
from wmbench.report.stats import best_marks, empirical_p_value, min_null_models, normal_threshold, t_half_width
from wmbench.report.tables import (
    CURVE_METRICS, TABLE1_COLUMNS, attack_family, curve_table, filter_table, fpr_table, of_family, pivot, table1,
    table2,
)
from wmbench.report.verdicts import (
    DEFAULT_THEFT_TOLERANCE, OUTCOMES, check_theft_tolerance, leaderboard, method_summary, outcome_counts, verdicts,
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
    "paper_dataset_name", "paper_method_name", "compare_paper", "paper_value",
    # statistics
    "t_half_width", "best_marks", "empirical_p_value", "min_null_models", "normal_threshold",
    # verdicts and calibration
    "DEFAULT_THEFT_TOLERANCE", "OUTCOMES", "check_theft_tolerance", "verdicts", "outcome_counts", "method_summary",
    "leaderboard", "MIN_NULL", "null_models", "calibration", "calibrated_threshold",
    # paper-shaped tables
    "Shaped", "table1_shaped", "table2_shaped", "removal_shaped", "shaped_markdown", "shaped_latex", "shaped_html",
    # formats
    "FORMATS", "LATEX_LONG_ROWS", "to_markdown", "to_latex", "latex_document", "to_csv", "to_html",
    # the document
    "Section", "sections", "render", "write_report",
]


#: LaTeX labels of the DataFrame sections that are cross-referenced (shaped tables carry their own).
_LATEX_LABELS = {"verdicts": "tab:wmbench-verdicts", "leaderboard": "tab:wmbench-leaderboard",
                 "calibration": "tab:wmbench-calibration"}


def _shown(s: Section) -> pd.DataFrame:
    return s.display if s.display is not None else s.table


def _render_sections(sections: List[Section], fmt: str, standalone: bool) -> str:
    kind = format_kind(fmt)
    if kind == "md":
        parts = []
        for s in sections:
            if s.shaped is not None:
                body = shaped_markdown(s.shaped)
            else:
                body = (to_markdown(_shown(s)) if not _shown(s).empty else "")
                body = "\n\n".join(p for p in [body, "\n".join(f"*{n}*  " for n in s.notes).rstrip()] if p)
            parts.append(f"## {s.title}\n\n{body}\n")
        body = "\n".join(parts) or f"{NO_CELLS}\n"
        return f"# wmbench report\n\n{VALUES_NOTE}\n\n" + body if standalone else body
    if kind == "latex":
        parts, floats = [], False
        for s in sections:
            if s.shaped is not None:
                text = shaped_latex(s.shaped)
            elif _shown(s).empty or s.latex_note:
                note = s.latex_note or " ".join(s.notes)
                text = f"\\paragraph{{{latex_escape(s.title)}}} {latex_escape(note)}\n"
            else:
                text = to_latex(_shown(s), s.title, _LATEX_LABELS.get(s.key, ""), s.best, " ".join(s.notes))
            if "\\begin{longtable}" in text and floats:  # floats still waiting would land after it
                text, floats = "\\clearpage\n" + text, False
            floats = floats or "\\begin{table}" in text
            parts.append(text)
        body = "\n".join(parts) if parts else f"{NO_CELLS}\n"
        return latex_document(body) if standalone else body
    if kind == "html":
        parts = []
        for s in sections:
            if s.shaped is not None:
                body = shaped_html(s.shaped)
            else:
                body = (to_html(_shown(s)) if not _shown(s).empty else "")
                body += "".join(f'<p class="notes">{html_lib.escape(n)}</p>' for n in s.notes)
            parts.append(f"<h2>{html_lib.escape(s.title)}</h2>\n{body}")
        body = "\n".join(parts) if parts else f"<p>{NO_CELLS}</p>"
        return html_document(body) if standalone else body + "\n"
    parts = [f"# {s.title}\n{to_csv(s.table)}" for s in sections]
    return "\n".join(parts) if parts else f"# {NO_CELLS}\n"


def render(df: pd.DataFrame, fmt: str = "md", compare: Optional[str] = None, standalone: bool = False,
           theft_tolerance: float = DEFAULT_THEFT_TOLERANCE) -> str:
    """The report's tables (:func:`wmbench.report.document.sections`) in one format.

    ``fmt``: ``"md"`` (also ``"markdown"``/``"terminal"``), ``"latex"``, ``"html"`` or
    ``"csv"``. ``compare="paper"`` adds the paper's figures: a ``paper`` row under each method in
    Table 1 and Table 2 (and ``paper_*``/``diff_*`` columns in CSV). ``theft_tolerance``: the
    relative accuracy loss a stolen model may have and still count as a successful theft
    (:mod:`wmbench.report.verdicts`; default 0.1; outside [0, 1) raises :class:`UserError`).
    ``standalone=True`` gives a complete document for latex/html (and a title for md).
    Renders :data:`NO_CELLS` when nothing finished.
    """
    return _render_sections(sections(df, compare, theft_tolerance), fmt, standalone)


def write_report(
    df: pd.DataFrame,
    out_dir: os.PathLike | str,
    formats: Sequence[str] = ("md", "latex", "csv", "html"),
    compare: Optional[str] = None,
    theft_tolerance: float = DEFAULT_THEFT_TOLERANCE,
) -> List[Path]:
    """Write the report files into ``out_dir`` (created if missing) and return their paths.

    ``md`` -> ``report.md``; ``latex`` -> ``report.tex`` (standalone document); ``csv`` ->
    ``table1.csv`` and ``table2.csv`` (percent, full precision; header only when empty), and
    ``table_removal.csv`` when removal / evasion attacks ran, ``verdicts.csv`` (one row per
    attacked cell, :func:`wmbench.report.verdicts.verdicts`; header only when none) and
    ``calibration.csv`` when null models ran (:func:`wmbench.report.calibration.calibration`);
    ``html`` -> ``report.html``. Bad arguments raise :class:`UserError` before anything is written.
    Each file is written atomically. With curve rows (attack-strength
    sweeps), ``csv`` also writes ``curves.csv`` and every call writes the figures of
    :func:`wmbench.report.figures.write_figures` (``figures/curve_*.png`` and ``.pdf``).
    """
    kinds = []
    for fmt in formats:
        kind = format_kind(fmt)
        if kind not in kinds:
            kinds.append(kind)
    parts = sections(df, compare, theft_tolerance)  # validates the arguments first
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tables = {s.key: s.table for s in parts}
    written: List[Path] = []
    names = {"md": "report.md", "latex": "report.tex", "html": "report.html"}
    for kind in kinds:
        if kind == "csv":
            for key in ("table1", "table2"):
                table = tables.get(key, pd.DataFrame(columns=[*KEYS, "n_seeds"]))
                written.append(atomic_write(out / f"{key}.csv", to_csv(table)))
            if "removal" in tables:
                written.append(atomic_write(out / "table_removal.csv", to_csv(tables["removal"])))
            written.append(atomic_write(out / "verdicts.csv", to_csv(verdicts(df, theft_tolerance))))
            if "calibration" in tables:
                written.append(atomic_write(out / "calibration.csv", to_csv(tables["calibration"])))
        else:
            written.append(atomic_write(out / names[kind], _render_sections(parts, kind, standalone=True)))
    # Curve figures: one PNG and one PDF per attack-strength sweep, in OUT/figures/; the curves
    # table also goes to curves.csv.
    if "csv" in kinds and "curves" in tables:
        written.append(atomic_write(out / "curves.csv", to_csv(tables["curves"])))
    written += write_figures(df, out)
    # Grid figures: WSR heat-map over method × attack and --sweep figures; then every figure goes
    # into report.md (links), report.html (inline) and report.tex.
    written += write_grid_figures(df, out)
    # The theft map: every stolen model's accuracy against its WSR, with the theft lines.
    written += write_theft_figures(df, out, theft_tolerance)
    embed_figures(out, written)
    for path in written:
        log.info("wrote %s", path)
    return written
