"""Model-stealing attacks: JBDA, Knockoff (random/adaptive), DFME, DFMS-HL, distillation and the
paper's stealing scenarios (options of those attacks).

Every attack runs at its smoke profile against a small victim on the synthetic set (10 classes,
chance 0.1) through a query-counting victim wrapper, so each test also checks that the recorded
query count is exact and that the attack never touched the victim's weights.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wmbench.api import AttackContext
from wmbench.attacks._stealing import (
    TransferSet, check_access, distillation_loss, query_pool, recovered_logits,
)
from wmbench.attacks.dfme import DFMEConfig, lr_phases
from wmbench.attacks.knockoff import GradientBandit, Knockoff, KnockoffConfig
from wmbench.blackbox import Blackbox
from wmbench.cache import ArtifactStore
from wmbench.config import OPTIMIZERS, TrainConfig, VerifyConfig, build_settings, resolve
from wmbench.data import DataBundle, Split, load_data
from wmbench.errors import UserError
from wmbench.models import build_model
from wmbench.registry import ATTACKS
from wmbench.runner import run
from wmbench.training import accuracy, fit, make_optimizer

CPU = torch.device("cpu")
SYNTH = {"train_size": 1500, "test_size": 400}
RUN_SETS = ["datasets.synthetic.train_size=900", "datasets.synthetic.test_size=300", "train.epochs=3",
            "model.arch=tinycnn"]


# ------------------------------------------------------------------------------------------
# fixtures: a small victim behind an instrumented wrapper
# ------------------------------------------------------------------------------------------
class CountingVictim(nn.Module):
    """Wraps the victim: counts every image it classifies, the largest batch it saw, and
    records any access to its weights through the usual accessors."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.images = 0
        self.largest = 0
        self.weight_access: List[str] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.images += int(x.shape[0])
        self.largest = max(self.largest, int(x.shape[0]))
        return self.inner(x)

    def parameters(self, recurse: bool = True):  # type: ignore[override]
        self.weight_access.append("parameters")
        return super().parameters(recurse)

    def named_parameters(self, *args: Any, **kwargs: Any):  # type: ignore[override]
        self.weight_access.append("named_parameters")
        return super().named_parameters(*args, **kwargs)

    def state_dict(self, *args: Any, **kwargs: Any):  # type: ignore[override]
        self.weight_access.append("state_dict")
        return super().state_dict(*args, **kwargs)


