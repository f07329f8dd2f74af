"""Training objectives of EWE, Margin-based, MEA-Defender and T2S (reimpl.).

Loss functions are checked against values computed by hand on tiny tensors; each method's
embedding is checked end to end on small synthetic data (victim verified, clean model not).
"""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wmbench.api import Context, count_hits
from wmbench.cache import ArtifactStore
from wmbench.config import TrainConfig, VerifyConfig, resolve
from wmbench.data import load_data
from wmbench.errors import UserError
from wmbench.methods.ewe import EWE, EWEConfig, ewe_batches, patch_position, resolve_layers, snnl
from wmbench.methods.margin import MarginBased, MarginConfig, margin_ascent, random_wrong_labels
from wmbench.methods.mea_defender import (
    MEADefender, MEADefenderConfig, combination_loss, contrastive_loss, gradient_as_loss, mgda_scales,
    min_norm_two, mix,
)
from wmbench.methods.t2s import T2S, T2SConfig, distill_loss, first_order_direction, unrolled_params
from wmbench.models import build_model
from wmbench.registry import METHODS


# --------------------------------------------------------------------------------------------
# SNNL (EWE)
# --------------------------------------------------------------------------------------------

def test_snnl_cosine_matches_hand_computation():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    labels = torch.tensor([1.0, 1.0, 0.0])
    # cosine distances: d01 = d12 = 1, d02 = 0; t = 1 -> e = [[0, e^-1, 1], [e^-1, 0, e^-1], [1, e^-1, 0]]
    a = math.exp(-1.0)
    row0 = a / (1e-5 + a + 1.0)           # same-group neighbour of 0 is 1 only
    row1 = a / (1e-5 + 2 * a)             # same-group neighbour of 1 is 0 only
    row2 = 0.0                            # 2 is alone in its group
    expected = -(math.log(1e-5 + row0) + math.log(1e-5 + row1) + math.log(1e-5 + row2)) / 3
    assert snnl(x, labels, 1.0, "cosine").item() == pytest.approx(expected, rel=1e-5)


