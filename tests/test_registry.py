"""Tests for wmbench.registry: look-ups, lists, dotted paths, decorators, plugins and entry points."""
from __future__ import annotations

import json
import logging
import sys
import textwrap

import pytest
import torch

from wmbench.errors import UserError
from wmbench.registry import (
    ATTACKS, DATASETS, METHODS, MODELS, Registry, get_attack, get_dataset, get_method, list_attacks, list_datasets,
    list_methods, list_models, load_plugin,
)

PLUGIN_MODULE = "myplugin_wm"
PLUGIN_SOURCE = textwrap.dedent(
    '''
    """A third-party plugin living outside the wmbench package."""
    from dataclasses import dataclass
    from typing import Any, ClassVar, Mapping

    from wmbench.api import Attack, AttackOutcome
    from wmbench.methods.badnets import BadNets, BadNetsConfig
    from wmbench.registry import register_attack, register_method


    @dataclass(frozen=True)
    class CornerConfig(BadNetsConfig):
        position: str = "top_left"


    @register_method("plugin_badnets")
    class CornerBadNets(BadNets):
        """BadNets with the patch in the top-left corner."""

        category = "plugin"
        Config = CornerConfig


    @dataclass(frozen=True)
    class CopyConfig:
        PROFILES: ClassVar[Mapping[str, Mapping[str, Any]]] = {"smoke": {}, "quick": {}, "paper": {}}


    @register_attack("plugin_copy")
    class CopyAttack(Attack):
        """White-box 'theft' that returns the victim unchanged."""

        category = "plugin"
        needs = frozenset({"weights"})
        Config = CopyConfig

        def run(self, target, ctx):
            return AttackOutcome(model=target, queries=0, metrics={"copied": 1.0})
    '''
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads fight a background job on this 2-core machine
    yield
    torch.set_num_threads(before)


@pytest.fixture
def isolated_registries(monkeypatch):
    """Registrations made during a test are dropped afterwards."""
    for reg in (METHODS, ATTACKS, DATASETS, MODELS):
        monkeypatch.setattr(reg, "_entries", dict(reg._entries))


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch, isolated_registries):
    (tmp_path / f"{PLUGIN_MODULE}.py").write_text(PLUGIN_SOURCE)
    monkeypatch.delitem(sys.modules, PLUGIN_MODULE, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop(PLUGIN_MODULE, None)


# ------------------------------------------------------------------------------------------
# unknown names
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "registry, kind, expected",
    [
        (METHODS, "method", ["badnets"]),
        (ATTACKS, "attack", ["knockoff", "none"]),
        (DATASETS, "dataset", ["cifar10", "fmnist", "synthetic"]),
        (MODELS, "model", ["naivenet", "resnet18_cifar", "tinycnn"]),
    ],
)
def test_unknown_name_lists_available(registry, kind, expected):
    with pytest.raises(UserError) as info:
        registry.get("definitely_not_there")
    message = str(info.value)
    assert f"unknown {kind} 'definitely_not_there'" in message
    assert "available:" in message
    for name in expected:
        assert name in message


def test_helper_functions():
    from wmbench.attacks.knockoff import Knockoff
    from wmbench.data.synthetic import Synthetic
    from wmbench.methods.badnets import BadNets

    assert get_method("badnets") is BadNets
    assert get_attack("knockoff") is Knockoff
    assert get_dataset("synthetic") is Synthetic
    assert {"badnets"} <= set(list_methods())
    assert {"none", "knockoff"} <= set(list_attacks())
    assert {"synthetic", "fmnist", "cifar10", "cifar100", "digits", "imagefolder"} <= set(list_datasets())
    assert {"naivenet", "tinycnn", "cwnet", "resnet50"} <= set(list_models())
    assert list_models() == sorted(list_models())
    assert "tinycnn" in MODELS and "nope" not in MODELS


def test_builtin_names_match_class_names():
    assert get_method("badnets").name == "badnets"
    assert get_attack("none").name == "none"
    assert get_attack("knockoff").name == "knockoff"


# ------------------------------------------------------------------------------------------
# resolve_list
# ------------------------------------------------------------------------------------------
def _widgets():
    reg = Registry("widget", {}, "wmbench.tests_no_such_group")

    @reg.register("alpha")
    class Alpha:
        pass

    @reg.register()
    class Beta:
        pass

    @reg.register("secret")
    class Secret:
        hidden = True

    return reg, Alpha, Beta, Secret


def test_resolve_list_all_skips_hidden():
    reg, *_ = _widgets()
    assert reg.names() == ["alpha", "beta", "secret"]
    assert reg.resolve_list("all") == ["alpha", "beta"]
    assert reg.resolve_list(["all"]) == ["alpha", "beta"]
    assert reg.resolve_list("secret") == ["secret"]  # hidden entries can still be named


def test_resolve_list_comma_separated_and_lists():
    reg, *_ = _widgets()
    assert reg.resolve_list("beta,alpha") == ["beta", "alpha"]
    assert reg.resolve_list(" alpha , beta ,") == ["alpha", "beta"]
    assert reg.resolve_list(["alpha", " beta"]) == ["alpha", "beta"]


