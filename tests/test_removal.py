"""Removal, evasion, ambiguity and adaptive attacks (issue 7): mechanics, invariants, curves, figures."""
import copy

import pandas as pd
import pytest
import torch
from torch import nn

from wmbench import report
from wmbench.api import AttackContext
from wmbench.cache import ArtifactStore
from wmbench.config import TrainConfig, VerifyConfig, resolve
from wmbench.data import load_data
from wmbench.models import build_model
from wmbench.registry import ATTACKS
from wmbench.report.figures import write_figures
from wmbench.report.tables import curve_frame
from wmbench.runner import run
from wmbench.training import fit

from wmbench.attacks.finetune import select_operating_point
from wmbench.attacks.preprocess import CropResize, GaussianBlur, InputQuantization
from wmbench.attacks.prune import apply_magnitude_pruning, make_permanent, prunable_parameters, zero_fraction
from wmbench.attacks.quantize import quantize_model

NEW_ATTACKS = ["ftll", "ftal", "rtll", "rtal", "prune", "fineprune", "quantize", "transfer", "pre_blur", "pre_noise",
               "pre_quant", "pre_crop", "pre_randcrop", "detect_lof", "detect_if", "ambiguity", "adaptive_pattern",
               "adaptive_sources", "adaptive_infer"]

# Small settings per attack so the whole file stays well under a minute.
SMALL = {
    "ftll": {"epochs": 2}, "ftal": {"epochs": 2}, "rtll": {"epochs": 2}, "rtal": {"epochs": 2},
    "prune": {"rates": [0.0, 0.5, 0.9], "eval_size": 100},
    "fineprune": {"finetune_epochs": 1, "activation_size": 200},
    "quantize": {"bits_list": [8, 4, 2], "eval_size": 100},
    "transfer": {"epochs": 1, "n_samples": 300},
    "pre_blur": {"eval_size": 100}, "pre_noise": {"eval_size": 100}, "pre_quant": {"eval_size": 100},
    "pre_crop": {"eval_size": 100}, "pre_randcrop": {"eval_size": 100},
    "detect_lof": {"fit_size": 300, "eval_size": 150}, "detect_if": {"fit_size": 300, "eval_size": 150},
    "ambiguity": {"epochs": 1, "n_samples": None},
    "adaptive_pattern": {"epochs": 1, "n_samples": None}, "adaptive_sources": {"epochs": 1, "n_samples": None},
    "adaptive_infer": {"epochs": 1, "n_samples": None},
}


@pytest.fixture(scope="module")
def bundle():
    return load_data("synthetic", options={"train_size": 1800, "test_size": 400})


@pytest.fixture(scope="module")
def victim(bundle):
    torch.manual_seed(0)
    model = build_model("tinycnn", in_channels=1, num_classes=10, input_size=28, mean=bundle.mean, std=bundle.std)
    fit(model, (bundle.owner.x, bundle.owner.y), TrainConfig(epochs=3, batch_size=64), seed=0)
    return model


def make_ctx(bundle, tmp_path, watermark=None) -> AttackContext:
    empty = bundle.test.subset(torch.arange(0))
    view = type(bundle)(**{**bundle.__dict__, "owner": empty, "test": empty})
    return AttackContext(data=view, arch="tinycnn", train=TrainConfig(epochs=1), verify=VerifyConfig(), seed=7,
                         device=torch.device("cpu"), store=ArtifactStore(tmp_path), profile="smoke", progress=False,
                         victim_arch="tinycnn", watermark=watermark or {})


def make_attack(name, **overrides):
    cls = ATTACKS.get(name)
    return cls(resolve(cls.Config, "smoke", {**SMALL.get(name, {}), **overrides}, section=f"attacks.{name}"))


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same(a, b, prefix=""):
    return all(torch.equal(a[k], b[k]) for k in a if k.startswith(prefix))


