"""Tests for the model zoo (wmbench.models): shapes, parameter counts, specs, normalisation."""
from __future__ import annotations

import json
from typing import Dict, Tuple

import pytest
import torch
from torch import nn

from wmbench.errors import UserError
from wmbench.models import Classifier, build_model, count_parameters, model_from_spec
from wmbench.registry import MODELS

K = 10
B = 2

#: name -> (in_channels, input_size) used to test that model: small but valid.
SHAPES: Dict[str, Tuple[int, int]] = {
    "naivenet": (1, 28),
    "tinycnn": (1, 28),
    "alexnet_cifar": (1, 28),
    "cwnet": (3, 32),
    "resnet18_cifar": (3, 32),
    "resnet50": (3, 32),
    "densenet161": (3, 32),
    "efficientnet_b2": (3, 32),
    "vgg16": (3, 32),
    "mobilenet_v2": (3, 32),
    "vit_b_16": (3, 32),
}


def _check_contract(model: Classifier, in_channels: int, size: int) -> None:
    model.eval()
    x = torch.rand(B, in_channels, size, size)
    with torch.no_grad():
        feats = model.features(x)
        logits = model(x)
    assert isinstance(model, Classifier)
    assert isinstance(model.head, nn.Linear)
    assert model.head.in_features == model.feature_dim
    assert model.head.out_features == model.num_classes == K
    assert feats.shape == (B, model.feature_dim)
    assert logits.shape == (B, K)
    assert torch.isfinite(logits).all()
    assert model.mean.shape == model.std.shape == (1, in_channels, 1, 1)


def test_every_builtin_model_is_tested() -> None:
    builtins = [n for n in MODELS.names() if MODELS.get(n).__module__.startswith("wmbench.models")]
    assert sorted(builtins) == sorted(SHAPES)


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_shapes_and_spec_roundtrip(name: str) -> None:
    in_channels, size = SHAPES[name]
    torch.manual_seed(0)
    model = build_model(name, in_channels=in_channels, num_classes=K, input_size=size)
    _check_contract(model, in_channels, size)

    spec = json.loads(json.dumps(model.spec))  # the spec must survive JSON
    assert spec == {
        "arch": name, "in_channels": in_channels, "num_classes": K, "input_size": size,
        "mean": [0.5] * in_channels, "std": [0.5] * in_channels,
    }
    rebuilt = model_from_spec(spec)
    assert type(rebuilt.backbone) is type(model.backbone)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }
    rebuilt.load_state_dict(model.state_dict())
    rebuilt.eval()
    x = torch.rand(B, in_channels, size, size)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_single_channel_input(name: str) -> None:
    _, size = SHAPES[name]
    model = build_model(name, in_channels=1, num_classes=K, input_size=size)
    _check_contract(model, 1, size)


@pytest.mark.parametrize(
    "name, in_channels, size, expected",
    [
        ("naivenet", 1, 28, 421_642),
        ("cwnet", 3, 32, 1_147_978),
        ("alexnet_cifar", 3, 32, 2_472_266),
        ("resnet18_cifar", 3, 32, 11_173_962),
    ],
)
def test_parameter_counts(name: str, in_channels: int, size: int, expected: int) -> None:
    model = build_model(name, in_channels=in_channels, num_classes=K, input_size=size)
    assert count_parameters(model) == expected


def test_count_parameters_trainable_only() -> None:
    model = build_model("tinycnn", in_channels=1, num_classes=K, input_size=28)
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == 32 * K + K
    assert count_parameters(model) > count_parameters(model, trainable_only=True)


def test_normalisation_is_applied() -> None:
    plain = build_model("tinycnn", in_channels=3, num_classes=K, input_size=16, mean=0.0, std=1.0)
    norm = build_model("tinycnn", in_channels=3, num_classes=K, input_size=16, mean=[0.5] * 3, std=[0.5] * 3)
    norm.backbone.load_state_dict(plain.backbone.state_dict())
    norm.head.load_state_dict(plain.head.state_dict())
    x = torch.rand(B, 3, 16, 16)
    with torch.no_grad():
        assert not torch.allclose(plain.features(x), norm.features(x))
        assert torch.allclose(norm.features(x), plain.features((x - 0.5) / 0.5), atol=1e-6)
        assert torch.allclose(norm(x), plain((x - 0.5) / 0.5), atol=1e-6)


def test_mean_std_are_saved_with_the_weights() -> None:
    model = build_model("tinycnn", in_channels=3, num_classes=K, input_size=16,
                        mean=[0.1, 0.2, 0.3], std=[0.4, 0.5, 0.6])
    state = model.state_dict()
    assert torch.allclose(state["mean"].flatten(), torch.tensor([0.1, 0.2, 0.3]))
    assert torch.allclose(state["std"].flatten(), torch.tensor([0.4, 0.5, 0.6]))
    assert model_from_spec(model.spec).spec == model.spec


def test_head_can_be_replaced_and_trained() -> None:
    model = build_model("naivenet", in_channels=1, num_classes=K, input_size=28)
    model.head = nn.Linear(model.feature_dim, 3)
    x = torch.rand(B, 1, 28, 28)
    loss = nn.functional.cross_entropy(model(x), torch.tensor([0, 2]))
    loss.backward()
    assert model.head.weight.grad is not None
    assert model.backbone[0].weight.grad is not None


