"""Output of the paper-shaped tables (:class:`wmbench.report.shaped.Shaped`) as LaTeX, HTML and
Markdown, with their notes and legend.

* **LaTeX**: a ``table`` float with a booktabs ``tabular``: one header row per column level,
  equal neighbouring headers merged into ``\\multicolumn`` with a ``\\cmidrule`` under them,
  ``\\midrule`` between datasets, values ``$m$`` with a ``\\tiny`` ``±h`` under them, the best in
  ``\\textbf{\\boldmath…}``, *evaded* WSRs with a ``\\dag``, *theft failed* values in
  ``\\textcolor{gray}{…}`` (``xcolor``), ``paper`` rows in small italics. The tabular is shrunk
  to the text width when wider (never enlarged), and a table with more than
  :data:`MAX_LATEX_COLUMNS` value columns is split at group boundaries into several floats,
  so every part fits one page wide and stays legible; the parts after the first keep the
  table's number and say "(continued)". Tables with more than
  :data:`~wmbench.report.formats.LATEX_LONG_ROWS` rows become a ``longtable``.
* **HTML**: real ``<th colspan>`` / ``rowspan`` headers; ``<b>``, ``<sup>†</sup>``,
  ``class="failed"`` (grey) and ``class="paper"`` rows (styled by
  :func:`wmbench.report.formats.html_document`).
* **Markdown** (no multi-row headers): the header path flattened (``Knockoff Soft Acc``),
  ``**bold**``, ``†`` and ``(x)`` for theft failed, explained in the legend under the table.
"""
from __future__ import annotations

import html as html_lib
import math
import re
from typing import List, Sequence, Tuple

from tabulate import tabulate

from wmbench.report.common import NO_CELLS, latex_escape
from wmbench.report.formats import LATEX_LONG_ROWS
from wmbench.report.shaped import Row, Shaped, Value
from wmbench.report.stats import T_LEVEL

__all__ = ["MAX_LATEX_COLUMNS", "shaped_markdown", "shaped_latex", "shaped_html", "shaped_notes"]

#: Value columns per LaTeX tabular; wider tables are split into several (one page wide each).
#: 16 keeps the paper's Table 2 (JBDA, Knockoff, DFME × soft, hard × Acc, WSR: 12 columns) with
#: distillation and DFMS-HL beside it in one float, about 8 pt once shrunk to the text width.
MAX_LATEX_COLUMNS = 16
_MISSING = "–"


def _finite(x: float) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def _f2(x: float) -> str:
    return f"{round(float(x), 2) + 0.0:.2f}"


def shaped_notes(table: Shaped, style: str) -> List[str]:
    """The notes under a table, for ``style`` ``"md"``, ``"latex"`` or ``"html"`` (plain text)."""
    level = round(100 * T_LEVEL)
    notes = [f"Mean ± half-width of the {level} % t-interval over seeds (t(0.975, n−1) · sd / √n); "
             "a single number: one seed, no interval.",
             "Bold: the best value of its column per dataset, alone when its interval does not overlap the "
             "runner-up's, else together with every value whose interval overlaps it (a conservative rule: "
             "values are called different only when their intervals are disjoint)."]
    if table.key == "table2":
        notes[-1] += " Only WSR columns are ranked."
    if table.key == "removal":
        notes[-1] = notes[-1].replace("of its column per dataset", "WSR of its row (methods are the columns)")
    if table.marks:
        bound = f"{100 * (1 - table.theft_tolerance):g} %"
        grey = {"md": "in (parentheses)", "latex": "in grey", "html": "in grey"}[style]
        notes.append(f"† evaded: the stolen model works (test accuracy ≥ {bound} of the victim's) but the "
                     f"watermark was not verified (WSR below the threshold). Values {grey}: theft failed — the "
                     f"stolen model's accuracy is below {bound} of the victim's, so its WSR is evidence of nothing "
                     "and is not ranked. Neither is ever bold. A cell is marked when more than half of its seeds "
                     "have that outcome "
                     "(the Verdicts section counts them).")
    if any(r.kind == "paper" for r in table.rows):
        notes.append("paper: the figure reported by the DeepTracer paper (Yang et al., AAAI 2026) for the method "
                     "above, same columns.")
    return notes + list(table.notes)


def _row_keys(rows: Sequence[Row]) -> List[List[str]]:
    """Row-header cells with repeats of the row before blanked (left to right)."""
    out, previous = [], None
    for row in rows:
        keys = list(row.keys)
        if row.kind != "paper" and previous is not None:
            for i in range(len(keys) - 1):
                if tuple(row.keys[: i + 1]) != tuple(previous[: i + 1]):
                    break
                keys[i] = ""
        if row.kind != "paper":
            previous = row.keys
        out.append(keys)
    return out


