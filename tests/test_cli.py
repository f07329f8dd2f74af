"""The CLI end to end (smoke profile) and its bad-input contract (one line, exit 2, nothing written)."""
import json
import os
from pathlib import Path

import pandas as pd
import pytest

from conftest import FMNIST_SMALL, needs_fmnist
from wmbench import training
from wmbench.cli import main


def _run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_help_exits_zero(capsys):
    assert main(["--help"]) == 0
    assert "run" in capsys.readouterr().out


@pytest.mark.parametrize("what, expected", [
    ("methods", "badnets"), ("attacks", "knockoff"), ("datasets", "fmnist"), ("models", "naivenet"),
])
def test_list(what, expected, capsys):
    code, out, _ = _run(["list", what], capsys)
    assert code == 0
    assert expected in out
    if what in ("methods", "attacks"):
        assert "paper" in out and "defaults" in out


@needs_fmnist
def test_run_twice_report_and_show(tmp_path, capsys, monkeypatch):
    out_dir = tmp_path / "run"
    argv = ["run", "--methods", "badnets", "--attacks", "none,knockoff", "--datasets", "fmnist", "--profile", "smoke",
            "--out", str(out_dir), "--no-progress", *FMNIST_SMALL]
    code, out, err = _run(argv, capsys)
    assert code == 0, err
    frame = pd.read_parquet(out_dir / "results.parquet")
    assert set(frame["status"]) == {"ok"}
    assert set(frame["attack"]) == {"none", "knockoff"}
    assert set(frame.loc[frame["attack"] == "knockoff", "labels"]) == {"soft", "hard"}
    wide = frame.pivot_table(index=["cell_id"], columns=["stage", "metric"], values="value")
    assert (wide[("victim", "wsr")] >= 0.9).all()
    assert (wide[("benign", "wsr")] <= 0.2).all()
    stolen = frame[(frame["stage"] == "attack") & (frame["metric"] == "queries")]
    assert (stolen["value"] == 1000).all()  # smoke budget, counted exactly
    assert len(frame) == len(frame.drop_duplicates(["cell_id", "stage", "metric"]))
    assert (out_dir / "results.csv").exists()
    provenance = frame.iloc[0]
    assert provenance["torch_version"] and provenance["wmbench_version"] and provenance["host"]

    # Second run: every cell is reused, nothing is trained.
    calls = []
    real_fit = training.fit
    monkeypatch.setattr(training, "fit", lambda *a, **k: calls.append(1) or real_fit(*a, **k))
    mtimes = {p: p.stat().st_mtime_ns for p in (out_dir / "cells").glob("*.json")}
    code, out, err = _run(argv, capsys)
    assert code == 0
    assert calls == []
    assert "[ok]" not in err  # no cell ran again
    assert {p: p.stat().st_mtime_ns for p in (out_dir / "cells").glob("*.json")} == mtimes
    assert len(pd.read_parquet(out_dir / "results.parquet")) == len(frame)

    code, out, err = _run(["report", str(out_dir), "--format", "latex", "--compare", "paper"], capsys)
    assert code == 0
    assert "\\toprule" in out and "badnets" in out
    for name in ("report.md", "report.tex", "report.html", "table1.csv", "table2.csv"):
        assert (out_dir / name).exists()

    cell_id = frame["cell_id"].iloc[0]
    code, out, err = _run(["show", cell_id[:8], "--out", str(out_dir)], capsys)
    assert code == 0
    assert cell_id in out and "victim:" in out and "config:" in out
    # The watermark's facts (BadNets: target label, key-set sizes) are in the record and shown.
    assert "watermark: " in out and "n_verify_keys=" in out and "target=1" in out


@needs_fmnist
def test_corrupt_artifact_is_rebuilt_and_corrupt_result_is_reported(tmp_path, capsys):
    out_dir = tmp_path / "run"
    argv = ["run", "--methods", "badnets", "--attacks", "none", "--datasets", "fmnist", "--profile", "smoke",
            "--out", str(out_dir), "--no-progress", *FMNIST_SMALL]
    assert _run(argv, capsys)[0] == 0
    first = pd.read_parquet(out_dir / "results.parquet")
    victim_pt = next((out_dir / "artifacts" / "victim").glob("*.pt"))
    victim_pt.write_bytes(victim_pt.read_bytes()[:100])  # truncated
    for cell in (out_dir / "cells").glob("*.json"):
        cell.unlink()
    code, _, err = _run(argv, capsys)
    assert code == 0
    assert "corrupt artifact" in err
    again = pd.read_parquet(out_dir / "results.parquet")
    pd.testing.assert_series_equal(first.sort_values(["stage", "metric"])["value"].reset_index(drop=True),
                                   again.sort_values(["stage", "metric"])["value"].reset_index(drop=True))

    cell = next((out_dir / "cells").glob("*.json"))
    cell.write_text("{not json")
    code, _, err = _run(["report", str(out_dir)], capsys)
    assert code == 2
    assert err.startswith("wmbench: error: corrupt result file") and err.count("\n") == 1


