"""The paper-settings audit (wmbench.audit): the committed docs/paper-settings.md is what the code
generates now, every key of PAPER_SETTINGS names a real setting, and the paper profile has no
MISMATCH — plus checks that the audit really reads the code (it is not a table compared with itself).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import wmbench.audit as audit
from wmbench.audit import PAPER_SETTINGS, PaperSetting, audit_table, render_markdown
from wmbench.errors import UserError

DOC = Path(__file__).resolve().parent.parent / "docs" / "paper-settings.md"


@pytest.fixture(scope="module")
def paper_table():
    return audit_table("paper")


def test_committed_document_is_current(paper_table):
    assert DOC.is_file(), "docs/paper-settings.md is missing: wmbench list settings --profile paper --format md > docs/paper-settings.md"
    assert DOC.read_text(encoding="utf-8") == render_markdown(paper_table), (
        "docs/paper-settings.md is stale: regenerate it with wmbench list settings --profile paper --format md > docs/paper-settings.md")


def test_every_key_names_a_setting():
    resolver = audit._Resolver("paper")
    for entry in PAPER_SETTINGS:
        config, name, _ = resolver.config(entry.key)  # raises UserError on a typo
        assert name in {f.name for f in dataclasses.fields(config)}
        assert entry.status in ("stated", "open", "gap"), entry
        assert entry.match in ("eq", "set", "range", "sweep"), entry
        assert entry.where, f"{entry.key}: say where the paper states it (or 'not stated')"
        if entry.status == "open":
            assert entry.note, f"{entry.key}: an open setting says what we chose and why"
        if entry.status == "gap":
            assert entry.note, f"{entry.key}: a gap says what stands in"
        if entry.key == "model.arch" and entry.match != "sweep" and entry.scope:
            assert entry.scope in audit.DATASETS, entry


def test_a_typo_is_refused(monkeypatch):
    for key in ("train.epoch", "methods.deeptracer.lamda3", "attacks.knockof.budget", "keys.top", "trian.lr"):
        monkeypatch.setattr(audit, "PAPER_SETTINGS", (PaperSetting(key, 1, "x"),))
        with pytest.raises(UserError):
            audit_table("paper")


def test_no_mismatch_at_the_paper_profile(paper_table):
    statuses = set(paper_table["status"])
    assert statuses <= {"stated", "open", "gap"}, paper_table[paper_table["status"] == "MISMATCH"].to_string()
    assert list(paper_table.columns) == ["setting", "paper", "where", "ours", "status", "note"]
    assert len(paper_table) == len(PAPER_SETTINGS)


def test_declared_gaps_are_still_gaps(paper_table):
    """A gap that now holds (the feature arrived) should be marked stated, with its source."""
    declared = [e.status == "gap" for e in PAPER_SETTINGS]
    closed = paper_table[[d and s != "gap" for d, s in zip(declared, paper_table["status"])]]
    assert closed.empty, f"these gaps now hold; mark them stated:\n{closed.to_string()}"


def test_the_audit_reads_the_code(monkeypatch):
    quick = audit_table("quick").reset_index()
    row = quick[quick["setting"] == "train.epochs"].iloc[0]
    assert (row["ours"], row["status"]) == ("5", "MISMATCH")  # quick trains 5 epochs, the paper 100
    wrong = (PaperSetting("verify.threshold", 0.3, "x"),
             PaperSetting("attacks.knockoff.labels", ("soft",), "x", match="set"),
             PaperSetting("attacks.prune.rates", (0.1, 1.0), "x", match="range"),
             PaperSetting("model.arch", ("nosuchnet",), "x", match="sweep"),
             PaperSetting("model.arch", "cwnet", "x", scope="fmnist"))
    monkeypatch.setattr(audit, "PAPER_SETTINGS", wrong)
    assert list(audit_table("paper")["status"]) == ["MISMATCH"] * len(wrong)


def test_scopes_inheritance_and_label_modes(paper_table):
    rows = paper_table.set_index("setting")
    assert rows.loc["keys.filter (deeptracer)", "ours"] == "None (= two_stage)"
    assert rows.loc["methods.deeptracer.phase2_lr", "ours"] == "None (= train.lr = 0.001)"
    assert rows.loc["attacks.knockoff.labels", "ours"].startswith("soft, hard")
    assert rows.loc["model.arch (cifar10)", "ours"] == "cwnet"
    assert rows.loc["attacks.ambiguity.method_config (poison_rate)", "ours"] == "poison_rate=0.2"


def test_markdown_has_one_table_per_section(paper_table):
    text = render_markdown(paper_table)
    assert text.startswith("# The paper's settings, audited (profile `paper`)")
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert len(headings) == len(set(headings)) == paper_table.index.nunique()
    assert "| MISMATCH |" not in text