def _spans(columns: Sequence[Tuple[str, ...]], level: int) -> List[Tuple[str, int]]:
    """Runs of columns sharing the header path up to ``level``: (label, width)."""
    spans: List[Tuple[str, int]] = []
    previous = None
    for col in columns:
        path = col[: level + 1]
        if path == previous:
            spans[-1] = (spans[-1][0], spans[-1][1] + 1)
        else:
            spans.append((col[level], 1))
        previous = path
    return spans


# ----------------------------------------------------------------------------------------
# Markdown
# ----------------------------------------------------------------------------------------
def _marked(value: Value, kind: str, paper: str, bold: str, evaded: str, failed: str) -> str:
    """One value with its marks, the markup given as format strings around ``{}``: the paper's
    figure, the bold best, the evaded dagger (appended) and the failed-theft wrapper."""
    if not _finite(value.mean):
        return _MISSING
    if kind == "paper":
        return paper.format(_f2(value.mean))
    text = _f2(value.mean) + (f" ± {_f2(value.half)}" if _finite(value.half) else "")
    if value.bold:
        text = bold.format(text)
    if value.evaded:
        text += evaded
    return failed.format(text) if value.failed else text


def _md_value(value: Value, kind: str) -> str:
    return _marked(value, kind, paper="*{}*", bold="**{}**", evaded=" †", failed="({})")


def shaped_markdown(table: Shaped) -> str:
    """``table`` as a GitHub Markdown table (flattened headers) followed by its notes."""
    if not table.rows:
        return NO_CELLS
    headers = list(table.row_headers) + [" ".join(p for p in path if p) for path in table.columns]
    body = []
    for keys, row in zip(_row_keys(table.rows), table.rows):
        if row.kind == "paper":
            keys = keys[:-1] + ["*paper*"]
        elif row.kind == "reference":
            keys = keys[:-1] + [f"*{keys[-1]}*"]
        body.append(keys + [_md_value(v, row.kind) for v in row.values])
    text = tabulate(body, headers=headers, tablefmt="github", disable_numparse=True)
    return text + "\n\n" + "\n".join(f"*{note}*  " for note in shaped_notes(table, "md")).rstrip()


# ----------------------------------------------------------------------------------------
# LaTeX
# ----------------------------------------------------------------------------------------
def _latex_value(value: Value, kind: str) -> str:
    if not _finite(value.mean):
        return "--"
    if kind == "paper":
        return f"{{\\small\\textit{{{_f2(value.mean)}}}}}"
    text = f"\\textbf{{\\boldmath${_f2(value.mean)}$}}" if value.bold else f"${_f2(value.mean)}$"
    if value.evaded:
        text += "\\textsuperscript{\\dag}"
    if _finite(value.half):  # the mean on the row's baseline, a small "± h" under it: columns stay narrow
        text = f"\\begin{{tabular}}[t]{{@{{}}r@{{}}}}{text}\\\\[-2pt]{{\\tiny$\\pm${_f2(value.half)}}}\\end{{tabular}}"
    return f"\\textcolor{{gray}}{{{text}}}" if value.failed else text


def _chunks(columns: Sequence[Tuple[str, ...]]) -> List[List[int]]:
    """Column indices split at top-level group boundaries, at most MAX_LATEX_COLUMNS each
    (a single group wider than that stays whole)."""
    chunks: List[List[int]] = [[]]
    start = 0
    for _, width in _spans(columns, 0):
        group = list(range(start, start + width))
        start += width
        if chunks[-1] and len(chunks[-1]) + width > MAX_LATEX_COLUMNS:
            chunks.append([])
        chunks[-1] += group
    return chunks


def _latex_header(table: Shaped, columns: Sequence[Tuple[str, ...]]) -> List[str]:
    n_keys = len(table.row_headers)
    depth = len(columns[0])
    lines = []
    for level in range(depth - 1):
        cells, rules, col = [""] * n_keys, [], n_keys + 1
        for label, width in _spans(columns, level):
            cells.append(f"\\multicolumn{{{width}}}{{c}}{{{latex_escape(label)}}}")
            rules.append(f"\\cmidrule(lr){{{col}-{col + width - 1}}}")
            col += width
        lines += [" & ".join(cells) + r" \\", "".join(rules)]
    last = [latex_escape(h) for h in table.row_headers] + [latex_escape(c[-1]) for c in columns]
    lines.append(" & ".join(last) + r" \\")
    return lines