def test_resolve_list_errors():
    reg, *_ = _widgets()
    with pytest.raises(UserError) as info:
        reg.resolve_list("alpha,gamma")
    assert "unknown widget 'gamma'" in str(info.value)
    assert "alpha, beta, secret" in str(info.value)
    for empty in ("", " , ", []):
        with pytest.raises(UserError, match="no widget given; available: alpha, beta, secret"):
            reg.resolve_list(empty)


def test_resolve_list_global_registries():
    assert "badnets" in METHODS.resolve_list("all")
    assert {"none", "knockoff"} <= set(ATTACKS.resolve_list("all"))
    assert ATTACKS.resolve_list("none,knockoff") == ["none", "knockoff"]
    assert DATASETS.resolve_list("synthetic") == ["synthetic"]
    with pytest.raises(UserError, match="unknown attack 'knockof'"):
        ATTACKS.resolve_list("none,knockof")


# ------------------------------------------------------------------------------------------
# register decorator and dotted paths
# ------------------------------------------------------------------------------------------
def test_register_decorator_names():
    reg, Alpha, Beta, Secret = _widgets()
    assert reg.get("alpha") is Alpha and Alpha.name == "alpha"
    assert reg.get("beta") is Beta and Beta.name == "beta"  # class name, lower-cased

    @reg.register()
    class Gamma:
        name = "gamma_custom"

    assert reg.get("gamma_custom") is Gamma

    @reg.register("fn")
    def factory():
        return 1

    assert reg.get("fn") is factory and factory.name == "fn"


def test_register_replacement_warns(caplog):
    reg, Alpha, *_ = _widgets()

    class Other:
        pass

    with caplog.at_level(logging.WARNING, logger="wmbench.registry"):
        reg.register("alpha")(Other)
    assert reg.get("alpha") is Other
    assert any("re-registered" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="wmbench.registry"):
        reg.register("alpha")(Other)  # the same object again: no warning
    assert not caplog.records


def test_builtins_are_lazy_and_keep_their_name():
    from wmbench.methods.badnets import BadNets

    reg = Registry("method", {"bn": "wmbench.methods.badnets:BadNets"}, "wmbench.tests_no_such_group")
    assert reg.names() == ["bn"]
    assert reg._entries == {}  # nothing imported before use
    assert reg.get("bn") is BadNets
    assert BadNets.name == "badnets"


def test_dotted_path_lookup(isolated_registries, monkeypatch):
    from wmbench.methods.badnets import BadNets
    from wmbench.models.naivenet import tinycnn

    monkeypatch.setattr(BadNets, "name", BadNets.name)  # restored afterwards
    assert METHODS.get("wmbench.methods.badnets:BadNets") is BadNets
    assert MODELS.get("wmbench.models.naivenet:tinycnn") is tinycnn
    assert METHODS.resolve_list("wmbench.methods.badnets:BadNets") == ["wmbench.methods.badnets:BadNets"]


def test_dotted_path_lookup_does_not_rename_class(isolated_registries, monkeypatch):
    from wmbench.methods.badnets import BadNets

    monkeypatch.setattr(BadNets, "name", BadNets.name)  # restored afterwards
    METHODS.get("wmbench.methods.badnets:BadNets")
    assert BadNets.name == "badnets"


@pytest.mark.parametrize("target", ["no_such_module_xyz:Thing", "wmbench.methods.badnets:NoSuchClass"])
def test_dotted_path_errors(isolated_registries, target):
    with pytest.raises(UserError, match="cannot import method"):
        METHODS.get(target)


# ------------------------------------------------------------------------------------------
# third-party plugin modules
# ------------------------------------------------------------------------------------------
def test_load_plugin_registers_entries(plugin_dir):
    assert "plugin_badnets" not in list_methods()
    load_plugin(PLUGIN_MODULE)
    assert "plugin_badnets" in list_methods()
    assert "plugin_copy" in list_attacks()
    cls = get_method("plugin_badnets")
    from wmbench.api import WatermarkMethod
    from wmbench.methods.badnets import BadNets

    assert issubclass(cls, WatermarkMethod) and issubclass(cls, BadNets)
    assert cls.name == "plugin_badnets"
    assert BadNets.name == "badnets"  # registering the subclass leaves the base alone
    assert cls().config.position == "top_left"
    assert get_attack("plugin_copy").needs == frozenset({"weights"})
    assert "plugin_badnets" in METHODS.resolve_list("all")
    assert METHODS.resolve_list("badnets,plugin_badnets") == ["badnets", "plugin_badnets"]


def test_load_plugin_missing_module():
    with pytest.raises(UserError) as info:
        load_plugin("does_not_exist")
    assert "does_not_exist" in str(info.value)
    assert "cannot import plugin module" in str(info.value)


def test_plugin_names_unknown_before_loading(plugin_dir):
    with pytest.raises(UserError):
        get_method("plugin_badnets")