class SpyBlackbox(Blackbox):
    """A Blackbox that records whether any answer it gave was a probability vector."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.float_answers = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = super().__call__(x)
        self.float_answers += int(out.is_floating_point())
        return out


@pytest.fixture(scope="module")
def synth() -> DataBundle:
    return load_data("synthetic", options=SYNTH)


@pytest.fixture(scope="module")
def victim(synth) -> nn.Module:
    torch.manual_seed(0)
    model = build_model("tinycnn", in_channels=1, num_classes=10, input_size=28, mean=synth.mean, std=synth.std)
    fit(model, (synth.owner.x, synth.owner.y), TrainConfig(epochs=4, batch_size=64, lr=3e-3, lr_step=0),
        seed=0, progress=False)
    assert accuracy(model, synth.test.x, synth.test.y, device=CPU) > 0.9
    return model


def attacker_ctx(data: DataBundle, seed: int = 0) -> AttackContext:
    empty = Split(data.test.x[:0], data.test.y[:0])
    view = dataclasses.replace(data, owner=empty, test=empty)
    return AttackContext(data=view, arch="tinycnn", train=TrainConfig(), verify=VerifyConfig(), seed=seed, device=CPU,
                         store=ArtifactStore("/nonexistent-unused"), profile="smoke", progress=False,
                         victim_arch="tinycnn")


def steal(name: str, victim: nn.Module, data: DataBundle, mode: str, **overrides: Any):
    cls = ATTACKS.get(name)
    config = resolve(cls.Config, "smoke", overrides, section=f"attacks.{name}")
    wrapper = CountingVictim(victim)
    box = SpyBlackbox(wrapper, num_classes=10, input_shape=(1, 28, 28), mode=mode)
    outcome = cls(config).run(box, attacker_ctx(data))
    return outcome, box, wrapper, config


ATTACK_CASES = [
    ("knockoff", "soft", {}), ("knockoff", "hard", {}),
    ("knockoff", "soft", {"policy": "adaptive", "budget": 600}),
    ("jbda", "soft", {}), ("jbda", "hard", {}),
    ("distill", "soft", {}),
    ("dfme", "soft", {}), ("dfme", "hard", {}),
    ("dfms_hl", "hard", {"proxy_set": "digits"}),
]


@pytest.mark.parametrize("name, labels, extra", ATTACK_CASES, ids=[f"{n}-{l}-{'-'.join(e) or 'default'}"
                                                                     for n, l, e in ATTACK_CASES])
def test_attack_steals_with_exact_queries_and_no_weights(name, labels, extra, victim, synth):
    overrides = {"labels": labels, "arch": "tinycnn", **extra}
    outcome, box, wrapper, config = steal(name, victim, synth, "labels" if labels == "hard" else "probs", **overrides)
    acc = accuracy(outcome.model, synth.test.x, synth.test.y, device=CPU)
    assert acc > 0.3, f"{name}/{labels}: accuracy {acc:.3f} does not beat chance (0.1) clearly"
    # the query count is exact: recorded == Blackbox == images the victim actually classified
    assert outcome.queries == box.queries == wrapper.images > 0
    if getattr(config, "budget", None) is not None and not getattr(config, "adv_eps", 0):
        assert outcome.queries <= config.budget
    # no weights read through the wrapper; the attack only called the Blackbox
    assert wrapper.weight_access == []
    # hard-label variants never received a probability
    if labels == "hard":
        assert box.float_answers == 0
    else:
        assert box.float_answers > 0
    assert outcome.metrics["pool_size"] >= 0
    assert outcome.model is not victim


def test_hard_label_variants_refuse_probabilities_and_soft_refuse_labels(victim, synth):
    probs = Blackbox(victim, num_classes=10, input_shape=(1, 28, 28), mode="probs")
    labels = Blackbox(victim, num_classes=10, input_shape=(1, 28, 28), mode="labels")
    for name in ("knockoff", "jbda", "dfme"):
        cls = ATTACKS.get(name)
        with pytest.raises(ValueError, match="labels' mode"):
            cls(resolve(cls.Config, "smoke", {"labels": "hard"})).run(probs, attacker_ctx(synth))
        with pytest.raises(ValueError, match="needs probabilities"):
            cls(resolve(cls.Config, "smoke", {"labels": "soft"})).run(labels, attacker_ctx(synth))
    with pytest.raises(ValueError, match="labels' mode"):
        ATTACKS.get("dfms_hl")(resolve(ATTACKS.get("dfms_hl").Config, "smoke", {})).run(probs, attacker_ctx(synth))
    with pytest.raises(TypeError, match="Blackbox"):
        check_access(victim, "soft", "Knockoff")  # a bare model (weights) is refused
    assert probs.queries == labels.queries == 0


def test_blackbox_hides_the_model_and_context_hides_owner_data(victim, synth):
    box = Blackbox(victim, num_classes=10, input_shape=(1, 28, 28))
    public = {k: v for k, v in vars(box).items() if not k.startswith("_Blackbox__")}
    assert not any(isinstance(v, nn.Module) for v in public.values())
    assert not hasattr(box, "model") and not hasattr(box, "parameters")
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(box)
    ctx = attacker_ctx(synth)
    assert len(ctx.data.owner) == 0 and len(ctx.data.test) == 0 and len(ctx.data.attacker) == len(synth.attacker)


def test_runner_gives_stealing_attacks_only_a_blackbox_and_the_attacker_split(tmp_path, monkeypatch):
    seen: Dict[str, Any] = {}
    original = Knockoff.run

    def spy(self, target, ctx):
        seen.update(target=type(target).__name__, owner=len(ctx.data.owner), test=len(ctx.data.test),
                    attacker=len(ctx.data.attacker))
        return original(self, target, ctx)

    monkeypatch.setattr(Knockoff, "run", spy)
    run("badnets", "knockoff", "synthetic", profile="smoke", out=tmp_path / "run", cache_dir=tmp_path / "cache",
        overrides=RUN_SETS + ["attacks.knockoff.labels=soft", "attacks.knockoff.budget=301"], progress=False)
    assert seen == {"target": "Blackbox", "owner": 0, "test": 0, "attacker": 300}


# ------------------------------------------------------------------------------------------
# query accounting of the data-free attacks
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("labels, m, d_iter, g_iter, per_iter", [
    ("soft", 1, 5, 1, 16 * (1 + 1 + 5)), ("soft", 3, 2, 1, 16 * (3 + 1 + 2)), ("hard", 3, 2, 1, 16 * (1 + 2)),
    ("soft", 2, 1, 2, 16 * (2 * 3 + 1)),
])
def test_dfme_queries_are_b_times_m_plus_1_plus_d_iter(labels, m, d_iter, g_iter, per_iter, victim, synth):
    cfg = {"labels": labels, "grad_m": m, "d_iter": d_iter, "g_iter": g_iter, "batch_size": 16, "budget": 1000,
           "arch": "tinycnn"}
    outcome, box, wrapper, config = steal("dfme", victim, synth, "labels" if labels == "hard" else "probs", **cfg)
    assert config.cost_per_iteration == per_iter
    iterations = 1000 // per_iter
    assert outcome.metrics["iterations"] == iterations
    assert outcome.queries == wrapper.images == iterations * per_iter


def test_dfme_generator_receives_gradients_from_the_estimate(victim, synth):
    from wmbench.attacks.dfme import DFMEStream, GeneratorA

    cfg = resolve(DFMEConfig, "smoke", {"batch_size": 8, "budget": 1000})
    g = GeneratorA(cfg.nz, cfg.ngf, 1, 28)
    before = [p.detach().clone() for p in g.parameters()]
    student = build_model("tinycnn", in_channels=1, num_classes=10, input_size=28)
    box = Blackbox(victim, num_classes=10, input_shape=(1, 28, 28))
    stream = DFMEStream(cfg, box, student, g, CPU, seed=0, iterations=1)
    stream.generator_step_soft()
    assert box.queries == 8 * (cfg.grad_m + 1)
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, g.parameters()))
    assert g(torch.randn(4, cfg.nz)).min() >= 0 and g(torch.randn(4, cfg.nz)).max() <= 1


def test_lr_phases_follow_multistep_milestones():
    assert lr_phases(10, (0.1, 0.3, 0.5), 0.3) == [(1, 1.0), (2, 0.3), (2, 0.3 ** 2), (5, 0.3 ** 3)]
    assert lr_phases(1, (0.1, 0.3, 0.5), 0.3) == [(1, 1.0)]


# ------------------------------------------------------------------------------------------
# adaptive Knockoff
# ------------------------------------------------------------------------------------------
class BrightnessVictim(nn.Module):
    """Confident (class 0) on bright images, uniform on grey ones."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.flatten(1).mean(1, keepdim=True)
        logits = torch.zeros(x.shape[0], 5)
        logits[:, :1] = 40.0 * (m - 0.5)
        return logits


