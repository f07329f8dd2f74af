"""--track mlflow|tensorboard: every finished cell logged once to a local tracker."""
from __future__ import annotations

import pytest

from wmbench.cli import main
from wmbench.errors import UserError
from wmbench.tracking import TRACKERS, check_tracker, scalar_metrics

GRID = ["run", "--methods", "badnets", "--attacks", "none,quantize", "--datasets", "synthetic", "--profile", "smoke",
        "--executor", "serial", "--no-progress"]


def test_scalar_metrics_flattens_stages_and_drops_non_numbers():
    record = {"metrics": {"victim": {"acc": 0.9, "wsr": 1.0, "note": "x", "nan": float("nan"), "flag": True},
                          "attack": {"acc": 0.5}}, "curve": []}
    assert scalar_metrics(record) == {"victim.acc": 0.9, "victim.wsr": 1.0, "attack.acc": 0.5}


def test_unknown_or_missing_tracker_is_refused_before_anything_runs(tmp_path, monkeypatch, capsys):
    with pytest.raises(UserError, match="unknown tracker 'wandb'; accepted: mlflow, tensorboard"):
        check_tracker("wandb")
    assert main(GRID + ["--out", str(tmp_path / "a"), "--track", "wandb"]) == 2
    assert "invalid choice" in capsys.readouterr().err
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    assert main(GRID + ["--out", str(tmp_path / "b"), "--track", "mlflow"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install mlflow-skinny" in err[0]
    assert not (tmp_path / "b").exists()  # nothing written


def _scalars(folder):
    """Every scalar in the event files of ``folder`` ({tag: [values]}), read record by record
    (TFRecord framing: length, its CRC, the Event proto, its CRC)."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    out = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        at = 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at:at + 8])
            event = Event.FromString(data[at + 12:at + 12 + length])
            at += 12 + length + 4
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    out.setdefault(value.tag, []).append(value.simple_value)
    return out


def test_tensorboard_logs_each_cell_once(tmp_path):
    pytest.importorskip("tensorboardX")
    out = tmp_path / "tb"
    assert main(GRID + ["--out", str(out), "--track", "tensorboard"]) == 0
    cells = sorted(p.stem for p in (out / "cells").glob("*.json"))
    logged = sorted(p.name for p in (out / "tensorboard").iterdir())
    assert logged == cells
    import json

    for cell_id in cells:
        record = json.loads((out / "cells" / f"{cell_id}.json").read_text())
        scalars = _scalars(out / "tensorboard" / cell_id)
        assert scalars["victim/acc"] == [pytest.approx(record["metrics"]["victim"]["acc"])]
    # a rerun reuses the cells and logs nothing twice
    assert main(GRID + ["--out", str(out), "--track", "tensorboard"]) == 0
    for cell_id in cells:
        assert all(len(v) == 1 for v in _scalars(out / "tensorboard" / cell_id).values())


def test_mlflow_logs_each_cell_once_as_a_run(tmp_path):
    mlflow = pytest.importorskip("mlflow")
    out = tmp_path / "ml"
    assert main(GRID + ["--out", str(out), "--track", "mlflow"]) == 0
    client = mlflow.tracking.MlflowClient(tracking_uri=(out / "mlruns").absolute().as_uri())
    experiment = client.get_experiment_by_name(f"wmbench/{out.name}")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 2
    by_attack = {r.data.params["attack"]: r for r in runs}
    assert set(by_attack) == {"none", "quantize"}
    run = by_attack["quantize"]
    assert run.data.params["method"] == "badnets" and run.data.params["dataset"] == "synthetic"
    assert 0 <= run.data.metrics["attack.acc"] <= 1 and "victim.wsr" in run.data.metrics
    assert run.info.run_name.startswith("badnets × quantize")
    assert main(GRID + ["--out", str(out), "--track", "mlflow"]) == 0  # resumed: nothing logged twice
    assert len(client.search_runs([experiment.experiment_id])) == 2


def test_trackers_are_the_ones_the_cli_offers():
    assert TRACKERS == ("mlflow", "tensorboard")
