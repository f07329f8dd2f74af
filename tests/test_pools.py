"""Query pools as a study: MNIST / Kuzushiji-MNIST / EMNIST idx sources, pools of several sets,
and transformations of the attacker's own images (flip, crop, mixup, cutmix)."""
from __future__ import annotations

import dataclasses
import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from wmbench.augment import CROP_PADDING, TRANSFORMS as POOL_TRANSFORMS, crop, cutmix, flip, mixup
from wmbench.augment import compose as pool_transform
from wmbench.attacks._stealing import pool_metrics, query_pool, query_rows
from wmbench.blackbox import Blackbox
from wmbench.config import NEW_SETTING, identity_dict, resolve
from wmbench.data import clear_cache, load_data
from wmbench.errors import UserError
from wmbench.registry import ATTACKS

from test_stealing import attacker_ctx


def _idx(path: Path, array: np.ndarray, magic: int) -> None:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(str(path) + ".gz", "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def _write_set(folder: Path, prefix: str = "", n: int = 60, classes: int = 10, first_label: int = 0,
               test_stem: str = "t10k") -> np.ndarray:
    rng = np.random.default_rng(len(prefix) + n)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % classes) + first_label
    for split, count in (("train", n), (test_stem, n // 2)):
        _idx(folder / f"{prefix}{split}-images-idx3-ubyte", images[:count], 2051)
        _idx(folder / f"{prefix}{split}-labels-idx1-ubyte", labels[:count], 2049)
    return images


@pytest.fixture(autouse=True)
def fresh():
    clear_cache()
    yield
    clear_cache()


@pytest.mark.parametrize("name,subdir", [("mnist", "MNIST/raw"), ("mnist", "mnist"), ("mnist", ""),
                                         ("kmnist", "KMNIST/raw"), ("kmnist", "kmnist")])
def test_mnist_and_kmnist_are_read_from_the_data_root(tmp_path, name, subdir):
    images = _write_set(tmp_path / subdir if subdir else tmp_path)
    bundle = load_data(name, root=tmp_path, attacker_fraction=0.5)
    assert bundle.shape == (1, 28, 28) and bundle.num_classes == 10
    assert len(bundle.owner) + len(bundle.attacker) == 60 and len(bundle.test) == 30
    full = torch.cat([bundle.owner.x, bundle.attacker.x])
    assert full.min() >= 0 and full.max() <= 1
    # pixels as stored (row-major), values /255
    assert any(torch.equal(x[0], torch.from_numpy(images[0]).float() / 255) for x in full)
    # mean / std from the data
    assert abs(bundle.mean[0] - float(full.mean())) < 0.05


def test_emnist_letters_are_upright_and_zero_based(tmp_path):
    stored = _write_set(tmp_path / "gzip", prefix="emnist-letters-", n=52, classes=26, first_label=1,
                        test_stem="test")
    bundle = load_data("emnist", root=tmp_path, options={"split": "letters"}, attacker_fraction=0.5)
    assert bundle.num_classes == 26
    ys = torch.cat([bundle.owner.y, bundle.attacker.y])
    assert int(ys.min()) == 0 and int(ys.max()) == 25
    xs = torch.cat([bundle.owner.x, bundle.attacker.x])
    upright = torch.from_numpy(stored[0].T.copy()).float() / 255  # EMNIST stores images transposed
    assert any(torch.equal(x[0], upright) for x in xs)


def test_idx_sources_say_what_is_missing(tmp_path):
    with pytest.raises(UserError, match="MNIST not found in .*train-images-idx3-ubyte.gz"):
        load_data("mnist", root=tmp_path)
    with pytest.raises(UserError, match="EMNIST \\(balanced\\) not found .*emnist-balanced-train-images"):
        load_data("emnist", root=tmp_path)
    with pytest.raises(UserError, match="split must be one of balanced, byclass"):
        load_data("emnist", root=tmp_path, options={"split": "greek"})


# -- pools of several sets ----------------------------------------------------------------------
def test_a_pool_of_several_sets_joins_them_in_order():
    synth = load_data("synthetic", options={"train_size": 300, "test_size": 60})
    ctx = dataclasses.replace(attacker_ctx(synth), data_root=None)
    digits = load_data("digits")
    pool = query_pool(ctx, "attacker+digits")
    n_digits = len(digits.owner) + len(digits.attacker)
    assert len(pool) == len(synth.attacker) + n_digits
    assert torch.equal(pool.x[: len(synth.attacker)], synth.attacker.x)
    assert pool.x.shape[1:] == synth.attacker.x.shape[1:]  # digits converted to the victim's shape
    assert pool_metrics(pool, "attacker+digits")["pool_in_distribution"] == 0.0
    assert pool_metrics(pool, "attacker")["pool_in_distribution"] == 1.0


def test_unknown_pool_parts_are_refused():
    cls = ATTACKS.get("knockoff").Config
    with pytest.raises(UserError, match="unknown attacks.knockoff.query_set 'attacker\\+nope'.*joined by '\\+'"):
        resolve(cls, "smoke", {"query_set": "attacker+nope"}, section="attacks.knockoff")
    with pytest.raises(UserError, match="pool_transforms must be distinct names among flip, crop, mixup, cutmix"):
        resolve(cls, "smoke", {"pool_transforms": ["flip", "rotate"]}, section="attacks.knockoff")
    with pytest.raises(UserError, match="pool_transforms must be distinct"):
        resolve(cls, "smoke", {"pool_transforms": ["flip", "flip"]}, section="attacks.knockoff")


# -- transformations ----------------------------------------------------------------------------
def _batch(n=64, c=3, s=12, seed=0):
    return torch.rand((n, c, s, s), generator=torch.Generator().manual_seed(seed))


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", POOL_TRANSFORMS)
def test_transforms_keep_shape_range_and_are_seeded(name):
    x = _batch()
    t = pool_transform([name], _gen(1))
    out = t(x)
    assert out.shape == x.shape and out.dtype == x.dtype and out.min() >= 0 and out.max() <= 1
    assert torch.equal(pool_transform([name], _gen(1))(x), out)  # same seed, same queries
    assert not torch.equal(pool_transform([name], _gen(2))(x), out)
    assert not torch.equal(out, x)
    assert torch.equal(x, _batch())  # the pool itself is untouched


def _python_calls(fn) -> int:
    """Python function calls and calls into C functions made from Python while ``fn()`` runs."""
    import sys

    calls = 0

    def count(frame, event, arg):
        nonlocal calls
        if event in ("call", "c_call"):
            calls += 1

    sys.setprofile(count)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return calls


@pytest.mark.parametrize("name", POOL_TRANSFORMS)
def test_transforms_run_no_python_loop_over_the_images(name):
    """The hot path is batched tensor code: transforming 512 images makes exactly as many
    Python calls as transforming 8, so no step loops over the images in Python."""
    t = pool_transform([name, "flip"] if name != "flip" else [name], _gen(3))
    small, large = _batch(n=8), _batch(n=512)
    t(small)  # first call: lazy imports and caches
    assert _python_calls(lambda: t(small)) == _python_calls(lambda: t(large))


def test_flip_mirrors_about_half_of_the_images():
    x = _batch(n=400, c=1)
    out = flip(x, _gen())
    mirrored = [bool(torch.equal(o, i.flip(2))) for o, i in zip(out, x)]
    kept = [bool(torch.equal(o, i)) for o, i in zip(out, x)]
    assert all(m or k for m, k in zip(mirrored, kept))
    assert 150 < sum(mirrored) < 250


def test_crop_is_a_window_of_the_zero_padded_image():
    x = _batch(n=20, c=2, s=8)
    out = crop(x, _gen())
    p = CROP_PADDING
    padded = torch.nn.functional.pad(x, (p, p, p, p))
    for o, pad in zip(out, padded):
        windows = [(dy, dx) for dy in range(2 * p + 1) for dx in range(2 * p + 1)
                   if torch.equal(o, pad[:, dy:dy + 8, dx:dx + 8])]
        assert windows, "not a window of the padded image"


def test_mixup_blends_two_pool_images():
    x = _batch(n=32, c=1, s=4)
    out = mixup(x, _gen())
    for o in out:
        # o = lam * x_i + (1 - lam) * x_j for some i, j and one lam in [0, 1]
        assert any(_is_blend(o, x[i], x[j]) for i in range(32) for j in range(32))


def _is_blend(o, a, b):
    d = a - b
    if d.abs().max() < 1e-6:
        return torch.allclose(o, a, atol=1e-5)
    lam = ((o - b) * d).sum() / (d * d).sum()
    return 0 <= lam <= 1 and torch.allclose(o, lam * a + (1 - lam) * b, atol=1e-5)


def test_cutmix_pastes_a_box_of_another_image():
    x = _batch(n=16, c=3, s=10)
    out = cutmix(x, _gen())
    g = _gen()
    partner = torch.randperm(16, generator=g)
    for i, o in enumerate(out):
        own = (o == x[i]).all(0)
        other = (o == x[partner[i]]).all(0)
        assert bool((own | other).all())
        rows, cols = torch.nonzero(other & ~own, as_tuple=True)
        if rows.numel():  # the pasted pixels form one box
            box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
            assert box == rows.numel()


def test_query_rows_sends_the_transformed_images():
    x = _batch(n=10, c=1, s=28)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    box = Blackbox(model, num_classes=10, input_shape=(1, 28, 28))
    index = torch.arange(10)
    plain_sent, _ = query_rows(box, x, index, labels="soft")
    assert plain_sent is None  # pool rows: nothing copied
    sent, y = query_rows(box, x, index, labels="soft", transform=pool_transform(["flip", "crop"], _gen()),
                         batch_size=4)
    assert sent is not None and sent.shape == x.shape and not torch.equal(sent, x)
    assert torch.allclose(y, torch.softmax(model(sent), 1), atol=1e-6)
    assert box.queries == 20


# -- identity ------------------------------------------------------------------------------------
def test_a_new_setting_at_its_default_leaves_cell_ids_alone():
    cls = ATTACKS.get("knockoff").Config
    assert any(f.metadata == NEW_SETTING for f in dataclasses.fields(cls) if f.name == "pool_transforms")
    default = resolve(cls, "quick", {})
    assert "pool_transforms" not in identity_dict(default)
    assert identity_dict(resolve(cls, "quick", {"pool_transforms": []})) == identity_dict(default)
    assert identity_dict(resolve(cls, "quick", {"pool_transforms": ["mixup"]}))["pool_transforms"] == ["mixup"]


def test_knockoff_and_distillation_on_transformed_pools_record_the_choice(tmp_path):
    from wmbench import run

    table = run("badnets", "knockoff,distill", "synthetic", profile="smoke", out=str(tmp_path / "r"),
                overrides=["attacks.knockoff.pool_transforms=[flip,mixup]", "attacks.distill.pool_transforms=[cutmix]",
                           "attacks.knockoff.query_set=attacker+digits"], executor="serial", progress=False)
    done = table[(table.stage == "attack") & (table.metric == "acc")]
    assert set(done.status) == {"ok"} and len(done) == 3  # knockoff soft, hard; distill soft
    variants = dict(zip(done.attack + done.labels, done.attack_variant))
    assert "pool_transforms=[\"flip\",\"mixup\"]" in variants["knockoffsoft"]
    assert "query_set=attacker+digits" in variants["knockoffsoft"]
    assert "pool_transforms=[\"cutmix\"]" in variants["distillsoft"]


def test_a_pool_study_is_one_command_and_draws_the_theft_map(tmp_path):
    """`--sweep attacks.knockoff.query_set=...` runs one set of cells per pool; the report's theft
    map puts each pool's stolen accuracy against its WSR (a pool study in one command)."""
    from wmbench.cli import main
    from wmbench.report.figures_theft import theft_frame
    from wmbench.results import load

    out = tmp_path / "pools"
    assert main(["run", "--methods", "badnets", "--attacks", "knockoff", "--datasets", "synthetic", "--profile",
                 "smoke", "--executor", "serial", "--out", str(out), "--no-progress", "--set", "attacks.knockoff.budget=300",
                 "--sweep", "attacks.knockoff.query_set=attacker,digits,attacker+digits"]) == 0
    frames = theft_frame(load(out))
    assert len(frames) == 1
    rows = next(iter(frames.values()))
    assert len(rows) == 6  # 3 pools x soft, hard
    assert rows["attack"].str.contains("query_set=attacker\\+digits").any()
    assert {"suspect_acc", "wsr", "victim_acc", "theft_ok"} <= set(rows.columns)
    assert main(["report", str(out)]) == 0
    assert any((out / "figures").glob("theft_synthetic_*.png"))
    assert "theft" in (out / "report.md").read_text()


def test_the_owners_surrogate_takes_pools_and_transforms_like_the_attacks(tmp_path, monkeypatch):
    """``keys.surrogate_query_set`` joins sets with ``+`` (``attacker`` is the owner's own images
    there) and ``keys.surrogate_pool_transforms`` transforms its query batches; the default leaves
    DeepTracer's cell ids alone, and bad values are refused when planning."""
    import wmbench.attacks.knockoff as knockoff
    from wmbench import run
    from wmbench.config import KeyFilterConfig

    assert "surrogate_pool_transforms" not in identity_dict(resolve(KeyFilterConfig, "quick", {}))
    pools, transforms = [], []
    real_pool, real_transform = knockoff.query_pool, knockoff.pool_transform

    def spy_pool(ctx, name, classes=None):
        pool = real_pool(ctx, name, classes)
        pools.append((name, len(ctx.data.attacker), len(pool)))
        return pool

    monkeypatch.setattr(knockoff, "query_pool", spy_pool)
    monkeypatch.setattr(knockoff, "pool_transform", lambda names, gen: transforms.append(tuple(names)) or
                        real_transform(names, gen))
    table = run("deeptracer", "none", "synthetic", profile="smoke", out=str(tmp_path / "r"), executor="serial",
                progress=False, overrides=["datasets.synthetic.train_size=300", "datasets.synthetic.test_size=100",
                                           "train.epochs=1", "keys.surrogate_query_set=attacker+digits",
                                           "keys.surrogate_pool_transforms=[flip,mixup]"])
    assert set(table.status) == {"ok"}
    (name, owner_images, pool_images), = pools  # the surrogate is the only Knockoff of this grid
    assert name == "attacker+digits" and pool_images == owner_images + 1347  # the owner's images, then digits' training split
    assert transforms == [("flip", "mixup")]
    with pytest.raises(UserError, match="keys.surrogate_pool_transforms must be distinct names among"):
        resolve(KeyFilterConfig, "quick", {"surrogate_pool_transforms": ["flip", "blur"]}, section="keys")
    with pytest.raises(UserError, match="unknown dataset 'bogus'"):
        run("deeptracer", "none", "synthetic", profile="smoke", out=str(tmp_path / "bad"), executor="serial",
            progress=False, overrides=["keys.surrogate_query_set=attacker+bogus"])
    assert not (tmp_path / "bad").exists()