def test_adaptive_knockoff_prefers_the_rewarding_pool_class():
    g = torch.Generator().manual_seed(0)
    n = 60
    bright = (0.95 + 0.05 * torch.rand(n, 1, 8, 8, generator=g))
    grey = (0.5 + 0.02 * torch.randn(4 * n, 1, 8, 8, generator=g)).clamp(0, 1)
    pool = Split(torch.cat([bright, grey]), torch.cat([torch.zeros(n), torch.arange(4 * n) % 4 + 1]).long())
    empty = Split(pool.x[:0], pool.y[:0])
    data = DataBundle(name="constructed", num_classes=5, channels=1, size=8, mean=(0.5,), std=(0.3,), owner=empty,
                      attacker=pool, test=empty, class_names=tuple("abcde"))
    ctx = AttackContext(data=data, arch="tinycnn", train=TrainConfig(), verify=VerifyConfig(), seed=0, device=CPU,
                        store=ArtifactStore("/nonexistent-unused"), profile="smoke", progress=False,
                        victim_arch="tinycnn")
    box = Blackbox(BrightnessVictim(), num_classes=5, input_shape=(1, 8, 8))
    cfg = KnockoffConfig(policy="adaptive", reward="cert", budget=480, adaptive_batch=4, epochs=1, optimizer="adam",
                         lr=1e-3, lr_step=0)
    outcome = Knockoff(cfg).run(box, ctx)
    assert outcome.queries == box.queries == 480
    assert outcome.metrics["adaptive_top_action"] == 0.0  # the bright (certain) class
    assert outcome.metrics["adaptive_top_share"] > 0.5  # uniform would be 0.2
    # the random policy spreads queries over the pool instead
    assert Knockoff(dataclasses.replace(cfg, policy="random")).run(
        Blackbox(BrightnessVictim(), num_classes=5, input_shape=(1, 8, 8)), ctx).queries == 480


