"""What every part of the report shares: the cleaning of the results frame, display orders and
the small text and file helpers.

:func:`finished` is the one way from the long results frame (:func:`wmbench.results.load`) to the
rows the tables and figures use; the constants fix how rows and columns are ordered and which
metrics are fractions. Imports only :mod:`wmbench.cache`; every other module of
:mod:`wmbench.report` may import this one, and this one imports none of them.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Optional, Tuple

import pandas as pd

from wmbench.cache import atomic_write_text
from wmbench.config import VerifyConfig

log = logging.getLogger(__name__)

#: Message rendered instead of tables when no cell finished.
NO_CELLS = "no finished cells"

#: Metrics stored as fractions in [0, 1]; shown as percent.
FRACTION_METRICS = frozenset({"acc", "wsr", "fidelity", "ci_low", "ci_high"})

#: Key columns of every table, in order.
KEYS: Tuple[str, ...] = ("dataset", "model", "method")

# Orders used to sort rows and columns like the paper; unknown names go last, alphabetically.
DATASET_ORDER: Tuple[str, ...] = ("fmnist", "cifar10", "cifar100")
METHOD_ORDER: Tuple[str, ...] = (
    "badnets", "composite", "abstract", "content", "noise", "unrelated", "ewe", "margin",
    "mea_defender", "deeptracer",
)
ATTACK_ORDER: Tuple[str, ...] = ("jbda", "knockoff", "dfme")
LABELS_ORDER: Tuple[str, ...] = ("soft", "hard", "")

#: The verification threshold (a fraction) where a table records none: the paper's 20 %.
DEFAULT_THRESHOLD = VerifyConfig().threshold

#: Curve steps whose *smaller* values are the stronger attack (bit widths, grey levels, crop
#: scales): tables list them weakest first and figures invert their x axis.
REVERSED_STEPS = frozenset({"bits", "levels", "scale"})

_REQUIRED = ("stage", "metric", "value", "method", "dataset")


def _empty_long() -> pd.DataFrame:
    cols = ["run", "cell_id", "method", "attack", "labels", "dataset", "model", "seed", "profile",
            "stage", "metric", "value", "status"]
    return pd.DataFrame({c: pd.Series(dtype="float64" if c == "value" else "object") for c in cols})


def finished(df: Optional[pd.DataFrame]) -> pd.DataFrame:
    """Rows of finished cells only, with a numeric ``value`` and normalised key columns.

    Drops rows whose ``status`` is not ``"ok"``, ``metric == "status"`` rows and NaN values.
    Missing optional columns get defaults (``model=""``, ``attack="none"``, ``labels=""``,
    ``seed=0``); ``labels``/``attack``/``model`` NaNs become ``""``/``"none"``/``""``.
    """
    if df is None or df.empty or not set(_REQUIRED) <= set(df.columns):
        return _empty_long()
    out = df
    if "status" in out.columns:
        out = out[out["status"].fillna("ok").astype(str) == "ok"]
    out = out.assign(value=pd.to_numeric(out["value"], errors="coerce"))
    out = out[out["value"].notna() & (out["metric"].astype(str) != "status")]
    defaults = {"model": "", "attack": "none", "labels": "", "seed": 0}
    fills = {}
    for col, default in defaults.items():
        if col not in out.columns:
            fills[col] = default
        elif col != "seed":
            fills[col] = out[col].fillna(default).astype(str)
    out = out.assign(**fills)
    out = out.assign(dataset=out["dataset"].astype(str), method=out["method"].astype(str),
                     stage=out["stage"].astype(str), metric=out["metric"].astype(str))
    # Per-step curves are drawn as figures, not pooled into the tables. A swept cell is its own
    # variant: swept attack settings label the attack ("knockoff[budget=1000]"), every other swept
    # setting (method, train, keys, ...) labels the method, since it changes the victim.
    out = out[out["stage"] != "curve"]
    if "sweep" in out.columns:
        labels = out["sweep"].fillna("").astype(str).map(_split_sweep)
        attack_label = labels.map(lambda pair: pair[1])
        method_label = labels.map(lambda pair: pair[0])
        out = out.assign(
            attack=out["attack"].where(attack_label == "", out["attack"] + "[" + attack_label + "]"),
            method=out["method"].where(method_label == "", out["method"] + "[" + method_label + "]"),
            sweep="",  # labelled once: finished(finished(df)) must not label again
        )
    # Cells of one method (or attack) run with different --set values in one folder are variants
    # too: where a (dataset, model, method) group holds several method variants they label the
    # method ("mea_defender[weighting=fixed]"), and likewise for attacks, instead of being averaged.
    for col, group, variant in (("method", ["dataset", "model", "method"], "method_variant"),
                                ("attack", ["dataset", "model", "method", "attack", "labels"], "attack_variant")):
        if variant not in out.columns or out.empty:
            continue
        names = out[variant].fillna("").astype(str)
        several = names.groupby([out[c] for c in group], sort=False).transform("nunique") > 1
        tag = several & (names != "")
        out = out.assign(**{col: out[col].where(~tag, out[col] + "[" + names + "]"), variant: ""})
    if "profile" in out.columns and out["profile"].dropna().nunique() > 1:
        log.warning("pooling results from several profiles: %s",
                    ", ".join(sorted(map(str, out["profile"].dropna().unique()))))
    return out.reset_index(drop=True)


def _split_sweep(sweep: str) -> Tuple[str, str]:
    """``"attacks.knockoff.budget=1000,methods.deeptracer.margin=5"`` -> (method label, attack label)
    with the section prefixes dropped: ``("margin=5", "budget=1000")``."""
    method_parts, attack_parts = [], []
    for item in filter(None, sweep.split(",")):
        key, _, value = item.partition("=")
        parts = key.split(".")
        short = f"{parts[-1]}={value}" if parts[0] in ("methods", "attacks", "datasets") else f"{key}={value}"
        (attack_parts if parts[0] == "attacks" else method_parts).append(short)
    return ",".join(method_parts), ",".join(attack_parts)


def finished_rows(df: Optional[pd.DataFrame], stage: str) -> pd.DataFrame:
    """:func:`finished` rows of one ``stage``, cleaned and labelled after that stage is selected;
    ``stage="curve"`` keeps the curve rows that :func:`finished` drops."""
    if df is None or df.empty or "stage" not in df.columns:
        return pd.DataFrame()
    rows = df[df["stage"] == stage]
    if stage == "curve":  # finished() drops curve rows; rename the stage to keep them
        rows = rows.assign(stage="curve_point")
    out = finished(rows)
    if stage == "curve" and not out.empty:
        out = out.assign(stage="curve")
    return out


_LATEX_ESCAPES = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "±": r"$\pm$", "–": "--", "×": r"$\times$",
    # symbols of the notes and headers that pdflatex's utf8 input does not know
    "—": "---", "−": r"$-$", "≥": r"$\geq$", "≤": r"$\leq$", "†": r"\dag{}", "Δ": r"$\Delta$",
    "·": r"$\cdot$", "√": r"$\surd$", "α": r"$\alpha$", "…": r"\ldots{}", "→": r"$\to$",
}


def latex_escape(text: object) -> str:
    """Escape LaTeX special characters (``_ % & # $ { } ~ ^ \\``) in plain text."""
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in str(text))


def atomic_write(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (:func:`wmbench.cache.atomic_write_text`); return ``path``."""
    atomic_write_text(path, text)
    return path


def slug(text: object) -> str:
    """``text`` as a file-name part: runs of other characters become ``_``."""
    return re.sub(r"[^A-Za-z0-9_.+=-]+", "_", str(text)).strip("_") or "x"


def threshold_percent(rows: pd.DataFrame, default: Optional[float] = None) -> Optional[float]:
    """The first ``threshold`` metric of ``rows`` in percent, or ``default``."""
    values = rows.loc[rows["metric"] == "threshold", "value"]
    return float(values.iloc[0]) * 100.0 if not values.empty else default
