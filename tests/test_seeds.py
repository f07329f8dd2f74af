"""A seed is a full replicate: a method's key set (trigger choice, sources, target) and every
model's initialisation change with it, so ``--seeds 0,1,2`` intervals measure run-to-run
spread and not one key set three times."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Tuple

import pytest
import torch

from wmbench.runner import run

TINY = ["datasets.synthetic.train_size=600", "datasets.synthetic.test_size=100", "train.epochs=1"]
METHODS = ["badnets", "content", "deeptracer", "ewe"]  # the reference report's methods


def _artifacts(store: Path, kind: str) -> Dict[Tuple[str, int], Dict[str, torch.Tensor]]:
    out = {}
    for meta_path in (store / kind).glob("*.json"):
        spec = json.loads(meta_path.read_text())["spec"]
        tensors = torch.load(meta_path.with_suffix(".pt"), weights_only=True)
        out[(spec.get("method", ""), spec["seed"])] = tensors
    return out


def _first_weight(tensors: Dict[str, torch.Tensor]) -> str:
    """The first learned weight (not a normalisation constant) of a stored model."""
    return next(k for k, v in tensors.items() if k.startswith("model/") and k.endswith("weight") and v.numel() > 16)


@pytest.mark.slow
def test_keys_triggers_and_initialisation_change_with_the_seed(tmp_path):
    frame = run(METHODS, "none", "synthetic", seeds=[0, 1], profile="smoke", overrides=TINY, out=tmp_path / "run",
                executor="serial", progress=False)
    assert set(frame["status"]) == {"ok"}
    store = tmp_path / "run" / "artifacts"
    benign = _artifacts(store, "benign")
    first = _first_weight(benign[("", 0)])
    assert not torch.equal(benign[("", 0)][first], benign[("", 1)][first])  # initialisation and order
    victims = _artifacts(store, "victim")
    for method in METHODS:
        a, b = victims[(method, 0)], victims[(method, 1)]
        keys = [k for k in a if k.startswith("keys/") and k.endswith("_x") and a[k].numel()]
        assert keys, method
        for k in keys:
            same_shape = a[k].shape == b[k].shape
            assert not (same_shape and torch.equal(a[k], b[k])), f"{method}: {k} is the same for seeds 0 and 1"
        weights = _first_weight(a)
        assert not torch.equal(a[weights], b[weights]), method
