"""Tests for wmbench.data: sources, owner/attacker split, conform and caching. No network."""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from wmbench.data import DataBundle, Split, clear_cache, conform, load_data, split_indices
from wmbench.data.base import resolve_root
from wmbench.errors import UserError
from wmbench.registry import DATASETS

DEBIAN_FMNIST = "/usr/share/datasets/fashion-mnist"
HAVE_FMNIST = os.path.isdir(DEBIAN_FMNIST) or bool(os.environ.get("WMBENCH_DATA"))
needs_fmnist = pytest.mark.skipif(
    not HAVE_FMNIST, reason=f"Fashion-MNIST not installed ({DEBIAN_FMNIST} absent, $WMBENCH_DATA unset)"
)


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------
def _idx_images(images: np.ndarray) -> bytes:
    n, h, w = images.shape
    header = b"".join(int(v).to_bytes(4, "big") for v in (2051, n, h, w))
    return header + images.astype(np.uint8).tobytes()


def _idx_labels(labels: np.ndarray) -> bytes:
    header = b"".join(int(v).to_bytes(4, "big") for v in (2049, len(labels)))
    return header + labels.astype(np.uint8).tobytes()


def _write_fake_fmnist(directory: Path, n_train: int = 20, n_test: int = 10, gz: bool = True) -> None:
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    payloads = {
        "train-images-idx3-ubyte": _idx_images(rng.integers(0, 256, (n_train, 28, 28))),
        "train-labels-idx1-ubyte": _idx_labels(np.arange(n_train) % 10),
        "t10k-images-idx3-ubyte": _idx_images(rng.integers(0, 256, (n_test, 28, 28))),
        "t10k-labels-idx1-ubyte": _idx_labels(np.arange(n_test) % 10),
    }
    for stem, payload in payloads.items():
        if gz:
            (directory / (stem + ".gz")).write_bytes(gzip.compress(payload))
        else:
            (directory / stem).write_bytes(payload)


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WMBENCH_DATA", raising=False)


# ------------------------------------------------------------------------------------------
# Split / registry basics
# ------------------------------------------------------------------------------------------
def test_registry_points_to_sources() -> None:
    from wmbench.data.fmnist import FashionMNIST
    from wmbench.data.synthetic import Synthetic

    assert DATASETS.get("fmnist") is FashionMNIST
    assert DATASETS.get("synthetic") is Synthetic
    for name in ("fmnist", "digits", "synthetic", "cifar10", "cifar100", "imagefolder"):
        cls = DATASETS.get(name)
        assert cls.name == name and cls.paper and cls.description


def test_split_subset_and_take() -> None:
    x = torch.rand(10, 1, 4, 4)
    y = torch.arange(10)
    split = Split(x, y)
    assert len(split) == 10
    sub = split.subset([3, 1])
    assert sub.y.tolist() == [3, 1] and torch.equal(sub.x[0], x[3])
    assert split.take(None, 0) is split and split.take(50, 0) is split
    a, b, c = split.take(4, seed=1), split.take(4, seed=1), split.take(4, seed=2)
    assert len(a) == 4 and torch.equal(a.y, b.y)
    assert not torch.equal(a.y, c.y)
    with pytest.raises(ValueError):
        Split(x, torch.arange(9))


def test_resolve_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("WMBENCH_DATA", raising=False)
    assert resolve_root(None) is None
    monkeypatch.setenv("WMBENCH_DATA", str(tmp_path))
    assert resolve_root(None) == str(tmp_path)
    assert resolve_root(tmp_path / "x") == str(tmp_path / "x")


# ------------------------------------------------------------------------------------------
# Fashion-MNIST from the Debian package
# ------------------------------------------------------------------------------------------
@needs_fmnist
def test_fmnist_shapes_and_split() -> None:
    b = load_data("fmnist")
    assert isinstance(b, DataBundle)
    assert (b.num_classes, b.channels, b.size) == (10, 1, 28)
    assert b.info["train_size"] == 60000 and len(b.test) == 10000
    assert len(b.owner) + len(b.attacker) == 60000
    assert len(b.attacker) == 20000  # a third
    for split in (b.owner, b.attacker, b.test):
        assert split.x.shape[1:] == (1, 28, 28)
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64
        assert float(split.x.min()) >= 0.0 and float(split.x.max()) <= 1.0
        assert set(split.y.unique().tolist()) == set(range(10))
    assert len(b.class_names) == 10 and b.class_names[0] == "T-shirt/top"
    assert b.mean == (0.2860,) and b.std == (0.3530,)
    assert abs(float(b.owner.x.mean()) - 0.286) < 0.01


