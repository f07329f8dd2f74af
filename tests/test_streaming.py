"""Image sets larger than memory: ImageFolder trees decoded once into uint8 shards and read in
batches (wmbench.data.shards), checked against the in-memory path on a generated tree of a few
thousand small images under a deliberately tiny memory budget."""
from __future__ import annotations

import os
import pickle
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from wmbench.data import ImageArray, clear_cache, conform, load_data, training_pool
from wmbench.data import shards
from wmbench.data.imagefolder import ImageFolderData
from wmbench.errors import UserError

CLASSES, PER_CLASS, SIZE = 3, 800, 12


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """2,400 RGB images of 14x12 pixels (cropped and resized to 12) in 3 class folders."""
    from PIL import Image

    root = tmp_path_factory.mktemp("tree")
    rng = np.random.default_rng(0)
    for c in range(CLASSES):
        folder = root / "train" / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(PER_CLASS):
            pixels = rng.integers(0, 256, (12, 14, 3), dtype=np.uint8)
            pixels[..., c] = np.clip(pixels[..., c].astype(int) + 60, 0, 255)  # a learnable colour cue
            Image.fromarray(pixels).save(folder / f"{i:04d}.png")
    return root


@pytest.fixture(autouse=True)
def fresh(tmp_path, monkeypatch):
    monkeypatch.setenv(shards.SHARDS_ENV, str(tmp_path / "shards"))
    clear_cache()
    yield
    clear_cache()


def _load(tree, **options):
    clear_cache()
    return load_data("imagefolder", root=tree, options={"size": SIZE, **options})


def test_a_tiny_budget_keeps_the_pool_on_disk_with_the_same_images(tree):
    memory = _load(tree, stream="never")
    disk = _load(tree, memory_budget_mb=0)  # stream=auto, nothing fits
    assert not memory.attacker.on_disk and disk.attacker.on_disk
    assert isinstance(disk.attacker.x, ImageArray)
    # the owner's data and the test set are always read into memory
    assert not disk.owner.on_disk and not disk.test.on_disk
    assert torch.equal(disk.owner.x, memory.owner.x) and torch.equal(disk.test.x, memory.test.x)
    assert torch.equal(disk.attacker.x.materialize(), memory.attacker.x)
    assert torch.equal(disk.attacker.y, memory.attacker.y)
    assert disk.mean == memory.mean and disk.std == memory.std
    assert len(disk.attacker) == len(memory.attacker) and disk.attacker.x.shape == memory.attacker.x.shape


def test_the_shard_is_written_once_and_reused(tree, tmp_path, monkeypatch):
    _load(tree, stream="always")
    metas = sorted((tmp_path / "shards").glob("*/meta.json"))
    assert len(metas) == 2  # one per split: the training images and the held-out test images
    stamps = {m: m.stat().st_mtime_ns for m in metas}

    def refuse(*a, **k):
        raise AssertionError("the shard was written again")

    monkeypatch.setattr("wmbench.data.imagefolder.write_shard", refuse)
    again = _load(tree, stream="always")
    assert again.attacker.on_disk
    assert {m: m.stat().st_mtime_ns for m in metas} == stamps


def test_an_interrupted_shard_is_not_reused(tmp_path):
    folder = tmp_path / "s"
    (folder / "k").mkdir(parents=True)
    (folder / "k" / shards.IMAGES_FILE).write_bytes(b"\0" * 10)  # no meta.json: half-written
    assert shards.find_shard(str(folder), "k") is None
    decode = lambda p: np.full((2, 2, 1), int(p), dtype=np.uint8)  # noqa: E731
    arr = shards.write_shard(str(folder), "k", ["1", "2", "3"], decode, size=2, channels=1, chunk=2)
    assert shards.find_shard(str(folder), "k") is not None
    assert torch.equal(arr[:] * 255, torch.tensor([1.0, 2, 3]).view(3, 1, 1, 1).expand(3, 1, 2, 2))
    # a truncated images file is not taken for a finished shard either
    with open(folder / "k" / shards.IMAGES_FILE, "r+b") as fh:
        fh.truncate(5)
    assert shards.find_shard(str(folder), "k") is None


def test_decoding_is_chunked(tree, monkeypatch):
    """Peak numpy memory while decoding: one chunk, not the set (tracemalloc sees numpy buffers)."""
    files = sorted(str(p) for p in (tree / "train").rglob("*.png"))
    size = 32  # decoded images large enough that the fixed costs (file names, threads) are small
    source = ImageFolderData(size=size, stream="always", workers=1)

    def peak(run):
        tracemalloc.start()
        run()
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top

    monkeypatch.setattr(shards, "CHUNK", 100)
    streamed = peak(lambda: source._shard(files, "RGB"))
    clear_cache()
    in_memory = peak(lambda: ImageFolderData(size=size, stream="never", workers=1)._read([(f, 0) for f in files]))
    whole = len(files) * size * size * 3
    assert in_memory >= whole  # the in-memory path stacks every image at once
    assert streamed < whole / 4


