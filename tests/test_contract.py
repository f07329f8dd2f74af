"""Registry-wide contract tests: every registered method and attack passes the plugin author's kit
(:mod:`wmbench.testing`) — the same checks a third-party plugin runs in its own test suite.

A method embeds a watermark that its own verification detects on the victim (and not on the
clean benign model) without costing accuracy; an attack returns a working model that differs
from its input, leaves its input alone, counts its queries exactly and, when it steals, sees
only a Blackbox. Each plugin's smoke cells run once (synthetic data, serial executor); every
check of that plugin reads the same run, and all runs share one artifact store (one benign
model; the BadNets victim the attacks are checked against is trained once).
"""
import pytest
import torch

from wmbench.registry import ATTACKS, METHODS
from wmbench.testing import parametrize_with_checks

PLUGINS = [METHODS.get(m) for m in METHODS.names()] + [ATTACKS.get(a) for a in ATTACKS.names() if a != "none"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads fight other jobs on a 2-core machine (4x slower here)
    yield
    torch.set_num_threads(before)


@parametrize_with_checks(PLUGINS)
def test_contract(plugin, check):
    check(plugin)
