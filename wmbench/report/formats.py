"""Output formats: one table (a DataFrame of :mod:`wmbench.report.tables`) as Markdown, LaTeX,
HTML or CSV text, and the standalone LaTeX and HTML document wrappers.

* Rendered tables (Markdown/terminal, LaTeX, HTML) show the values with 2 decimals as
  ``mean ± h``, ``h`` the half-width of the 95 % t-interval over the row's ``n_seeds`` seeds
  (just ``mean`` when there is a single seed); ``paper_*`` columns as numbers, ``diff_*``
  columns signed. In LaTeX the best value per column and dataset is bold under the rule of
  :func:`wmbench.report.stats.best_marks`. The paper-shaped tables are
  :mod:`wmbench.report.formats_shaped`'s.
* CSV keeps full precision with separate ``<col>_mean`` / ``<col>_std`` columns, so it can be
  re-read without parsing strings.
"""
from __future__ import annotations

import html as html_lib
import math
import re
from typing import Callable, Dict, List, Mapping, Optional

import numpy as np
import pandas as pd
from scipy import stats
from tabulate import tabulate

from wmbench.errors import UserError
from wmbench.report.common import KEYS, NO_CELLS, latex_escape
from wmbench.report.stats import best_marks

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

#: The sentence under every document's title.
VALUES_NOTE = ("Values in %; mean ± half-width of the 95 % t-interval over seeds "
               "(a single number: one seed, no interval).")


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


def _best_mask(table: pd.DataFrame, base: str, direction: Optional[str], halves: pd.Series) -> pd.Series:
    """Bold cells of column ``<base>_mean``: :func:`wmbench.report.stats.best_marks` within each
    dataset (needs ≥ 2 rows)."""
    false = pd.Series(False, index=table.index)
    if direction not in ("max", "min"):
        return false
    values = pd.to_numeric(table[f"{base}_mean"], errors="coerce")
    groups = table["dataset"] if "dataset" in table.columns else pd.Series("", index=table.index)
    for _, index in values.groupby(groups, sort=False).groups.items():
        marks = best_marks(list(values[index]), list(halves[index]), direction)
        false[index] = marks
    return false


def _half_widths(table: pd.DataFrame, base: str) -> pd.Series:
    """The ± shown for ``<base>``: the 95 % t half-width from ``<base>_std`` and ``n_seeds``
    (NaN for one seed); ``<base>_std`` itself when the table has no ``n_seeds``."""
    std = table[f"{base}_std"] if f"{base}_std" in table.columns else pd.Series(np.nan, index=table.index)
    std = pd.to_numeric(std, errors="coerce")
    if "n_seeds" not in table.columns:
        return std
    n = pd.to_numeric(table["n_seeds"], errors="coerce")
    t = n.map(lambda k: float(stats.t.ppf(0.975, k - 1)) if k == k and k >= 2 else np.nan)
    return t * std / np.sqrt(n)


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
            halves = _half_widths(table, base)
            bold = _best_mask(table, base, direction, halves)
            out[base] = [stat(m, s, b) for m, s, b in zip(table[name], halves, bold)]
        elif name.startswith("paper_"):
            out[name] = [number(x) for x in table[name]]
        elif name.startswith("diff_"):
            out[name] = [number(x, signed=True) for x in table[name]]
        elif name == "n_seeds":
            out[name] = [str(int(x)) if _finite(x) else _MISSING for x in table[name]]
        elif name != "step" and pd.api.types.is_float_dtype(table[name]):  # e.g. wsr_max: 2 decimals
            out[name] = [number(x) for x in table[name]]
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
    notes: str = "",
) -> str:
    """A table as a LaTeX ``table`` float with a booktabs ``tabular``.

    ``mean ± std`` cells are ``$m \\pm s$``; the best value per column and dataset is in
    ``\\textbf{\\boldmath$...$}`` (``best`` maps a column base name to ``"max"``/``"min"``/None
    and overrides the default rule of :func:`_best_direction`). The caption and all cell text
    are escaped; the label is used verbatim. The tabular sits in a ``\\resizebox`` that shrinks
    it to ``\\linewidth`` when wider (never enlarges), so the preamble needs ``booktabs`` and
    ``graphicx``. Tables longer than :data:`LATEX_LONG_ROWS` rows (e.g. the curves table) are a
    ``longtable`` in ``\\scriptsize`` instead, which breaks across pages (needs ``longtable``).
    ``notes`` (plain text, escaped) go under the table in ``\\footnotesize``. In a longtable the
    dataset is a row of its own above its rows. In a table wider than about 120 characters, text
    columns longer than 20 characters wrap (needs ``array``), so that a longtable fits the page
    width it cannot be shrunk to and a float need not shrink as much.
    """
    notes_tex = f"{{\\footnotesize {latex_escape(notes)}\\par}}" if notes else ""
    if table.empty:
        return f"\\begin{{center}}{latex_escape(caption)}: {NO_CELLS}\\end{{center}}\n" if caption else NO_CELLS + "\n"
    shown = _display(table, _latex_stat, _latex_number, best)
    long = len(shown) > LATEX_LONG_ROWS
    blocks = shown.pop("dataset") if long and "dataset" in shown.columns and shown.shape[1] > 1 else None
    text_cols = [c for c in shown.columns if c in KEYS or _is_text(shown[c])]
    # Long text (attack labels such as "distill+detect_lof[detect_lof.features=softmax]") wraps in a
    # fixed-width column at its punctuation, so long tables (which cannot be shrunk) fit the page.
    widths = [max(len(str(c)), int(shown[c].astype(str).str.len().max())) + 2 for c in shown.columns]
    wrap = {c for c in text_cols if shown[c].astype(str).str.len().max() > _WRAP_CHARS} \
        if sum(widths) > _LINE_CHARS else set()
    align = "".join(f">{{\\raggedright\\arraybackslash}}p{{{_WRAP_CHARS // 2}em}}" if c in wrap
                    else "l" if c in text_cols else "r" for c in shown.columns)
    header = " & ".join(latex_escape(c) for c in shown.columns) + r" \\"
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
    for position, (index, row) in enumerate(shown.iterrows()):
        dataset = row.get("dataset") if blocks is None else blocks[index]
        if position and dataset != previous:
            lines.append("\\midrule")
        if blocks is not None and dataset != previous:  # a long table: the dataset as a row of its own
            lines.append(f"\\multicolumn{{{shown.shape[1]}}}{{l}}{{\\textit{{{latex_escape(dataset)}}}}} \\\\")
        cells = [_breakable(v) if c in wrap else latex_escape(v) if c in text_cols else _latex_value(v)
                 for c, v in row.items()]
        if "dataset" in shown.columns and dataset == previous:
            cells[list(shown.columns).index("dataset")] = ""
        lines.append(" & ".join(cells) + r" \\")
        previous = dataset
    if long:
        lines += ["\\end{longtable}}"] + ([notes_tex] if notes else [])
    else:
        lines += ["\\bottomrule", "\\end{tabular}%", "}"]
        lines += ["\\par\\smallskip", f"\\parbox{{\\linewidth}}{{{notes_tex}}}"] if notes else []
        lines += ["\\end{table}"]
    return "\n".join(lines) + "\n"


