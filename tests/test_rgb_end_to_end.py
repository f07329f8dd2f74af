"""CIFAR-10, CIFAR-100 and an RGB ImageFolder tree end to end: every method × Knockoff (soft labels)
at `smoke` on generated data in the real on-disk formats (torchvision's CIFAR pickles, with only its
checksum tests patched; an ImageFolder tree of PNGs), through the CLI. CIFAR uses its default
VGG-like model and training recipe; the ImageFolder tree the CIFAR-sized model (its default,
ResNet-50, is sized for ImageNet and too slow for a test)."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from wmbench.cli import main

pytestmark = pytest.mark.slow


def _images(n: int, classes: int, seed: int):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    x = rng.integers(0, 120, (n, 32, 32, 3), dtype=np.uint8)
    x[..., 0] += (labels * (130 // max(classes - 1, 1))).astype(np.uint8)[:, None, None]  # a learnable cue
    return x, labels


def _cifar(root: Path, hundred: bool, n_train: int = 600, n_test: int = 200) -> None:
    classes = 100 if hundred else 10
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    key = "fine_labels" if hundred else "labels"
    x, y = _images(n_train + n_test, classes, seed=int(hundred))
    flat = x.transpose(0, 3, 1, 2).reshape(len(x), -1)  # CIFAR's row layout: R plane, G, B

    def dump(name: str, rows: slice) -> None:
        with open(folder / name, "wb") as fh:
            pickle.dump({"data": flat[rows], key: y[rows].tolist()}, fh)

    if hundred:
        dump("train", slice(0, n_train))
        dump("test", slice(n_train, None))
        with open(folder / "meta", "wb") as fh:
            pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)]}, fh)
    else:
        per = n_train // 5
        for b in range(5):
            dump(f"data_batch_{b + 1}", slice(b * per, (b + 1) * per))
        dump("test_batch", slice(n_train, None))
        with open(folder / "batches.meta", "wb") as fh:
            pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, fh)


def _tree(root: Path, n: int = 400, classes: int = 4) -> None:
    from PIL import Image

    x, y = _images(n, classes, seed=7)
    for i, (img, label) in enumerate(zip(x, y)):
        folder = root / "train" / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{i:04d}.png")


@pytest.fixture
def data_root(tmp_path, monkeypatch):
    import torchvision

    # only torchvision's checksum tests (of the data files and of the metadata file): the files exist
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: Path(path).is_file())
    _cifar(tmp_path / "data", hundred=False)
    _cifar(tmp_path / "data", hundred=True)
    _tree(tmp_path / "data" / "tree")
    return tmp_path / "data"


def _outcomes(out: Path):
    records = [json.loads(p.read_text()) for p in (out / "cells").glob("*.json")]
    return {(r["cell"]["method"], r["cell"]["attack"], r["cell"]["labels"]): r for r in records}


def test_every_method_steals_and_verifies_on_cifar10_and_rgb_sets(data_root, tmp_path, capsys):
    out = tmp_path / "cifar10"
    small = ["--set", "data.owner_size=300", "--set", "data.attacker_size=150", "--set", "data.test_size=150",
             "--set", "attacks.knockoff.labels=soft"]
    rc = main(["run", "--methods", "all", "--attacks", "knockoff", "--datasets", "cifar10", "--profile", "smoke",
               "--data-root", str(data_root), "--executor", "serial", "--out", str(out), "--no-progress", *small])
    cells = _outcomes(out)
    failed = {k: r.get("error") for k, r in cells.items() if r["status"] == "failed"}
    assert failed == {} and rc == 0
    methods = {m for m, _, _ in cells}
    built_in = {"deeptracer", "badnets", "composite", "abstract", "content", "noise", "unrelated", "ewe", "margin",
                "mea_defender", "fcw", "t2s"}
    assert built_in <= methods  # every built-in method ran or was skipped with its reason (plugins may add more)
    ok = [r for r in cells.values() if r["status"] == "ok"]
    assert all(r["cell"]["arch"] == "cwnet" for r in ok)  # the VGG-like CIFAR model
    assert all(r["cell"]["train"].get("augment") == ["crop", "flip"] for r in ok)  # the CIFAR recipe
    for r in ok:
        for stage in ("victim", "attack"):
            assert 0 <= r["metrics"][stage]["acc"] <= 1 and 0 <= r["metrics"][stage]["wsr"] <= 1
    # The other formats need one method each to be read end to end; CIFAR-100's default ResNet-18
    # is the suite's slowest model on a CPU, so it runs one (about 45 s), the small tree two.
    for dataset, methods, extra in (("cifar100", "badnets", []),
                                    ("imagefolder", "badnets,content", ["--set", "datasets.imagefolder.path=tree",
                                                                        "--set", "model.arch=cwnet"])):
        out = tmp_path / dataset
        assert main(["run", "--methods", methods, "--attacks", "knockoff", "--datasets", dataset,
                     "--profile", "smoke", "--data-root", str(data_root), "--executor", "serial", "--out", str(out),
                     "--no-progress", *small, *extra]) == 0, dataset
        cells = _outcomes(out)
        assert cells and all(r["status"] == "ok" for r in cells.values()), (dataset, cells)
    capsys.readouterr()