def test_gradient_bandit_learns_the_best_action_for_each_reward():
    gen = torch.Generator().manual_seed(0)
    bandit = GradientBandit(4, 3, reward="cert")
    for _ in range(300):
        a = bandit.choose(gen)
        bandit.update(a, 1.0 if a == 2 else 0.0)
    assert int(bandit.probs.argmax()) == 2 and bandit.probs[2] > 0.7
    all_reward = GradientBandit(2, 3, reward="all", var_floor=1e-4)
    y = torch.tensor([[0.9, 0.05, 0.05]], dtype=torch.float64)
    first = all_reward.reward(y, y)
    assert 0.0 <= first <= 1.0  # clipped on the first step
    all_reward.update(0, first)
    assert torch.isfinite(torch.tensor(all_reward.reward(y, y)))  # variance floor: no division by zero


# ------------------------------------------------------------------------------------------
# scenarios (options of the attacks)
# ------------------------------------------------------------------------------------------
def test_scenarios_partial_noise_adversarial_cross_dataset_and_shift(victim, synth):
    base = {"labels": "soft", "arch": "tinycnn", "budget": 300, "epochs": 2}
    # partial functionality: the pool holds only the listed classes
    out, box, wrapper, _ = steal("knockoff", victim, synth, "probs", **base, classes=[0, 1, 2])
    assert out.metrics["pool_classes"] == 3 and out.metrics["pool_size"] < len(synth.attacker)
    assert out.queries == wrapper.images == 300
    # noisy queries: counted exactly; the victim sees noisy images
    out, box, wrapper, _ = steal("knockoff", victim, synth, "probs", **base, query_noise=0.2)
    assert out.queries == wrapper.images == 300
    # adversarial-training stealing: FGSM queries each epoch after the first, counted on top of the budget
    out, box, wrapper, _ = steal("knockoff", victim, synth, "probs", **{**base, "epochs": 3}, adv_eps=0.1,
                                 adv_fraction=0.5)
    assert out.metrics["adv_queries"] == 2 * 150
    assert out.queries == wrapper.images == 300 + 300
    # cross-dataset: digits as the query set of a synthetic victim
    out, box, wrapper, _ = steal("jbda", victim, synth, "probs", arch="tinycnn", query_set="digits")
    assert out.metrics["pool_in_distribution"] == 0.0 and out.queries == wrapper.images
    # continuous distribution shift: one round per query set, a snapshot each, budget split evenly
    out, box, wrapper, _ = steal("knockoff", victim, synth, "probs", **{**base, "epochs": 3},
                                 query_sets=["digits", "attacker", "digits"])
    assert [s[:2] for s in out.snapshots] == [("round", 1.0), ("round", 2.0), ("round", 3.0)]
    assert out.queries == wrapper.images == 300 and out.metrics["rounds"] == 3
    # unusual optimisers
    for opt in ("adagrad", "adamax", "rmsprop"):
        out, *_ = steal("distill", victim, synth, "probs", arch="tinycnn", budget=200, epochs=1, optimizer=opt)
        assert out.queries == 200