# ------------------------------------------------------------------------------------------
# entry points
# ------------------------------------------------------------------------------------------
def _fake_distribution(root):
    (root / "fake_ep_mod.py").write_text(textwrap.dedent(
        '''
        from wmbench.api import Attack

        class FakeAttack(Attack):
            needs = frozenset({"labels"})

            def run(self, target, ctx):
                raise NotImplementedError
        '''
    ))
    info = root / "fakepkg-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakepkg\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[wmbench.attacks]\n"
        "fake_ep_attack = fake_ep_mod:FakeAttack\n"
        "broken_ep_attack = fake_ep_missing_module_xyz:Nope\n"
        "\n[wmbench.other_group]\n"
        "elsewhere = fake_ep_mod:FakeAttack\n"
    )


def test_entry_point_plugins(tmp_path, monkeypatch, caplog):
    ATTACKS.names()  # let the global registry read its entry points before the fake package exists
    _fake_distribution(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "fake_ep_mod", raising=False)
    reg = Registry("attack", {}, "wmbench.attacks")
    with caplog.at_level(logging.WARNING, logger="wmbench.registry"):
        names = reg.names()
    assert "fake_ep_attack" in names
    assert "broken_ep_attack" not in names  # a broken plugin is skipped, not fatal
    assert "elsewhere" not in names  # other groups are ignored
    assert any("broken_ep_attack" in r.getMessage() for r in caplog.records)
    cls = reg.get("fake_ep_attack")
    assert cls.__name__ == "FakeAttack" and cls.__module__ == "fake_ep_mod"
    assert cls.name == "fake_ep_attack"
    assert reg.resolve_list("all") == names
    sys.modules.pop("fake_ep_mod", None)


def test_entry_point_found_by_get_without_names(tmp_path, monkeypatch):
    _fake_distribution(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "fake_ep_mod", raising=False)
    reg = Registry("attack", {"none": "wmbench.attacks.none:NoAttack"}, "wmbench.attacks")
    assert reg.get("fake_ep_attack").__name__ == "FakeAttack"
    assert reg.names() == sorted(reg.names())
    assert {"none", "fake_ep_attack"} <= set(reg.names())
    sys.modules.pop("fake_ep_mod", None)


# ------------------------------------------------------------------------------------------
# end to end with the plugin
# ------------------------------------------------------------------------------------------
def test_plugin_end_to_end(plugin_dir, tmp_path):
    from wmbench.runner import run

    out = tmp_path / "run"
    records = []
    df = run(
        methods="plugin_badnets",
        attacks="none,plugin_copy",
        datasets="synthetic",
        profile="smoke",
        overrides=["train.epochs=1", "datasets.synthetic.train_size=300", "datasets.synthetic.test_size=100"],
        plugins=[PLUGIN_MODULE],
        out=out,
        progress=False,
        device="cpu",
        on_record=records.append,
    )
    assert len(records) == 2
    assert all(r["status"] == "ok" for r in records), [r.get("error") for r in records]
    assert not df.empty
    assert set(df["status"]) == {"ok"}
    assert set(df["method"]) == {"plugin_badnets"}
    assert set(df["attack"]) == {"none", "plugin_copy"}
    assert set(df["dataset"]) == {"synthetic"}
    assert df["cell_id"].nunique() == 2

    def value(attack, stage, metric):
        rows = df[(df["attack"] == attack) & (df["stage"] == stage) & (df["metric"] == metric)]
        assert len(rows) == 1, (attack, stage, metric)
        return float(rows["value"].iloc[0])

    assert set(df[df["attack"] == "none"]["stage"]) == {"benign", "victim"}
    assert set(df[df["attack"] == "plugin_copy"]["stage"]) == {"benign", "victim", "attack"}
    # 100 test images, 10 per class, target 1 -> 90 stamped non-target keys (n_keys 300 in smoke)
    assert value("none", "victim", "n_keys") == 90.0
    for attack in ("none", "plugin_copy"):
        assert 0.0 <= value(attack, "victim", "acc") <= 1.0
    # the copy attack returns the victim itself
    assert value("plugin_copy", "attack", "fidelity") == 1.0
    assert value("plugin_copy", "attack", "wsr") == value("plugin_copy", "victim", "wsr")
    assert value("plugin_copy", "attack", "acc") == value("plugin_copy", "victim", "acc")
    # both cells share the cached victim
    assert value("none", "victim", "wsr") == value("plugin_copy", "victim", "wsr")

    cell = json.loads(next((out / "cells").glob("*.json")).read_text())["cell"]
    assert cell["method_config"]["position"] == "top_left"  # the plugin's own Config was used

    # a second identical run reuses the finished cells
    again = []
    df2 = run(methods="plugin_badnets", attacks="none,plugin_copy", datasets="synthetic", profile="smoke",
              overrides=["train.epochs=1", "datasets.synthetic.train_size=300", "datasets.synthetic.test_size=100"],
              plugins=[PLUGIN_MODULE], out=out, progress=False, device="cpu", on_record=again.append)
    assert again == []
    assert sorted(df2["cell_id"].unique()) == sorted(df["cell_id"].unique())