BAD_INPUTS = [
    (["--methods", "nope"], "unknown method 'nope'; available:"),
    (["--attacks", "knockof"], "unknown attack 'knockof'; available:"),
    (["--datasets", "mnist9"], "unknown dataset 'mnist9'; available:"),
    (["--set", "model.arch=resnet9000"], "unknown model 'resnet9000'; available:"),
    (["--set", "train.epochs"], "malformed --set"),
    (["--set", "bogus.key=1"], "unknown section 'bogus'"),
    (["--set", "train.epoch=3"], "unknown key 'epoch' for train; accepted:"),
    (["--set", "train.epochs=three"], "train.epochs must be an integer"),
    (["--set", "attacks.knockoff.budget=-5"], "budget must be a positive integer"),
    (["--seeds", "a,b"], "malformed --seeds"),
    (["--data-root", "/nonexistent/wmbench-data"], "/nonexistent/wmbench-data"),
    (["--datasets", "cifar10", "--data-root", "{tmp}"], "cifar-10-batches-py"),
    (["--config", "/nonexistent.yaml"], "config file"),
    (["--set", "train.lr=nan"], "train.lr must be a finite number"),
    (["--set", "attacks.knockoff.lr=inf"], "lr must be a finite number"),
    (["--seeds", "0,0"], "--seeds repeats 0"),
    (["--cpus-per-cell", "0"], "--cpus-per-cell must be a finite number above 0"),
    (["--cpus-per-cell", "nan"], "--cpus-per-cell must be a finite number above 0"),
    (["--gpus-per-cell", "-1"], "--gpus-per-cell must be a finite number at least 0"),
    (["--retries", "-1"], "--retries must be a whole number, 0 or more"),
    (["--executor", "bogus"], "invalid choice: 'bogus'"),
    (["--spare-cpus", "all"], "invalid choice: 'all'"),
    (["--out", "{tmp}/afile/run"], "afile is a file; give a folder"),
    (["--cache-dir", "{tmp}/afile"], "afile is a file; give a folder"),
]


@pytest.mark.parametrize("extra, message", BAD_INPUTS)
def test_bad_input_one_line_exit_2_nothing_written(extra, message, tmp_path, capsys):
    out_dir = tmp_path / "out"
    (tmp_path / "afile").write_text("not a folder")
    extra = [e.replace("{tmp}", str(tmp_path)) for e in extra]
    argv = ["run", "--methods", "badnets", "--attacks", "none", "--datasets", "fmnist", "--profile", "smoke",
            "--out", str(out_dir), "--no-progress"]
    # later options win in argparse, so the bad value overrides the defaults above
    code, out, err = _run(argv + extra, capsys)
    assert code == 2
    assert err.startswith("wmbench: error: ")
    assert err.count("\n") == 1, err
    assert message in err
    assert not out_dir.exists()


def test_incompatible_pair_is_skipped_or_rejected(tmp_path, capsys, plugin_path):
    out_dir = tmp_path / "out"
    base = ["run", "--plugin", "wmb_labelonly", "--methods", "labelonly_badnets", "--attacks", "knockoff",
            "--datasets", "synthetic", "--profile", "smoke", "--out", str(out_dir), "--no-progress",
            "--set", "datasets.synthetic.train_size=300", "--set", "datasets.synthetic.test_size=100",
            "--set", "train.epochs=1"]
    code, _, err = _run(base + ["--set", "attacks.knockoff.labels=soft"], capsys)
    assert code == 2
    assert "no runnable cell" in err and "labels" in err and err.count("\n") == 1
    assert not out_dir.exists()

    code, out, err = _run(base, capsys)
    assert code == 0, err
    frame = pd.read_parquet(out_dir / "results.parquet")
    status = frame.drop_duplicates("cell_id").set_index("labels")["status"].to_dict()
    assert status == {"soft": "skipped", "hard": "ok"}
    reason = frame.loc[frame["status"] == "skipped", "skipped_reason"].iloc[0]
    assert "exposes only" in reason


def test_show_unknown_cell(tmp_path, capsys):
    (tmp_path / "cells").mkdir()
    code, _, err = _run(["show", "deadbeef", "--out", str(tmp_path)], capsys)
    assert code == 2 and "no cell 'deadbeef'" in err
