"""Tests for the data-poisoning baselines: BadNets, Composite, Abstract, Content, Noise, Unrelated, FCW.

Key generation runs on small synthetic data (no training); the end-to-end "victim verified, clean
model not" property of every registered method is tested by tests/test_contract.py.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from wmbench.api import Context, KeySet
from wmbench.cache import ArtifactStore
from wmbench.config import TrainConfig, VerifyConfig, resolve
from wmbench.data import Split, load_data
from wmbench.errors import UserError
from wmbench.methods import _triggers as T
from wmbench.methods.abstract import TRIGGERS_ENV, Abstract, AbstractConfig, read_labels
from wmbench.methods.badnets import BadNets, BadNetsConfig
from wmbench.methods.composite import (
    Composite, CompositeConfig, composite_loss, contrastive_pairs, same_class_mixes,
)
from wmbench.methods.fcw import FCWConfig, FunctionCoupled, conv_weights, mask_conv_weights, masking_hook
from wmbench.methods.zhang import Content, ContentConfig, Noise, NoiseConfig, Unrelated, UnrelatedConfig
from wmbench.models import build_model
from wmbench.registry import METHODS

#: The Adi et al. set beside the repository (CI has ../shared next to the checkout).
ADI_SET = (Path(__file__).resolve().parents[1] / "../shared/data/abstract-trigger-set").resolve()
needs_adi = pytest.mark.skipif(not (ADI_SET / "pics").is_dir(), reason="abstract trigger set not available")

BASELINES = ["badnets", "composite", "abstract", "content", "noise", "unrelated", "fcw"]
SINGLE_TARGET = {"badnets": 1, "composite": 2, "content": 1, "noise": 1, "unrelated": 1, "fcw": 1}


@pytest.fixture(autouse=True)
def _no_trigger_env(monkeypatch):
    monkeypatch.delenv(TRIGGERS_ENV, raising=False)


def make_ctx(tmp_path: Path, seed: int = 0, channels: int = 1, size: int = 28) -> Context:
    data = load_data("synthetic", options={"train_size": 900, "test_size": 300, "channels": channels, "size": size})
    return Context(data=data, arch="tinycnn", train=TrainConfig(epochs=1, batch_size=64), verify=VerifyConfig(),
                   seed=seed, device=torch.device("cpu"), store=ArtifactStore(str(tmp_path / "store")), profile="smoke")


def nearest(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Distance from each row of ``a`` to the closest row of ``b`` (exact, not the matmul shortcut)."""
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist").min(1).values


def smoke_method(name: str, **overrides):
    cls = METHODS.get(name)
    return cls(resolve(cls.Config, "smoke", overrides, section=f"methods.{name}"))


# -------------------------------------------------------------------------------------------
# Every baseline: shape, range, labels, determinism
# -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", BASELINES)
def test_registered_with_metadata(name):
    cls = METHODS.get(name)
    assert cls.name == name and cls.paper.startswith("https://") and cls.year >= 2017
    assert set(cls.Config.PROFILES) == {"smoke", "quick", "paper"}


@pytest.mark.parametrize("name", BASELINES)
@pytest.mark.parametrize("channels,size", [(1, 28), (3, 16)])
def test_triggers_shape_range_labels(name, channels, size, tmp_path):
    ctx = make_ctx(tmp_path, channels=channels, size=size)
    keys = smoke_method(name).keygen(ctx)
    assert isinstance(keys, KeySet)
    for x, y in ((keys.embed_x, keys.embed_y), (keys.verify_x, keys.verify_y)):
        assert x.shape[0] > 0 and tuple(x.shape[1:]) == (channels, size, size)
        assert x.dtype == torch.float32 and y.dtype == torch.long
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
        assert int(y.min()) >= 0 and int(y.max()) < ctx.data.num_classes
        if name in SINGLE_TARGET:
            assert torch.all(y == SINGLE_TARGET[name])
    if name == "abstract":
        assert torch.equal(keys.embed_x, keys.verify_x) and torch.equal(keys.embed_y, keys.verify_y)
        assert len(torch.unique(keys.verify_y)) > 3  # per-image labels, not one target
    import json

    json.dumps(dict(keys.meta))  # JSON-able


