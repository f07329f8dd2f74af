"""Curve figures: accuracy and WSR against attack strength, one figure per sweep.

Pure functions of the long results frame (:func:`wmbench.results.load`) plus writers that save
PNG and PDF files with matplotlib's Agg canvas (no display, no global backend change).

Curves come from the ``curve`` rows the runner writes for attacks that return snapshots
(fine-tuning epochs, pruning rates, quantization bits, preprocessing strengths, ...): one row
per ``(cell, step_name, step, metric)``. :func:`wmbench.report.tables.curve_frame` keeps the
finished ones in percent; :func:`plot_curve` draws one sweep — two panels, accuracy and WSR
against the step, one line per watermark method (mean over seeds, ±1 sd band with several
seeds), the verification threshold as a dashed line on the WSR panel, the victim's accuracy and
WSR before the attack as dotted lines — and :func:`write_figures` writes one figure per ``(dataset, model, attack, labels, step_name)``
into ``OUT/figures/`` (``curve_<dataset>_<model>_<attack>[_<labels>]_<step_name>.{png,pdf}``).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple

import pandas as pd

from wmbench.report.common import REVERSED_STEPS, finished_rows, slug, threshold_percent
from wmbench.report.tables import curve_frame

log = logging.getLogger(__name__)

__all__ = ["sweep_groups", "plot_curve", "write_figures", "CURVE_KEYS"]

#: Columns identifying one sweep (one figure).
CURVE_KEYS: Tuple[str, ...] = ("dataset", "model", "attack", "labels", "step_name")

_LABELS = {"acc": "accuracy (%)", "wsr": "WSR (%)"}


def sweep_groups(curves: pd.DataFrame) -> List[Tuple[Tuple[str, ...], pd.DataFrame]]:
    """``[(key, rows)]`` per sweep of the :func:`~wmbench.report.tables.curve_frame` rows, ``key``
    = the values of :data:`CURVE_KEYS`, sorted."""
    if curves.empty:
        return []
    return [(tuple(str(k) for k in key), part) for key, part in curves.groupby(list(CURVE_KEYS), sort=True)]


def _reference(df: Optional[pd.DataFrame], dataset: str, model: str, methods: Iterable[str]) -> pd.DataFrame:
    """The victims' accuracy and WSR before the attack (percent), per method, mean over seeds."""
    rows = finished_rows(df, "victim")
    if rows.empty:
        return pd.DataFrame(columns=["method", "metric", "value"])
    rows = rows[(rows["dataset"] == dataset) & (rows["model"] == model) & rows["method"].isin(list(methods))
                & rows["metric"].isin(["acc", "wsr"])]
    out = rows.groupby(["method", "metric"], as_index=False)["value"].mean()
    return out.assign(value=out["value"] * 100.0)


def plot_curve(rows: pd.DataFrame, title: str = "", reference: Optional[pd.DataFrame] = None,
               threshold: Optional[float] = None):
    """A matplotlib Figure of one sweep (``rows`` from :func:`~wmbench.report.tables.curve_frame`):
    accuracy and WSR against the step, one line per method; ``threshold`` (percent) is drawn on
    the WSR panel, ``reference`` (``method, metric, value``) as dotted pre-attack levels."""
    import seaborn as sns
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    step_name = str(rows["step_name"].iloc[0]) if not rows.empty else "step"
    fig = Figure(figsize=(9.0, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, sharex=True)
    methods = sorted(rows["method"].unique())
    palette = dict(zip(methods, sns.color_palette("colorblind", max(len(methods), 1))))
    if threshold is None:
        threshold = threshold_percent(rows)
    for ax, metric in zip(axes, ("acc", "wsr")):
        part = rows[rows["metric"] == metric]
        if not part.empty:
            sns.lineplot(data=part, x="step", y="value", hue="method", hue_order=methods, palette=palette,
                         marker="o", errorbar="sd", ax=ax, legend=metric == "acc")
        if reference is not None and not reference.empty:
            for i, (_, ref) in enumerate(reference[reference["metric"] == metric].iterrows()):
                label = "victim before attack" if metric == "wsr" and i == 0 else None
                ax.axhline(ref["value"], color=palette.get(ref["method"], "grey"), linestyle=":", linewidth=1,
                           label=label)
        if metric == "wsr" and threshold is not None:
            ax.axhline(threshold, color="black", linestyle="--", linewidth=1.2, label=f"threshold {threshold:g}%")
            ax.legend(loc="best", fontsize="small")
        ax.set_ylim(-3, 103)
        ax.set_xlabel(step_name)
        ax.set_ylabel(_LABELS[metric])
        ax.grid(True, alpha=0.3)
        if step_name in REVERSED_STEPS and not ax.xaxis_inverted():
            ax.invert_xaxis()
    if axes[0].get_legend() is not None:
        axes[0].legend(loc="best", fontsize="small", title="method")
    if title:
        fig.suptitle(title)
    return fig


def figure_name(key: Sequence[str]) -> str:
    """``curve_<dataset>_<model>_<attack>[_<labels>]_<step_name>`` (file-system safe)."""
    dataset, model, attack, labels, step_name = key
    parts = [dataset, model, attack] + ([labels] if labels else []) + [step_name]
    return "curve_" + "_".join(slug(p) for p in parts)


def write_figures(df: Optional[pd.DataFrame], out_dir: str | Path,
                  formats: Sequence[str] = ("png", "pdf")) -> List[Path]:
    """Write one figure per sweep into ``out_dir/figures`` (PNG and PDF by default); return the paths.

    Nothing is written (and no folder created) when the frame has no finished curve rows.
    """
    curves = curve_frame(df)
    groups = sweep_groups(curves)
    if not groups:
        return []
    folder = Path(out_dir) / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    written: List[Path] = []
    for key, rows in groups:
        dataset, model, attack, labels, step_name = key
        title = f"{dataset} ({model}): {attack}{'/' + labels if labels else ''} — {step_name} sweep"
        fig = plot_curve(rows, title=title, reference=_reference(df, dataset, model, rows["method"].unique()))
        for fmt in formats:
            path = folder / f"{figure_name(key)}.{fmt}"
            fig.savefig(path, format=fmt, dpi=120)
            written.append(path)
    log.info("wrote %d figure files into %s", len(written), folder)
    return written
