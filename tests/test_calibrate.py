"""``wmbench calibrate``: the null-model recipes, one null model per recipe shared by every
method, and its bad input."""
from __future__ import annotations

import json

import pytest

from wmbench.calibrate import RECIPES, calibrate, null_recipes
from wmbench.cli import main
from wmbench.errors import UserError
from wmbench.spec import GridSpec

TINY = ("datasets.synthetic.train_size=300", "datasets.synthetic.test_size=100", "train.epochs=2")


def test_ten_null_models_cycle_the_six_recipes():
    combos = null_recipes(10, epochs=5, null_arch="alexnet_cifar")
    assert len(combos) == 10 and len({json.dumps(c, sort_keys=True) for c in combos}) == 10
    key = "attacks.independent."
    assert [c[key + "variant"] for c in combos[:6]] == ["clean", "mixup", "cutmix", "clean", "clean", "method:noise"]
    assert combos[3][key + "epochs"] == 2 and combos[4][key + "arch"] == "alexnet_cifar"
    assert [c[key + "null_seed"] for c in combos] == [0] * 6 + [1] * 4
    assert len(RECIPES) == 6


@pytest.mark.parametrize("n", [1, 0, -3, 2.5, True])
def test_fewer_than_two_null_models_is_refused(n):
    with pytest.raises(UserError, match="2 or more"):
        null_recipes(n, epochs=5, null_arch="cwnet")


def test_null_models_are_trained_once_and_verified_with_every_method(tmp_path):
    spec = GridSpec.of(["badnets", "content"], "none", "synthetic", profile="smoke", overrides=TINY,
                       out=str(tmp_path / "run"), executor="serial", progress=False)
    frame = calibrate(spec, 3)
    cells = frame.drop_duplicates("cell_id")
    assert len(cells) == 6 and set(cells["status"]) == {"ok"}
    assert set(cells["attack"]) == {"independent"} and cells["sweep"].nunique() == 3
    # three null models on disk, each verified against both methods' key sets
    assert len(list((tmp_path / "run" / "artifacts" / "stolen").glob("*.json"))) == 3
    wsr = frame[(frame["stage"] == "attack") & (frame["metric"] == "acc")]
    assert wsr.groupby("sweep")["value"].nunique().eq(1).all()  # the same model: the same accuracy


def test_calibrate_command_bad_input_one_line_exit_2(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["calibrate", "--methods", "badnets", "--datasets", "synthetic", "--profile", "smoke",
                 "--null-models", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("wmbench: error:") and "2 or more" in err[0]
    assert not out.exists()
    assert main(["calibrate", "--methods", "badnets", "--datasets", "synthetic", "--null-method", "nosuch",
                 "--out", str(out)]) == 2
    assert not out.exists()
