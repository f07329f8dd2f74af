"""The plugin author's kit (wmbench.testing) fails broken plugins, each with a message that names
the plugin, the check and what is wrong; and it resolves, registers and parametrizes plugins.

The broken plugins below are deliberately cheap: the methods return (a copy of) the benign
model as their victim, the attacks barely train, so the whole file takes seconds once the
benign model and the BadNets victim exist.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Mapping

import pytest
import torch

from wmbench.api import Attack, AttackOutcome, KeySet, WatermarkMethod, private_copy
from wmbench.errors import UserError
from wmbench.methods.badnets import BadNets
from wmbench.registry import ATTACKS, METHODS
from wmbench.testing import (
    ATTACK_CHECKS, METHOD_CHECKS, check_attack, check_changes_the_model, check_class_attributes,
    check_config_defaults_validate, check_config_is_frozen_dataclass, check_counts_queries, check_embeds_and_verifies,
    check_leaves_input_unchanged, check_method, check_not_detected_on_clean, check_profiles_resolve,
    check_returns_working_model, check_stealing_gets_only_a_blackbox, checks_for, parametrize_with_checks,
    resolve_plugin,
)

ALL = {"smoke": {}, "quick": {}, "paper": {}}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads fight other jobs on a 2-core machine
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _isolated_registries(monkeypatch):
    """The kit registers the plugins it checks; drop those registrations after each test."""
    for reg in (METHODS, ATTACKS):
        monkeypatch.setattr(reg, "_entries", dict(reg._entries))


# ------------------------------------------------------------------------------------------
# broken methods
# ------------------------------------------------------------------------------------------
class NoEmbed(BadNets):
    """BadNets whose embed does nothing: the victim is the benign model."""

    name = "kit_noembed"
    hidden = True

    def embed(self, ctx, keys):
        return copy.deepcopy(ctx.benign_model())


class DetectsEverything(BadNets):
    """A 'watermark' whose keys are clean test images with their true labels: any good model hits them."""

    name = "kit_everywhere"
    hidden = True

    def keygen(self, ctx):
        keys = super().keygen(ctx)
        test = ctx.data.test
        return KeySet(keys.embed_x, keys.embed_y, test.x[:200], test.y[:200], keys.meta)

    def embed(self, ctx, keys):
        return copy.deepcopy(ctx.benign_model())


@dataclass  # not frozen
class SloppyConfig:
    rate: float = 2.0

    PROFILES: ClassVar[Mapping[str, Mapping[str, Any]]] = {"smoke": {}, "quick": {}}  # no "paper"

    def validate(self) -> None:
        if not 0.0 < self.rate < 1.0:
            raise UserError(f"methods.kit_sloppy.rate must be in (0, 1), got {self.rate}")


class Sloppy(WatermarkMethod):  # keygen/embed left abstract, no docstring
    name = "kit_sloppy"
    hidden = True
    paper = "https://example.org/sloppy"
    year = "2020"  # type: ignore[assignment]
    category = "test"
    Config = SloppyConfig



# ------------------------------------------------------------------------------------------
# broken attacks
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NoConfig:
    """No parameters."""

    PROFILES: ClassVar[Mapping[str, Mapping[str, Any]]] = ALL


class _TestAttack(Attack):
    paper = "https://example.org/attack"
    year = 2024
    category = "removal / test"
    needs = frozenset({"weights"})
    hidden = True
    Config = NoConfig


class Identity(_TestAttack):
    """Returns its input unchanged."""

    name = "kit_identity"

    def run(self, target, ctx):
        return AttackOutcome(model=target, queries=0)


class Mutating(_TestAttack):
    """Adds noise to the weights of the model it was given, in place, and returns it."""

    name = "kit_mutating"

    def run(self, target, ctx):
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in target.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
        return AttackOutcome(model=target, queries=0)


class Undercounting(_TestAttack):
    """Steals from 200 labelled queries but reports none."""

    name = "kit_undercount"
    category = "stealing"
    needs = frozenset({"probs"})

    def run(self, target, ctx):
        x = ctx.data.attacker.x[:200]
        y = target(x).argmax(1)
        student = ctx.new_model(seed=ctx.seed_for("student"))
        ctx.fit(student, (x, y), cfg=replace(ctx.train, epochs=3), seed=0)
        return AttackOutcome(model=student, queries=0)


class WhiteboxStealer(_TestAttack):
    """Calls itself stealing but needs weights (returns a noisy copy)."""

    name = "kit_wbsteal"
    category = "stealing"

    def run(self, target, ctx):
        model = private_copy(target)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        return AttackOutcome(model=model, queries=0)


# ------------------------------------------------------------------------------------------
# each check fails its broken plugin, with a message naming plugin, check and problem
# ------------------------------------------------------------------------------------------
def test_method_whose_embed_does_nothing_is_not_detected_on_its_victim():
    with pytest.raises(AssertionError, match=r"method 'kit_noembed' fails check_embeds_and_verifies: its own "
                                             r"verification does not detect its victim \(WSR 0\.0"):
        check_embeds_and_verifies(NoEmbed)
    check_not_detected_on_clean(NoEmbed)  # the other checks pass: the failure is specific


def test_method_detected_on_a_clean_model_fails():
    with pytest.raises(AssertionError, match=r"method 'kit_everywhere' fails check_not_detected_on_clean: it "
                                             r"detects its watermark on the clean benign model \(WSR 1\.000 >= threshold 0\.2\)"):
        check_not_detected_on_clean(DetectsEverything)
    check_embeds_and_verifies(DetectsEverything)


def test_attack_returning_its_input_unchanged_fails():
    with pytest.raises(AssertionError, match=r"attack 'kit_identity' fails check_changes_the_model: the returned "
                                             r"model behaves exactly like its input \(fidelity 1\.000"):
        check_changes_the_model(Identity)
    check_leaves_input_unchanged(Identity)


def test_attack_mutating_its_input_fails():
    with pytest.raises(AssertionError, match=r"attack 'kit_mutating' fails check_leaves_input_unchanged: run\(\) "
                                             r"modified the model it was given \(\d+ tensors, e\.g\. 0\."):
        check_leaves_input_unchanged(Mutating)
    check_returns_working_model(Mutating)


def test_stealing_attack_that_miscounts_queries_fails():
    with pytest.raises(AssertionError, match=r"attack 'kit_undercount' fails check_counts_queries: it reported 0 "
                                             r"queries but sent 200 images to the Blackbox"):
        check_counts_queries(Undercounting)
    check_stealing_gets_only_a_blackbox(Undercounting)  # it got (and used) a Blackbox


def test_stealing_attack_needing_weights_fails():
    with pytest.raises(AssertionError, match=r"attack 'kit_wbsteal' fails check_stealing_gets_only_a_blackbox: its "
                                             r"category 'stealing' says stealing but it needs 'weights'"):
        check_stealing_gets_only_a_blackbox(WhiteboxStealer)


def test_instant_checks_fail_a_sloppy_plugin():
    with pytest.raises(AssertionError, match=r"method 'kit_sloppy' fails check_config_is_frozen_dataclass: "
                                             r"SloppyConfig is not frozen \(setting 'rate' worked\)"):
        check_config_is_frozen_dataclass(Sloppy)
    with pytest.raises(AssertionError, match=r"fails check_config_defaults_validate: the default Config\(\) does "
                                             r"not validate: UserError: methods.kit_sloppy.rate must be in"):
        check_config_defaults_validate(Sloppy)
    with pytest.raises(AssertionError, match=r"fails check_profiles_resolve: Config.PROFILES must have exactly "
                                             r"smoke, quick, paper \(missing: paper; unknown: -\)"):
        check_profiles_resolve(Sloppy)
    with pytest.raises(AssertionError) as info:
        check_class_attributes(Sloppy)
    message = str(info.value)
    assert message.startswith("method 'kit_sloppy' fails check_class_attributes: the class has no docstring")
    assert "`year` must be a positive int, got '2020'" in message
    assert "abstract method(s) not implemented: embed, keygen" in message


def test_check_method_lists_every_failure_at_once():
    with pytest.raises(AssertionError) as info:
        check_method(Sloppy)
    message = str(info.value)
    assert message.startswith("method 'kit_sloppy' fails 7 of 7 checks:\n- ")
    assert message.count("\n- ") == 7
    assert "fails check_keeps_accuracy: the pipeline refused to run it: methods.kit_sloppy.rate" in message


# ------------------------------------------------------------------------------------------
# plugins, options, parametrization
# ------------------------------------------------------------------------------------------
def test_plugins_resolve_from_classes_names_and_paths():
    from wmbench.attacks.knockoff import Knockoff

    assert resolve_plugin("badnets") == ("method", "badnets", BadNets)
    assert resolve_plugin(Knockoff) == ("attack", "knockoff", Knockoff)
    assert resolve_plugin("wmbench.methods.badnets:BadNets") == ("method", "badnets", BadNets)
    assert resolve_plugin(NoEmbed) == ("method", "kit_noembed", NoEmbed)
    assert METHODS.get("kit_noembed") is NoEmbed  # registered under its own name

    class Unnamed(BadNets):
        """No own name: registered under the class name, never over BadNets."""

    assert resolve_plugin(Unnamed) == ("method", "unnamed", Unnamed) and Unnamed.name == "unnamed"

    class Impostor(BadNets):
        """Claims a name another class holds."""

        name = "badnets"

    with pytest.raises(ValueError, match="as method 'badnets': that name belongs to BadNets"):
        resolve_plugin(Impostor)
    with pytest.raises(ValueError, match="'nope' is no registered method or attack"):
        resolve_plugin("nope")
    with pytest.raises(TypeError, match="a plugin is a WatermarkMethod or Attack subclass"):
        resolve_plugin(int)
    with pytest.raises(TypeError, match="'knockoff' is an attack; check it with check_attack"):
        check_method("knockoff")
    with pytest.raises(TypeError, match="unknown option\\(s\\) epochs; accepted: dataset"):
        check_attack("knockoff", epochs=1)


def test_parametrize_with_checks_ids_options_and_expected_failures():
    mark = parametrize_with_checks(["badnets", Identity], expected_failures={
        "kit_identity-check_changes_the_model": "returns its input"}, min_wsr=0.9)
    names, params = mark.args
    assert names == "plugin, check"
    ids = [p.id for p in params]
    assert ids == [f"badnets-{c.__name__}" for c in METHOD_CHECKS] + [f"kit_identity-{c.__name__}" for c in ATTACK_CHECKS]
    assert checks_for("badnets") == METHOD_CHECKS and checks_for(Identity) == ATTACK_CHECKS
    plugin, check = params[0].values
    assert plugin is BadNets and check.keywords == {"min_wsr": 0.9}
    xfail = {p.id: p.marks for p in params if p.marks}
    assert list(xfail) == ["kit_identity-check_changes_the_model"]
    assert xfail["kit_identity-check_changes_the_model"][0].kwargs["strict"] is True
    with pytest.raises(TypeError, match="unknown option"):
        parametrize_with_checks(["badnets"], min_wrs=0.9)
