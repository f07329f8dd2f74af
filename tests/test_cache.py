"""Tests for wmbench.cache: content-addressed artifacts, checksums, corruption recovery, atomic writes."""
from __future__ import annotations

import json
import logging
import os

import pytest
import torch

from wmbench.cache import ArtifactStore, atomic_write_bytes, atomic_write_text
from wmbench.config import stable_hash
from wmbench.errors import CorruptArtifact

SPEC = {"dataset": "synthetic", "seed": 0, "train": {"epochs": 2, "lr": 0.001}}


def _tensors(offset: float = 0.0):
    return {
        "model/w": torch.arange(12, dtype=torch.float32).reshape(3, 4) + offset,
        "keys/y": torch.tensor([1, 2, 3], dtype=torch.long),
    }


class Builder:
    """A counting builder returning fresh tensors."""

    def __init__(self, offset: float = 0.0, meta=None):
        self.calls = 0
        self.offset = offset
        self.meta = meta if meta is not None else {"model_spec": {"arch": "tinycnn"}, "note": "x"}

    def __call__(self):
        self.calls += 1
        return _tensors(self.offset), dict(self.meta)


def _assert_expected(tensors, offset: float = 0.0):
    expected = _tensors(offset)
    assert set(tensors) == set(expected)
    for k, v in expected.items():
        assert tensors[k].dtype == v.dtype
        assert torch.equal(tensors[k], v), k


def test_builds_once_then_hits(tmp_path):
    store = ArtifactStore(tmp_path)
    build = Builder()
    t1, m1 = store.get_or_build("benign", SPEC, build)
    assert build.calls == 1 and (store.builds, store.hits) == (1, 0)
    _assert_expected(t1)
    assert m1 == {"model_spec": {"arch": "tinycnn"}, "note": "x"}

    t2, m2 = store.get_or_build("benign", SPEC, build)
    assert build.calls == 1 and (store.builds, store.hits) == (1, 1)
    _assert_expected(t2)
    assert m2 == m1

    store.get_or_build("benign", dict(reversed(list(SPEC.items()))), build)  # key order irrelevant
    assert build.calls == 1 and store.hits == 2


def test_second_store_on_same_root_hits(tmp_path):
    build = Builder()
    ArtifactStore(tmp_path).get_or_build("victim", SPEC, build)
    other = ArtifactStore(tmp_path)
    tensors, _ = other.get_or_build("victim", SPEC, build)
    assert build.calls == 1 and (other.builds, other.hits) == (0, 1)
    _assert_expected(tensors)


def test_keys_differ_by_spec_and_kind(tmp_path):
    store = ArtifactStore(tmp_path)
    a, b = Builder(0.0), Builder(100.0)
    store.get_or_build("benign", SPEC, a)
    other = {**SPEC, "seed": 1}
    tb, _ = store.get_or_build("benign", other, b)
    assert (a.calls, b.calls) == (1, 1)
    _assert_expected(tb, 100.0)
    assert store.key(SPEC) != store.key(other)
    assert store.key(SPEC) == stable_hash(SPEC, length=24)
    assert len(store.key(SPEC)) == 24
    # same spec, other kind: a separate artifact
    c = Builder(5.0)
    tc, _ = store.get_or_build("victim", SPEC, c)
    assert c.calls == 1
    _assert_expected(tc, 5.0)
    # and the first one is still intact
    ta, _ = store.get_or_build("benign", SPEC, a)
    assert a.calls == 1
    _assert_expected(ta, 0.0)


def test_files_layout_and_record(tmp_path):
    store = ArtifactStore(tmp_path)
    store.get_or_build("benign", SPEC, Builder())
    key = store.key(SPEC)
    pt, js = store.paths("benign", key)
    assert pt == tmp_path / "benign" / f"{key}.pt"
    assert js == tmp_path / "benign" / f"{key}.json"
    assert pt.is_file() and js.is_file()
    record = json.loads(js.read_text())
    assert record["kind"] == "benign"
    assert record["key"] == key
    assert record["spec"] == SPEC
    assert record["meta"] == {"model_spec": {"arch": "tinycnn"}, "note": "x"}
    import hashlib

    assert record["sha256"] == hashlib.sha256(pt.read_bytes()).hexdigest()
    # no temp files remain
    assert not [p for p in (tmp_path / "benign").iterdir() if p.name.endswith(".tmp")]