def test_snnl_euclidean_temperature_and_relu():
    # negative entries are removed by the ReLU: rows become [1, 0], [3, 0], [1, 1]
    x = torch.tensor([[1.0, -2.0], [3.0, -1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    # squared distances d01 = 4, d02 = 1, d12 = 5; t = 2
    e01, e02, e12 = math.exp(-2.0), math.exp(-0.5), math.exp(-2.5)
    row0 = e01 / (1e-5 + e01 + e02)
    row1 = e01 / (1e-5 + e01 + e12)
    expected = -(math.log(1e-5 + row0) + math.log(1e-5 + row1) + math.log(1e-5)) / 3
    assert snnl(x, labels, 2.0, "euclidean").item() == pytest.approx(expected, rel=1e-5)
    # one group only: fully "entangled", loss ~ 0
    assert snnl(x, torch.tensor([0, 0, 0]), 2.0, "euclidean").item() == pytest.approx(0.0, abs=1e-4)


def test_ewe_auto_layers_are_official_taps_for_naivenet():
    model = build_model("naivenet", in_channels=1, num_classes=10, input_size=28)
    assert resolve_layers(model, (), 3) == ["backbone.0", "backbone.3", "backbone"]
    with pytest.raises(UserError):
        resolve_layers(model, ("backbone.99",), 1)


def test_ewe_patch_position_and_schedule():
    grad = torch.zeros(1, 6, 6)
    grad[0, 4, 1] = 5.0
    grad[0, 0, 5] = -5.0
    assert patch_position(grad, 2, "snnl_max") in {(3, 0), (3, 1), (4, 0), (4, 1)}
    assert patch_position(grad, 2, "snnl_min") in {(0, 4)}
    assert patch_position(grad, 2, "bottom_right") == (4, 4)
    # ratio 1.5: WM batches preceded by 1, 2, 1, 2 clean batches
    x, y = torch.zeros(40, 1, 2, 2), torch.zeros(40, dtype=torch.long)
    source = ewe_batches(x, y, torch.ones(8, 1, 2, 2), torch.ones(8, 1, 2, 2), target=3, batch_size=4, ratio=1.5)
    kinds = ["wm" if bool(b[2].any()) else "clean" for b in source(0, torch.Generator().manual_seed(0))]
    assert kinds == ["clean", "wm", "clean", "clean", "wm", "clean", "wm", "clean", "clean", "wm"]
    wm = next(b for b in source(0, torch.Generator().manual_seed(0)) if bool(b[2].any()))
    assert wm[2].tolist() == [1.0, 1.0, 0.0, 0.0] and wm[1].tolist() == [3, 3, 3, 3]


# --------------------------------------------------------------------------------------------
# Margin-based
# --------------------------------------------------------------------------------------------

class _Identity(nn.Module):
    """logits = the input itself (2 features -> 2 classes), plus a BatchNorm whose statistics
    must not move during the ascent."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm1d(2, affine=False)

    def forward(self, x):
        self.bn(x)  # only to expose running-statistics updates
        return x


def test_margin_ascent_step_by_hand():
    model = _Identity().train()
    q = torch.tensor([[0.5, 0.5], [0.05, 0.98]])
    r = torch.tensor([0, 0])
    # d CE / dq = softmax(q) - onehot(0): sign (-1, +1) -> ascent moves q_0 down, q_1 up
    out = margin_ascent(model, q, r, steps=1, step_size=0.1)
    assert torch.allclose(out, torch.tensor([[0.4, 0.6], [0.0, 1.0]]))
    out2 = margin_ascent(model, q, r, steps=2, step_size=0.1)
    assert torch.allclose(out2[0], torch.tensor([0.3, 0.7]))
    assert model.training and model.bn.num_batches_tracked.item() == 0
    assert torch.equal(model.bn.running_mean, torch.zeros(2))


def test_random_wrong_labels_never_true():
    labels = torch.arange(10).repeat(50)
    wrong = random_wrong_labels(labels, 10, torch.Generator().manual_seed(0))
    assert not bool((wrong == labels).any()) and set(wrong.tolist()) == set(range(10))


# --------------------------------------------------------------------------------------------
# MEA-Defender
# --------------------------------------------------------------------------------------------

def test_combination_loss_is_kl_of_composite_to_source():
    source = torch.tensor([[0.0, 0.0], [0.0, 0.0]])                      # P_A = (1/2, 1/2)
    comp = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])             # P_C = (3/4, 1/4), (1/2, 1/2)
    kl_first = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert combination_loss(source, comp).item() == pytest.approx(kl_first / 2, rel=1e-5)


def test_contrastive_loss_by_hand():
    logits = torch.tensor([[0.0, 0.0], [9.0, 9.0], [0.3, 0.4], [0.3, 0.9]])
    labels = torch.tensor([0, 7, 0, 1])  # label 7 is not a watermark class and is skipped
    # pairs: (0, 2) same label, d^2 = 0.25 -> 0.125; (2, 3) different, d = 0.5 -> 0.5 * 0.5^2 = 0.125
    assert contrastive_loss(logits, labels, (0, 1, 2), reduction="mean").item() == pytest.approx(0.125, rel=1e-4)
    assert contrastive_loss(logits, labels, (0, 1, 2), reduction="code").item() == pytest.approx(0.0625, rel=1e-4)
    assert contrastive_loss(logits, labels, (5,)).item() == 0.0


def test_mgda_two_tasks_by_hand():
    assert min_norm_two(1.0, 0.0, 1.0) == pytest.approx(0.5)
    assert min_norm_two(1.0, 2.0, 4.0) == 0.999      # v2 = 2 v1: all weight on the shorter one
    assert min_norm_two(4.0, 2.0, 1.0) == 0.001
    g1, g2 = [torch.tensor([1.0, 0.0])], [torch.tensor([0.0, 3.0])]
    s1, s2 = mgda_scales(g1, g2, 1.0, 1.0, "l2")     # unit vectors after normalisation -> 1/2 each
    assert (s1, s2) == (pytest.approx(0.5, abs=1e-4), pytest.approx(0.5, abs=1e-4))
    s1, _ = mgda_scales(g1, g2, 1.0, 1.0, "none")    # |g1| = 1 < |g2| = 3: gamma = 9 / 10
    assert s1 == pytest.approx(0.9, abs=1e-4)


def test_gradient_as_loss_value_and_gradient():
    p = torch.tensor([1.0, 2.0], requires_grad=True)
    out = gradient_as_loss([p], [torch.tensor([3.0, -1.0])], torch.tensor(7.5))
    assert out.item() == pytest.approx(7.5)
    out.backward()
    assert torch.equal(p.grad, torch.tensor([3.0, -1.0]))


def test_mixers_by_hand():
    a, b = torch.zeros(2, 1, 8, 8), torch.ones(2, 1, 8, 8)
    gen = torch.Generator().manual_seed(0)
    half = mix("half", a, b, gen, jitter=0, swap=False)
    assert torch.equal(half[:, :, :4], a[:, :, :4]) and torch.equal(half[:, :, 4:], b[:, :, 4:])
    ratio = mix("ratio", a, b, gen, jitter=0, swap=False)
    assert torch.equal(ratio[..., :4], a[..., :4]) and torch.equal(ratio[..., 4:], b[..., 4:])
    hotdog = mix("hotdog", a, b, gen, swap=False)
    assert hotdog[0, 0, :, 0].tolist() == [0, 0, 1, 1, 1, 1, 0, 0]
    donut = mix("donut", a, b, gen, swap=False)
    assert donut[0, 0, 4, 4] == 0 and donut[0, 0, 0, 0] == 1
    diag = mix("diagonal", a, b, gen, swap=False)
    assert diag[0, 0, 0].sum() == 0 and diag[0, 0, 7].tolist() == [0] + [1] * 7
    # jittered rows come from random windows of a (top) and b (bottom), never mixed within a row
    c = torch.arange(64.0).view(1, 1, 8, 8).repeat(16, 1, 1, 1)
    out = mix("half", c, c + 1000, torch.Generator().manual_seed(1), jitter=2, swap=False)
    top = out[:, 0, 0]
    assert bool((top < 1000).all()) and bool((out[:, 0, 7] >= 1000).all())


# --------------------------------------------------------------------------------------------
# T2S (reimpl.)
# --------------------------------------------------------------------------------------------

def test_t2s_first_order_matches_unrolled_hypergradient_for_linear_thief():
    torch.manual_seed(0)
    teacher, thief = nn.Linear(4, 3), nn.Linear(4, 3, bias=False)
    q, x_w, y_w = torch.randn(5, 4), torch.randn(2, 4), torch.tensor([1, 2])
    tau, eta = 2.0, 0.3
    names = [n for n, _ in thief.named_parameters()]
    params = [p for _, p in thief.named_parameters()]
    probs = F.softmax(teacher(q) / tau, dim=1)
    final, first = unrolled_params(thief, names, params, probs, q, steps=1, lr=eta, temperature=tau)
    loss = F.cross_entropy(torch.func.functional_call(thief, dict(zip(names, final)), (x_w,)), y_w)
    exact = torch.autograd.grad(loss, list(teacher.parameters()))
    # the same, first order: J_S (constant for a linear thief) times the trigger gradient at phi'
    _, direction = first_order_direction(thief, names, [p.detach() for p in final], q, x_w, y_w)
    probs = F.softmax(teacher(q) / tau, dim=1)
    surrogate = eta * tau / q.shape[0] * (probs * direction).sum()
    approx = torch.autograd.grad(surrogate, list(teacher.parameters()))
    for e, a in zip(exact, approx):
        assert torch.allclose(e, a, atol=1e-6)
    # the first inner gradient is the thief's real distillation gradient
    kd = distill_loss(F.softmax(teacher(q) / tau, dim=1).detach(), thief(q), tau)
    assert torch.allclose(torch.autograd.grad(kd, params)[0], first[0], atol=1e-6)


def test_distill_loss_zero_for_identical_outputs():
    logits = torch.randn(4, 3)
    assert distill_loss(F.softmax(logits / 3.0, dim=1), logits, 3.0).item() == pytest.approx(0.0, abs=1e-6)


def test_t2s_config_rejects_itself_and_names_reconstruction():
    with pytest.raises(UserError):
        resolve(T2SConfig, "smoke", {"trigger_method": "t2s"})
    assert "reconstruction" in T2S.category


# --------------------------------------------------------------------------------------------
# End to end on small synthetic data
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    data = load_data("synthetic", owner_size=800, attacker_size=200, test_size=300,
                     options={"train_size": 1200, "test_size": 300})
    train = resolve(TrainConfig, "smoke", {"epochs": 4})
    return Context(data=data, arch="naivenet", train=train, verify=VerifyConfig(), seed=0,
                   device=torch.device("cpu"), store=ArtifactStore(str(tmp_path_factory.mktemp("store"))),
                   profile="smoke", progress=False)


@pytest.fixture(scope="module")
def clean_model(ctx):
    model = ctx.new_model(seed=ctx.seed_for("benign", "init"))
    ctx.fit(model, (ctx.data.owner.x, ctx.data.owner.y), seed=1)
    return model


# Smoke profiles, shrunk further where a method needs fewer samples to be learnt in 4 epochs.
SMOKE = {
    "ewe": {"maxiter": 2},
    "margin": {"n_queries": 15},
    "mea_defender": {"phase2_epochs": 2},
    "t2s": {"trigger_method": "badnets", "epochs": 1},
}


@pytest.mark.parametrize("name", sorted(SMOKE))
def test_method_embeds_on_synthetic(name, ctx, clean_model):
    cls = METHODS.get(name)
    method = cls(resolve(cls.Config, "smoke", SMOKE[name]))
    keys = method.keygen(ctx)
    victim = method.embed(ctx, keys)
    keys = method.finalize_keys(ctx, victim, keys)
    n = keys.verify_y.shape[0]
    victim_wsr = count_hits(victim, keys.verify_x, keys.verify_y, device=ctx.device) / n
    clean_wsr = count_hits(clean_model, keys.verify_x, keys.verify_y, device=ctx.device) / n
    assert victim_wsr >= 0.8, f"{name}: victim WSR {victim_wsr:.3f}"
    assert clean_wsr < ctx.verify.threshold, f"{name}: clean-model WSR {clean_wsr:.3f}"
    if name == "t2s":
        assert keys.meta["t2s"]["label"] == "T2S (reimpl.)"
