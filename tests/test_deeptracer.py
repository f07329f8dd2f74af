"""DeepTracer's pieces against hand-computed values, and the key filter against Eq. 7–8."""
import pytest
import torch
import torch.nn.functional as F

from wmbench.config import KeyFilterConfig, identity_dict, resolve
from wmbench.data import Split
from wmbench.errors import UserError
from wmbench.methods.deeptracer import (
    CentroidTracker, DeepTracer, DeepTracerConfig, class_centroids, compose_grid, coupled_loss, grid_layout, inter_loss,
    intra_loss, least_likely_target, mixed_batches, sample_composites, select_source_classes,
)
from wmbench.methods.keyfilter import two_stage_select
from wmbench.runner import run
from wmbench.utils import generator


def _centroids(seed=0, classes=10, dim=16):
    return torch.randn(classes, dim, generator=generator(seed))


def test_source_selection_distinct_and_deterministic():
    c = _centroids()
    a = select_source_classes(c, 4, seed=3)
    assert len(a) == 4 and len(set(a)) == 4 and all(0 <= s < 10 for s in a)
    assert a == select_source_classes(c, 4, seed=3)


def test_source_selection_picks_cluster_representatives():
    # four well separated groups of classes: one source from each group
    groups = [[0, 1], [2, 3, 4], [5, 6], [7, 8, 9]]
    centres = torch.tensor([[0.0, 0], [100, 0], [0, 100], [100, 100]])
    c = torch.zeros(10, 2)
    for g, members in enumerate(groups):
        for k, m in enumerate(members):
            c[m] = centres[g] + 0.1 * (k + 1)
    sources = select_source_classes(c, 4, seed=0)
    assert sorted(next(g for g, ms in enumerate(groups) if s in ms) for s in sources) == [0, 1, 2, 3]
    # within a group the class nearest the group's mean is chosen (the middle one for group 1)
    assert 3 in sources


def test_class_centroids_eq1():
    f = torch.tensor([[1.0, 0], [3.0, 2], [5.0, 5]])
    y = torch.tensor([0, 0, 1])
    c = class_centroids(f, y, 3)
    assert torch.equal(c[0], torch.tensor([2.0, 1.0])) and torch.equal(c[1], torch.tensor([5.0, 5.0]))
    assert torch.isnan(c[2]).all()


def test_composite_shape_and_quadrants():
    tiles = [torch.full((3, 1, 28, 28), float(v)) for v in (0.1, 0.4, 0.7, 1.0)]
    tiles[0][:, :, :14] = 0.9  # top half of the first source differs from its bottom half
    out = compose_grid(tiles)
    assert out.shape == (3, 1, 28, 28)
    expected_tl = F.interpolate(tiles[0], size=(14, 14), mode="bilinear", align_corners=False, antialias=True)
    assert torch.allclose(out[:, :, :14, :14], expected_tl)
    assert torch.allclose(out[:, :, :14, 14:], torch.full((3, 1, 14, 14), 0.4))
    assert torch.allclose(out[:, :, 14:, :14], torch.full((3, 1, 14, 14), 0.7))
    assert torch.allclose(out[:, :, 14:, 14:], torch.full((3, 1, 14, 14), 1.0))
    assert grid_layout(2) == (1, 2) and grid_layout(6) == (2, 3) and grid_layout(8) == (2, 4)


def test_sample_composites_draws_each_source_class():
    x = torch.arange(4).float().view(4, 1, 1, 1).expand(4, 1, 8, 8) / 4
    split = Split(x.contiguous(), torch.tensor([0, 1, 2, 3]))
    out = sample_composites(split, [3, 2, 1, 0], 5, generator(0))
    assert out.shape == (5, 1, 8, 8)
    assert torch.allclose(out[:, :, :4, :4], torch.full((5, 1, 4, 4), 0.75))
    assert torch.allclose(out[:, :, 4:, 4:], torch.zeros(5, 1, 4, 4))
    with pytest.raises(UserError):
        sample_composites(split, [7], 2, generator(0))