def test_knockoff_streams_queries_and_references_the_pool(victim, synth):
    out, box, wrapper, _ = steal("knockoff", victim, synth, "probs", labels="soft", arch="tinycnn", budget=700,
                                 epochs=1, query_batch_size=64)
    assert wrapper.largest <= 64 and wrapper.images == 700
    pool = query_pool(attacker_ctx(synth), None)
    t = TransferSet()
    order = torch.tensor([3, 1, 3, 0])
    t.add(pool.x, torch.eye(4), index=order)
    t.add(torch.zeros(2, 1, 28, 28), torch.full((2, 4), 0.25))
    x, y = t.gather(torch.tensor([5, 0, 2]))
    assert torch.equal(x[0], torch.zeros(1, 28, 28)) and torch.equal(x[1], pool.x[3]) and torch.equal(x[2], pool.x[3])
    assert torch.equal(y[1], torch.eye(4)[0]) and len(t) == 6


def test_distillation_loss_uses_p_to_the_one_over_t():
    g = torch.Generator().manual_seed(0)
    teacher_logits = torch.randn(6, 5, generator=g) * 3
    student = nn.Linear(4, 5)
    x = torch.randn(6, 4, generator=g)
    for temp in (1.0, 3.0, 7.0):
        loss = distillation_loss(temp)(student, (x, F.softmax(teacher_logits, dim=1)))
        q = F.softmax(teacher_logits / temp, dim=1)
        expected = temp ** 2 * F.kl_div(F.log_softmax(student(x) / temp, dim=1), q, reduction="batchmean")
        assert torch.allclose(loss, expected, atol=1e-5)
    probs = F.softmax(teacher_logits, dim=1)
    rec = recovered_logits(probs)
    assert torch.allclose(rec, teacher_logits - teacher_logits.mean(1, keepdim=True), atol=1e-4)


def test_extra_optimizers_in_shared_make_optimizer():
    p = [nn.Parameter(torch.zeros(2))]
    kinds = {"adagrad": torch.optim.Adagrad, "adamax": torch.optim.Adamax, "rmsprop": torch.optim.RMSprop}
    for name, cls in kinds.items():
        assert isinstance(make_optimizer(p, TrainConfig(optimizer=name, lr=0.01)), cls)
        TrainConfig(optimizer=name).validate()
    assert set(kinds) < set(OPTIMIZERS)