def _latex_part(table: Shaped, indices: List[int], part: int, parts: int) -> str:
    columns = [table.columns[i] for i in indices]
    kept, main_kept = [], False
    for row in table.rows:
        has = any(_finite(row.values[i].mean) for i in indices)
        if row.kind != "paper":
            main_kept = has
        if has and (row.kind != "paper" or main_kept):
            kept.append(row)
    keep = list(zip(_row_keys(kept), kept))
    # LaTeX numbers the tables itself: "Table 2: robustness ..." -> "Robustness ..."
    title = re.sub(r"^Table \w+: ", "", table.title)
    caption = title[:1].upper() + title[1:] + (" (continued)" if part else "")
    # a continuation keeps the table's number: LaTeX steps the counter at every caption
    same_number = ["\\addtocounter{table}{-1}"] if part else []
    align = "l" * len(table.row_headers) + "r" * len(columns)
    header = _latex_header(table, columns)
    body, previous = [], None
    for keys, row in keep:
        if row.kind != "paper" and previous is not None and row.keys[0] != previous:
            body.append("\\midrule")
        if row.kind != "paper":
            previous = row.keys[0]
        cells = [latex_escape(k) for k in keys]
        if row.kind == "paper":
            cells[-1] = "{\\small\\textit{paper}}"
        elif row.kind == "reference":
            cells[-1] = f"\\textit{{{cells[-1]}}}"
        body.append(" & ".join(cells + [_latex_value(row.values[i], row.kind) for i in indices]) + r" \\")
    notes = " ".join(latex_escape(n) for n in shaped_notes(table, "latex")) if part == parts - 1 else ""
    label = f"\\label{{{table.label}}}" if table.label and part == 0 else ""
    if len(keep) > LATEX_LONG_ROWS:
        lines = [*same_number, "{\\scriptsize\\setlength{\\tabcolsep}{3pt}", f"\\begin{{longtable}}{{{align}}}",
                 f"\\caption{{{latex_escape(caption)}}}{label} \\\\", "\\toprule", *header, "\\midrule",
                 "\\endfirsthead", "\\toprule", *header, "\\midrule", "\\endhead", "\\bottomrule", "\\endlastfoot",
                 *body, "\\end{longtable}}"]
        if notes:
            lines.append(f"{{\\footnotesize {notes}\\par}}")
        return "\n".join(lines) + "\n"
    lines = ["\\begin{table}[htbp]", "\\centering", *same_number, f"\\caption{{{latex_escape(caption)}}}"]
    lines += [label] if label else []
    lines += ["\\setlength{\\tabcolsep}{4pt}",
              "\\resizebox{\\ifdim\\width>\\linewidth\\linewidth\\else\\width\\fi}{!}{%",
              f"\\begin{{tabular}}{{{align}}}", "\\toprule", *header, "\\midrule", *body, "\\bottomrule",
              "\\end{tabular}%", "}"]
    if notes:
        lines += ["\\par\\smallskip", f"\\parbox{{\\linewidth}}{{\\footnotesize {notes}}}"]
    lines.append("\\end{table}")
    return "\n".join(lines) + "\n"


def shaped_latex(table: Shaped) -> str:
    """``table`` as one or more LaTeX floats (see the module docstring)."""
    if not table.rows:
        return f"\\begin{{center}}{latex_escape(table.title)}: {NO_CELLS}\\end{{center}}\n"
    chunks = _chunks(table.columns)
    return "\n".join(_latex_part(table, chunk, i, len(chunks)) for i, chunk in enumerate(chunks))


# ----------------------------------------------------------------------------------------
# HTML
# ----------------------------------------------------------------------------------------
def _html_value(value: Value, kind: str) -> str:
    return _marked(value, kind, paper="{}", bold="<b>{}</b>", evaded="<sup>†</sup>",
                   failed='<span class="failed">{}</span>')


def shaped_html(table: Shaped) -> str:
    """``table`` as an HTML ``<table>`` with ``colspan`` group headers, then its notes."""
    if not table.rows:
        return f"<p>{NO_CELLS}</p>"
    esc = html_lib.escape
    depth = len(table.columns[0])
    head = []
    for level in range(depth):
        cells = [f'<th rowspan="{depth}">{esc(h)}</th>' for h in table.row_headers] if level == 0 else []
        cells += [f'<th colspan="{width}">{esc(label)}</th>' if width > 1 else f"<th>{esc(label)}</th>"
                  for label, width in _spans(table.columns, level)]
        head.append("<tr>" + "".join(cells) + "</tr>")
    body = []
    for keys, row in zip(_row_keys(table.rows), table.rows):
        if row.kind == "paper":
            keys = keys[:-1] + ["paper"]
        cells = "".join(f"<td>{esc(k)}</td>" for k in keys)
        cells += "".join(f"<td>{_html_value(v, row.kind)}</td>" for v in row.values)
        css = {"paper": ' class="paper"', "reference": ' class="reference"'}.get(row.kind, "")
        body.append(f"<tr{css}>{cells}</tr>")
    notes = "".join(f'<p class="notes">{esc(n)}</p>' for n in shaped_notes(table, "html"))
    return ('<table class="wmbench shaped">\n<thead>\n' + "\n".join(head) + "\n</thead>\n<tbody>\n"
            + "\n".join(body) + "\n</tbody>\n</table>\n" + notes)
