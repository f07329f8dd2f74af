"""Tests for wmbench.verification: Clopper-Pearson intervals, binomial tails and the Evidence record."""
from __future__ import annotations

import math

import pytest
from scipy.stats import binomtest

from wmbench.verification import Evidence, binomial_tail, clopper_pearson, evaluate_evidence


def _tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), by direct summation of the pmf."""
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(max(k, 0), n + 1))


# ------------------------------------------------------------------------------------------
# clopper_pearson
# ------------------------------------------------------------------------------------------
def test_cp_zero_successes():
    lo, hi = clopper_pearson(0, 10)
    assert lo == 0.0
    assert hi == pytest.approx(1 - 0.025 ** (1 / 10), rel=1e-10)
    assert hi == pytest.approx(0.30849710781876083, rel=1e-10)


def test_cp_all_successes():
    lo, hi = clopper_pearson(10, 10)
    assert hi == 1.0
    assert lo == pytest.approx(0.025 ** (1 / 10), rel=1e-10)
    assert lo == pytest.approx(0.6915028921812392, rel=1e-10)


def test_cp_single_trial_closed_forms():
    # n = 1: k = 0 -> (0, 1 - alpha/2); k = 1 -> (alpha/2, 1)
    assert clopper_pearson(0, 1, alpha=0.1) == (0.0, pytest.approx(0.95))
    assert clopper_pearson(1, 1, alpha=0.1) == (pytest.approx(0.05), 1.0)


@pytest.mark.parametrize("k, n", [(7, 20), (1, 10), (9, 10), (50, 100), (3, 2000), (1, 3)])
def test_cp_matches_scipy_binomtest(k, n):
    ref = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    lo, hi = clopper_pearson(k, n)
    assert lo == pytest.approx(ref.low, rel=1e-9, abs=1e-12)
    assert hi == pytest.approx(ref.high, rel=1e-9, abs=1e-12)
    assert lo < k / n < hi


def test_cp_known_value_7_of_20():
    lo, hi = clopper_pearson(7, 20)
    assert lo == pytest.approx(0.1539092047845412, rel=1e-9)
    assert hi == pytest.approx(0.5921885345328283, rel=1e-9)


def test_cp_alpha_is_honoured():
    ref = binomtest(7, 20).proportion_ci(confidence_level=0.9, method="exact")
    lo, hi = clopper_pearson(7, 20, alpha=0.1)
    assert (lo, hi) == (pytest.approx(ref.low, rel=1e-9), pytest.approx(ref.high, rel=1e-9))
    wide = clopper_pearson(7, 20, alpha=0.01)
    assert wide[0] < lo and wide[1] > hi


def test_cp_no_trials_is_nan():
    lo, hi = clopper_pearson(0, 0)
    assert math.isnan(lo) and math.isnan(hi)


# ------------------------------------------------------------------------------------------
# binomial_tail
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 5, 12])
@pytest.mark.parametrize("p", [0.1, 0.25, 0.5, 0.9])
def test_binomial_tail_matches_direct_sum(n, p):
    for k in range(0, n + 2):
        assert binomial_tail(k, n, p) == pytest.approx(_tail(k, n, p), rel=1e-9, abs=1e-15), (k, n, p)


def test_binomial_tail_hand_values():
    assert binomial_tail(3, 5, 0.1) == pytest.approx(0.00856, rel=1e-9)
    assert binomial_tail(10, 10, 0.1) == pytest.approx(1e-10, rel=1e-9)
    assert binomial_tail(1, 2, 0.5) == pytest.approx(0.75)


def test_binomial_tail_edges():
    assert binomial_tail(0, 10, 0.3) == 1.0
    assert binomial_tail(-1, 10, 0.3) == 1.0
    assert binomial_tail(11, 10, 0.3) == 0.0
    assert binomial_tail(1, 10, 0.0) == 0.0
    assert binomial_tail(10, 10, 1.0) == 1.0
    # p0 is clamped into [0, 1]
    assert binomial_tail(5, 10, 1.5) == 1.0
    assert binomial_tail(5, 10, -0.2) == 0.0
    assert math.isnan(binomial_tail(1, 0, 0.5))


# ------------------------------------------------------------------------------------------
# evaluate_evidence
# ------------------------------------------------------------------------------------------
def test_evidence_basic_fields():
    ev = evaluate_evidence(7, 20, num_classes=10, threshold=0.2)
    assert isinstance(ev, Evidence)
    assert ev.wsr == pytest.approx(0.35)
    assert (ev.hits, ev.n_keys, ev.threshold) == (7, 20, 0.2)
    assert ev.detected is True
    ref = binomtest(7, 20).proportion_ci(method="exact")
    assert ev.ci_low == pytest.approx(ref.low, rel=1e-9)
    assert ev.ci_high == pytest.approx(ref.high, rel=1e-9)
    assert ev.p_value_chance == pytest.approx(_tail(7, 20, 0.1), rel=1e-9)
    assert math.isnan(ev.p_value_benign)


@pytest.mark.parametrize(
    "hits, n, threshold, detected",
    [
        (2, 10, 0.2, True),  # wsr == threshold -> detected
        (1, 10, 0.2, False),
        (20, 100, 0.2, True),
        (19, 100, 0.2, False),
        (3, 10, 0.3, True),
        (7, 100, 0.07, True),
        (1, 1, 1.0, True),
        (0, 10, 0.2, False),
        (10, 10, 0.2, True),
    ],
)
def test_evidence_threshold_boundary(hits, n, threshold, detected):
    ev = evaluate_evidence(hits, n, num_classes=10, threshold=threshold)
    assert ev.detected is detected
    assert ev.wsr == hits / n


def test_p_value_chance_k10_hand_value():
    ev = evaluate_evidence(3, 5, num_classes=10)
    # P(X >= 3), X ~ Bin(5, 0.1) = 10 * 0.1^3 * 0.9^2 + 5 * 0.1^4 * 0.9 + 0.1^5
    assert ev.p_value_chance == pytest.approx(0.00856, rel=1e-9)


def test_p_value_chance_uses_num_classes():
    ev2 = evaluate_evidence(3, 5, num_classes=2)
    assert ev2.p_value_chance == pytest.approx(0.5, rel=1e-12)  # (10 + 5 + 1) / 32
    ev10 = evaluate_evidence(3, 5, num_classes=10)
    assert ev10.p_value_chance < ev2.p_value_chance


def test_p_value_benign_uses_upper_cp_bound_hand_value():
    # benign: 0 of 1 hits, alpha = 0.5 -> upper CP bound = 1 - 0.25 = 0.75
    # suspect: 2 of 2 hits -> P(X >= 2 | Bin(2, 0.75)) = 0.5625
    ev = evaluate_evidence(2, 2, num_classes=10, benign_hits=0, benign_n=1, alpha=0.5)
    assert ev.p_value_benign == pytest.approx(0.5625, rel=1e-9)


def test_p_value_benign_zero_benign_hits():
    p0 = 1 - 0.025 ** (1 / 10)  # upper bound for 0 of 10
    ev = evaluate_evidence(3, 5, num_classes=10, benign_hits=0, benign_n=10)
    assert ev.p_value_benign == pytest.approx(_tail(3, 5, p0), rel=1e-9)
    assert 0.0 < ev.p_value_benign < 1.0  # the bound keeps p0 > 0 with 0 benign hits


def test_p_value_benign_general_case():
    _, p0 = clopper_pearson(4, 30)
    ev = evaluate_evidence(12, 30, num_classes=10, benign_hits=4, benign_n=30)
    assert ev.p_value_benign == pytest.approx(_tail(12, 30, p0), rel=1e-9)
    # the benign bound is larger than 1/K here, so the benign p-value is the weaker evidence
    assert ev.p_value_benign > ev.p_value_chance


def test_p_value_benign_when_benign_always_hits():
    ev = evaluate_evidence(4, 10, num_classes=10, benign_hits=10, benign_n=10)
    assert ev.p_value_benign == 1.0


@pytest.mark.parametrize("kwargs", [{}, {"benign_hits": None, "benign_n": 10}, {"benign_hits": 3, "benign_n": 0},
                                    {"benign_hits": 3, "benign_n": None}])
def test_p_value_benign_nan_without_benign(kwargs):
    ev = evaluate_evidence(5, 10, num_classes=10, **kwargs)
    assert math.isnan(ev.p_value_benign)


def test_evidence_no_keys():
    ev = evaluate_evidence(0, 0, num_classes=10)
    assert math.isnan(ev.wsr)
    assert ev.detected is False
    assert math.isnan(ev.p_value_chance) and math.isnan(ev.ci_low) and math.isnan(ev.ci_high)


def test_evidence_alpha_changes_ci():
    narrow = evaluate_evidence(7, 20, num_classes=10, alpha=0.2)
    wide = evaluate_evidence(7, 20, num_classes=10, alpha=0.01)
    assert wide.ci_low < narrow.ci_low < 0.35 < narrow.ci_high < wide.ci_high


def test_evidence_is_frozen():
    ev = evaluate_evidence(1, 2, num_classes=2)
    with pytest.raises(Exception):
        ev.wsr = 0.0  # type: ignore[misc]


# ------------------------------------------------------------------------------------------
# as_metrics
# ------------------------------------------------------------------------------------------
def test_as_metrics_keys_and_values():
    ev = evaluate_evidence(7, 20, num_classes=10, threshold=0.2, benign_hits=1, benign_n=20)
    m = ev.as_metrics()
    assert set(m) == {"wsr", "n_keys", "threshold", "detected", "p_value_chance", "p_value_benign", "ci_low", "ci_high"}
    assert "hits" not in m
    assert all(type(v) is float for v in m.values())
    assert m["detected"] == 1.0
    assert m["n_keys"] == 20.0
    assert m["wsr"] == pytest.approx(0.35)
    assert m["p_value_benign"] == ev.p_value_benign
    assert evaluate_evidence(0, 20, num_classes=10).as_metrics()["detected"] == 0.0