#: In a LaTeX table wider than about _LINE_CHARS characters, text columns with longer entries
#: than _WRAP_CHARS wrap (a ``p`` column of half as many em).
_WRAP_CHARS = 20
_LINE_CHARS = 120


def _breakable(text: object) -> str:
    """Escaped text that may break after ``+ [ , = /`` (for wrapping columns)."""
    return re.sub(r"([+\[,=/])", r"\1\\allowbreak{}", latex_escape(text).replace("\\_", "\\_\\allowbreak{}"))


def _is_text(column: pd.Series) -> bool:
    """Whether a shown column holds text (left-aligned) rather than numbers (right-aligned)."""
    def number(text: str) -> bool:
        try:
            float(text.strip("$"))
            return True
        except ValueError:
            return text in ("--", "", _MISSING) or text.startswith(("$", "\\textbf"))
    return not all(number(str(v)) for v in column)


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
        "\\usepackage{xcolor}",
        "\\usepackage{array}",
        "\\usepackage[margin=2.5cm]{geometry}",
        "\\begin{document}",
        f"\\section*{{{latex_escape(title)}}}",
        latex_escape(VALUES_NOTE),
        "",
        body.rstrip("\n"),
        "\\end{document}",
        "",
    ])


def html_document(body: str, title: str = "wmbench report") -> str:
    """Wrap HTML fragments in a standalone page with a small style sheet."""
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:2em}"
             "th,td{padding:2px 8px;border-bottom:1px solid #ccc;text-align:right}"
             "th{border-bottom:2px solid #333}th[colspan]{text-align:center;border-bottom:1px solid #333}"
             ".failed{color:#999}tr.paper td{font-style:italic;font-size:85%;color:#555}"
             "tr.reference td{font-style:italic}p.notes{font-size:85%;color:#333;max-width:60em}")
    return (f"<!DOCTYPE html>\n<html>\n<head>\n<meta charset=\"utf-8\">\n<title>{html_lib.escape(title)}"
            f"</title>\n<style>{style}</style>\n</head>\n<body>\n<h1>{html_lib.escape(title)}</h1>\n"
            f"<p>{html_lib.escape(VALUES_NOTE)}</p>\n"
            f"{body}\n</body>\n</html>\n")
