"""The paper's tables: reading the CSVs shipped in ``wmbench/paper_tables``, matching wmbench
names to the paper's, and putting the paper's figures beside ours (:func:`compare_paper`)."""
from __future__ import annotations

import functools
import re
from importlib import resources
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

import numpy as np
import pandas as pd

from wmbench.report.tables import TABLE1_COLUMNS, attack_name

# Names used by the paper tables (wmbench/paper_tables/*.csv). Names missing here are matched
# case-insensitively after removing non-alphanumerics (see _paper_name).
PAPER_DATASETS: Dict[str, str] = {"fmnist": "FMNIST", "cifar10": "CIFAR10", "cifar100": "CIFAR100"}
PAPER_METHODS: Dict[str, str] = {
    "badnets": "BadNets",
    "composite": "Composite",
    "abstract": "Abstract",
    "content": "Content",
    "noise": "Noise",
    "unrelated": "Unrelated",
    "ewe": "EWE",
    "margin": "Margin-based",
    "margin_based": "Margin-based",
    "mea_defender": "MEA-Defender",
    "deeptracer": "DeepTracer",
}

PAPER_TABLE1_FILE = "table1_harmlessness_effectiveness.csv"
PAPER_TABLE2_FILE = "table2_stealing_robustness.csv"


@functools.lru_cache(maxsize=None)
def _read_paper_csv(name: str) -> pd.DataFrame:
    source = resources.files("wmbench").joinpath("paper_tables").joinpath(name)
    with source.open("r", encoding="utf-8") as handle:
        return pd.read_csv(handle, keep_default_na=False, na_values=[""])


def paper_table1() -> pd.DataFrame:
    """The paper's Table 1 as shipped in ``wmbench/paper_tables`` (percent, paper names)."""
    return _read_paper_csv(PAPER_TABLE1_FILE).copy()


def paper_table2() -> pd.DataFrame:
    """The paper's Table 2 in long form: dataset, method, attack, labels, stolen_acc, stolen_wsr."""
    return _read_paper_csv(PAPER_TABLE2_FILE).copy()


def _norm(name: object) -> str:
    return re.sub(r"[^0-9a-z]", "", str(name).lower())


def _paper_name(name: str, explicit: Mapping[str, str], candidates: Iterable[str]) -> Optional[str]:
    """Explicit map first, then a case-insensitive match ignoring non-alphanumerics."""
    if name in explicit:
        return explicit[name]
    wanted = _norm(name)
    for key, value in explicit.items():
        if _norm(key) == wanted:
            return value
    for candidate in candidates:
        if _norm(candidate) == wanted:
            return candidate
    return None


def paper_dataset_name(dataset: str) -> Optional[str]:
    """The paper's name for a wmbench dataset id (``"fmnist"`` -> ``"FMNIST"``), or None."""
    return _paper_name(dataset, PAPER_DATASETS, paper_table1()["dataset"].unique())


def paper_method_name(method: str) -> Optional[str]:
    """The paper's name for a wmbench method id (``"margin"`` -> ``"Margin-based"``), or None."""
    return _paper_name(method, PAPER_METHODS, paper_table1()["method"].unique())


@functools.lru_cache(maxsize=None)
def _paper_wide1() -> pd.DataFrame:
    return paper_table1().set_index(["dataset", "method"])[list(TABLE1_COLUMNS)]


@functools.lru_cache(maxsize=None)
def _paper_wide2() -> pd.DataFrame:
    paper = paper_table2()
    parts = []
    for metric in ("acc", "wsr"):
        part = paper.assign(column=[f"{attack_name(a, lab)}_{metric}" for a, lab in
                                    zip(paper["attack"], paper["labels"].fillna(""))],
                            value=paper[f"stolen_{metric}"])
        parts.append(part[["dataset", "method", "column", "value"]])
    return pd.concat(parts).pivot_table(index=["dataset", "method"], columns="column", values="value")


def paper_value(table: int, dataset: str, method: str, column: str) -> float:
    """The paper's figure (percent) for a wmbench ``dataset`` and ``method`` (variants such as
    ``badnets[poison_rate=0.05]`` have none) in Table ``table`` (1 or 2) and ``column`` (a
    :data:`~wmbench.report.tables.TABLE1_COLUMNS` name, or ``<attack>_<labels>_<acc|wsr>``);
    NaN when the paper does not report it."""
    if "[" in str(method):
        return float("nan")
    wide = _paper_wide1() if table == 1 else _paper_wide2()
    key = (paper_dataset_name(dataset), paper_method_name(method))
    if column not in wide.columns or key not in wide.index:
        return float("nan")
    return float(wide.at[key, column])


def _with_paper(table: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """Insert ``paper_<col>``/``diff_<col>`` after ``<col>_std`` for columns the paper has."""
    if table.empty:
        return table.copy()
    rows = list(zip((paper_dataset_name(d) for d in table["dataset"]),
                    (paper_method_name(m) for m in table["method"])))
    out = table.copy()
    order: List[str] = []
    for col in table.columns:
        order.append(col)
        base = str(col)[: -len("_std")] if str(col).endswith("_std") else None
        if base is None or f"{base}_mean" not in table.columns or base not in paper.columns:
            continue
        lookup = paper[base].to_dict()
        values = np.array([lookup.get(key, np.nan) for key in rows], dtype=float)
        out[f"paper_{base}"] = values
        out[f"diff_{base}"] = out[f"{base}_mean"].to_numpy(dtype=float) - values
        order += [f"paper_{base}", f"diff_{base}"]
    return out[order]


def compare_paper(t1: pd.DataFrame, t2: pd.DataFrame) -> Tuple[pd.DataFrame, pd.DataFrame]:
    """Put the paper's figures beside ours.

    For every value column the paper reports (Table 1 columns; ``<attack>_<labels>_acc/wsr``
    for JBDA, Knockoff and DFME), adds ``paper_<col>`` (percent) and ``diff_<col>`` (ours −
    paper, percentage points) after ``<col>_std``. Rows the paper lacks (other datasets or
    methods) get NaN; value columns the paper never reports get no extra columns.
    """
    return _with_paper(t1, _paper_wide1()), _with_paper(t2, _paper_wide2())
