"""Grid figures and the figure sections of the report files.

Pure functions of the long results frame (:func:`wmbench.results.load`) plus writers that save
PNG and PDF with matplotlib's Agg canvas (no display, no global backend change):

* :func:`wsr_heatmap` — stolen-model WSR (percent, mean over seeds) over method × attack
  (``attack/labels``), one heat-map per (dataset, model); cells at or above the verification
  threshold are the ones where ownership is still claimed. File
  ``figures/heatmap_wsr_<dataset>_<model>.{png,pdf}``.
* :func:`sweep_figure` — cell-level ``--sweep`` values (e.g. ``attacks.knockoff.budget``,
  ``attacks.distill.temperature``, ``methods.deeptracer.lambda3``): accuracy and WSR against the
  swept value, one line per method (× attack/labels, × the other swept settings), mean over seeds
  with a ±1 sd band, and the threshold (20 % unless the run set another) as a dashed line. The
  attacked model is plotted for attack cells, the victim for ``none``. File
  ``figures/sweep_<dataset>_<model>_<attack>[_<labels>]_<key>.{png,pdf}``.

:func:`write_grid_figures` writes them; :func:`embed_figures` adds a *Figures* section to the
report files of :func:`wmbench.report.write_report`: ``report.html`` gets every PNG inline
(base64, so the one file shows everything), ``report.md`` links the PNGs (``figures/...``) and
``report.tex`` includes the PDFs with ``\\includegraphics`` (it compiles from the run folder).
"""
from __future__ import annotations

import base64
import html as html_lib
import logging
import math
import re
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import pandas as pd

from wmbench.report.common import DEFAULT_THRESHOLD as COMMON_THRESHOLD
from wmbench.report.common import (
    ATTACK_ORDER, LABELS_ORDER, METHOD_ORDER, atomic_write, finished, latex_escape, slug, threshold_percent,
)
from wmbench.report.tables import of_family

log = logging.getLogger(__name__)

__all__ = [
    "heatmap_frame", "wsr_heatmap", "parse_sweep", "sweep_frame", "sweep_figure", "write_grid_figures",
    "figures_markdown", "figures_html", "figures_latex", "embed_figures", "DEFAULT_THRESHOLD",
]

#: Threshold drawn when the results carry none (the paper's 20 %).
DEFAULT_THRESHOLD = 100 * COMMON_THRESHOLD  # percent, as the figures draw it
_PERCENT = frozenset({"acc", "wsr", "fidelity"})


def _ok_rows(df: Optional[pd.DataFrame]) -> pd.DataFrame:
    if df is None or df.empty or not {"stage", "metric", "value", "status"} <= set(df.columns):
        return pd.DataFrame(columns=["dataset", "model", "method", "attack", "labels", "seed", "sweep", "stage",
                                     "metric", "value"])
    rows = df[(df["status"] == "ok") & (df["stage"] != "curve")]
    rows = rows.assign(value=pd.to_numeric(rows["value"], errors="coerce"))
    rows = rows[rows["value"].notna()]
    fills = {c: rows[c].fillna("").astype(str) for c in ("model", "labels", "sweep") if c in rows.columns}
    return rows.assign(**fills)


# --------------------------------------------------------------------------------------------
# Heat-map of stolen WSR over method × attack
# --------------------------------------------------------------------------------------------

def heatmap_frame(df: Optional[pd.DataFrame], family: Optional[str] = "stealing") -> Dict[Tuple[str, str], pd.DataFrame]:
    """``{(dataset, model): method × attack table}`` of the attacked models' WSR in percent
    (mean over seeds; swept cells labelled as in the report tables; NaN where not run).
    ``family``: the attacks of one :func:`wmbench.report.tables.attack_family` (``"stealing"``,
    the default, or ``"other"`` for removal / evasion attacks), or None for all."""
    rows = finished(df) if df is not None else pd.DataFrame()
    if rows.empty:
        return {}
    rows = of_family(rows[(rows["stage"] == "attack") & (rows["attack"] != "none")], family)
    if rows.empty:
        return {}
    rows = rows.assign(column=[f"{a}/{lab}" if lab else a for a, lab in zip(rows["attack"], rows["labels"])])
    out: Dict[Tuple[str, str], pd.DataFrame] = {}
    for (dataset, model), attacked in rows.groupby(["dataset", "model"], sort=True):
        part = attacked[attacked["metric"] == "wsr"]
        if part.empty:
            table = pd.DataFrame(dtype=float)
        else:
            per_seed = part.groupby(["method", "column", "seed"])["value"].mean()
            table = per_seed.groupby(["method", "column"]).mean().unstack("column") * 100.0
        # Attacked cells without a WSR (e.g. key filtering left no key) stay visible, as blanks.
        table = table.reindex(index=sorted(set(attacked["method"])), columns=sorted(set(attacked["column"])))

        def attack_key(col: str) -> Tuple[Any, ...]:
            attack, _, labels = col.rpartition("/") if "/" in col else (col, "", "")
            base = attack.split("[")[0]
            return (ATTACK_ORDER.index(base) if base in ATTACK_ORDER else len(ATTACK_ORDER), base, _natural(attack),
                    LABELS_ORDER.index(labels) if labels in LABELS_ORDER else len(LABELS_ORDER), labels)

        def method_key(name: str) -> Tuple[Any, ...]:
            base = name.split("[")[0]
            return (METHOD_ORDER.index(base) if base in METHOD_ORDER else len(METHOD_ORDER), base, _natural(name))

        table = table.reindex(index=sorted(table.index, key=method_key), columns=sorted(table.columns, key=attack_key))
        out[(str(dataset), str(model))] = table
    return out