def test_target_is_least_likely_and_never_a_source():
    probs = torch.tensor([[0.01, 0.5, 0.29, 0.2], [0.01, 0.4, 0.39, 0.2]])
    assert least_likely_target(probs)[0] == 0
    target, mean = least_likely_target(probs, exclude=[0])
    assert target == 3 and mean[0] == pytest.approx(0.01)


def test_coupling_losses_hand_computed():
    f = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    y = torch.tensor([0, 1])
    c = torch.tensor([[1.0, 0.0], [3.0, 3.0]])
    # intra: (1 + 1) / 2
    assert intra_loss(f, y, c).item() == pytest.approx(1.0)
    # inter, margin 5: sample 0 vs c1: d = sqrt(18) -> (5 - 4.2426)^2; sample 1 vs c0: d = sqrt(20) -> (5 - 4.4721)^2
    expected = ((5 - 18 ** 0.5) ** 2 + (5 - 20 ** 0.5) ** 2) / 2
    assert inter_loss(f, y, c, margin=5.0).item() == pytest.approx(expected, rel=1e-5)
    assert inter_loss(f, y, c, margin=1.0).item() == 0.0


def test_centroid_tracker_ema():
    t = CentroidTracker(3, momentum=0.9)
    t.update(torch.tensor([[1.0], [3.0]]), torch.tensor([0, 0]))
    assert t.centroids[0].item() == pytest.approx(2.0) and not t.seen[1]
    t.update(torch.tensor([[12.0]]), torch.tensor([0]))
    assert t.centroids[0].item() == pytest.approx(0.9 * 2 + 0.1 * 12)


def test_coupled_loss_terms_switch():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    x = torch.randn(6, 1, 2, 2)
    y = torch.tensor([0, 1, 2, 0, 2, 2])
    is_wm = torch.tensor([False, False, False, False, True, True])
    values = {}
    for losses in ("wm", "intra", "wm+intra+inter"):
        cfg = resolve(DeepTracerConfig, "paper", {"losses": losses})
        values[losses] = coupled_loss(cfg, 3, CentroidTracker(3, 0.9))(model, (x, y, is_wm)).item()
    logits = model(x)
    pri = F.cross_entropy(logits[:4], y[:4]).item()
    wm = F.cross_entropy(logits[4:], y[4:]).item()
    assert values["wm"] == pytest.approx(pri + wm, rel=1e-5)
    assert values["intra"] > pri  # intra only adds a non-negative coupling term, no L_wm
    assert values["wm+intra+inter"] >= values["wm"]


def test_mixed_batches_hold_watermark_and_target_samples():
    clean = Split(torch.rand(50, 1, 4, 4), torch.tensor([1] * 49 + [2]))
    wm = torch.rand(7, 1, 4, 4)
    batches = list(mixed_batches(clean, wm, target=2, batch_size=12, wm_per_batch=3)(0, generator(0)))
    assert sum(int((~b[2]).sum()) for b in batches) == 50 or all((b[1][~b[2]] == 2).any() for b in batches)
    for x, y, is_wm in batches:
        assert int(is_wm.sum()) == 3 and (y[is_wm] == 2).all()
        assert (y[~is_wm] == 2).any()  # at least one clean target-class sample


def test_config_validation():
    with pytest.raises(UserError, match="losses"):
        resolve(DeepTracerConfig, "paper", {"losses": "wm+bogus"})
    with pytest.raises(UserError, match="coupling_space"):
        resolve(DeepTracerConfig, "paper", {"coupling_space": "cosine"})
    with pytest.raises(UserError, match="keys.filter"):
        resolve(KeyFilterConfig, "paper", {"filter": "three_stage"})


