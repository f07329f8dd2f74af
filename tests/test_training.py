"""Tests for wmbench.training: the shared fit loop, batch sources, determinism and divergence."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wmbench.config import TrainConfig
from wmbench.errors import TrainingDiverged
from wmbench.models import build_model
from wmbench.training import accuracy, cross_entropy, fit, make_optimizer, predict_logits, tensor_batches

CPU = torch.device("cpu")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Two threads on a shared 2-core machine spin against each other; one is far faster here.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_data(n: int = 300, seed: int = 0):
    """3 linearly separable classes of 1x8x8 images: a bright vertical band at column 0, 2 or 4."""
    g = torch.Generator().manual_seed(seed)
    y = (torch.arange(n) % 3)[torch.randperm(n, generator=g)]
    x = torch.rand(n, 1, 8, 8, generator=g) * 0.3
    for c in range(3):
        x[y == c, :, :, 2 * c : 2 * c + 3] += 0.7
    return x.clamp(0, 1), y


def new_model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model("tinycnn", in_channels=1, num_classes=3, input_size=8)


CFG = TrainConfig(epochs=3, batch_size=32, lr=1e-2, lr_step=0)


# ------------------------------------------------------------------------------------------
# fit
# ------------------------------------------------------------------------------------------
def test_fit_learns_separable_problem():
    x, y = make_data()
    model = new_model()
    before = accuracy(model, x, y, device=CPU)
    history = fit(model, (x, y), CFG, progress=False)
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert all(set(r) >= {"epoch", "loss", "epoch_s"} for r in history)
    assert history[-1]["loss"] < history[0]["loss"]
    assert history[-1]["loss"] < 0.2
    xt, yt = make_data(150, seed=1)
    assert accuracy(model, xt, yt, device=CPU) > 0.9
    assert before < 0.7
    assert not model.training  # fit leaves the model in eval mode


def test_fit_with_soft_targets():
    x, y = make_data()
    soft = F.one_hot(y, 3).float() * 0.8 + 0.2 / 3  # label-smoothed probabilities, rows sum to 1
    assert torch.allclose(soft.sum(1), torch.ones(len(y)))
    model = new_model()
    history = fit(model, (x, soft), CFG, progress=False)
    assert history[-1]["loss"] < history[0]["loss"]
    # the minimum of soft CE is the entropy of the targets, not 0
    entropy = -(soft[0] * soft[0].log()).sum().item()
    assert history[-1]["loss"] >= entropy - 1e-4
    xt, yt = make_data(150, seed=1)
    assert accuracy(model, xt, yt, device=CPU) > 0.9


def test_cross_entropy_soft_one_hot_equals_hard():
    x, y = make_data(20)
    model = new_model()
    hard = cross_entropy(model, (x, y))
    soft = cross_entropy(model, (x, F.one_hot(y, 3).float()))
    assert soft.item() == pytest.approx(hard.item(), rel=1e-5)
    logits = model(x)
    probs = torch.softmax(logits.detach() * 0.5, 1)
    expected = -(probs * F.log_softmax(logits, 1)).sum(1).mean()
    assert cross_entropy(model, (x, probs)).item() == pytest.approx(expected.item(), rel=1e-5)


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_same_seed_identical_weights():
    x, y = make_data(120)
    cfg = TrainConfig(epochs=2, batch_size=16, lr=1e-2, lr_step=0)
    a, b = new_model(3), new_model(3)
    ha = fit(a, (x, y), cfg, seed=7, progress=False)
    hb = fit(b, (x, y), cfg, seed=7, progress=False)
    sa, sb = _state(a), _state(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert [r["loss"] for r in ha] == [r["loss"] for r in hb]


def test_different_seed_changes_order_and_weights():
    x, y = make_data(120)
    cfg = TrainConfig(epochs=1, batch_size=16, lr=1e-2, lr_step=0)
    a, b = new_model(3), new_model(3)
    fit(a, (x, y), cfg, seed=1, progress=False)
    fit(b, (x, y), cfg, seed=2, progress=False)
    assert not torch.equal(a.head.weight, b.head.weight)


def test_nan_loss_raises_training_diverged():
    x, y = make_data(40)
    model = new_model()

    def nan_loss(m, batch):
        return m(batch[0]).sum() * float("nan")

    with pytest.raises(TrainingDiverged) as info:
        fit(model, (x, y), CFG, loss_fn=nan_loss, progress=False, desc="victim")
    message = str(info.value)
    assert "learning rate" in message
    assert "victim" in message and "epoch 1" in message
    assert str(CFG.lr) in message


def test_inf_loss_raises_training_diverged():
    x, y = make_data(40)

    def inf_loss(m, batch):
        return m(batch[0]).sum() * 0 + float("inf")

    with pytest.raises(TrainingDiverged, match="learning rate"):
        fit(new_model(), (x, y), CFG, loss_fn=inf_loss, progress=False)


def test_params_restricts_updates():
    x, y = make_data(90)
    model = new_model()
    backbone0 = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    head0 = {k: v.clone() for k, v in model.head.state_dict().items()}
    fit(model, (x, y), TrainConfig(epochs=1, batch_size=30, lr=1e-2, lr_step=0), params=model.head.parameters(),
        progress=False)
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, backbone0[k]), k  # bit-identical
    assert not torch.equal(model.head.weight, head0["weight"])
    assert not torch.equal(model.head.bias, head0["bias"])


def test_custom_loss_fn_and_batch_source():
    x, y = make_data(50)
    seen = []

    def source(epoch, gen):
        seen.append(epoch)
        yield (x[:25], y[:25])
        yield (x[25:], y[25:])

    calls = []

    def loss_fn(model, batch):
        calls.append(batch[0].shape[0])
        return cross_entropy(model, batch)

    history = fit(new_model(), source, TrainConfig(epochs=2, batch_size=999, lr=1e-3, lr_step=0), loss_fn=loss_fn,
                  progress=False)
    assert seen == [0, 1]
    assert calls == [25, 25, 25, 25]
    assert len(history) == 2


def test_on_epoch_end_metrics_in_history():
    x, y = make_data(30)
    history = fit(new_model(), (x, y), TrainConfig(epochs=2, batch_size=30, lr=1e-3, lr_step=0), progress=False,
                  on_epoch_end=lambda epoch, model: {"double": 2.0 * epoch} if epoch == 2 else None)
    assert "double" not in history[0]
    assert history[1]["double"] == 4.0


class _Scalar(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return x


def _lr_trace(cfg):
    """Run SGD (no momentum) on loss = w, whose gradient is 1: each step moves w by exactly -lr."""
    model = _Scalar()
    values = [0.0]

    def record(epoch, m):
        values.append(m.w.item())
        return {}

    data = (torch.zeros(4, 1), torch.zeros(4, dtype=torch.long))  # one batch per epoch
    fit(model, data, cfg, loss_fn=lambda m, b: m.w.sum(), progress=False, on_epoch_end=record)
    return [values[i] - values[i + 1] for i in range(len(values) - 1)]


def test_step_lr_halves_learning_rate():
    cfg = TrainConfig(epochs=5, batch_size=4, optimizer="sgd", lr=0.8, momentum=0.0, lr_step=2, lr_gamma=0.5)
    assert _lr_trace(cfg) == pytest.approx([0.8, 0.8, 0.4, 0.4, 0.2], rel=1e-5)


def test_lr_step_zero_is_constant():
    cfg = TrainConfig(epochs=3, batch_size=4, optimizer="sgd", lr=0.5, momentum=0.0, lr_step=0)
    assert _lr_trace(cfg) == pytest.approx([0.5, 0.5, 0.5], rel=1e-5)


def test_make_optimizer_kinds():
    p = [nn.Parameter(torch.zeros(2))]
    adam = make_optimizer(p, TrainConfig(optimizer="adam", lr=0.01, weight_decay=0.1))
    assert isinstance(adam, torch.optim.Adam)
    assert adam.param_groups[0]["lr"] == 0.01 and adam.param_groups[0]["weight_decay"] == 0.1
    sgd = make_optimizer(p, TrainConfig(optimizer="sgd", lr=0.02, momentum=0.7))
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.param_groups[0]["momentum"] == 0.7
    with pytest.raises(ValueError):
        make_optimizer(p, _bad_optimizer_cfg())


def _bad_optimizer_cfg():
    cfg = TrainConfig()
    object.__setattr__(cfg, "optimizer", "lbfgs")
    return cfg


# ------------------------------------------------------------------------------------------
# tensor_batches
# ------------------------------------------------------------------------------------------
def test_tensor_batches_cover_every_index_once_per_epoch():
    n = 50
    idx = torch.arange(n)
    source = tensor_batches(idx, idx * 10, batch_size=7)
    gen = torch.Generator().manual_seed(0)
    orders = []
    for epoch in range(3):
        batches = list(source(epoch, gen))
        assert [b[0].shape[0] for b in batches] == [7] * 7 + [1]
        for a, b in batches:
            assert torch.equal(b, a * 10)  # tensors stay aligned
        order = torch.cat([b[0] for b in batches])
        assert sorted(order.tolist()) == list(range(n))
        orders.append(order.tolist())
    assert orders[0] != orders[1] != orders[2]  # reshuffled every epoch
    assert orders[0] != list(range(n))


def test_tensor_batches_no_shuffle_and_drop_last():
    idx = torch.arange(10)
    gen = torch.Generator().manual_seed(0)
    seq = [b[0].tolist() for b in tensor_batches(idx, batch_size=4, shuffle=False)(0, gen)]
    assert seq == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    dropped = list(tensor_batches(idx, batch_size=4, drop_last=True)(0, gen))
    assert [b[0].shape[0] for b in dropped] == [4, 4]
    assert len(set(torch.cat([b[0] for b in dropped]).tolist())) == 8


def test_tensor_batches_seeded():
    idx = torch.arange(20)
    src = tensor_batches(idx, batch_size=5)
    a = [b[0].tolist() for b in src(0, torch.Generator().manual_seed(3))]
    b = [b[0].tolist() for b in src(0, torch.Generator().manual_seed(3))]
    assert a == b


def test_tensor_batches_misaligned():
    with pytest.raises(ValueError):
        tensor_batches(torch.zeros(5), torch.zeros(4), batch_size=2)


# ------------------------------------------------------------------------------------------
# predict / accuracy
# ------------------------------------------------------------------------------------------
def test_predict_logits_batched_equals_full():
    x, y = make_data(25)
    model = new_model()
    full = predict_logits(model, x, device=CPU, batch_size=100)
    small = predict_logits(model, x, device=CPU, batch_size=4)
    assert full.shape == (25, 3)
    assert torch.allclose(full, small, atol=1e-6)
    acc = accuracy(model, x, y, device=CPU, batch_size=4)
    assert acc == pytest.approx((full.argmax(1) == y).float().mean().item())


def test_accuracy_empty_is_nan():
    assert math.isnan(accuracy(new_model(), torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long), device=CPU))