def test_record_keeps_the_build_time(tmp_path, monkeypatch):
    clock = iter([100.0, 142.5, 200.0, 201.25])  # two builds: 100 s to 142.5 s, then 200 s to 201.25 s
    monkeypatch.setattr("wmbench.cache.time.perf_counter", lambda: next(clock))
    store = ArtifactStore(tmp_path)
    store.get_or_build("benign", SPEC, Builder())
    record = json.loads(store.paths("benign", store.key(SPEC))[1].read_text())
    assert record["build_s"] == 42.5
    store.build("benign", SPEC, Builder(offset=1.0))  # a forced rebuild (--overwrite) is timed too
    record = json.loads(store.paths("benign", store.key(SPEC))[1].read_text())
    assert record["build_s"] == 1.25
    store.save("victim", SPEC, _tensors())  # saved without a build time: no field, not a made-up one
    assert "build_s" not in json.loads(store.paths("victim", store.key(SPEC))[1].read_text())


def test_saved_file_loads_with_weights_only(tmp_path):
    store = ArtifactStore(tmp_path)
    store.get_or_build("benign", SPEC, Builder())
    pt, _ = store.paths("benign", store.key(SPEC))
    loaded = torch.load(pt, map_location="cpu", weights_only=True)
    _assert_expected(loaded)


def test_save_stores_detached_cpu_contiguous(tmp_path):
    store = ArtifactStore(tmp_path)
    w = torch.randn(4, 3, requires_grad=True)
    t = w.t()  # non-contiguous, requires grad
    store.save("x", SPEC, {"t": t})
    loaded, meta = store.load("x", SPEC)
    assert meta == {}
    assert torch.equal(loaded["t"], t.detach())
    assert loaded["t"].is_contiguous() and not loaded["t"].requires_grad


