"""The long results table read back from ``results.csv`` alone (a committed reference report has
no cells/ folder): the same frame as the one built from the cell records."""
from __future__ import annotations

import shutil

import pandas as pd
import pytest

from wmbench.errors import UserError
from wmbench.results import load
from wmbench.runner import run

TINY = ["datasets.synthetic.train_size=300", "datasets.synthetic.test_size=100", "train.epochs=1",
        "attacks.knockoff.budget=100"]


def test_a_folder_with_only_results_csv_loads_the_same_table(tmp_path):
    run("badnets", ["none", "knockoff"], "synthetic", seeds=[0, 1], profile="smoke", overrides=TINY,
        sweeps=["attacks.knockoff.epochs=1,2"], out=tmp_path / "run", executor="serial", progress=False)
    (tmp_path / "copy").mkdir()
    shutil.copy(tmp_path / "run" / "results.csv", tmp_path / "copy" / "results.csv")
    original, copy = load(tmp_path / "run"), load(tmp_path / "copy")
    pd.testing.assert_frame_equal(original.reset_index(drop=True), copy[original.columns].reset_index(drop=True),
                                  check_dtype=False, check_exact=False, rtol=1e-12)


def test_a_folder_with_neither_cells_nor_table_is_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="no cells/ nor results.csv"):
        load(tmp_path)
    (tmp_path / "results.csv").write_text("a,b\n1,2\n")
    with pytest.raises(UserError, match="not a wmbench results table"):
        load(tmp_path)