@needs_fmnist
def test_fmnist_split_disjoint_and_deterministic() -> None:
    from wmbench.data.fmnist import FashionMNIST

    owner_idx, attacker_idx = split_indices(60000, 1 / 3, 1337)
    assert len(set(owner_idx.tolist()) & set(attacker_idx.tolist())) == 0
    assert len(owner_idx) + len(attacker_idx) == 60000
    train, _ = FashionMNIST().load(resolve_root(None), False)
    b = load_data("fmnist", split_seed=1337)
    assert torch.equal(b.owner.x, train.x[owner_idx]) and torch.equal(b.owner.y, train.y[owner_idx])
    assert torch.equal(b.attacker.x, train.x[attacker_idx])

    clear_cache()
    again = load_data("fmnist", split_seed=1337)
    assert again is not b
    assert torch.equal(again.attacker.y, b.attacker.y) and torch.equal(again.owner.x[:100], b.owner.x[:100])

    other = load_data("fmnist", split_seed=7)
    assert not torch.equal(other.attacker.y[:1000], b.attacker.y[:1000])
    other_idx = split_indices(60000, 1 / 3, 7)[1]
    assert not torch.equal(other_idx, attacker_idx)


@needs_fmnist
def test_fmnist_size_caps() -> None:
    b = load_data("fmnist", owner_size=500, attacker_size=300, test_size=200, attacker_fraction=0.5)
    assert (len(b.owner), len(b.attacker), len(b.test)) == (500, 300, 200)
    assert b.info["owner_size"] == 500 and b.info["attacker_fraction"] == 0.5
    # caps are subsets of the uncapped splits
    full = load_data("fmnist", attacker_fraction=0.5)
    full_owner_rows = {row.numpy().tobytes() for row in full.owner.x[:, 0, 14]}  # cheap row fingerprint
    assert all(row.numpy().tobytes() in full_owner_rows for row in b.owner.x[:50, 0, 14])


# ------------------------------------------------------------------------------------------
# Fashion-MNIST from a custom root
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["", "fashion-mnist", "FashionMNIST/raw"])
def test_fmnist_custom_root(tmp_path: Path, layout: str) -> None:
    _write_fake_fmnist(tmp_path / layout if layout else tmp_path, n_train=21, n_test=9)
    b = load_data("fmnist", root=tmp_path)
    assert b.info["source"].startswith(str(tmp_path))
    assert len(b.owner) + len(b.attacker) == 21 and len(b.attacker) == 7
    assert len(b.test) == 9
    assert b.owner.x.shape[1:] == (1, 28, 28)
    assert 0.0 <= float(b.owner.x.min()) and float(b.owner.x.max()) <= 1.0


def test_fmnist_uncompressed(tmp_path: Path) -> None:
    _write_fake_fmnist(tmp_path, gz=False)
    b = load_data("fmnist", root=tmp_path)
    assert len(b.test) == 10


def test_fmnist_truncated_gzip(tmp_path: Path) -> None:
    _write_fake_fmnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(UserError, match="train-images-idx3-ubyte.gz"):
        load_data("fmnist", root=tmp_path)


def test_fmnist_short_payload(tmp_path: Path) -> None:
    _write_fake_fmnist(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    payload = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(payload[:-28 * 28]))  # one image short of the header's count
    with pytest.raises(UserError, match="t10k-images-idx3-ubyte.gz.*truncated"):
        load_data("fmnist", root=tmp_path)


def test_fmnist_bad_magic(tmp_path: Path) -> None:
    _write_fake_fmnist(tmp_path)
    labels = tmp_path / "train-labels-idx1-ubyte.gz"
    images = tmp_path / "train-images-idx3-ubyte.gz"
    labels.write_bytes(images.read_bytes())  # an image file where labels belong
    with pytest.raises(UserError, match="magic"):
        load_data("fmnist", root=tmp_path)


def test_fmnist_missing_root_names_path(tmp_path: Path) -> None:
    missing = tmp_path / "does-not-exist"
    with pytest.raises(UserError, match=str(missing)):
        load_data("fmnist", root=missing)