def _corrupt_truncate(pt):
    data = pt.read_bytes()
    pt.write_bytes(data[: len(data) // 2])


def _corrupt_flip(pt):
    data = bytearray(pt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pt.write_bytes(bytes(data))


def _corrupt_flip_last(pt):
    data = bytearray(pt.read_bytes())
    data[-1] ^= 0x01
    pt.write_bytes(bytes(data))


def _corrupt_empty(pt):
    pt.write_bytes(b"")


def _corrupt_delete(pt):
    pt.unlink()


@pytest.mark.parametrize("corrupt", [_corrupt_truncate, _corrupt_flip, _corrupt_flip_last, _corrupt_empty, _corrupt_delete])
def test_corrupt_weights_detected_and_rebuilt(tmp_path, corrupt, caplog):
    store = ArtifactStore(tmp_path)
    build = Builder()
    store.get_or_build("benign", SPEC, build)
    pt, js = store.paths("benign", store.key(SPEC))
    good = pt.read_bytes()
    corrupt(pt)
    with pytest.raises(CorruptArtifact):
        store.load("benign", SPEC)
    with caplog.at_level(logging.WARNING, logger="wmbench.cache"):
        tensors, meta = store.get_or_build("benign", SPEC, build)
    assert build.calls == 2
    assert (store.builds, store.hits) == (2, 0)
    _assert_expected(tensors)
    assert meta["note"] == "x"
    assert any("corrupt" in r.getMessage() for r in caplog.records)
    # the rebuilt artifact is valid again and is now a hit
    assert pt.read_bytes() == good
    tensors, _ = store.get_or_build("benign", SPEC, build)
    assert build.calls == 2 and store.hits == 1
    _assert_expected(tensors)


def test_missing_json_rebuilt(tmp_path):
    store = ArtifactStore(tmp_path)
    build = Builder()
    store.get_or_build("benign", SPEC, build)
    _, js = store.paths("benign", store.key(SPEC))
    js.unlink()
    assert store.load("benign", SPEC) is None  # absent, not corrupt
    tensors, _ = store.get_or_build("benign", SPEC, build)
    assert build.calls == 2
    _assert_expected(tensors)
    assert js.is_file()


@pytest.mark.parametrize("garbage", [b"not json at all", b"{\"sha256\": \"abc", b"", b"\xff\xfe\x00garbage"])
def test_garbage_json_rebuilt(tmp_path, garbage):
    store = ArtifactStore(tmp_path)
    build = Builder()
    store.get_or_build("benign", SPEC, build)
    _, js = store.paths("benign", store.key(SPEC))
    js.write_bytes(garbage)
    with pytest.raises(CorruptArtifact):
        store.load("benign", SPEC)
    tensors, _ = store.get_or_build("benign", SPEC, build)
    assert build.calls == 2
    _assert_expected(tensors)
    assert "sha256" in json.loads(js.read_text())


def test_json_without_checksum_rebuilt(tmp_path):
    store = ArtifactStore(tmp_path)
    build = Builder()
    store.get_or_build("benign", SPEC, build)
    _, js = store.paths("benign", store.key(SPEC))
    record = json.loads(js.read_text())
    del record["sha256"]
    js.write_text(json.dumps(record))
    with pytest.raises(CorruptArtifact):
        store.load("benign", SPEC)
    store.get_or_build("benign", SPEC, build)
    assert build.calls == 2


@pytest.mark.parametrize("garbage", ["[]", "null", "3", "\"text\""])
def test_non_object_json_rebuilt(tmp_path, garbage):
    store = ArtifactStore(tmp_path)
    build = Builder()
    store.get_or_build("benign", SPEC, build)
    _, js = store.paths("benign", store.key(SPEC))
    js.write_text(garbage)
    tensors, _ = store.get_or_build("benign", SPEC, build)
    assert build.calls == 2
    _assert_expected(tensors)


def test_load_checksum_mismatch_raises(tmp_path):
    store = ArtifactStore(tmp_path)
    store.save("benign", SPEC, _tensors(), {"a": 1})
    pt, js = store.paths("benign", store.key(SPEC))
    record = json.loads(js.read_text())
    record["sha256"] = "0" * 64
    js.write_text(json.dumps(record))
    with pytest.raises(CorruptArtifact, match="checksum"):
        store.load("benign", SPEC)


def test_load_absent_returns_none(tmp_path):
    assert ArtifactStore(tmp_path).load("benign", SPEC) is None


def test_load_valid_checksum_but_not_torch_file(tmp_path):
    import hashlib

    store = ArtifactStore(tmp_path)
    store.save("benign", SPEC, _tensors())
    pt, js = store.paths("benign", store.key(SPEC))
    pt.write_bytes(b"this is not a torch file")
    record = json.loads(js.read_text())
    record["sha256"] = hashlib.sha256(pt.read_bytes()).hexdigest()
    js.write_text(json.dumps(record))
    with pytest.raises(CorruptArtifact, match="cannot be loaded"):
        store.load("benign", SPEC)


def test_builder_error_propagates_and_leaves_nothing(tmp_path):
    store = ArtifactStore(tmp_path)

    def boom():
        raise RuntimeError("build failed")

    with pytest.raises(RuntimeError, match="build failed"):
        store.get_or_build("benign", SPEC, boom)
    pt, js = store.paths("benign", store.key(SPEC))
    assert not pt.exists() and not js.exists()
    assert store.builds == 0
    # a later build works (the lock was released)
    build = Builder()
    store.get_or_build("benign", SPEC, build)
    assert build.calls == 1


# ------------------------------------------------------------------------------------------
# atomic writes
# ------------------------------------------------------------------------------------------
def test_atomic_write_text_no_temp_files(tmp_path):
    target = tmp_path / "sub" / "dir" / "file.txt"
    atomic_write_text(target, "hello")
    atomic_write_text(target, "world \u00e9")
    assert target.read_text() == "world \u00e9"
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.txt"]


def test_atomic_write_bytes_failure_cleans_up(tmp_path):
    target = tmp_path / "file.bin"
    atomic_write_bytes(target, b"old")
    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"  # the previous content survives
    assert sorted(os.listdir(tmp_path)) == ["file.bin"]


def test_atomic_writes_get_normal_file_permissions(tmp_path):
    from wmbench.cache import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        os.umask(0o077)
        atomic_write_text(tmp_path / "b.json", "{}")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.json").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "a.json").read_text() == "{}"
