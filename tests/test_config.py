"""Tests for wmbench.config: --set parsing, profile layering, type checks, config files, hashing."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys

import pytest

from wmbench.attacks.knockoff import KnockoffConfig
from wmbench.config import (
    SECTION_NAMES, DataConfig, ModelConfig, Settings, TrainConfig, VerifyConfig, build_settings, canonical_json,
    load_config_file, merge_trees, parse_set, resolve, stable_hash,
)
from wmbench.errors import UserError
from wmbench.methods.badnets import BadNetsConfig
from wmbench.cell import Cell

ALL_SECTIONS = ("data", "train", "verify", "keys", "model", "methods", "attacks", "datasets")


def _assert_names_sections(message: str) -> None:
    for section in ALL_SECTIONS:
        assert section in message, f"{section!r} missing from error message: {message}"


# ------------------------------------------------------------------------------------------
# parse_set
# ------------------------------------------------------------------------------------------
def test_section_names_constant():
    assert SECTION_NAMES == ALL_SECTIONS


def test_parse_set_builds_nested_tree():
    tree = parse_set([
        "train.epochs=3",
        "train.lr=0.01",
        "methods.badnets.poison_rate=0.1",
        "methods.badnets.color=[0.5, 1.0, 0]",
        "attacks.knockoff.budget=5000",
        "attacks.knockoff.query_set=null",
        "datasets.synthetic.num_classes=4",
        "data.download=true",
        "verify.threshold=0.25",
        "model.arch=tinycnn",
    ])
    assert tree == {
        "train": {"epochs": 3, "lr": 0.01},
        "methods": {"badnets": {"poison_rate": 0.1, "color": [0.5, 1.0, 0]}},
        "attacks": {"knockoff": {"budget": 5000, "query_set": None}},
        "datasets": {"synthetic": {"num_classes": 4}},
        "data": {"download": True},
        "verify": {"threshold": 0.25},
        "model": {"arch": "tinycnn"},
    }


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("3", 3),
        ("-2", -2),
        ("0.5", 0.5),
        ("1.5e-3", 0.0015),
        ("true", True),
        ("false", False),
        ("null", None),
        ("~", None),
        ("[1, 2, 3]", [1, 2, 3]),
        ("[]", []),
        ("adam", "adam"),
        ("'3'", "3"),
        ("", ""),
        ("a=b", "a=b"),  # only the first '=' separates key and value
    ],
)
def test_parse_set_value_parsing(raw, expected):
    value = parse_set([f"train.x={raw}"])["train"]["x"]
    assert value == expected
    assert type(value) is type(expected)


def test_parse_set_value_types_are_exact():
    tree = parse_set(["train.epochs=3", "train.lr=0.5", "train.amp=false"])["train"]
    assert type(tree["epochs"]) is int
    assert type(tree["lr"]) is float
    assert tree["amp"] is False


def test_parse_set_scientific_notation_without_dot_is_a_float():
    value = parse_set(["train.lr=1e-3"])["train"]["lr"]
    assert value == pytest.approx(1e-3)
    assert resolve(TrainConfig, "paper", {"lr": value}).lr == pytest.approx(1e-3)


def test_parse_set_later_item_wins_and_merges_siblings():
    tree = parse_set(["train.epochs=3", "train.epochs=7", "methods.a.x=1", "methods.b.x=2", "methods.a.y=3"])
    assert tree == {"train": {"epochs": 7}, "methods": {"a": {"x": 1, "y": 3}, "b": {"x": 2}}}


def test_parse_set_empty():
    assert parse_set([]) == {}


@pytest.mark.parametrize("item", ["train.epochs", "train", "train=3", "epochs=3", ".epochs=3", "train.=3", "train..x=1"])
def test_parse_set_malformed_names_accepted_sections(item):
    with pytest.raises(UserError) as info:
        parse_set([item])
    message = str(info.value)
    assert item in message
    _assert_names_sections(message)


def test_parse_set_unknown_section_names_accepted_sections():
    with pytest.raises(UserError) as info:
        parse_set(["trian.epochs=3"])
    message = str(info.value)
    assert "'trian'" in message
    _assert_names_sections(message)


@pytest.mark.parametrize(
    "item, expected_form",
    [
        ("methods.poison_rate=0.1", "methods.NAME.key=value"),
        ("attacks.knockoff.a.b=1", "attacks.NAME.key=value"),
        ("datasets.num_classes=3", "datasets.NAME.key=value"),
        ("train.a.epochs=3", "train.key=value"),
        ("verify.x.threshold=0.3", "verify.key=value"),
    ],
)
def test_parse_set_wrong_depth(item, expected_form):
    with pytest.raises(UserError) as info:
        parse_set([item])
    message = str(info.value)
    assert item in message
    assert expected_form in message


def test_user_error_is_value_error():
    with pytest.raises(ValueError):
        parse_set(["nope"])


# ------------------------------------------------------------------------------------------
# resolve: profiles, layers, types, validation
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "profile, epochs, batch_size",
    [("smoke", 2, 64), ("quick", 5, 128), ("paper", 100, 128)],
)
def test_resolve_train_profiles(profile, epochs, batch_size):
    cfg = resolve(TrainConfig, profile)
    assert isinstance(cfg, TrainConfig)
    assert (cfg.epochs, cfg.batch_size) == (epochs, batch_size)
    # untouched fields keep the paper defaults
    assert cfg.optimizer == "adam"
    assert cfg.lr == 1e-3
    assert (cfg.lr_step, cfg.lr_gamma) == (10, 0.5)


def test_resolve_data_smoke_profile():
    cfg = resolve(DataConfig, "smoke")
    assert (cfg.owner_size, cfg.attacker_size, cfg.test_size) == (2000, 1000, 1000)
    assert resolve(DataConfig, "paper").owner_size is None


def test_resolve_unknown_profile():
    with pytest.raises(UserError) as info:
        resolve(TrainConfig, "fast")
    assert "smoke" in str(info.value) and "quick" in str(info.value) and "paper" in str(info.value)


def test_resolve_later_layers_win():
    cfg = resolve(TrainConfig, "smoke", {"epochs": 3, "lr": 0.1}, None, {"epochs": 4}, {})
    assert cfg.epochs == 4  # last layer beats the previous layer and the profile
    assert cfg.lr == 0.1
    assert cfg.batch_size == 64  # from the smoke profile


def test_resolve_layer_beats_profile():
    assert resolve(TrainConfig, "smoke", {"batch_size": 8}).batch_size == 8


def test_resolve_returns_frozen():
    cfg = resolve(TrainConfig, "quick")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.epochs = 1  # type: ignore[misc]


def test_resolve_unknown_key_lists_accepted_keys():
    with pytest.raises(UserError) as info:
        resolve(TrainConfig, "smoke", {"epoch": 3}, section="train")
    message = str(info.value)
    assert "'epoch'" in message and "train" in message
    for field in dataclasses.fields(TrainConfig):
        assert field.name in message


@pytest.mark.parametrize(
    "layer",
    [
        {"epochs": "many"},
        {"epochs": 2.5},
        {"epochs": True},  # bools are not integers here
        {"lr": "fast"},
        {"lr": True},
        {"amp": 1},
        {"optimizer": 3},
        {"epochs": None},
    ],
)
def test_resolve_wrong_type(layer):
    with pytest.raises(UserError) as info:
        resolve(TrainConfig, "smoke", layer, section="train")
    assert f"train.{next(iter(layer))}" in str(info.value)


def test_resolve_int_for_float_field_becomes_float():
    cfg = resolve(TrainConfig, "smoke", {"lr": 1})
    assert cfg.lr == 1.0 and type(cfg.lr) is float
    v = resolve(VerifyConfig, "smoke", {"threshold": 1})
    assert v.threshold == 1.0 and type(v.threshold) is float


def test_resolve_optional_fields():
    cfg = resolve(DataConfig, "smoke", {"owner_size": None, "root": "/tmp/x"})
    assert cfg.owner_size is None and cfg.root == "/tmp/x"
    with pytest.raises(UserError):
        resolve(DataConfig, "smoke", {"owner_size": "ten"})
    with pytest.raises(UserError):
        resolve(DataConfig, "smoke", {"root": 5})
    k = resolve(KnockoffConfig, "paper", {"budget": 7})
    assert k.budget == 7 and k.query_set is None


def test_resolve_list_becomes_tuple_for_tuple_field():
    cfg = resolve(BadNetsConfig, "paper", {"color": [1, 0.5, 0]})
    assert cfg.color == (1.0, 0.5, 0.0)
    assert isinstance(cfg.color, tuple)
    assert all(type(c) is float for c in cfg.color)
    hash(cfg)  # a frozen dataclass with tuple fields stays hashable
    with pytest.raises(UserError):
        resolve(BadNetsConfig, "paper", {"color": 0.5})
    with pytest.raises(UserError):
        resolve(BadNetsConfig, "paper", {"color": ["white"]})


@pytest.mark.parametrize(
    "cls, layer, needle",
    [
        (TrainConfig, {"epochs": 0}, "train.epochs"),
        (TrainConfig, {"batch_size": 0}, "train.batch_size"),
        (TrainConfig, {"optimizer": "lbfgs"}, "train.optimizer"),
        (TrainConfig, {"lr": 0}, "train.lr"),
        (DataConfig, {"attacker_fraction": 1.0}, "data.attacker_fraction"),
        (DataConfig, {"test_size": 0}, "data.test_size"),
        (VerifyConfig, {"threshold": 0.0}, "verify.threshold"),
        (VerifyConfig, {"alpha": 1.0}, "verify.alpha"),
        (BadNetsConfig, {"poison_rate": 0.0}, "poison_rate"),
        (BadNetsConfig, {"color": [1.5]}, "color"),
        (KnockoffConfig, {"labels": "medium"}, "attacks.knockoff.labels"),
        (KnockoffConfig, {"budget": 0}, "attacks.knockoff.budget"),
    ],
)
def test_resolve_validate_errors(cls, layer, needle):
    with pytest.raises(UserError) as info:
        resolve(cls, "paper", layer)
    assert needle in str(info.value)


def test_model_config_arch_for():
    assert resolve(ModelConfig, "paper").arch_for("fmnist") == "naivenet"
    assert resolve(ModelConfig, "paper").arch_for("cifar10") == "cwnet"
    assert resolve(ModelConfig, "paper", {"arch": "tinycnn"}).arch_for("fmnist") == "tinycnn"


# ------------------------------------------------------------------------------------------
# build_settings / Settings.component
# ------------------------------------------------------------------------------------------
def test_build_settings_shared_sections_and_components():
    tree = parse_set([
        "train.epochs=1",
        "verify.threshold=0.3",
        "methods.badnets.poison_rate=0.2",
        "attacks.knockoff.budget=50",
        "attacks.knockoff.labels=hard",
        "datasets.synthetic.train_size=300",
    ])
    s = build_settings("smoke", tree)
    assert isinstance(s, Settings)
    assert s.profile == "smoke"
    assert s.train.epochs == 1 and s.train.batch_size == 64
    assert s.verify.threshold == 0.3
    assert s.data.owner_size == 2000
    assert s.model.arch is None

    bn = s.component("methods", "badnets", BadNetsConfig)
    assert isinstance(bn, BadNetsConfig)
    assert bn.poison_rate == 0.2  # override
    assert bn.n_keys == 300  # smoke profile
    assert bn.patch_size == 3  # paper default

    ko = s.component("attacks", "knockoff", KnockoffConfig)
    assert (ko.budget, ko.labels, ko.epochs, ko.optimizer, ko.lr_step) == (50, "hard", 3, "adam", 0)

    assert s.dataset_options("synthetic") == {"train_size": 300}
    assert s.dataset_options("fmnist") == {}


def test_settings_component_without_overrides_uses_profile():
    s = build_settings("quick")
    ko = s.component("attacks", "knockoff", KnockoffConfig)
    assert (ko.epochs, ko.batch_size, ko.optimizer, ko.budget) == (10, 128, "adam", None)
    bn = s.component("methods", "badnets", BadNetsConfig)
    assert bn == BadNetsConfig()


def test_settings_component_unknown_key():
    s = build_settings("smoke", parse_set(["methods.badnets.bogus=1"]))
    with pytest.raises(UserError) as info:
        s.component("methods", "badnets", BadNetsConfig)
    message = str(info.value)
    assert "methods.badnets" in message and "'bogus'" in message and "poison_rate" in message


def test_build_settings_rejects_bad_component_sections():
    with pytest.raises(UserError):
        build_settings("smoke", {"methods": {"badnets": 3}})
    with pytest.raises(UserError):
        build_settings("smoke", {"attacks": [1, 2]})


def test_build_settings_validates_shared_sections():
    with pytest.raises(UserError, match="train.epochs"):
        build_settings("smoke", {"train": {"epochs": 0}})
    with pytest.raises(UserError, match="unknown key 'foo' for data"):
        build_settings("smoke", {"data": {"foo": 1}})


def test_merge_trees_deep():
    merged = merge_trees({"train": {"epochs": 1, "lr": 0.1}, "methods": {"a": {"x": 1}}}, None,
                         {"train": {"epochs": 2}, "methods": {"a": {"y": 2}}})
    assert merged == {"train": {"epochs": 2, "lr": 0.1}, "methods": {"a": {"x": 1, "y": 2}}}


# ------------------------------------------------------------------------------------------
# config files
# ------------------------------------------------------------------------------------------
def test_load_yaml_config(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(
        "train:\n  epochs: 4\n  lr: 0.01\nmethods:\n  badnets:\n    color: [1, 0, 0]\n"
        "attacks:\n  knockoff:\n    budget: null\n"
    )
    data = load_config_file(str(path))
    assert data == {"train": {"epochs": 4, "lr": 0.01}, "methods": {"badnets": {"color": [1, 0, 0]}},
                    "attacks": {"knockoff": {"budget": None}}}
    s = build_settings("smoke", data)
    assert s.train.epochs == 4 and s.train.lr == 0.01
    assert s.component("methods", "badnets", BadNetsConfig).color == (1.0, 0.0, 0.0)


def test_load_yml_suffix_and_empty_file(tmp_path):
    path = tmp_path / "empty.yml"
    path.write_text("")
    assert load_config_file(str(path)) == {}


def test_load_toml_config(tmp_path):
    path = tmp_path / "cfg.toml"
    path.write_text(
        "[train]\nepochs = 4\nlr = 1e-3\namp = false\n\n[methods.badnets]\npoison_rate = 0.2\n"
        "\n[datasets.synthetic]\nnum_classes = 4\n"
    )
    data = load_config_file(str(path))
    assert data == {"train": {"epochs": 4, "lr": 0.001, "amp": False}, "methods": {"badnets": {"poison_rate": 0.2}},
                    "datasets": {"synthetic": {"num_classes": 4}}}
    s = build_settings("quick", data)
    assert (s.train.epochs, s.train.lr) == (4, 0.001)


def test_config_file_then_set_precedence(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("train:\n  epochs: 4\n  batch_size: 16\n")
    tree = merge_trees(load_config_file(str(path)), parse_set(["train.epochs=9"]))
    s = build_settings("smoke", tree)
    assert (s.train.epochs, s.train.batch_size) == (9, 16)


@pytest.mark.parametrize("suffix, text", [(".yaml", "trian:\n  epochs: 3\n"), (".toml", "[trian]\nepochs = 3\n")])
def test_config_file_unknown_section(tmp_path, suffix, text):
    path = tmp_path / f"cfg{suffix}"
    path.write_text(text)
    with pytest.raises(UserError) as info:
        load_config_file(str(path))
    message = str(info.value)
    assert "trian" in message
    _assert_names_sections(message)


def test_config_file_missing(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(UserError) as info:
        load_config_file(str(missing))
    assert "does not exist" in str(info.value) and str(missing) in str(info.value)


def test_config_file_directory_is_missing(tmp_path):
    with pytest.raises(UserError):
        load_config_file(str(tmp_path))


@pytest.mark.parametrize("suffix, text", [(".yaml", "train: [unclosed\n"), (".toml", "[train\nepochs=\n")])
def test_config_file_unparsable(tmp_path, suffix, text):
    path = tmp_path / f"bad{suffix}"
    path.write_text(text)
    with pytest.raises(UserError, match="cannot parse"):
        load_config_file(str(path))


def test_config_file_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match="mapping"):
        load_config_file(str(path))


# ------------------------------------------------------------------------------------------
# canonical JSON and stable hashes
# ------------------------------------------------------------------------------------------
FIXED = {"b": [1, 2.5, None, True], "a": {"y": "text", "x": 0.1}, "c": "\u00e9"}
FIXED_JSON = '{"a":{"x":0.1,"y":"text"},"b":[1,2.5,null,true],"c":"\\u00e9"}'
FIXED_HASH = "d35440443f4acde5"
FIXED_HASH_FULL = "d35440443f4acde5a68368006441117b7f10a5263e008d37a6d6b9f06dbe36f8"


def test_canonical_json_fixed():
    assert canonical_json(FIXED) == FIXED_JSON
    assert hashlib.sha256(FIXED_JSON.encode()).hexdigest() == FIXED_HASH_FULL


def test_stable_hash_fixed_value():
    assert stable_hash(FIXED) == FIXED_HASH
    assert stable_hash(FIXED, length=64) == FIXED_HASH_FULL
    assert stable_hash(FIXED, length=8) == FIXED_HASH[:8]


def test_stable_hash_key_order_independent():
    a = {"x": 1, "y": {"p": [1, 2], "q": "z"}, "w": None}
    b = {"w": None, "y": {"q": "z", "p": [1, 2]}, "x": 1}
    assert list(a) != list(b)
    assert canonical_json(a) == canonical_json(b)
    assert stable_hash(a) == stable_hash(b)


@pytest.mark.parametrize(
    "changed",
    [
        {"x": 2, "y": {"p": [1, 2], "q": "z"}},
        {"x": 1, "y": {"p": [2, 1], "q": "z"}},
        {"x": 1, "y": {"p": [1, 2], "q": "Z"}},
        {"x": 1.5, "y": {"p": [1, 2], "q": "z"}},
        {"x": 1, "y": {"p": [1, 2], "q": "z"}, "extra": None},
        {"X": 1, "y": {"p": [1, 2], "q": "z"}},
    ],
)
def test_stable_hash_changes_with_value(changed):
    base = {"x": 1, "y": {"p": [1, 2], "q": "z"}}
    assert stable_hash(changed) != stable_hash(base)


def test_stable_hash_tuple_equals_list():
    assert stable_hash({"c": (1.0, 0.5)}) == stable_hash({"c": [1.0, 0.5]})


def test_stable_hash_same_in_subprocess_with_other_hashseed():
    code = (
        "from wmbench.config import stable_hash, canonical_json\n"
        "d = {'b': [1, 2.5, None, True], 'a': {'y': 'text', 'x': 0.1}, 'c': '\\u00e9'}\n"
        "print(stable_hash(d)); print(canonical_json(d))\n"
    )
    outputs = []
    for seed in ("1", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60,
                             check=True)
        outputs.append(out.stdout.split())
    assert outputs[0] == outputs[1] == [FIXED_HASH, FIXED_JSON]


def test_stable_hash_of_set_is_process_independent():
    code = "from wmbench.config import stable_hash\nprint(stable_hash({'s': {'alpha', 'beta', 'gamma'}}))\n"
    hashes = set()
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60,
                             check=True)
        hashes.add(out.stdout.strip())
    assert len(hashes) == 1


# ------------------------------------------------------------------------------------------
# Cell ids
# ------------------------------------------------------------------------------------------
def _cell(**changes):
    base = dict(
        method="badnets", attack="knockoff", labels="soft", dataset="synthetic", seed=0, profile="smoke",
        arch="naivenet", method_config={"poison_rate": 0.1, "color": [1.0]}, attack_configs=({"budget": 100},),
        dataset_options={"train_size": 300}, data={"split_seed": 1337}, train={"epochs": 2}, verify={"threshold": 0.2},
    )
    base.update(changes)
    return Cell(**base)


def test_cell_id_stable_for_equal_cells():
    a, b = _cell(), _cell()
    assert a is not b
    assert a.cell_id == b.cell_id
    assert len(a.cell_id) == 16 and all(ch in "0123456789abcdef" for ch in a.cell_id)
    # mapping key order does not matter
    c = _cell(method_config={"color": [1.0], "poison_rate": 0.1})
    assert c.cell_id == a.cell_id
    # round trip through as_dict / from_dict keeps the id
    assert Cell.from_dict(a.as_dict()).cell_id == a.cell_id


@pytest.mark.parametrize(
    "changes",
    [
        {"method": "other"},
        {"attack": "none"},
        {"labels": "hard"},
        {"dataset": "fmnist"},
        {"seed": 1},
        {"profile": "quick"},
        {"arch": "tinycnn"},
        {"method_config": {"poison_rate": 0.2, "color": [1.0]}},
        {"attack_configs": ({"budget": 101},)},
        {"sweep": {"attacks.knockoff.budget": 101}},
        {"keys": {"filter": "two_stage"}},
        {"dataset_options": {"train_size": 301}},
        {"data": {"split_seed": 1}},
        {"train": {"epochs": 3}},
        {"verify": {"threshold": 0.3}},
    ],
)
def test_cell_id_differs_when_a_field_differs(changes):
    assert _cell(**changes).cell_id != _cell().cell_id


def test_cell_id_covers_every_field():
    # guard: if a field is added to Cell, the parametrisation above must be extended
    assert {f.name for f in dataclasses.fields(Cell)} == {
        "method", "attack", "labels", "dataset", "seed", "profile", "arch", "method_config", "attack_configs",
        "dataset_options", "data", "train", "verify", "keys", "sweep",
    }


def test_cell_id_same_in_subprocess():
    cell = _cell()
    code = (
        "import json, sys\n"
        "from wmbench.cell import Cell\n"
        "print(Cell.from_dict(json.loads(sys.stdin.read())).cell_id)\n"
    )
    import json

    env = dict(os.environ, PYTHONHASHSEED="999")
    out = subprocess.run([sys.executable, "-c", code], input=json.dumps(cell.as_dict()), env=env,
                         capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == cell.cell_id


def test_watermark_summary_keeps_short_facts_only():
    import torch

    from wmbench.api import KeySet
    from wmbench.evaluate import watermark_summary

    x = torch.zeros(3, 1, 4, 4)
    keys = KeySet(x, torch.tensor([4, 4, 4]), x[:2], torch.tensor([4, 4]),
                  {"target": 4, "sources": (7, 6, 1, 0), "selection": "adaptive", "probs": list(range(100)),
                   "index": "[" + ", ".join(map(str, range(500))) + "]", "nested": {"a": 1}})
    summary = watermark_summary(keys)
    assert summary == {"n_verify_keys": 2, "n_embed": 3, "selection": "adaptive", "sources": [7, 6, 1, 0],
                       "target": 4}
    json.dumps(summary)  # JSON-able: it goes into the cell record


def test_cell_variant_names_what_differs_from_the_profile():
    from wmbench.config import build_settings, parse_set
    from wmbench.cell import cell_variant
    from wmbench.plan import plan

    def variants(items, attacks=("knockoff",), sweep=None):
        settings = build_settings("smoke", parse_set(list(items)))
        cells = plan(settings, ["badnets"], list(attacks), ["synthetic"], [0], sweep=sweep)
        return sorted({tuple(sorted(cell_variant(p.cell).items())) for p in cells})

    assert variants([]) == [(("attack", ""), ("method", ""))]  # defaults; labels are not a variant
    assert variants(["methods.badnets.poison_rate=0.05", "train.epochs=3", "attacks.knockoff.budget=300",
                     "attacks.knockoff.labels=soft"]) == [
        (("attack", "budget=300"), ("method", "poison_rate=0.05,train.epochs=3"))]
    # chains name the stage; swept keys are left to the sweep's own label
    assert variants(["attacks.ftll.lr=0.123"], attacks=("knockoff+ftll",)) == [(("attack", "ftll.lr=0.123"), ("method", ""))]
    assert variants(["methods.badnets.poison_rate=0.05"],
                    sweep={"methods.badnets.poison_rate": 0.05}) == [(("attack", ""), ("method", ""))]