def test_fixed_sources_are_validated_used_as_given_and_absent_from_old_ids():
    with pytest.raises(UserError, match="4 distinct classes"):
        resolve(DeepTracerConfig, "paper", {"sources": [6, 7, 1]})
    with pytest.raises(UserError, match="4 distinct classes"):
        resolve(DeepTracerConfig, "paper", {"sources": [6, 6, 1, 8]})
    cfg = resolve(DeepTracerConfig, "paper", {"sources": [6, 7, 1, 8]})
    assert cfg.sources == (6, 7, 1, 8)

    class NoFeatures:  # a fixed choice must not look at the benign model
        data = type("Data", (), {"num_classes": 10})()

        def __getattr__(self, name):
            raise AssertionError(f"fixed sources used ctx.{name}")

    assert DeepTracer(cfg).select_sources(NoFeatures(), benign=None) == [6, 7, 1, 8]
    with pytest.raises(UserError, match="classes 0–9"):
        DeepTracer(resolve(DeepTracerConfig, "paper", {"sources": [6, 7, 1, 12]})).select_sources(NoFeatures(), None)
    # the default leaves the identity (cell ids, artifact keys) of every earlier run unchanged
    assert "sources" not in identity_dict(DeepTracerConfig()) and "sources" in identity_dict(cfg)


def test_two_stage_select_fallback_drops_only_the_surrogate_criterion():
    y = torch.full((4,), 1)
    victim = torch.tensor([1, 1, 0, 1])
    benign = torch.tensor([0, 0, 0, 1])
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.5, 0.5], [0.2, 0.8]])  # surrogate never predicts 1 on 0, 1
    index, stats = two_stage_select(y, victim, probs, benign, top_m=5)
    assert stats["keys_stage1"] == 0 and index.numel() == 0 and stats["keys_fallback"] == 0
    index, stats = two_stage_select(y, victim, probs, benign, top_m=5, min_keys=1)
    # victim hits and benign misses: 0 and 1 (3 is hit by the benign model); ranked by surrogate p(1)
    assert stats["keys_fallback"] == 1 and index.tolist() == [1, 0]


def test_two_stage_select_obeys_eq7_and_eq8():
    y = torch.full((6,), 3)
    victim = torch.tensor([3, 3, 3, 3, 1, 3])
    benign = torch.tensor([0, 3, 0, 0, 0, 0])
    probs = torch.full((6, 4), 0.1)
    probs[:, 3] = torch.tensor([0.6, 0.9, 0.2, 0.8, 0.9, 0.7])
    probs[2, 0] = 0.7  # surrogate predicts 0 for candidate 2
    index, stats = two_stage_select(y, victim, probs, benign, top_m=2)
    # stage 1 keeps 0, 3, 5 (1: benign hits, 2: surrogate misses, 4: victim misses); stage 2 top 2 by confidence
    assert stats["keys_stage1"] == 3 and stats["keys_final"] == 2
    assert index.tolist() == [3, 5]


def test_deeptracer_end_to_end_smoke_with_filter(tmp_path):
    frame = run("deeptracer", "knockoff", "synthetic", profile="smoke", out=tmp_path, progress=False,
                overrides=["datasets.synthetic.train_size=1500", "datasets.synthetic.test_size=400", "train.epochs=6",
                           "attacks.knockoff.labels=soft", "keys.min_keys=50"])
    ok = frame[frame["status"] == "ok"]
    value = lambda stage, metric: ok[(ok.stage == stage) & (ok.metric == metric)]["value"].iloc[0]
    assert value("victim", "keys_candidates") == 2000
    assert value("victim", "keys_final") > 0
    assert value("victim", "keys_fallback") in (0.0, 1.0)
    assert value("victim", "keys_final") <= 300  # smoke top_m
    assert value("victim", "wsr") == 1.0  # filtered keys pass the victim by construction
    assert value("benign", "wsr") == 0.0  # ... and fail the benign model
    assert value("victim", "wsr_unfiltered") >= 0.8
    assert value("benign", "wsr_unfiltered") <= 0.2
    assert 0 <= value("attack", "wsr") <= 1