def test_unknown_arch_lists_available_names() -> None:
    with pytest.raises(UserError) as info:
        build_model("no_such_net", in_channels=3, num_classes=K, input_size=32)
    message = str(info.value)
    assert "no_such_net" in message and "available" in message
    for name in ("naivenet", "cwnet", "vit_b_16"):
        assert name in message


@pytest.mark.parametrize(
    "name, size",
    [("vit_b_16", 28), ("vit_b_16", 8), ("cwnet", 15), ("vgg16", 28), ("densenet161", 28), ("naivenet", 3)],
)
def test_unsupported_input_size_raises(name: str, size: int) -> None:
    with pytest.raises(UserError, match=name):
        build_model(name, in_channels=3, num_classes=K, input_size=size)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mean": [0.5, 0.5]},  # wrong length for 3 channels
        {"std": [0.5, 0.0, 0.5]},  # non-positive std
        {"num_classes": 0},
        {"in_channels": 0},
        {"input_size": "32"},
    ],
)
def test_bad_arguments_raise_user_error(kwargs: dict) -> None:
    args = {"in_channels": 3, "num_classes": K, "input_size": 16, **kwargs}
    with pytest.raises(UserError):
        build_model("tinycnn", **args)


def test_model_from_spec_requires_keys() -> None:
    with pytest.raises(UserError, match="input_size"):
        model_from_spec({"arch": "tinycnn", "in_channels": 1, "num_classes": K})


def test_the_cifar_recipes_doc_gives_the_models_parameter_counts():
    """docs/cifar-recipes.md names each CIFAR architecture with its parameter count: checked here
    so the page cannot drift from the code."""
    import re
    from pathlib import Path

    from wmbench.models import build_model

    doc = (Path(__file__).resolve().parent.parent / "docs" / "cifar-recipes.md").read_text()
    rows = re.findall(r"^\| CIFAR-(10|100) \| `(\w+)`[^|]*\| [^|]+\| ([\d,]+) \|", doc, flags=re.M)
    assert len(rows) == 5
    for classes, arch, count in rows:
        model = build_model(arch, in_channels=3, num_classes=int(classes), input_size=32)
        assert sum(p.numel() for p in model.parameters()) == int(count.replace(",", "")), (arch, classes)


@pytest.mark.parametrize("kwargs,shape", [({"kernel_size": 2}, (16, 8, 28, 28)), ({"kernel_size": 2}, (16, 8, 7, 7)),
                                          ({"kernel_size": 2, "ceil_mode": True}, (4, 6, 7, 7)),
                                          ({"kernel_size": 3, "stride": 2, "padding": 1}, (4, 6, 15, 15))])
def test_our_max_pool_matches_torchs_bit_for_bit_with_ties(kwargs, shape):
    """wmbench.models.base.MaxPool2d pools NCHW CPU inputs without gradient in channels-last
    layout (a faster kernel): the outputs, their layout and, where gradients flow (the plain
    path), the gradients equal nn.MaxPool2d's exactly, on inputs full of ties (ReLU zeros and a
    repeated value) and NaNs."""
    import torch
    from torch import nn

    from wmbench.models.base import MaxPool2d

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=gen).relu()
    x[:, :, ::3, ::2] = 0.5
    x[0, 0, 0, 0] = float("nan")
    ours, plain = MaxPool2d(**kwargs), nn.MaxPool2d(**kwargs)
    with torch.no_grad():
        got, want = ours(x), plain(x)
    assert torch.equal(got.nan_to_num(-1.0), want.nan_to_num(-1.0)) and torch.isnan(got).sum() == torch.isnan(want).sum()
    assert got.is_contiguous() and got.stride() == want.stride()
    grads = []
    for module in (ours, plain):
        xs = x.nan_to_num(0.0).requires_grad_(True)
        out = module(xs)
        out.backward(torch.arange(out.numel(), dtype=out.dtype).view_as(out))
        grads.append((out.detach(), xs.grad))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])
    assert isinstance(ours, nn.MaxPool2d) and ours.state_dict() == {}


def test_models_with_our_max_pool_give_the_same_logits_in_inference_and_training():
    """A NaiveNet whose pools are swapped back to nn.MaxPool2d gives the same logits (no_grad)
    and the same gradients (training) as the registered one."""
    import copy

    import torch
    from torch import nn

    from wmbench.models import build_model
    from wmbench.models.base import MaxPool2d

    torch.manual_seed(0)
    model = build_model("naivenet", in_channels=1, num_classes=10, input_size=28)
    plain = copy.deepcopy(model)
    swapped = 0
    for module in plain.modules():
        if type(module) is MaxPool2d:
            module.__class__ = nn.MaxPool2d
            swapped += 1
    assert swapped == 2
    x = torch.rand(32, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), plain(x))
    for m in (model, plain):
        torch.nn.functional.cross_entropy(m(x), torch.arange(32) % 10).backward()
    assert all(torch.equal(a.grad, b.grad) for a, b in zip(model.parameters(), plain.parameters()))
