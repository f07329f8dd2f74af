"""The training engine's accelerator path (wmbench.training.Engine), tested on CPU.

Every branch that does not need CUDA runs here: the device-side branches are entered by
declaring the CPU an accelerator (``_on_device``), which exercises the same code with CPU
tensors. The CUDA run itself is benchmarks/gpu.py's job.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from wmbench import training
from wmbench.config import TrainConfig
from wmbench.models import build_model
from wmbench.training import Engine, current_engine, fit, predict_logits, tensor_batches, to_device, use_engine


def _images(n=96, seed=0, c=1, size=8):
    g = torch.Generator().manual_seed(seed)
    u8 = torch.randint(0, 256, (n, c, size, size), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 10, (n,), generator=g)
    return u8.float() / 255, y


@pytest.fixture
def as_accelerator(monkeypatch):
    """Take the CPU for an accelerator, so the device-side branches run here."""
    monkeypatch.setattr(training, "_on_device", lambda device: True)


def test_engine_defaults_and_bad_values():
    e = Engine()
    assert (e.resident, e.channels_last, e.compile) == (True, True, False)
    assert e.eval_batch(torch.device("cpu")) == 512 and e.eval_batch(torch.device("cuda")) == 8192
    assert Engine(eval_batch_size=64).eval_batch(torch.device("cuda")) == 64
    with pytest.raises(ValueError, match="compile mode"):
        Engine(compile_mode="fastest")
    with pytest.raises(ValueError, match="eval_batch_size"):
        Engine(eval_batch_size=-1)


def test_use_engine_sets_and_restores():
    assert current_engine() == Engine()
    with use_engine(Engine(compile=True)) as e:
        assert current_engine() is e
    assert current_engine() == Engine()


def test_eight_bit_images_are_held_as_uint8_and_restored_bit_for_bit():
    x, y = _images()
    (qx, qy), packed = to_device((x, y), torch.device("cpu"))
    assert packed == (True, False)
    assert qx.dtype == torch.uint8 and torch.equal(qy, y)
    assert torch.equal(training._as_float(qx), x)


@pytest.mark.parametrize("change", ["noise", "range", "float64"])
def test_other_images_stay_float(change):
    x, _ = _images()
    if change == "noise":
        x = x + 1e-4
    elif change == "range":
        x = x * 2
    else:
        x = x.double()
    (qx,), packed = to_device((x,), torch.device("cpu"))
    assert packed == (False,) and qx.dtype == x.dtype and torch.equal(qx, x)


def test_resident_batches_equal_host_batches(as_accelerator):
    x, y = _images()
    plain = tensor_batches(x, y, batch_size=32)
    resident = tensor_batches(x, y, batch_size=32, device=torch.device("cpu"))
    for epoch in range(2):
        a = list(plain(epoch, torch.Generator().manual_seed(epoch)))
        b = list(resident(epoch, torch.Generator().manual_seed(epoch)))
        assert len(a) == len(b) == 3
        for (xa, ya), (xb, yb) in zip(a, b):
            assert xb.dtype == torch.float32 and torch.equal(xa, xb) and torch.equal(ya, yb)


def test_resident_switch_off_keeps_host_tensors(as_accelerator):
    x, y = _images()
    with use_engine(Engine(resident=False)):
        (xb, _), = list(tensor_batches(x, y, batch_size=96, shuffle=False, device=torch.device("cpu"))(
            0, torch.Generator()))
    assert xb.dtype == torch.float32 and torch.equal(xb, x)


def _train(x, y, **engine):
    torch.manual_seed(0)
    model = build_model("naivenet", in_channels=1, num_classes=10, input_size=8)
    with use_engine(Engine(**engine)):
        history = fit(model, (x, y), TrainConfig(epochs=2, batch_size=32, lr_step=0), progress=False)
    return model, history


def test_cpu_training_ignores_the_accelerator_switches():
    x, y = _images()
    a, ha = _train(x, y)
    b, hb = _train(x, y, resident=False, channels_last=False)
    assert [h["loss"] for h in ha] == [h["loss"] for h in hb]
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_accelerator_branches_train_the_same_model(as_accelerator):
    """Resident uint8 data and channels-last layout change float rounding at most."""
    x, y = _images()
    a, ha = _train(x, y, resident=False, channels_last=False)
    b, hb = _train(x, y)
    assert all(p.is_contiguous() for p in b.parameters()), "the model comes back in the standard layout"
    for la, lb in zip(ha, hb):
        assert la["loss"] == pytest.approx(lb["loss"], rel=1e-4, abs=1e-5)
    for va, vb in zip(a.state_dict().values(), b.state_dict().values()):
        torch.testing.assert_close(va, vb, rtol=1e-3, atol=1e-4)


def test_compile_trains_through_a_compiled_wrapper(monkeypatch):
    """``compile`` wraps the model for the steps only: the caller's model is trained, its state
    dict keys are unchanged (no ``_orig_mod.``), and (with the eager backend) the numbers too."""
    calls = []
    real = torch.compile

    def eager_compile(model, mode=None):
        calls.append(mode)
        return real(model, backend="eager")

    monkeypatch.setattr(torch, "compile", eager_compile)
    x, y = _images()
    a, ha = _train(x, y)
    b, hb = _train(x, y, compile=True, compile_mode="reduce-overhead")
    assert calls == ["reduce-overhead"]
    assert list(a.state_dict()) == list(b.state_dict())
    assert [h["loss"] for h in ha] == [h["loss"] for h in hb]
    for va, vb in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(va, vb)


def test_predict_logits_batches_from_the_engine():
    x, _ = _images(n=50)
    torch.manual_seed(0)
    model = build_model("naivenet", in_channels=1, num_classes=10, input_size=8)
    ref = predict_logits(model, x, device=torch.device("cpu"))
    with use_engine(Engine(eval_batch_size=7)):
        small = predict_logits(model, x, device=torch.device("cpu"))
    torch.testing.assert_close(ref, small)
    assert ref.shape == (50, 10)


def test_predict_logits_device_branch(as_accelerator):
    x, _ = _images(n=50)
    torch.manual_seed(0)
    model = build_model("naivenet", in_channels=1, num_classes=10, input_size=8)
    ref = F.softmax(predict_logits(model, x, device=torch.device("cpu"), batch_size=50), 1)
    with use_engine(Engine(eval_batch_size=16)):
        out = F.softmax(predict_logits(model, x, device=torch.device("cpu")), 1)
    assert out.device.type == "cpu" and out.shape == (50, 10)
    torch.testing.assert_close(ref, out, rtol=1e-4, atol=1e-5)


def test_compile_option_reaches_the_run_options_and_the_record(tmp_path):
    from wmbench.plan import plan_run
    from wmbench.spec import GridSpec
    from wmbench.tasks import run_task

    spec = GridSpec.of("badnets", "none", "digits", profile="smoke", out=str(tmp_path / "run"), compile=True,
                       executor="serial", progress=False)
    plan = plan_run(spec)
    assert plan.opts.compile is True
    seen = {}
    real = training.fit

    def spy(*args, **kwargs):
        seen["engine"] = current_engine()
        return real(*args, **kwargs)

    import wmbench.api as api
    from unittest import mock

    with mock.patch.object(api, "fit", spy), mock.patch.object(torch, "compile",
                                                               lambda m, mode=None: m):
        import dataclasses

        cell = plan.todo[0]
        record = run_task("cell/x", "cell", cell, dataclasses.asdict(plan.opts))
    assert record["status"] == "ok", record.get("error")
    assert seen["engine"].compile is True
    assert record["provenance"]["engine"]["compile"] is True
    assert current_engine() == Engine()


def test_blackbox_runs_the_victim_on_its_device(monkeypatch):
    """A victim loaded from the artifact store sits on the CPU; the blackbox moves it to the
    device it answers on (found on CUDA, where it failed with a device mismatch)."""
    from wmbench.blackbox import Blackbox

    torch.manual_seed(0)
    model = build_model("naivenet", in_channels=1, num_classes=10, input_size=8)
    moved = []
    real_to = model.to
    monkeypatch.setattr(model, "to", lambda *a, **k: moved.append(a) or real_to(*a, **k))
    box = Blackbox(model, num_classes=10, input_shape=(1, 8, 8), device=torch.device("cpu"))
    box(_images(n=4)[0])
    assert moved and moved[0][0] == torch.device("cpu")


# -- training augmentation (train.augment) -------------------------------------------------------
def test_augmentation_changes_training_reproducibly_and_keeps_the_shuffle():
    x, y = _images(c=3, size=12)
    cfg = TrainConfig(epochs=2, batch_size=32, lr_step=0)

    def train(**changes):
        torch.manual_seed(0)
        model = build_model("naivenet", in_channels=3, num_classes=10, input_size=12)
        seen = []

        def loss(m, batch):
            seen.append(batch[0].clone())
            return training.cross_entropy(m, batch)

        fit(model, (x, y), TrainConfig(**{**cfg.__dict__, **changes}), loss_fn=loss, seed=3, progress=False)
        return model, seen

    plain, plain_seen = train()
    a, a_seen = train(augment=("crop", "flip"))
    b, b_seen = train(augment=("crop", "flip"))
    assert all(torch.equal(p, q) for p, q in zip(a_seen, b_seen))  # same seed, same augmented batches
    assert not all(torch.equal(p, q) for p, q in zip(a_seen, plain_seen))
    # the shuffle is unchanged: each augmented batch holds crops/flips of the same images
    for aug, orig in zip(a_seen, plain_seen):
        assert aug.shape == orig.shape and aug.min() >= 0 and aug.max() <= 1
    assert not torch.equal(next(iter(a.parameters())), next(iter(plain.parameters())))
    for va, vb in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(va, vb)


def test_augment_setting_is_checked_and_neutral_when_off():
    from wmbench.config import identity_dict, resolve
    from wmbench.errors import UserError

    assert "augment" not in identity_dict(TrainConfig())
    assert "augment" not in identity_dict(TrainConfig(augment=()))
    assert identity_dict(TrainConfig(augment=("crop", "flip")))["augment"] == ["crop", "flip"]
    with pytest.raises(UserError, match="train.augment must be distinct names among flip, crop"):
        resolve(TrainConfig, "quick", {"augment": ["mixup"]})


def test_cifar_cells_train_with_the_cifar_recipe_and_others_keep_their_ids():
    from wmbench.cell import Cell
    from wmbench.config import build_settings
    from wmbench.plan import plan

    cells = {c.cell.dataset: c.cell for c in plan(build_settings("smoke"), ["badnets"], ["none"],
                                                    ["digits", "synthetic"], [0])}
    assert all("augment" not in c.train for c in cells.values())  # identity as before the setting existed
    import wmbench.plan as plan_module
    from wmbench.registry import DATASETS

    class Recipe:  # a dataset whose recipe augments, as CIFAR's does
        train_augment = ("crop", "flip")

    real_get = DATASETS.get
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(DATASETS, "get", lambda name: Recipe if name == "digits" else real_get(name))
        recipe = plan_module.plan(build_settings("smoke"), ["badnets"], ["none"], ["digits"], [0])[0].cell
        explicit = plan_module.plan(build_settings("smoke", {"train": {"augment": []}}), ["badnets"], ["none"],
                                    ["synthetic"], [0])[0].cell
    assert recipe.train["augment"] == ["crop", "flip"] and recipe.cell_id != cells["digits"].cell_id
    assert explicit.cell_id == cells["synthetic"].cell_id  # augment=[] is the same as no setting
    assert Cell.from_dict(recipe.as_dict()).train["augment"] == ["crop", "flip"]
    from wmbench.data.cifar import CIFAR10, CIFAR100

    assert CIFAR10.train_augment == CIFAR100.train_augment == ("crop", "flip")