@pytest.mark.parametrize("name", BASELINES)
def test_trigger_set_deterministic_per_seed(name, tmp_path):
    method = smoke_method(name)
    a = method.keygen(make_ctx(tmp_path, seed=3))
    b = method.keygen(make_ctx(tmp_path, seed=3))
    c = method.keygen(make_ctx(tmp_path, seed=4))
    for key in ("embed_x", "embed_y", "verify_x", "verify_y"):
        assert torch.equal(a.tensors()[key], b.tensors()[key]), key
    assert not torch.equal(a.verify_x, c.verify_x)
    assert not torch.equal(a.embed_x, c.embed_x)


@pytest.mark.parametrize("name", ["content", "noise"])
def test_stamp_keys_are_held_out_test_images(name, tmp_path):
    ctx = make_ctx(tmp_path)
    method = smoke_method(name)
    keys = method.keygen(ctx)
    if name == "content":
        outside = ~method.mask(ctx.data.size)
        flat = lambda x: x[:, 0][:, outside]  # noqa: E731  pixels the text leaves alone
    else:
        pattern = method.pattern(ctx)
        flat = lambda x: T.add_pattern(x, pattern).flatten(1)  # noqa: E731  stamp the candidates too
    keys_flat = keys.verify_x[:, 0][:, outside] if name == "content" else keys.verify_x.flatten(1)
    test_flat, owner_flat = flat(ctx.data.test.x), flat(ctx.data.owner.x)
    in_test = nearest(keys_flat, test_flat) < 1e-5
    in_owner = nearest(keys_flat, owner_flat) < 1e-5
    assert bool(in_test.all()) and not bool(in_owner.any())
    assert keys.meta["key_source"] == "test"
    closest = torch.cdist(keys_flat, test_flat, compute_mode="donot_use_mm_for_euclid_dist").argmin(1)
    assert 1 not in ctx.data.test.y[closest].tolist()  # sources exclude the target


# -------------------------------------------------------------------------------------------
# BadNets: reference settings (BackdoorBox)
# -------------------------------------------------------------------------------------------
def test_badnets_reference_settings(tmp_path):
    cfg = BadNetsConfig()
    assert (cfg.patch_size, cfg.position, cfg.color, cfg.target, cfg.poison_rate, cfg.margin) == (
        3, "bottom_right", (1.0,), 1, 0.05, 0)
    ctx = make_ctx(tmp_path)
    keys = BadNets(cfg).keygen(ctx)
    assert torch.all(keys.verify_x[:, :, -3:, -3:] == 1.0)
    assert keys.embed_x.shape[0] == round(0.05 * len(ctx.data.owner))


# -------------------------------------------------------------------------------------------
# Content
# -------------------------------------------------------------------------------------------
def test_content_text_is_white_where_drawn(tmp_path):
    ctx = make_ctx(tmp_path, channels=3, size=32)
    method = Content(ContentConfig())
    mask = method.mask(32)
    assert 30 < int(mask.sum()) < 200  # "TEST" is drawn, and only it
    assert bool(mask[-12:].any()) and not bool(mask[:16].any())  # bottom-left by default
    x = ctx.data.test.x[:20]
    stamped = T.stamp_mask(x, mask, (1.0,))
    assert torch.all(stamped[:, :, mask] == 1.0)  # white in every channel
    assert torch.equal(stamped[:, :, ~mask], x[:, :, ~mask])  # nothing else changes
    keys = method.keygen(ctx)
    assert torch.all(keys.verify_x[:, :, mask] == 1.0)


def test_content_position_and_errors():
    mask = T.text_mask("TEST", 28, xy=(0, 0))
    assert bool(mask[:10].any()) and not bool(mask[-10:].any())
    with pytest.raises(UserError, match="no visible pixel"):
        T.text_mask("TEST", 28, xy=(100, 100))
    with pytest.raises(UserError, match="xy"):
        ContentConfig(xy=(1,)).validate()


# -------------------------------------------------------------------------------------------
# Noise
# -------------------------------------------------------------------------------------------
def test_noise_adds_one_fixed_pattern(tmp_path):
    ctx = make_ctx(tmp_path)
    method = Noise(NoiseConfig())
    pattern = method.pattern(ctx)
    assert tuple(pattern.shape) == ctx.input_shape
    assert abs(float(pattern.std()) - 0.4) < 0.05
    x = torch.full((4, *ctx.input_shape), 0.5)
    stamped = T.add_pattern(x, pattern)
    expected = (0.5 + pattern).clamp(0, 1)
    assert torch.allclose(stamped, expected.expand_as(stamped))  # the same pattern on every image
    assert not torch.equal(pattern, method.pattern(make_ctx(tmp_path, seed=1)))  # one pattern per run seed