# ------------------------------------------------------------------------------------------
# runner: double-stage chains and budget sweeps
# ------------------------------------------------------------------------------------------
def _attack_rows(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[(frame["status"] == "ok") & (frame["stage"] != "curve")]


def test_double_stage_chain_and_budget_sweep(tmp_path):
    cache = tmp_path / "cache"
    frame = run("badnets", "knockoff+knockoff", "synthetic", profile="smoke", out=tmp_path / "chain",
                cache_dir=cache, progress=False,
                overrides=RUN_SETS + ["attacks.knockoff.labels=soft", "attacks.knockoff.budget=250", "attacks.knockoff.batch_size=32",
                                      "attacks.knockoff.epochs=6", "attacks.knockoff.arch=tinycnn", "train.epochs=8"])
    rows = _attack_rows(frame)
    assert set(rows["labels"]) == {"soft+soft"} and rows["cell_id"].nunique() == 1
    value = lambda stage, metric: float(rows[(rows["stage"] == stage) & (rows["metric"] == metric)]["value"].iloc[0])
    assert value("stage1", "queries") == 250 and value("attack", "queries") == 250
    assert value("attack", "acc") > 0.3 and value("stage1", "acc") > 0.3

    frame = run("badnets", "knockoff", "synthetic", profile="smoke", out=tmp_path / "sweep", cache_dir=cache,
                progress=False, sweeps=["attacks.knockoff.budget=120,240,360"],
                overrides=RUN_SETS + ["attacks.knockoff.labels=hard", "attacks.knockoff.arch=tinycnn"])
    rows = _attack_rows(frame)
    queries = rows[(rows["stage"] == "attack") & (rows["metric"] == "queries")]
    assert queries["cell_id"].nunique() == 3
    assert sorted(zip(queries["sweep"], queries["value"])) == [
        ("attacks.knockoff.budget=120", 120.0), ("attacks.knockoff.budget=240", 240.0),
        ("attacks.knockoff.budget=360", 360.0)]


# ------------------------------------------------------------------------------------------
# bad parameters
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("attack, layer, needle", [
    ("knockoff", {"budget": -5}, "attacks.knockoff.budget must be a positive integer"),
    ("jbda", {"budget": 0}, "attacks.jbda.budget must be a positive integer"),
    ("distill", {"budget": -1}, "attacks.distill.budget must be a positive integer"),
    ("dfme", {"budget": -100}, "attacks.dfme.budget must be a positive integer"),
    ("knockoff", {"query_set": "imagenet22k"}, "unknown attacks.knockoff.query_set 'imagenet22k'; available:"),
    ("jbda", {"query_set": "nope"}, "unknown attacks.jbda.query_set 'nope'"),
    ("distill", {"query_set": "nope"}, "unknown attacks.distill.query_set 'nope'"),
    ("knockoff", {"query_sets": ["digits", "nope"]}, "unknown dataset 'nope' in attacks.knockoff.query_sets"),
    ("dfms_hl", {"proxy_set": "nope"}, "unknown attacks.dfms_hl.proxy_set 'nope'"),
    ("distill", {"temperature": 0}, "attacks.distill.temperature must be > 0, got 0"),
    ("distill", {"temperature": -3}, "attacks.distill.temperature must be > 0"),
    ("knockoff", {"policy": "greedy"}, "attacks.knockoff.policy must be 'random' or 'adaptive'"),
    ("knockoff", {"reward": "money"}, "attacks.knockoff.reward must be one of cert, div, loss, all"),
    ("knockoff", {"optimizer": "lbfgs"}, "attacks.knockoff.optimizer must be one of adam, sgd, adagrad"),
    ("knockoff", {"query_noise": -0.1}, "attacks.knockoff.query_noise must be a standard deviation >= 0"),
    ("knockoff", {"classes": []}, "attacks.knockoff.classes must be distinct"),
    ("knockoff", {"labels": "medium"}, "attacks.knockoff.labels must be 'soft' or 'hard'"),
    ("jbda", {"step": 0}, "attacks.jbda.step must be > 0"),
    ("dfme", {"budget": 10, "batch_size": 64}, "below the cost of one iteration"),
    ("dfme", {"loss": "l2"}, "attacks.dfme.loss must be 'l1' or 'kl'"),
    ("dfms_hl", {"labels": "soft"}, "attacks.dfms_hl.labels must be 'hard'"),
    ("distill", {"labels": "hard"}, "attacks.distill.labels must be 'soft'"),
])
def test_bad_parameters_are_rejected_with_clear_messages(attack, layer, needle):
    settings = build_settings("smoke", {"attacks": {attack: layer}})
    with pytest.raises(UserError) as info:
        settings.component("attacks", attack, ATTACKS.get(attack).Config)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_parameters_fail_before_anything_runs(tmp_path):
    with pytest.raises(UserError, match="temperature must be > 0"):
        run("badnets", "distill", "synthetic", profile="smoke", out=tmp_path / "x", progress=False,
            sweeps=["attacks.distill.temperature=1,0"])
    assert not (tmp_path / "x").exists()