# ---------------------------------------------------------------------------------------------
# Pruning and quantization
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rate", [0.0, 0.3, 0.75, 1.0])
def test_layerwise_pruning_zeroes_rate_of_every_tensor(victim, rate):
    model = copy.deepcopy(victim)
    apply_magnitude_pruning(model, rate, "layer")
    make_permanent(model)
    for module, name in prunable_parameters(model):
        t = getattr(module, name)
        assert isinstance(t, nn.Parameter)  # the mask was folded in
        assert int((t == 0).sum()) == round(rate * t.numel())
    assert zero_fraction(model) == pytest.approx(rate, abs=0.01)


def test_global_pruning_and_prune_attack_snapshots(victim, bundle, tmp_path):
    model = copy.deepcopy(victim)
    apply_magnitude_pruning(model, 0.6, "global")
    make_permanent(model)
    assert zero_fraction(model) == pytest.approx(0.6, abs=1e-3)
    per_layer = [float((getattr(m, n) == 0).float().mean()) for m, n in prunable_parameters(model)]
    assert max(per_layer) - min(per_layer) > 0.05  # global ranking prunes layers unevenly
    outcome = make_attack("prune").run(victim, make_ctx(bundle, tmp_path))
    assert [(s[0], s[1]) for s in outcome.snapshots] == [("rate", 0.0), ("rate", 0.5), ("rate", 0.9)]
    for _, rate, snap in outcome.snapshots:
        assert zero_fraction(snap) == pytest.approx(rate, abs=0.01)
    assert outcome.metrics["chosen_rate"] in (0.0, 0.5, 0.9)
    assert zero_fraction(outcome.model) == pytest.approx(outcome.metrics["chosen_rate"], abs=0.01)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_quantization_leaves_at_most_2_to_the_b_values(victim, bits):
    model = copy.deepcopy(victim)
    quantize_model(model, bits)
    for name, p in model.named_parameters():
        assert torch.unique(p).numel() <= 2 ** bits, name
    # per-channel: at most 2^b values per output channel
    model = copy.deepcopy(victim)
    quantize_model(model, bits, per_channel=True)
    w = model.head.weight
    assert all(torch.unique(row).numel() <= 2 ** bits for row in w)
    if bits >= 2:
        assert torch.unique(model.head.weight).numel() > 2 ** bits  # channels use their own ranges


def test_quantize_attack_sweeps_bits(victim, bundle, tmp_path):
    outcome = make_attack("quantize").run(victim, make_ctx(bundle, tmp_path))
    assert [s[1] for s in outcome.snapshots] == [8.0, 4.0, 2.0]
    two_bit = outcome.snapshots[-1][2]
    assert max(torch.unique(p).numel() for p in two_bit.parameters()) <= 4


def test_select_operating_point():
    points = [(0.0, 0.90), (0.5, 0.89), (0.7, 0.86), (0.9, 0.40)]
    assert select_operating_point(points, 0.90, 0.05) == 2
    assert select_operating_point(points, 0.90, 0.0) == 0
    assert select_operating_point([(1, 0.1), (2, 0.05)], 0.9, 0.05) == 0


# ---------------------------------------------------------------------------------------------
# Fine-tuning
# ---------------------------------------------------------------------------------------------

def test_ftll_leaves_other_layers_bit_identical(victim, bundle, tmp_path):
    before = state(victim)
    outcome = make_attack("ftll").run(victim, make_ctx(bundle, tmp_path))
    after = state(outcome.model)
    assert same(before, after, "backbone.") and same(before, after, "mean") and same(before, after, "std")
    assert not torch.equal(before["head.weight"], after["head.weight"])
    assert [(s[0], s[1]) for s in outcome.snapshots] == [("epoch", 1.0), ("epoch", 2.0)]
    assert all(p.requires_grad for p in outcome.model.parameters())