# -------------------------------------------------------------------------------------------
# Unrelated
# -------------------------------------------------------------------------------------------
def test_unrelated_uses_held_out_digits(tmp_path):
    ctx = make_ctx(tmp_path, channels=3, size=16)
    method = Unrelated(UnrelatedConfig(wm_rate=0.05, n_keys=5000))
    keys = method.keygen(ctx)
    digits = load_data("digits")
    assert keys.meta["source_dataset"] == "digits"
    assert keys.verify_x.shape[0] == len(digits.test)  # capped by the held-out split
    assert keys.embed_x.shape[0] == round(0.05 * len(ctx.data.owner))
    assert torch.equal(keys.verify_x[:, 0], keys.verify_x[:, 1])  # grey digits repeated to RGB
    assert nearest(keys.verify_x.flatten(1), keys.embed_x.flatten(1)).min() > 1e-4
    with pytest.raises(UserError, match="must differ"):
        Unrelated(UnrelatedConfig(source_dataset="synthetic")).keygen(ctx)


# -------------------------------------------------------------------------------------------
# Abstract
# -------------------------------------------------------------------------------------------
@needs_adi
def test_abstract_reads_real_adi_set(tmp_path):
    ctx = make_ctx(tmp_path)
    keys = Abstract(AbstractConfig(trigger_root=str(ADI_SET))).keygen(ctx)
    labels = read_labels(ADI_SET / "labels-cifar.txt")
    assert keys.verify_x.shape == (100, 1, 28, 28)
    assert keys.verify_y.tolist() == labels[:100] and labels[:5] == [6, 2, 8, 3, 6]
    assert keys.meta["source"] == str(ADI_SET) and keys.meta["labels"] == "file"
    assert float(keys.verify_x.std()) > 0.05  # real pictures, not blank
    for mode in ("official_centercrop", "wrt"):
        other = Abstract(AbstractConfig(trigger_root=str(ADI_SET), preprocess=mode)).keygen(make_ctx(tmp_path, channels=3, size=32))
        assert other.verify_x.shape == (100, 3, 32, 32) and not torch.allclose(other.verify_x[:, 0], other.verify_x[:, 1])


@needs_adi
def test_abstract_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv(TRIGGERS_ENV, str(ADI_SET.parent))  # a folder holding abstract-trigger-set/
    cfg = resolve(AbstractConfig, "quick", {}, section="methods.abstract")
    assert cfg.trigger_root == str(ADI_SET)
    assert Abstract(cfg).keygen(make_ctx(tmp_path)).meta["source"] == str(ADI_SET)


def test_abstract_reads_a_folder_in_numeric_order(tmp_path):
    from PIL import Image

    folder = tmp_path / "set"
    (folder / "pics").mkdir(parents=True)
    values = {1: 30, 2: 120, 10: 250}
    for stem, value in values.items():
        Image.new("RGB", (40, 60), (value, value, value)).save(folder / "pics" / f"{stem}.png")
    (folder / "labels-cifar.txt").write_text("3.0e+00\n7.000\n1\n")
    keys = Abstract(AbstractConfig(trigger_root=str(folder))).keygen(make_ctx(tmp_path))
    assert keys.verify_y.tolist() == [3, 7, 1]
    assert keys.verify_x.mean(dim=(1, 2, 3)).mul(255).round().tolist() == [30, 120, 250]
    with pytest.raises(UserError, match="not found"):
        AbstractConfig(trigger_root=str(tmp_path / "missing"))


def test_abstract_generated_fallback(tmp_path):
    ctx = make_ctx(tmp_path, channels=3, size=32)
    keys = Abstract(AbstractConfig()).keygen(ctx)
    assert keys.meta["source"] == "generated" and keys.meta["labels"] == "random"
    assert keys.verify_x.shape == (100, 3, 32, 32)
    assert float(keys.verify_x.std(dim=(2, 3)).mean()) > 0.02  # structured, not flat
    assert float((keys.verify_x[:50] - keys.verify_x[50:]).abs().mean()) > 0.05  # images differ
    counts = torch.bincount(keys.verify_y, minlength=10)
    assert int(counts.min()) >= 1  # roughly uniform labels over 10 classes