def test_fmnist_not_found_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from wmbench.data.fmnist import FashionMNIST

    monkeypatch.setattr(FashionMNIST, "system_dirs", ())
    with pytest.raises(UserError) as info:
        load_data("fmnist", root=tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path) in message and "--download" in message and "dataset-fashion-mnist" in message


# ------------------------------------------------------------------------------------------
# digits and synthetic
# ------------------------------------------------------------------------------------------
def test_digits() -> None:
    b = load_data("digits")
    assert len(b.owner) + len(b.attacker) + len(b.test) == 1797
    assert abs(len(b.test) - 0.25 * 1797) <= 1
    assert b.owner.x.shape[1:] == (1, 28, 28) and (b.channels, b.size) == (1, 28)
    assert float(b.owner.x.max()) <= 1.0 and float(b.owner.x.min()) >= 0.0
    small = load_data("digits", options={"size": 16})
    assert small.test.x.shape[1:] == (1, 16, 16) and small.size == 16
    assert set(small.test.y.unique().tolist()) == set(range(10))  # stratified


def test_synthetic_deterministic_and_options() -> None:
    opts = {"train_size": 300, "test_size": 60}
    a = load_data("synthetic", options={**opts, "seed": 3})
    clear_cache()
    b = load_data("synthetic", options={**opts, "seed": 3})
    c = load_data("synthetic", options={**opts, "seed": 4})
    assert a is not b
    assert torch.equal(a.owner.x, b.owner.x) and torch.equal(a.test.y, b.test.y)
    assert not torch.equal(a.owner.x, c.owner.x)
    assert len(a.owner) + len(a.attacker) == 300 and len(a.test) == 60
    assert a.owner.x.shape[1:] == (1, 28, 28)
    assert float(a.owner.x.min()) >= 0.0 and float(a.owner.x.max()) <= 1.0
    # no two training samples are identical
    flat = a.owner.x.flatten(1)
    dist = torch.cdist(flat, flat) + torch.eye(len(flat)) * 1e9
    assert float(dist.min()) > 0.5

    d = load_data("synthetic", options={"num_classes": 4, "channels": 3, "size": 16, "train_size": 80, "test_size": 20})
    assert d.num_classes == 4 and len(d.class_names) == 4
    assert d.owner.x.shape[1:] == (3, 16, 16) and len(d.mean) == 3
    assert set(d.test.y.unique().tolist()) == {0, 1, 2, 3}


def test_synthetic_unknown_option() -> None:
    with pytest.raises(UserError, match="accepted:.*num_classes"):
        load_data("synthetic", options={"classes": 3})
    with pytest.raises(UserError, match="num_classes"):
        load_data("synthetic", options={"num_classes": "many"})


def test_synthetic_learnable() -> None:
    b = load_data("synthetic", options={"train_size": 1200, "test_size": 300, "seed": 1})
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(4),
        torch.nn.Flatten(), torch.nn.Linear(8 * 7 * 7, 10),
    )
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    train = b.owner
    for _ in range(2):
        perm = torch.randperm(len(train))
        for i in range(0, len(train), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(train.x[idx]), train.y[idx]).backward()
            opt.step()
    with torch.no_grad():
        acc = (model(b.test.x).argmax(1) == b.test.y).float().mean().item()
    assert acc > 0.9


