"""Output formats: one table (a DataFrame of :mod:`wmbench.report.tables`) as Markdown, LaTeX,
HTML or CSV text, and the standalone LaTeX and HTML document wrappers.

* Rendered tables (Markdown/terminal, LaTeX, HTML) show the values with 2 decimals as
  ``mean ± std`` (just ``mean`` when there is a single seed); ``paper_*`` columns as numbers,
  ``diff_*`` columns signed. In LaTeX the best value per column and dataset is bold.
* CSV keeps full precision with separate ``<col>_mean`` / ``<col>_std`` columns, so it can be
  re-read without parsing strings.
"""
from __future__ import annotations

import html as html_lib
import math
from typing import Callable, Dict, List, Mapping, Optional

import numpy as np
import pandas as pd
from tabulate import tabulate

from wmbench.errors import UserError
from wmbench.report.common import KEYS, NO_CELLS, latex_escape

#: Accepted format names -> the format they mean.
FORMATS: Dict[str, str] = {
    "md": "md", "markdown": "md", "terminal": "md", "github": "md",
    "latex": "latex", "tex": "latex",
    "csv": "csv",
    "html": "html",
}

#: Tables with more rows than this are rendered as a ``longtable`` (breaks across pages).
LATEX_LONG_ROWS = 40

_MISSING = "–"


def format_kind(fmt: str) -> str:
    """The format ``fmt`` names (a value of :data:`FORMATS`); UserError for an unknown name."""
    kind = FORMATS.get(fmt)
    if kind is None:
        raise UserError(f"unknown report format {fmt!r}; accepted: {', '.join(FORMATS)}")
    return kind


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
# One table
# ----------------------------------------------------------------------------------------
def to_markdown(table: pd.DataFrame, tablefmt: str = "github") -> str:
    """A table as Markdown (tabulate's ``github`` format, also used for terminal output)."""
    if table.empty:
        return NO_CELLS
    shown = _display(table, _plain_stat, _fmt_number)
    return tabulate(shown, headers="keys", tablefmt=tablefmt, showindex=False, disable_numparse=True)


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


def to_csv(table: pd.DataFrame) -> str:
    """A table as CSV: full precision, percent, separate ``_mean``/``_std`` columns."""
    return table.to_csv(index=False)


def to_html(table: pd.DataFrame) -> str:
    """A table as an HTML ``<table>`` (``DataFrame.to_html``; cells as in Markdown)."""
    if table.empty:
        return f"<p>{NO_CELLS}</p>"
    shown = _display(table, _plain_stat, _fmt_number)
    return shown.to_html(index=False, escape=True, border=0, classes="wmbench")


# ----------------------------------------------------------------------------------------
# Documents
# ----------------------------------------------------------------------------------------
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


def html_document(body: str, title: str = "wmbench report") -> str:
    """Wrap HTML fragments in a standalone page with a small style sheet."""
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:2em}"
             "th,td{padding:2px 8px;border-bottom:1px solid #ccc;text-align:right}"
             "th{border-bottom:2px solid #333}")
    return (f"<!DOCTYPE html>\n<html>\n<head>\n<meta charset=\"utf-8\">\n<title>{html_lib.escape(title)}"
            f"</title>\n<style>{style}</style>\n</head>\n<body>\n<h1>{html_lib.escape(title)}</h1>\n"
            "<p>Values in %; mean ± std over seeds (std only with more than one seed).</p>\n"
            f"{body}\n</body>\n</html>\n")
