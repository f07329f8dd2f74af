"""The theft map: every stolen model's accuracy against its WSR, one figure per (dataset, model).

The verdicts (:mod:`wmbench.report.verdicts`) in one picture. Each point is one (method, attack
variant, label access) — a query pool or pool transformation of a pool study, a budget of a
sweep — averaged over seeds; x is the stolen model's test accuracy, y its WSR. The dashed
horizontal line is the verification threshold; each method's dotted vertical line is its theft
line, ``(1 − tolerance) ×`` its victim's accuracy: points right of it are working copies (filled
markers), points left of it are thefts that failed (hollow markers) and prove nothing whatever
their WSR. A working copy under the threshold is a watermark that was evaded. File
``figures/theft_<dataset>_<model>.{png,pdf}``; nothing is written for a run without stealing cells.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import pandas as pd

from wmbench.report.common import slug
from wmbench.report.figures_grid import _save
from wmbench.report.verdicts import DEFAULT_THEFT_TOLERANCE, verdicts, working_copy

__all__ = ["theft_frame", "theft_figure", "write_theft_figures"]

_MARKERS = {"soft": "o", "hard": "s", "": "^"}


def theft_frame(df: Optional[pd.DataFrame],
                theft_tolerance: float = DEFAULT_THEFT_TOLERANCE) -> Dict[Tuple[str, str], pd.DataFrame]:
    """``{(dataset, model): rows}`` of the stealing cells, mean over seeds: ``method``, ``attack``
    (with its variant), ``labels``, ``suspect_acc``, ``wsr``, ``victim_acc``, ``threshold`` (all in
    percent), ``theft_ok`` (the mean accuracy against the mean victim's) and ``seeds``."""
    rows = verdicts(df, theft_tolerance)
    rows = rows[rows["family"] == "stealing"] if not rows.empty else rows
    out: Dict[Tuple[str, str], pd.DataFrame] = {}
    if rows.empty:
        return out
    keys = ["method", "attack", "labels"]
    for (dataset, model), part in rows.groupby(["dataset", "model"], sort=True):
        mean = part.groupby(keys, dropna=False).agg(
            suspect_acc=("suspect_acc", "mean"), wsr=("wsr", "mean"), victim_acc=("victim_acc", "mean"),
            threshold=("threshold", "mean"), seeds=("seed", "nunique")).reset_index()
        mean["theft_ok"] = working_copy(mean["suspect_acc"], mean["victim_acc"], theft_tolerance)
        out[(str(dataset), str(model))] = mean.dropna(subset=["suspect_acc", "wsr"])
    return out


def theft_figure(rows: pd.DataFrame, title: str = "", theft_tolerance: float = DEFAULT_THEFT_TOLERANCE):
    """A matplotlib Figure of one (dataset, model) of :func:`theft_frame` (see the module docstring)."""
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 5.2))
    ax = fig.add_subplot(1, 1, 1)
    methods = sorted(rows["method"].unique())
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    threshold = float(rows["threshold"].dropna().iloc[0]) if rows["threshold"].notna().any() else 20.0
    ax.axhline(threshold, color="grey", linestyle="--", linewidth=1, label=f"threshold {threshold:g} %")
    for method in methods:
        part = rows[rows["method"] == method]
        victim = part["victim_acc"].mean()
        ax.axvline((1 - theft_tolerance) * victim, color=colours[method], linestyle=":", linewidth=1)
        for labels, group in part.groupby("labels", dropna=False):
            marker = _MARKERS.get(str(labels) if isinstance(labels, str) else "", "D")
            for ok, sub in group.groupby("theft_ok"):
                ax.scatter(sub["suspect_acc"], sub["wsr"], s=46, marker=marker, linewidths=1.4,
                           edgecolors=colours[method], facecolors=colours[method] if ok else "none",
                           label=f"{method} ({labels or 'n/a'})" if ok or not group["theft_ok"].any() else None)
        for _, r in part.iterrows():
            ax.annotate(str(r["attack"]), (r["suspect_acc"], r["wsr"]), fontsize=6, xytext=(3, 3),
                        textcoords="offset points", color=colours[method])
    ax.set_xlabel("stolen model's test accuracy (%)  —  dotted: each method's theft line")
    ax.set_ylabel("stolen model's WSR (%)")
    ax.set_ylim(-3, 103)
    if title:
        ax.set_title(title, fontsize=9)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), unique.keys(), fontsize=7, loc="best", frameon=False)
    fig.text(0.01, 0.005, f"filled: working copy (≥ {100 * (1 - theft_tolerance):g} % of the victim's accuracy); "
                          "hollow: theft failed (no claim)", fontsize=7)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return fig


def write_theft_figures(df: Optional[pd.DataFrame], out_dir: str | Path,
                        theft_tolerance: float = DEFAULT_THEFT_TOLERANCE,
                        formats: Sequence[str] = ("png", "pdf")) -> List[Path]:
    """Write one theft map per (dataset, model) into ``out_dir/figures``; return the paths."""
    frames = theft_frame(df, theft_tolerance)
    written: List[Path] = []
    for (dataset, model), rows in frames.items():
        if rows.empty:
            continue
        folder = Path(out_dir) / "figures"
        folder.mkdir(parents=True, exist_ok=True)
        fig = theft_figure(rows, f"{dataset} ({model}): stolen accuracy against WSR, mean over seeds",
                           theft_tolerance)
        written += _save(fig, folder, f"theft_{slug(dataset)}_{slug(model)}", formats)
    return written
