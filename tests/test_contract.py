"""Registry-wide contract tests: every registered method and attack is tested by being registered.

- A method embeds a watermark that its own verification detects on the victim and does not
  detect on an independently trained clean model.
- An attack returns a working model (accuracy above chance) that differs from its input.
"""
import pandas as pd
import pytest

from wmbench.registry import ATTACKS, METHODS
from wmbench.runner import run

SYNTHETIC = ["datasets.synthetic.train_size=1500", "datasets.synthetic.test_size=400", "train.epochs=6"]


def _wide(frame: pd.DataFrame) -> pd.DataFrame:
    ok = frame[frame["status"] == "ok"]
    table = ok.pivot_table(index=["cell_id", "attack", "labels"], columns=["stage", "metric"], values="value")
    return table


@pytest.mark.parametrize("method", [m for m in METHODS.names()])
def test_method_contract(method, tmp_path):
    frame = run(method, "none", "synthetic", profile="smoke", overrides=SYNTHETIC, out=tmp_path, progress=False)
    table = _wide(frame)
    assert len(table) == 1
    row = table.iloc[0]
    assert row[("victim", "detected")] == 1.0 and row[("victim", "wsr")] >= 0.8
    assert row[("benign", "detected")] == 0.0
    assert row[("victim", "p_value_chance")] < 1e-6
    assert row[("victim", "acc")] >= row[("benign", "acc")] - 0.1


@pytest.mark.parametrize("attack", [a for a in ATTACKS.names() if a != "none"])
def test_attack_contract(attack, tmp_path):
    frame = run("badnets", attack, "synthetic", profile="smoke", overrides=SYNTHETIC, out=tmp_path, progress=False)
    table = _wide(frame)
    assert len(table) >= 1
    for _, row in table.iterrows():
        assert row[("attack", "acc")] > 0.3  # 10 classes: chance is 0.1
        assert row[("attack", "fidelity")] < 1.0 or row[("attack", "wsr")] != row[("victim", "wsr")]
        assert row[("attack", "queries")] >= 0