# ------------------------------------------------------------------------------------------
# CIFAR (no files, never downloads)
# ------------------------------------------------------------------------------------------
@pytest.fixture
def forbid_torchvision_cifar(monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision

    def boom(*args, **kwargs):  # pragma: no cover - reached only on a bug
        raise AssertionError("torchvision CIFAR reader must not be called")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", boom)
    monkeypatch.setattr(torchvision.datasets, "CIFAR100", boom)


def test_cifar10_without_root(no_env: None, forbid_torchvision_cifar: None) -> None:
    with pytest.raises(UserError, match="--data-root.*cifar-10-batches-py"):
        load_data("cifar10")


def test_cifar_empty_root(tmp_path: Path, forbid_torchvision_cifar: None) -> None:
    with pytest.raises(UserError, match="cifar-10-batches-py"):
        load_data("cifar10", root=tmp_path)
    with pytest.raises(UserError, match="cifar-100-python"):
        load_data("cifar100", root=tmp_path)
    with pytest.raises(UserError, match=str(tmp_path / "nope")):
        load_data("cifar10", root=tmp_path / "nope")


# ------------------------------------------------------------------------------------------
# ImageFolder
# ------------------------------------------------------------------------------------------
def _write_tree(root: Path, splits=("train", "val"), per_class: int = 3) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in splits:
        for cls in ("cat", "dog"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(per_class):
                w, h = 40 + 4 * i, 30 + 2 * i  # non-square, varied sizes
                arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                Image.fromarray(arr).save(folder / f"img{i}.png")


def test_imagefolder(tmp_path: Path) -> None:
    _write_tree(tmp_path)
    b = load_data("imagefolder", root=tmp_path, attacker_fraction=0.5, options={"size": 16})
    assert b.num_classes == 2 and b.class_names == ("cat", "dog")
    assert len(b.owner) + len(b.attacker) == 6 and len(b.test) == 6
    assert b.owner.x.shape[1:] == (3, 16, 16) and (b.channels, b.size) == (3, 16)
    assert b.test.y.tolist() == [0, 0, 0, 1, 1, 1]
    assert float(b.test.x.max()) <= 1.0 and float(b.test.x.min()) >= 0.0

    gray = load_data("imagefolder", root=tmp_path, options={"size": 8, "channels": 1, "max_per_class": 2})
    assert gray.test.x.shape == (4, 1, 8, 8) and len(gray.mean) == 1


def test_imagefolder_holdout_and_errors(tmp_path: Path) -> None:
    _write_tree(tmp_path, splits=("train",), per_class=5)
    b = load_data("imagefolder", root=tmp_path, options={"size": 8})
    assert len(b.test) == 2 and len(b.owner) + len(b.attacker) == 8  # 80/20 per class
    with pytest.raises(UserError, match=str(tmp_path / "missing")):
        load_data("imagefolder", root=tmp_path / "missing")
    with pytest.raises(UserError, match="train"):
        load_data("imagefolder", root=tmp_path, options={"train_dir": "training"})


def test_imagefolder_needs_root(no_env: None) -> None:
    with pytest.raises(UserError, match="--data-root"):
        load_data("imagefolder")


# ------------------------------------------------------------------------------------------
# conform, validation, caching
# ------------------------------------------------------------------------------------------
def test_conform() -> None:
    gray = Split(torch.rand(5, 1, 8, 8), torch.arange(5))
    rgb = conform(gray, 3, 8)
    assert rgb.x.shape == (5, 3, 8, 8) and torch.equal(rgb.x[:, 0], rgb.x[:, 2])
    big = conform(gray, 1, 28)
    assert big.x.shape == (5, 1, 28, 28)
    assert float(big.x.min()) >= 0.0 and float(big.x.max()) <= 1.0
    assert torch.equal(big.y, gray.y)

    colour = Split(torch.rand(3, 3, 32, 32), torch.arange(3))
    g = conform(colour, 1, 28)
    assert g.x.shape == (3, 1, 28, 28)
    assert float(g.x.min()) >= 0.0 and float(g.x.max()) <= 1.0
    same = conform(colour, 1, 32)
    expected = 0.299 * colour.x[:, 0] + 0.587 * colour.x[:, 1] + 0.114 * colour.x[:, 2]
    assert torch.allclose(same.x[:, 0], expected, atol=1e-6)
    assert conform(colour, 3, 32) is colour
    with pytest.raises(UserError):
        conform(Split(torch.rand(2, 2, 4, 4), torch.arange(2)), 3, 4)


def test_conform_digits_to_rgb() -> None:
    d = load_data("digits", options={"size": 8})
    q = conform(d.attacker, 3, 32)
    assert q.x.shape == (len(d.attacker), 3, 32, 32)


def test_load_data_validation() -> None:
    for bad in (0, 1, 1.5, -0.1):
        with pytest.raises(UserError, match="attacker_fraction"):
            load_data("synthetic", attacker_fraction=bad)
    with pytest.raises(UserError, match="owner_size"):
        load_data("synthetic", owner_size=0)
    with pytest.raises(UserError, match="unknown dataset"):
        load_data("no-such-dataset")


def test_load_data_cached() -> None:
    opts = {"train_size": 100, "test_size": 20}
    a = load_data("synthetic", options=opts)
    b = load_data("synthetic", options=dict(reversed(list(opts.items()))))
    assert a is b
    assert load_data("synthetic", options=opts, split_seed=2) is not a


def test_cifar_corrupt_folder(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "data_batch_1").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="cifar-10-batches-py.*corrupt"):
        load_data("cifar10", root=tmp_path)