def test_rtll_reinitialises_only_the_head(victim, bundle, tmp_path):
    before = state(victim)
    attack = make_attack("rtll", epochs=1, lr=1e-9)  # (almost) no training: the head is a fresh init
    outcome = attack.run(victim, make_ctx(bundle, tmp_path))
    after = state(outcome.model)
    assert same(before, after, "backbone.")
    assert not torch.equal(before["head.weight"], after["head.weight"])
    fresh = nn.Linear(victim.head.in_features, victim.head.out_features)
    bound = 1 / victim.head.in_features ** 0.5  # nn.Linear's default init range
    assert after["head.weight"].abs().max() <= bound + 1e-6
    assert after["head.weight"].shape == fresh.weight.shape
    # restore_head puts the original head back (Adi et al.'s measurement)
    restored = make_attack("rtal", epochs=1, restore_head=True).run(victim, make_ctx(bundle, tmp_path)).model
    assert torch.equal(restored.head.weight, victim.head.weight)
    assert not same(before, state(restored), "backbone.")


def test_transfer_uses_original_head_and_reports_target_accuracy(victim, bundle, tmp_path):
    outcome = make_attack("transfer", mode="rtal").run(victim, make_ctx(bundle, tmp_path))
    assert torch.equal(outcome.model.head.weight, victim.head.weight)
    assert not same(state(victim), state(outcome.model), "backbone.")
    assert 0.0 <= outcome.metrics["target_acc"] <= 1.0 and outcome.metrics["new_head"] == 1.0


# ---------------------------------------------------------------------------------------------
# Evasion: preprocessing and query detection
# ---------------------------------------------------------------------------------------------

def test_preprocessing_transforms(bundle):
    x = bundle.test.x[:16]
    assert torch.allclose(CropResize(1.0)(x), x, atol=1e-5)
    blurred = GaussianBlur(1.0)(x)
    assert blurred.shape == x.shape and 0 <= blurred.min() and blurred.max() <= 1
    assert blurred.var() < x.var()
    q = InputQuantization(4)(x)
    assert torch.unique(q).numel() <= 4
    crop = CropResize(0.5, random=True, seed=1)
    assert not torch.equal(crop(x), crop(x))  # fresh random positions per call


@pytest.mark.parametrize("name", ["detect_lof", "detect_if"])
def test_detector_false_positive_rate_near_contamination(victim, bundle, tmp_path, name):
    outcome = make_attack(name, contamination=0.05, contaminations=[0.05, 0.2]).run(victim, make_ctx(bundle, tmp_path))
    assert outcome.metrics["clean_flag_rate"] == pytest.approx(0.05, abs=0.04)
    suspect = outcome.model
    assert suspect.flag_rate(bundle.test.x) == pytest.approx(0.05, abs=0.05)  # independent clean data
    noise = torch.rand(200, 1, 28, 28)
    if name == "detect_lof":
        assert suspect.flag_rate(noise) > 0.5  # out-of-distribution queries are flagged
    suspect.threshold = float("inf")  # flag everything: every answer is the response policy's
    seen, flagged = suspect.queries_seen, suspect.queries_flagged
    with torch.no_grad():
        own = victim(noise[:50]).argmax(1)
        answered = suspect(noise[:50]).argmax(1)
    assert suspect.queries_seen == seen + 50 and suspect.queries_flagged == flagged + 50
    assert 0.7 <= float((answered != own).float().mean()) < 1.0  # uniformly random labels (1/10 coincide)
    assert [s[1] for s in outcome.snapshots] == [0.05, 0.2]


# ---------------------------------------------------------------------------------------------
# Every attack works on a copy
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NEW_ATTACKS)
def test_attack_leaves_input_model_unchanged(victim, bundle, tmp_path, name):
    before = state(victim)
    watermark = {"method": "deeptracer", "keys_meta": {"sources": [0, 3, 7, 9]}}
    outcome = make_attack(name).run(victim, make_ctx(bundle, tmp_path, watermark))
    assert same(before, state(victim)) and victim.head.weight.requires_grad
    assert outcome.model is not victim
    assert all(s[2] is not victim for s in outcome.snapshots) and outcome.snapshots
    with torch.no_grad():
        assert outcome.model(bundle.test.x[:4]).shape == (4, 10)
    if name == "adaptive_sources":
        assert outcome.metrics["sources_known"] == 1.0
        assert [outcome.metrics[f"used_source_{i}"] for i in range(4)] == [0, 3, 7, 9]
    if name == "adaptive_infer":
        inferred = {outcome.metrics[f"inferred_source_{i}"] for i in range(4)}
        assert len(inferred) == 4 and outcome.metrics["source_overlap"] == len(inferred & {0, 3, 7, 9})
    if name == "ambiguity":
        assert outcome.metrics["pirate_wsr"] > outcome.metrics["pirate_wsr_before"]