def _natural(text: str) -> Tuple[Tuple[int, Any], ...]:
    """Sort key that orders embedded numbers by value ("budget=50" before "budget=100")."""
    parts = re.split(r"(-?\d+(?:\.\d+)?(?:e-?\d+)?)", text)
    return tuple((0, float(p)) if i % 2 else (1, p) for i, p in enumerate(parts) if p != "")


def wsr_heatmap(table: pd.DataFrame, title: str = "", threshold: float = DEFAULT_THRESHOLD,
                xlabel: str = "attack / label access", ylabel: str = "watermark method",
                value_label: str = "stolen-model WSR (%)"):
    """A matplotlib Figure: the method × attack WSR table as an annotated heat-map (0–100 %)
    (pass the transpose, with the labels swapped, for attack × method)."""
    import seaborn as sns
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n_rows, n_cols = table.shape
    label_chars = max((len(str(i)) for i in table.index), default=0)  # room for the row labels
    fig = Figure(figsize=(max(4.5, 1.3 * n_cols + 3.0 + 0.08 * label_chars), max(2.6, 0.55 * n_rows + 1.6)),
                 layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    sns.heatmap(table.astype(float), ax=ax, vmin=0, vmax=100, cmap="rocket_r", annot=True, fmt=".1f",
                linewidths=0.5, linecolor="white", cbar_kws={"label": value_label},
                mask=table.isna())
    # Mark the cells where the verdict is still "stolen" (WSR at or above the threshold).
    for i, method in enumerate(table.index):
        for j, column in enumerate(table.columns):
            value = table.loc[method, column]
            if pd.notna(value) and value >= threshold:
                ax.add_patch(_rectangle(j, i))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.tick_params(axis="x", labelrotation=30)
    ax.tick_params(axis="y", labelrotation=0)
    ax.set_title(title + ("\n" if title else "") + f"boxed: WSR ≥ threshold {threshold:g}% (ownership claimed)",
                 fontsize="medium")
    return fig


def _rectangle(x: int, y: int):
    from matplotlib.patches import Rectangle

    return Rectangle((x + 0.04, y + 0.04), 0.92, 0.92, fill=False, edgecolor="black", linewidth=1.6)


# --------------------------------------------------------------------------------------------
# Cell-level sweeps
# --------------------------------------------------------------------------------------------

def parse_sweep(label: str) -> Dict[str, Any]:
    """``"attacks.knockoff.budget=1000,train.epochs=3"`` -> ``{"attacks.knockoff.budget": 1000.0, ...}``
    (numbers as floats, other values as strings; a comma not followed by ``key=`` belongs to the
    value)."""
    out: Dict[str, Any] = {}
    key = None
    for part in str(label or "").split(","):
        name, sep, value = part.partition("=")
        if sep and "." in name and " " not in name:
            key = name.strip()
            out[key] = value
        elif key is not None:
            out[key] += "," + part
    for k, v in out.items():
        try:
            number = float(v)
            out[k] = number if math.isfinite(number) else v
        except ValueError:
            out[k] = v
    return out


def _short_key(key: str) -> str:
    parts = key.split(".")
    return parts[-1] if parts[0] in ("methods", "attacks", "datasets") else key


def sweep_frame(df: Optional[pd.DataFrame]) -> pd.DataFrame:
    """Swept cells in long form: ``dataset, model, method, attack, labels, seed, key, x, others,
    metric, value`` (percent) for accuracy and WSR of the attacked model (the victim for ``none``),
    one row per swept key of each cell (``others`` = the cell's other swept settings)."""
    cols = ["dataset", "model", "method", "attack", "labels", "seed", "key", "x", "others", "metric", "value"]
    rows = _ok_rows(df)
    if rows.empty or "sweep" not in rows.columns:
        return pd.DataFrame(columns=cols)
    rows = rows[rows["sweep"] != ""]
    wanted = ((rows["attack"] == "none") & (rows["stage"] == "victim")) | \
             ((rows["attack"] != "none") & (rows["stage"] == "attack"))
    rows = rows[wanted & rows["metric"].isin(["acc", "wsr", "threshold"])]
    records: List[Dict[str, Any]] = []
    for sweep, part in rows.groupby("sweep", sort=False):
        values = parse_sweep(str(sweep))
        for key, x in values.items():
            others = ",".join(f"{_short_key(k)}={_fmt(v)}" for k, v in values.items() if k != key)
            for r in part.itertuples(index=False):
                value = r.value * 100.0 if r.metric in _PERCENT else r.value
                records.append({"dataset": r.dataset, "model": r.model, "method": r.method, "attack": r.attack,
                                "labels": r.labels, "seed": r.seed, "key": key, "x": x, "others": others,
                                "metric": r.metric, "value": value})
    return pd.DataFrame(records, columns=cols)


def _fmt(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def sweep_groups(frame: pd.DataFrame) -> List[Tuple[Tuple[str, str, str, str, str], pd.DataFrame]]:
    """``[((dataset, model, attack, labels, key), rows)]`` — one figure each, sorted."""
    if frame.empty:
        return []
    keys = ["dataset", "model", "attack", "labels", "key"]
    return [(tuple(str(k) for k in key), part) for key, part in frame.groupby(keys, sort=True)]


def sweep_figure(rows: pd.DataFrame, title: str = "", threshold: Optional[float] = None):
    """A matplotlib Figure of one sweep (rows of :func:`sweep_frame` for one key): accuracy and
    WSR against the swept value; the threshold as a dashed line on the WSR panel."""
    import seaborn as sns
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    key = str(rows["key"].iloc[0]) if not rows.empty else "value"
    if threshold is None:
        threshold = threshold_percent(rows, DEFAULT_THRESHOLD)
    rows = rows[rows["metric"].isin(["acc", "wsr"])]
    line = rows["method"].astype(str)
    if (rows["others"] != "").any():
        line = line + rows["others"].map(lambda o: f" [{o}]" if o else "")
    rows = rows.assign(line=line)
    numeric = pd.to_numeric(rows["x"], errors="coerce").notna().all()
    if numeric:
        rows = rows.assign(x=pd.to_numeric(rows["x"]))
    else:
        rows = rows.assign(x=rows["x"].astype(str))
    lines = sorted(rows["line"].unique())
    palette = dict(zip(lines, sns.color_palette("colorblind", max(len(lines), 1))))
    fig = Figure(figsize=(9.0, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, sharex=True)
    for ax, metric, label in zip(axes, ("acc", "wsr"), ("accuracy (%)", "WSR (%)")):
        part = rows[rows["metric"] == metric]
        if not part.empty:
            sns.lineplot(data=part, x="x", y="value", hue="line", hue_order=lines, palette=palette, marker="o",
                         errorbar="sd", ax=ax, legend=metric == "acc")
        if metric == "wsr":
            ax.axhline(threshold, color="black", linestyle="--", linewidth=1.2, label=f"threshold {threshold:g}%")
            ax.legend(loc="best", fontsize="small")
        ax.set_ylim(-3, 103)
        ax.set_xlabel(key)
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        if numeric:
            values = sorted(set(rows["x"]))
            if len(values) > 2 and min(values) > 0 and max(values) / min(values) >= 50:
                ax.set_xscale("log")
    if axes[0].get_legend() is not None:
        axes[0].legend(loc="best", fontsize="small", title="method")
    if title:
        fig.suptitle(title)
    return fig


# --------------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------------

def _save(fig: Any, folder: Path, stem: str, formats: Sequence[str]) -> List[Path]:
    paths = []
    for fmt in formats:
        path = folder / f"{stem}.{fmt}"
        fig.savefig(path, format=fmt, dpi=120, metadata={"Software": None} if fmt == "png" else None)
        paths.append(path)
    return paths


def write_grid_figures(df: Optional[pd.DataFrame], out_dir: str | Path,
                       formats: Sequence[str] = ("png", "pdf")) -> List[Path]:
    """Write the heat-maps and sweep figures into ``out_dir/figures``; return the paths (nothing
    is written, and no folder created, when the run has neither attack cells nor sweeps)."""
    heatmaps = heatmap_frame(df)
    removal = heatmap_frame(df, family="other")
    sweeps = sweep_groups(sweep_frame(df))
    if not heatmaps and not removal and not sweeps:
        return []
    folder = Path(out_dir) / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    threshold = threshold_percent(_ok_rows(df), DEFAULT_THRESHOLD)
    written: List[Path] = []
    for (dataset, model), table in heatmaps.items():
        if table.empty:
            continue
        fig = wsr_heatmap(table, title=f"{dataset} ({model}): stolen-model WSR (%), mean over seeds",
                          threshold=threshold)
        written += _save(fig, folder, f"heatmap_wsr_{slug(dataset)}_{slug(model)}", formats)
    for (dataset, model), table in removal.items():  # attacks as rows: there are many of them
        if table.empty:
            continue
        fig = wsr_heatmap(table.T, title=f"{dataset} ({model}): WSR after removal / evasion attacks (%)",
                          threshold=threshold, xlabel="watermark method", ylabel="attack / label access",
                          value_label="WSR after the attack (%)")
        written += _save(fig, folder, f"heatmap_wsr_removal_{slug(dataset)}_{slug(model)}", formats)
    for (dataset, model, attack, labels, key), rows in sweeps:
        what = "victim" if attack == "none" else f"{attack}{'/' + labels if labels else ''}"
        fig = sweep_figure(rows, title=f"{dataset} ({model}): {what} — sweep of {key}")
        parts = [dataset, model, attack] + ([labels] if labels else []) + [_short_key(key)]
        written += _save(fig, folder, "sweep_" + "_".join(slug(p) for p in parts), formats)
    log.info("wrote %d grid figure files into %s", len(written), folder)
    return written


def _caption(path: Path) -> str:
    return path.stem.replace("_", " ")


def figures_markdown(pngs: Iterable[Path], out_dir: str | Path) -> str:
    """A Markdown *Figures* section linking the PNGs relative to ``out_dir``."""
    items = [f"![{_caption(p)}]({Path(p).relative_to(out_dir).as_posix()})\n" for p in pngs]
    return "## Figures\n\n" + "\n".join(items) if items else ""


def figures_html(pngs: Iterable[Path]) -> str:
    """An HTML *Figures* section with every PNG inline (base64 data URIs)."""
    parts = []
    for p in pngs:
        data = base64.b64encode(Path(p).read_bytes()).decode("ascii")
        parts.append(f'<figure><img alt="{html_lib.escape(_caption(p))}" src="data:image/png;base64,{data}" '
                     f'style="max-width:100%"><figcaption>{html_lib.escape(_caption(p))}</figcaption></figure>')
    return "<h2>Figures</h2>\n" + "\n".join(parts) + "\n" if parts else ""


def figures_latex(pdfs: Iterable[Path], out_dir: str | Path) -> str:
    """LaTeX figure floats including the PDFs (paths relative to ``out_dir``)."""
    parts = []
    for index, p in enumerate(pdfs):
        rel = Path(p).relative_to(out_dir).as_posix()
        if index and index % 6 == 0:  # flush: a section of floats only would exceed LaTeX's float queue
            parts.append("\\clearpage")
        parts.append("\n".join(["\\begin{figure}[htbp]", "\\centering",
                                f"\\includegraphics[width=\\linewidth,height=0.4\\textheight,keepaspectratio]{{{rel}}}",
                                f"\\caption{{{latex_escape(_caption(Path(p)))}}}", "\\end{figure}"]))
    return "\n\n".join(parts) + "\n" if parts else ""


def embed_figures(out_dir: str | Path, written: Sequence[Path]) -> None:
    """Add a *Figures* section with every figure in ``written`` to the report files that exist in
    ``out_dir`` (``report.md``, ``report.html``, ``report.tex``), once."""
    out = Path(out_dir)
    figures = [Path(p) for p in written if Path(p).parent == out / "figures"]
    pngs = sorted(p for p in figures if p.suffix == ".png")
    pdfs = sorted(p for p in figures if p.suffix == ".pdf")
    if not pngs and not pdfs:
        return
    md, html, tex = out / "report.md", out / "report.html", out / "report.tex"
    if md.exists() and pngs and "\n## Figures\n" not in md.read_text(encoding="utf-8"):
        atomic_write(md, md.read_text(encoding="utf-8").rstrip("\n") + "\n\n" + figures_markdown(pngs, out))
    if html.exists() and pngs:
        text = html.read_text(encoding="utf-8")
        if "<h2>Figures</h2>" not in text and "</body>" in text:
            head, _, tail = text.rpartition("</body>")
            atomic_write(html, head + figures_html(pngs) + "</body>" + tail)
    if tex.exists() and pdfs:
        text = tex.read_text(encoding="utf-8")
        if "\\includegraphics" not in text and "\\end{document}" in text:
            head, _, tail = text.rpartition("\\end{document}")
            atomic_write(tex, head.rstrip("\n") + "\n\n\\clearpage\n" + figures_latex(pdfs, out) + "\\end{document}" + tail)