# -------------------------------------------------------------------------------------------
# Composite
# -------------------------------------------------------------------------------------------
def test_half_mix_halves():
    a = torch.zeros(2, 1, 8, 8)
    b = torch.ones(2, 1, 8, 8)
    gen = torch.Generator().manual_seed(0)
    v = T.half_mix(a, b, gen, jitter=0, shake=False, split="vertical", swap=False)
    assert torch.all(v[:, :, :, :4] == 0) and torch.all(v[:, :, :, 4:] == 1)
    h = T.half_mix(a, b, gen, jitter=0, shake=False, split="horizontal", swap=False)
    assert torch.all(h[:, :, :4] == 0) and torch.all(h[:, :, 4:] == 1)
    # Centred windows without shake: columns 2..5 of each image.
    ramp = torch.arange(8.0).view(1, 1, 1, 8).expand(1, 1, 8, 8)
    r = T.half_mix(ramp, ramp + 10, gen, jitter=0, shake=False, split="vertical", swap=False)
    assert r[0, 0, 0].tolist() == [2, 3, 4, 5, 12, 13, 14, 15]
    # With jitter and shake every pixel still comes from one of the two images.
    many = T.half_mix(torch.zeros(200, 1, 28, 28), torch.ones(200, 1, 28, 28), gen)
    share = many.mean(dim=(1, 2, 3))
    assert torch.all((share > 0.3) & (share < 0.7)) and set(torch.unique(many).tolist()) == {0.0, 1.0}


def test_composite_same_class_mixes_keep_their_label(tmp_path):
    ctx = make_ctx(tmp_path)
    gen = torch.Generator().manual_seed(0)
    method = Composite(CompositeConfig())
    x, y, first, second = same_class_mixes(ctx.data.owner, 500, gen, mix=method.mixer(gen))
    owner_y = ctx.data.owner.y
    assert torch.equal(y, owner_y[first]) and torch.equal(y, owner_y[second])
    assert len(torch.unique(y)) == ctx.data.num_classes  # every class gets mixes
    assert x.shape == (500, *ctx.input_shape)