def test_image_array_indexes_like_a_tensor(tree):
    disk = _load(tree, stream="always").attacker.x
    ref = disk.materialize()
    n = len(disk)
    cases = [5, -1, slice(3, 40, 7), slice(None), torch.tensor([9, 2, 2, -3]), [0, n - 1],
             np.array([4, 1]), torch.arange(n) % 3 == 0, torch.tensor([], dtype=torch.long), slice(0, 0)]
    for key in cases:
        got, want = disk[key], ref[key]
        assert got.dtype == torch.float32 and torch.equal(got, want), key
    view = disk.rows(torch.tensor([7, 3, 3]))
    assert len(view) == 3 and torch.equal(view[:], ref[[7, 3, 3]]) and torch.equal(view[-1], ref[3])
    both = shards.concat([view, disk.rows(slice(0, 2))])
    assert torch.equal(both[:], ref[[7, 3, 3, 0, 1]])
    restored = pickle.loads(pickle.dumps(view))  # Ray ships splits to workers
    assert torch.equal(restored[:], view[:])
    with pytest.raises(IndexError):
        disk[n]
    with pytest.raises(IndexError):
        disk[torch.tensor([n])]
    with pytest.raises(TypeError):
        iter(disk)


def test_a_pool_converted_for_another_model_is_converted_per_batch(tree):
    memory_pool = conform(training_pool("imagefolder", root=tree, options={"size": SIZE, "stream": "never"}), 1, 8)
    clear_cache()
    disk_pool = conform(training_pool("imagefolder", root=tree, options={"size": SIZE, "stream": "always"}), 1, 8)
    assert disk_pool.on_disk and disk_pool.x.shape == memory_pool.x.shape == (len(memory_pool), 1, 8, 8)
    idx = torch.randperm(len(memory_pool), generator=torch.Generator().manual_seed(0))[:300]
    assert torch.equal(disk_pool.x[idx], memory_pool.x[idx])
    assert torch.equal(disk_pool.y, memory_pool.y)


def test_training_pool_keeps_the_old_row_order():
    """A cross-dataset pool is the owner's rows then the attacker's, as before streaming existed."""
    bundle = load_data("digits")
    pool = training_pool("digits")
    assert torch.equal(pool.x, torch.cat([bundle.owner.x, bundle.attacker.x]))
    assert torch.equal(pool.y, torch.cat([bundle.owner.y, bundle.attacker.y]))


def test_knockoff_on_a_streamed_pool_steals_the_same_model(tree, monkeypatch):
    """The headline use: a query pool too large for memory. Same seed, same pool rows, same
    numbers — whether the pool is on disk or in memory."""
    from wmbench import run
    import wmbench.data.imagefolder as imagefolder

    def steal(budget_bytes, out):
        clear_cache()
        monkeypatch.setattr(imagefolder, "default_memory_budget", lambda: budget_bytes)
        table = run("badnets", "knockoff", "synthetic", profile="smoke", out=str(out), data_root=str(tree),
                    overrides=["attacks.knockoff.query_set=imagefolder", "attacks.knockoff.budget=600"],
                    executor="serial", progress=False)
        rows = table[(table.attack == "knockoff") & (table.stage == "attack")
                     & ~table.metric.str.endswith("_s")]  # wall times differ, nothing else may
        return rows.set_index(["labels", "metric"]).sort_index()

    on_disk = steal(0, Path(os.environ[shards.SHARDS_ENV]).parent / "a")
    assert any(Path(os.environ[shards.SHARDS_ENV]).glob("*/meta.json")), "the pool was not streamed"
    in_memory = steal(1 << 40, Path(os.environ[shards.SHARDS_ENV]).parent / "b")
    assert set(on_disk.status) == {"ok"} and len(on_disk) == len(in_memory) > 0
    assert {"acc", "wsr", "fidelity"} <= set(on_disk.index.get_level_values("metric"))
    assert list(on_disk.index) == list(in_memory.index)
    assert list(on_disk.value) == list(in_memory.value)
    assert list(on_disk.queries) == list(in_memory.queries) == [600] * len(on_disk)


def test_bad_stream_options(tree):
    with pytest.raises(UserError, match="stream must be one of auto, always, never"):
        ImageFolderData(stream="sometimes")
    with pytest.raises(UserError, match="memory_budget_mb"):
        ImageFolderData(memory_budget_mb=-1)


def test_an_unwritable_shard_folder_is_one_clear_error(tree, tmp_path, monkeypatch):
    def deny(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(shards.os, "makedirs", deny)
    with pytest.raises(UserError, match="cannot write the image shard .*shard_dir"):
        _load(tree, stream="always")


def test_fit_reads_an_on_disk_set_batch_by_batch(tree, monkeypatch):
    """A split on disk can be trained on directly; the GPU engine's resident copy is skipped for it
    (the CPU stands in for an accelerator here)."""
    from wmbench import training
    from wmbench.config import TrainConfig
    from wmbench.models import build_model

    monkeypatch.setattr(training, "_on_device", lambda device: True)
    pool = _load(tree, stream="always").attacker
    assert pool.on_disk
    torch.manual_seed(0)
    model = build_model("naivenet", in_channels=3, num_classes=CLASSES, input_size=SIZE)
    history = training.fit(model, (pool.x, pool.y), TrainConfig(epochs=1, batch_size=128, lr_step=0), progress=False)
    assert len(history) == 1 and history[0]["loss"] > 0