# ---------------------------------------------------------------------------------------------
# Through the runner: chains, curves, the detector's key flag rate, report and figures
# ---------------------------------------------------------------------------------------------

RUN_SETTINGS = ["datasets.synthetic.train_size=1500", "datasets.synthetic.test_size=400", "train.epochs=4",
                "model.arch=tinycnn", "attacks.knockoff.labels=soft", "attacks.ftal.epochs=2",
                "attacks.detect_lof.fit_size=300", "attacks.detect_lof.eval_size=100",
                "attacks.quantize.bits_list=[8,2]"]


@pytest.fixture(scope="module")
def chain_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("removal-run")
    frame = run("badnets", ["knockoff+ftal", "detect_lof", "quantize"], "synthetic", profile="smoke",
                overrides=RUN_SETTINGS, out=out, progress=False)
    return frame, out


def test_chain_knockoff_ftal_produces_curve_rows(chain_run):
    frame, _ = chain_run
    assert set(frame["status"]) == {"ok"}
    chain = frame[frame["attack"] == "knockoff+ftal"]
    curve = chain[chain["stage"] == "curve"]
    assert sorted(curve["step"].unique()) == [1.0, 2.0] and set(curve["step_name"]) == {"epoch"}
    assert {"acc", "fidelity", "wsr", "detected"} <= set(curve["metric"])
    assert {"stage1", "attack"} <= set(chain["stage"])
    final = chain[(chain["stage"] == "attack") & (chain["metric"] == "acc")]["value"].item()
    last = curve[(curve["step"] == 2.0) & (curve["metric"] == "acc")]["value"].item()
    assert final == pytest.approx(last)


def test_detection_records_key_and_clean_flag_rates(chain_run):
    frame, _ = chain_run
    rows = frame[(frame["attack"] == "detect_lof") & (frame["stage"] == "attack")].set_index("metric")["value"]
    assert 0.0 <= rows["clean_flag_rate"] <= 0.1
    assert 0.0 <= rows["key_flag_rate"] <= 1.0
    curve = frame[(frame["attack"] == "detect_lof") & (frame["stage"] == "curve")]
    assert set(curve["step_name"]) == {"contamination"} and "key_flag_rate" in set(curve["metric"])


def test_report_writes_curves_table_and_figures(chain_run, tmp_path):
    frame, _ = chain_run
    table = report.curve_table(frame)
    assert set(table["attack"]) == {"knockoff+ftal", "detect_lof", "quantize"}
    quant = table[table["attack"] == "quantize"]
    assert list(quant["step"]) == [8.0, 2.0]  # weakest first and quant["acc_mean"].between(0, 100).all()
    paths = report.write_report(frame, tmp_path)
    names = {p.name for p in paths}
    assert {"curves.csv", "curve_synthetic_tinycnn_quantize_bits.png", "curve_synthetic_tinycnn_quantize_bits.pdf",
            "curve_synthetic_tinycnn_knockoff+ftal_soft_epoch.png",
            "curve_synthetic_tinycnn_detect_lof_contamination.pdf"} <= names
    for p in paths:
        assert p.is_file() and p.stat().st_size > 1000 or p.suffix in (".csv", ".md", ".tex", ".html")
    assert (tmp_path / "figures" / "curve_synthetic_tinycnn_quantize_bits.png").read_bytes()[:4] == b"\x89PNG"
    assert "Curves" in (tmp_path / "report.md").read_text()
    assert len(pd.read_csv(tmp_path / "curves.csv")) == len(table)


def test_figures_skip_frames_without_curves(tmp_path):
    assert write_figures(pd.DataFrame(), tmp_path) == [] and not (tmp_path / "figures").exists()
    assert curve_frame(None).empty and report.curve_table(pd.DataFrame()).empty
