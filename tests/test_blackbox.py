"""Tests for wmbench.blackbox: query counting, budgets, output modes and weight privacy."""
from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wmbench.blackbox import Blackbox, BudgetExceeded
from wmbench.errors import UserError

K = 5
SHAPE = (1, 6, 6)


class Recorder(nn.Module):
    """A fixed linear model that records the batch sizes it sees."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.fc = nn.Linear(36, K)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(K, 36, generator=g) * 2)
            self.fc.bias.copy_(torch.randn(K, generator=g))
        self.batches = []

    def forward(self, x):
        self.batches.append(int(x.shape[0]))
        return self.fc(x.flatten(1))


@pytest.fixture
def model():
    return Recorder()


@pytest.fixture
def x():
    return torch.rand(10, *SHAPE, generator=torch.Generator().manual_seed(1))


def _bb(model, mode="probs", **kw):
    return Blackbox(model, num_classes=K, input_shape=SHAPE, mode=mode, **kw)


def _logits(model, x):
    with torch.no_grad():
        return model.fc(x.flatten(1))


# ------------------------------------------------------------------------------------------
# counting and budgets
# ------------------------------------------------------------------------------------------
def test_counts_every_image_with_internal_batching(model, x):
    bb = _bb(model, batch_size=3)
    out = bb(x)
    assert bb.queries == 10
    assert model.batches == [3, 3, 3, 1]
    assert out.shape == (10, K)
    # outputs are independent of the internal batching
    assert torch.allclose(out, F.softmax(_logits(model, x), dim=1), atol=1e-6)


def test_counts_accumulate_across_calls(model, x):
    bb = _bb(model, batch_size=4)
    bb(x)
    bb(x[:3])
    bb(x[:1])
    assert bb.queries == 14
    assert bb.remaining is None


def test_budget_enforced_and_count_not_advanced(model, x):
    bb = _bb(model, budget=12)
    bb(x[:5])
    assert (bb.queries, bb.remaining) == (5, 7)
    calls_before = len(model.batches)
    with pytest.raises(BudgetExceeded, match="12"):
        bb(x)  # 5 + 10 > 12
    assert bb.queries == 5  # a refused call costs nothing
    assert bb.remaining == 7
    assert len(model.batches) == calls_before  # the victim was never queried
    bb(x[:7])  # exactly the remaining budget is fine
    assert (bb.queries, bb.remaining) == (12, 0)
    with pytest.raises(BudgetExceeded):
        bb(x[:1])
    assert bb.queries == 12


def test_budget_exceeded_is_runtime_error():
    assert issubclass(BudgetExceeded, RuntimeError)


def test_budget_single_call_over_budget(model, x):
    bb = _bb(model, budget=9)
    with pytest.raises(BudgetExceeded):
        bb(x)
    assert bb.queries == 0


# ------------------------------------------------------------------------------------------
# modes
# ------------------------------------------------------------------------------------------
def test_labels_mode_returns_int64_argmax(model, x):
    bb = _bb(model, mode="labels", batch_size=4)
    out = bb(x)
    assert out.dtype == torch.int64
    assert not out.is_floating_point()
    assert out.shape == (10,)
    assert torch.equal(out, _logits(model, x).argmax(1))
    assert bb.hard_label is True
    assert _bb(model).hard_label is False


def test_probs_rows_sum_to_one(model, x):
    out = _bb(model, mode="probs")(x)
    assert out.dtype == torch.float32
    assert torch.allclose(out.sum(1), torch.ones(10), atol=1e-6)
    assert (out >= 0).all()
    assert torch.equal(out.argmax(1), _logits(model, x).argmax(1))


def test_log_probs(model, x):
    out = _bb(model, mode="log_probs")(x)
    assert torch.allclose(out, F.log_softmax(_logits(model, x), dim=1), atol=1e-6)
    assert torch.allclose(out.exp().sum(1), torch.ones(10), atol=1e-5)


def test_topk_keeps_k_nonzeros(model, x):
    out = _bb(model, mode="topk:2")(x)
    probs = F.softmax(_logits(model, x), dim=1)
    assert ((out > 0).sum(1) == 2).all()
    assert torch.allclose(out.sum(1), torch.ones(10), atol=1e-6)
    top = probs.topk(2, dim=1)
    kept = out.gather(1, top.indices)
    assert (kept > 0).all()
    assert torch.allclose(kept, top.values / top.values.sum(1, keepdim=True), atol=1e-6)


def test_topk_larger_than_classes_is_probs(model, x):
    out = _bb(model, mode="topk:50")(x)
    assert torch.allclose(out, F.softmax(_logits(model, x), dim=1), atol=1e-6)


def test_rounded_one_decimal(model, x):
    out = _bb(model, mode="rounded:1")(x)
    probs = F.softmax(_logits(model, x), dim=1)
    assert torch.allclose(out, torch.round(probs * 10) / 10, atol=1e-7)
    assert torch.allclose(out * 10, torch.round(out * 10), atol=1e-5)  # multiples of 0.1
    assert (out - probs).abs().max() <= 0.05 + 1e-6


@pytest.mark.parametrize("mode", ["logits", "label", "", "softmax:2"])
def test_unknown_mode(model, mode):
    with pytest.raises(UserError) as info:
        _bb(model, mode=mode)
    message = str(info.value)
    for accepted in ("probs", "log_probs", "labels", "topk:K", "rounded:D"):
        assert accepted in message


@pytest.mark.parametrize("mode", ["topk", "topk:x", "rounded:", "rounded:-1", "topk:1.5"])
def test_mode_needs_integer_argument(model, mode):
    with pytest.raises(UserError, match="integer"):
        _bb(model, mode=mode)


def test_topk_zero_rejected(model):
    with pytest.raises(UserError):
        _bb(model, mode="topk:0")


def test_empty_query_shapes_and_dtypes(model):
    empty = torch.zeros(0, *SHAPE)
    labels = _bb(model, mode="labels")(empty)
    assert labels.dtype == torch.int64 and labels.shape == (0,)
    probs = _bb(model, mode="probs")(empty)
    assert probs.shape == (0, K)


def test_empty_query_counts_nothing(model):
    bb = _bb(model, budget=1)
    bb(torch.zeros(0, *SHAPE))
    assert bb.queries == 0


# ------------------------------------------------------------------------------------------
# input checks and privacy
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(10, 1, 6, 5), (10, 3, 6, 6), (1, 6, 6), (10, 36), (2, 1, 1, 6, 6)])
def test_wrong_input_shape(model, shape):
    bb = _bb(model, budget=100)
    with pytest.raises(ValueError, match="shape"):
        bb(torch.zeros(shape))
    assert bb.queries == 0
    assert model.batches == []


def test_pickling_raises_type_error(model):
    bb = _bb(model)
    with pytest.raises(TypeError):
        pickle.dumps(bb)
    with pytest.raises(TypeError):
        copy.deepcopy(bb)


def test_no_weight_access(model):
    bb = _bb(model)
    for attr in ("parameters", "state_dict", "named_parameters", "model", "fc", "buffers"):
        assert not hasattr(bb, attr), attr
    assert not isinstance(bb, nn.Module)
    # no attribute reachable without name mangling is a module or a tensor
    for name, value in vars(bb).items():
        if not name.startswith("_Blackbox__"):
            assert not isinstance(value, (nn.Module, torch.Tensor)), name


def test_outputs_do_not_require_grad_and_model_in_eval(model, x):
    model.train()
    out = _bb(model)(x)
    assert not out.requires_grad
    assert not model.training


def test_metadata_attributes(model):
    bb = _bb(model, mode="topk:3", budget=7)
    assert (bb.mode, bb.num_classes, bb.input_shape, bb.budget, bb.remaining) == ("topk:3", K, SHAPE, 7, 7)