def test_composite_epoch_data(tmp_path):
    ctx = make_ctx(tmp_path)
    method = smoke_method("composite")
    keys = method.keygen(ctx)
    owner = ctx.data.owner
    n_normal, n_mix, n_poison = method.epoch_sizes(len(owner))
    assert (n_normal, n_mix, n_poison) == (len(owner) // 2, len(owner) // 2, len(owner) // 10)
    assert keys.embed_x.shape[0] == n_poison and torch.all(keys.verify_y == 2)
    source = method.batches(owner, keys, batch_size=64)
    for epoch in (0, 1):
        batches = list(source(epoch, torch.Generator().manual_seed(epoch)))
        y = torch.cat([b[1] for b in batches])
        assert y.shape[0] == n_normal + n_mix + n_poison
        assert max(b[0].shape[0] for b in batches) == 64
    first = torch.cat([b[0] for b in source(0, torch.Generator().manual_seed(5))])
    # Epoch 1 trains on the keys' composites; their images are in the batches.
    assert nearest(keys.embed_x[:5].flatten(1), first.flatten(1)).max() < 1e-6


def test_composite_contrastive_loss():
    z = torch.tensor([[0.0, 0.0], [3.0, 4.0], [3.0, 4.0]])
    same = contrastive_pairs(z, torch.tensor([2, 2, 2]), margin=1.0, average="mean")
    assert same.item() == pytest.approx((0.5 * 25 + 0.0) / 2)
    ref = contrastive_pairs(z, torch.tensor([2, 2, 2]), margin=1.0, average="reference")
    assert ref.item() == pytest.approx(same.item() / 2)
    far = contrastive_pairs(z[:2], torch.tensor([0, 2]), margin=1.0, average="mean")
    assert far.item() == pytest.approx(0.0, abs=1e-6)  # different labels beyond the margin
    near = contrastive_pairs(torch.tensor([[0.0, 0.0], [0.6, 0.0]]), torch.tensor([0, 1]), margin=1.0, average="mean")
    assert near.item() == pytest.approx(0.5 * 0.4 ** 2, rel=1e-4)
    assert contrastive_pairs(z[:1], torch.tensor([0]), 1.0).item() == 0.0
    model = build_model("tinycnn", in_channels=1, num_classes=10, input_size=28, mean=(0.5,), std=(0.3,))
    x, y = torch.rand(8, 1, 28, 28), torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    with_term = composite_loss((0, 1, 2), 1.0, 1.0)(model, (x, y))
    without = composite_loss((0, 1, 2), 0.0, 1.0)(model, (x, y))
    assert with_term.item() >= without.item()


def test_composite_config_errors():
    with pytest.raises(UserError, match="three distinct"):
        CompositeConfig(class_a=1, class_b=1).validate()
    with pytest.raises(UserError, match="split"):
        CompositeConfig(split="diagonal").validate()


# -------------------------------------------------------------------------------------------
# Function-coupled watermarks
# -------------------------------------------------------------------------------------------
def test_fcw_fusions():
    a = torch.full((3, 1, 8, 8), 0.2)
    b = torch.full((3, 1, 8, 8), 0.6)
    assert torch.allclose(T.blend(a, b, 0.5), torch.full_like(a, 0.4))
    direct = T.direct_fusion(a, b, fill=1.0)
    assert direct.shape == a.shape
    assert torch.allclose(direct[:, :, :3, :3], torch.full((3, 1, 3, 3), 0.2))  # A top-left
    assert torch.allclose(direct[:, :, -3:, -3:], torch.full((3, 1, 3, 3), 0.6))  # B bottom-right
    assert torch.allclose(direct[:, :, :3, -3:], torch.ones(3, 1, 3, 3))  # white quadrants
    assert torch.allclose(direct[:, :, -3:, :3], torch.ones(3, 1, 3, 3))


def test_fcw_invisible_keys_are_test_blends(tmp_path):
    ctx = make_ctx(tmp_path)
    keys = FunctionCoupled(FCWConfig(n_keys=50)).keygen(ctx)
    test = ctx.data.test
    a = test.x[test.y == 0].flatten(1)
    b = test.x[test.y == 3].flatten(1)
    blends = (0.5 * a[:, None] + 0.5 * b[None]).flatten(0, 1)
    assert nearest(keys.verify_x.flatten(1), blends).max() < 1e-5
    assert keys.embed_x.shape[0] == 100 and torch.all(keys.embed_y == 1)


def test_fcw_masking_zeroes_fraction_at_interval():
    torch.manual_seed(0)
    model = build_model("naivenet", in_channels=1, num_classes=10, input_size=28, mean=(0.5,), std=(0.3,))
    convs = conv_weights(model)
    total = sum(w.numel() for w in convs)
    assert total == 32 * 9 + 64 * 32 * 9
    others = {n: p.detach().clone() for n, p in model.named_parameters() if not any(p is w for w in convs)}
    hook = masking_hook(0.01, 5, torch.Generator().manual_seed(0))
    zeros = lambda: sum(int((w == 0).sum()) for w in convs)  # noqa: E731
    assert zeros() == 0
    for step in range(1, 5):
        hook(step, model)
    assert zeros() == 0  # not yet at the interval
    hook(5, model)
    assert zeros() == round(0.01 * total)
    hook(6, model)
    assert zeros() == round(0.01 * total)
    hook(10, model)
    assert round(0.01 * total) < zeros() <= 2 * round(0.01 * total)
    for n, p in model.named_parameters():
        if n in others:
            assert torch.equal(p, others[n]), n  # biases, FC layers untouched
    assert mask_conv_weights(model, 0.0, torch.Generator()) == 0


def test_fcw_embed_calls_masking(tmp_path, monkeypatch):
    import wmbench.methods.fcw as fcw

    steps = []
    original = fcw.mask_conv_weights
    monkeypatch.setattr(fcw, "mask_conv_weights", lambda model, ratio, gen: steps.append(ratio) or original(model, ratio, gen))
    ctx = make_ctx(tmp_path)
    method = FunctionCoupled(FCWConfig(n_keys=20, mask_interval=3))
    method.embed(ctx, method.keygen(ctx))
    n_batches = -(-len(ctx.data.owner) // 64)
    assert len(steps) == n_batches // 3 and set(steps) == {0.002}


def test_fcw_config_errors():
    with pytest.raises(UserError, match="fusion"):
        FCWConfig(fusion="stripes").validate()
    with pytest.raises(UserError, match="distinct"):
        FCWConfig(sources=(0, 1), target=1).validate()
    with pytest.raises(UserError, match="mask_interval"):
        FCWConfig(mask_interval=0).validate()


def test_appended_batches_cycle_through_triggers():
    x, y = torch.zeros(100, 1, 4, 4), torch.zeros(100, dtype=torch.long)
    wx = torch.arange(7.0).view(7, 1, 1, 1).expand(7, 1, 4, 4)
    wy = torch.arange(7)
    source = T.appended_batches(x, y, wx, wy, batch_size=32, per_batch=3)
    batches = list(source(0, torch.Generator().manual_seed(0)))
    assert [b[0].shape[0] for b in batches] == [35, 35, 35, 7]
    seen = torch.cat([b[1][-3:] for b in batches])
    assert sorted(seen[:7].tolist()) == list(range(7))  # one full cycle before any repeat
