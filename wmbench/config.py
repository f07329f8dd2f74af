"""Typed, frozen configuration with three profiles and canonical hashing.

Every component (the shared sections below, each method, each attack) declares a frozen
dataclass whose field defaults are the **paper** settings, and a ``PROFILES`` mapping with the
overrides for ``smoke`` (seconds, for tests) and ``quick`` (minutes on a 2-core CPU).

Precedence, lowest first: dataclass defaults (paper) < profile overrides < config file
(YAML or TOML) < ``--set section.key=value``.

Sections of the config file / ``--set`` keys:

- ``data.*``      :class:`DataConfig` (splits, subset sizes, data root)
- ``train.*``     :class:`TrainConfig` (benign and victim training schedule)
- ``verify.*``    :class:`VerifyConfig`
- ``keys.*``      :class:`KeyFilterConfig` (key filtering, e.g. ``keys.filter=two_stage``)
- ``model.*``     :class:`ModelConfig`
- ``methods.NAME.*``, ``attacks.NAME.*``  the component's own ``Config``
- ``datasets.NAME.*``  options passed to a dataset source (e.g. ``datasets.synthetic.num_classes=4``)

Every section, built-in or plugin, gets the training-schedule rules of :func:`check_schedule` for the
fields it has (``momentum``, ``weight_decay`` and ``lr_step`` at least 0, ``lr_gamma`` above 0).

Why one module: every shared section, the profile resolution that all of them go through and
the canonical hashing that names cells and artifacts must agree on one set of rules (types,
coercion, precedence); split, a change to one rule would have to be made in several files.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Dict, Mapping, Optional, Sequence, Tuple

import yaml

from wmbench.augment import LABEL_PRESERVING, check_transforms
from wmbench.errors import UserError

#: Field metadata of a setting added after results were published: while it holds its default (or
#: a value listed under ``"neutral"``, meaning the same as the default) it is left out of a cell's
#: identity (:func:`identity_dict`), so adding it neither re-runs nor orphans the cells that ran
#: before it existed. Use as ``field(default=..., metadata=NEW_SETTING)``.
NEW_SETTING: Mapping[str, Any] = {"identity": "omit-default"}

PROFILE_NAMES: Tuple[str, ...] = ("smoke", "quick", "paper")
SECTION_NAMES: Tuple[str, ...] = ("data", "train", "verify", "keys", "model", "methods", "attacks", "datasets")
#: Optimisers accepted by ``train.optimizer`` and the attacks' ``optimizer`` (see ``make_optimizer``).
OPTIMIZERS: Tuple[str, ...] = ("adam", "sgd", "adagrad", "adamax", "rmsprop")


@dataclass(frozen=True)
class TrainConfig:
    """Training schedule of the benign and watermarked models.

    Paper (DeepTracer, Implementation Details): Adam, lr 1e-3 halved every 10 epochs,
    100 epochs per phase, batch 128 (batch size not stated; 128 as in MEA-Defender's code).

    Parameters
    ----------
    epochs: int = 100            epochs per training phase.
    batch_size: int = 128
    optimizer: str = "adam"      "adam", "sgd", "adagrad", "adamax" or "rmsprop".
    lr: float = 1e-3
    momentum: float = 0.9        SGD only.
    weight_decay: float = 0.0
    lr_step: int = 10            StepLR period in epochs; 0 disables the schedule.
    lr_gamma: float = 0.5        StepLR factor.
    amp: bool = False            bf16 autocast, used only on CUDA.
    augment: tuple | None = None  batched augmentation of every training image (:mod:`wmbench.augment`:
                                  ``crop`` — zero-pad 4 and crop back — and ``flip``); None = the
                                  dataset's recipe (crop + flip on CIFAR-10/100, none elsewhere;
                                  set when the grid is planned); ``[]`` = none.
    """

    epochs: int = 100
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_step: int = 10
    lr_gamma: float = 0.5
    amp: bool = False
    augment: Optional[Tuple[str, ...]] = field(default=None, metadata={**NEW_SETTING, "neutral": ((),)})

    PROFILES: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "smoke": {"epochs": 2, "batch_size": 64},
        "quick": {"epochs": 5},
        "paper": {},
    }

    def validate(self) -> None:
        if self.epochs < 1:
            raise UserError(f"train.epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise UserError(f"train.batch_size must be >= 1, got {self.batch_size}")
        if self.optimizer not in OPTIMIZERS:
            raise UserError(f"train.optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.lr <= 0:
            raise UserError(f"train.lr must be > 0, got {self.lr}")
        if self.augment is not None:
            check_transforms("train.augment", self.augment, LABEL_PRESERVING, " (or [] for none)")


@dataclass(frozen=True)
class DataConfig:
    """Data splits. The attacker's split is disjoint from the owner's (WRT convention:
    the first ``attacker_fraction`` of a fixed-seed permutation of the training set).

    Parameters
    ----------
    root: str | None = None          data root (else ``$WMBENCH_DATA``, else system paths).
    download: bool = False           allow torchvision downloads (needs network).
    attacker_fraction: float = 1/3
    split_seed: int = 1337           fixed across run seeds so every seed sees the same split.
    owner_size, attacker_size, test_size: int | None = None   optional caps (seeded subsets).
    """

    root: Optional[str] = None
    download: bool = False
    attacker_fraction: float = 1.0 / 3.0
    split_seed: int = 1337
    owner_size: Optional[int] = None
    attacker_size: Optional[int] = None
    test_size: Optional[int] = None

    PROFILES: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "smoke": {"owner_size": 2000, "attacker_size": 1000, "test_size": 1000},
        "quick": {},
        "paper": {},
    }

    def validate(self) -> None:
        if not 0.0 < self.attacker_fraction < 1.0:
            raise UserError(f"data.attacker_fraction must be in (0, 1), got {self.attacker_fraction}")
        for name in ("owner_size", "attacker_size", "test_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"data.{name} must be a positive integer or null, got {value}")
        if self.split_seed < 0:
            raise UserError(f"data.split_seed must be a non-negative integer, got {self.split_seed}")


@dataclass(frozen=True)
class VerifyConfig:
    """Ownership verification. Paper: stolen iff WSR >= 20 % (threshold T = 0.2).

    Parameters
    ----------
    threshold: float = 0.2
    alpha: float = 0.05      level of the Clopper-Pearson interval (two-sided 1 - alpha).
    """

    threshold: float = 0.2
    alpha: float = 0.05

    PROFILES: ClassVar[Mapping[str, Mapping[str, Any]]] = {"smoke": {}, "quick": {}, "paper": {}}

    def validate(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise UserError(f"verify.threshold must be in (0, 1], got {self.threshold}")
        if not 0.0 < self.alpha < 1.0:
            raise UserError(f"verify.alpha must be in (0, 1), got {self.alpha}")


@dataclass(frozen=True)
class KeyFilterConfig:
    """Key-set post-processing, for any method (:mod:`wmbench.methods.keyfilter`).

    DeepTracer's two-stage filter (Eqs. 7–8): keep candidate keys that the victim and a surrogate
    stolen model label as the watermark label and the benign model does not, then the ``top_m``
    most confident under the surrogate. The surrogate is the owner's own simulation of stealing
    (soft-label Knockoff on the victim) and is independent of every evaluated attack: its own
    seed, its own architecture and its own query data (never the attacker's split).

    Parameters
    ----------
    filter: str | None = None       "none", "two_stage", or None = the method's default
                                    (two_stage for DeepTracer, none for the others).
    top_m: int = 2000               M, the size of the final key set.
    surrogate_arch: str = "alexnet_cifar"   paper: AlexNet (ResNet18 on ImageNet).
    surrogate_query_set: str | None = None  None (or "attacker") = the owner's training images;
                                    else a dataset name (paper: TinyImageNet; offline: e.g. digits),
                                    or several joined by "+" ("attacker+digits": the owner's
                                    images and digits'), like the stealing attacks' ``query_set``.
    surrogate_pool_transforms: tuple = ()   transformations of each query batch (flip, crop,
                                    mixup, cutmix; see :mod:`wmbench.augment`), like the stealing
                                    attacks' ``pool_transforms`` [wmbench option; the paper: none].
    surrogate_budget: int | None = None     queries; None = the whole query set once.
    surrogate_epochs: int | None = None     None = ``train.epochs``.
    surrogate_lr: float = 1e-3      Adam, constant.
    surrogate_batch_size: int = 128
    min_keys: int = 0               when fewer than this many candidates pass stage 1, fall back to
                                    Eq. 7 without the surrogate criterion (victim hits, benign
                                    misses), still ranked by surrogate confidence; recorded as
                                    ``keys_fallback = 1`` [wmbench option; 0 = the paper's rule,
                                    used by the paper profile; smoke 50, quick 200].
    """

    filter: Optional[str] = None
    top_m: int = 2000
    surrogate_arch: str = "alexnet_cifar"
    surrogate_query_set: Optional[str] = None
    surrogate_pool_transforms: Tuple[str, ...] = field(default=(), metadata=NEW_SETTING)
    surrogate_budget: Optional[int] = None
    surrogate_epochs: Optional[int] = None
    surrogate_lr: float = 1e-3
    surrogate_batch_size: int = 128
    min_keys: int = 0

    # smoke/quick keep a fallback key set: at CPU budgets the owner's surrogate rarely inherits the
    # watermark (measured on Fashion-MNIST quick: 0 of 2,000 candidates pass Eq. 7), and a method
    # with no keys verifies nothing. The paper profile applies the paper's rule (min_keys = 0).
    PROFILES: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "smoke": {"top_m": 300, "min_keys": 50}, "quick": {"min_keys": 200}, "paper": {}}

    def validate(self) -> None:
        if self.min_keys < 0:
            raise UserError(f"keys.min_keys must be >= 0, got {self.min_keys}")
        if self.filter not in (None, "none", "two_stage"):
            raise UserError(f"keys.filter must be none or two_stage, got {self.filter!r}")
        if self.top_m < 1:
            raise UserError(f"keys.top_m must be >= 1, got {self.top_m}")
        if self.surrogate_epochs is not None and self.surrogate_epochs < 1:
            raise UserError(f"keys.surrogate_epochs must be >= 1, got {self.surrogate_epochs}")
        if self.surrogate_budget is not None and self.surrogate_budget < 1:
            raise UserError(f"keys.surrogate_budget must be a positive integer or null, got {self.surrogate_budget}")
        if self.surrogate_batch_size < 1:
            raise UserError(f"keys.surrogate_batch_size must be >= 1, got {self.surrogate_batch_size}")
        if not self.surrogate_lr > 0:
            raise UserError(f"keys.surrogate_lr must be > 0, got {self.surrogate_lr}")
        check_transforms("keys.surrogate_pool_transforms", self.surrogate_pool_transforms)


# Paper architectures per dataset [P: Experimental Setup]; the synthetic/digits sets are ours.
DEFAULT_ARCH: Mapping[str, str] = {
    "fmnist": "naivenet",
    "digits": "naivenet",
    "synthetic": "naivenet",
    "cifar10": "cwnet",
    "cifar100": "resnet18_cifar",
    "imagefolder": "resnet50",
}


@dataclass(frozen=True)
class ModelConfig:
    """Victim architecture. ``arch=None`` picks the paper's architecture for the dataset
    (fmnist: naivenet, cifar10: cwnet, cifar100: resnet18_cifar, imagefolder: resnet50)."""

    arch: Optional[str] = None

    PROFILES: ClassVar[Mapping[str, Mapping[str, Any]]] = {"smoke": {}, "quick": {}, "paper": {}}

    def arch_for(self, dataset: str) -> str:
        return self.arch or DEFAULT_ARCH.get(dataset, "resnet18_cifar")

    def validate(self) -> None:
        return None


# --------------------------------------------------------------------------------------------
# Resolution
# --------------------------------------------------------------------------------------------

def check_schedule(section: str, config: Any) -> None:
    """The training-schedule fields ``config`` has, checked (torch rejects or misreads the rest):
    ``momentum``, ``weight_decay`` and ``lr_step`` (0 = constant lr) at least 0, ``lr_gamma`` above 0."""
    for name in ("momentum", "weight_decay", "lr_step"):
        value = getattr(config, name, None)
        if isinstance(value, (int, float)) and not value >= 0:
            raise UserError(f"{section}.{name} must be >= 0, got {value}")
    gamma = getattr(config, "lr_gamma", None)
    if isinstance(gamma, (int, float)) and not gamma > 0:
        raise UserError(f"{section}.lr_gamma must be > 0 (the factor of each lr step), got {gamma}")


def _coerce(section: str, name: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against the annotated type ``hint``; ints become floats where asked."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        last_error: Optional[UserError] = None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(section, name, value, arg)
            except UserError as exc:
                last_error = exc
        raise last_error or UserError(f"bad value for {section}.{name}: {value!r}")
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"{section}.{name} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise UserError(f"{section}.{name} must be an integer, got {value!r}")
    if hint is float:
        number: Optional[float] = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise UserError(f"{section}.{name} must be a number, got {value!r}")
        if not math.isfinite(number):  # NaN passes every "<= 0" check; inf is never a setting
            raise UserError(f"{section}.{name} must be a finite number, got {value!r}")
        return number
    if hint is str:
        if isinstance(value, str):
            return value
        raise UserError(f"{section}.{name} must be a string, got {value!r}")
    if origin in (tuple, Tuple, list, Sequence) or hint in (tuple, list):
        if isinstance(value, (list, tuple)):
            inner = args[0] if args else Any
            return tuple(_coerce(section, name, v, inner) for v in value)
        raise UserError(f"{section}.{name} must be a list, got {value!r}")
    return value


def resolve(cls: type, profile: str, *layers: Optional[Mapping[str, Any]], section: str = "") -> Any:
    """Build a frozen config of type ``cls`` for ``profile`` with override ``layers`` on top.

    Unknown keys and badly typed values raise :class:`UserError` listing what is accepted.
    """
    if profile not in PROFILE_NAMES:
        raise UserError(f"unknown profile {profile!r}; available: {', '.join(PROFILE_NAMES)}")
    section = section or cls.__name__
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values: Dict[str, Any] = {}
    profiles = getattr(cls, "PROFILES", {}) or {}
    for layer in (profiles.get(profile, {}),) + tuple(l for l in layers if l):
        if not isinstance(layer, Mapping):
            raise UserError(f"section {section} must be a mapping of key: value, got {layer!r}; accepted keys: "
                            f"{', '.join(names)}")
        for key, value in layer.items():
            if key not in names:
                raise UserError(
                    f"unknown key {key!r} for {section}; accepted: {', '.join(names)}"
                )
            values[key] = _coerce(section, key, value, hints[key])
    config = cls(**values)
    check_schedule(section, config)
    validate = getattr(config, "validate", None)
    if callable(validate):
        validate()
    return config


def config_to_dict(config: Any) -> Dict[str, Any]:
    """A JSON-able dict of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=list))



def identity_dict(config: Any) -> Dict[str, Any]:
    """:func:`config_to_dict` without the :data:`NEW_SETTING` fields that hold their default:
    what a cell records of a config, and hashes into its id."""
    d = config_to_dict(config)
    for f in dataclasses.fields(config):
        if f.metadata.get("identity") != "omit-default" or f.name not in d:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        same = [json.loads(json.dumps(v, default=list)) for v in (default, *f.metadata.get("neutral", ()))]
        if d[f.name] in same:
            del d[f.name]
    return d


_SCIENTIFIC = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def _parse_value(raw: str) -> Any:
    """A ``--set`` value as YAML (ints, floats, bools, null, lists), with YAML 1.2 floats:
    ``1e-3`` is a number, not the string YAML 1.1 makes of it."""
    if raw.strip() == "":
        return ""
    if _SCIENTIFIC.match(raw.strip()):
        return float(raw)
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def parse_set(items: Sequence[str]) -> Dict[str, Any]:
    """Parse ``--set section.key=value`` items into a nested dict (values parsed as YAML)."""
    tree: Dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        parts = key.split(".")
        if not sep or len(parts) < 2 or not all(parts):
            raise UserError(
                f"malformed --set {item!r}; expected section.key=value with section in "
                f"{', '.join(SECTION_NAMES)} (e.g. train.epochs=3, attacks.knockoff.budget=5000)"
            )
        if parts[0] not in SECTION_NAMES:
            raise UserError(f"unknown section {parts[0]!r} in --set {item!r}; accepted: {', '.join(SECTION_NAMES)}")
        if parts[0] in ("methods", "attacks", "datasets") and len(parts) != 3:
            raise UserError(f"malformed --set {item!r}; expected {parts[0]}.NAME.key=value")
        if parts[0] not in ("methods", "attacks", "datasets") and len(parts) != 2:
            raise UserError(f"malformed --set {item!r}; expected {parts[0]}.key=value")
        value = _parse_value(raw)
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return tree


def load_config_file(path: str) -> Dict[str, Any]:
    """Read a YAML (``.yaml``/``.yml``) or TOML (``.toml``) config file with the same sections."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file {path!r} does not exist or is not a file; give a YAML or TOML file")
    try:
        if p.suffix == ".toml":
            import tomllib

            data = tomllib.loads(p.read_text())
        else:
            data = yaml.safe_load(p.read_text()) or {}
    except Exception as exc:
        raise UserError(f"cannot parse config file {path!r}: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {path!r} must hold a mapping of sections")
    unknown = set(data) - set(SECTION_NAMES)
    if unknown:
        raise UserError(f"unknown section(s) {', '.join(sorted(unknown))} in {path}; accepted: {', '.join(SECTION_NAMES)}")
    return data


def merge_trees(*trees: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """Deep-merge nested dicts, later ones winning."""
    out: Dict[str, Any] = {}
    for tree in trees:
        for key, value in (tree or {}).items():
            if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
                out[key] = merge_trees(out[key], value)
            elif isinstance(value, Mapping):
                out[key] = merge_trees(value)
            else:
                out[key] = value
    return out


@dataclass(frozen=True)
class Settings:
    """Resolved shared sections plus the raw per-component overrides of one run."""

    profile: str
    data: DataConfig
    train: TrainConfig
    verify: VerifyConfig
    model: ModelConfig
    keys: KeyFilterConfig = field(default_factory=KeyFilterConfig)
    overrides: Mapping[str, Any] = field(default_factory=dict)

    def component(self, kind: str, name: str, cls: type) -> Any:
        """Resolve the ``Config`` of method/attack ``name`` (kind 'methods' or 'attacks')."""
        layer = (self.overrides.get(kind) or {}).get(name) or {}
        return resolve(cls, self.profile, layer, section=f"{kind}.{name}")

    def dataset_options(self, name: str) -> Dict[str, Any]:
        return dict((self.overrides.get("datasets") or {}).get(name) or {})


def build_settings(profile: str, tree: Optional[Mapping[str, Any]] = None) -> Settings:
    """Resolve the shared sections of ``tree`` (merged config file and ``--set`` items)."""
    tree = dict(tree or {})
    for section in ("methods", "attacks", "datasets"):
        value = tree.get(section)
        if value is not None and not (
            isinstance(value, Mapping) and all(isinstance(v, Mapping) for v in value.values())
        ):
            raise UserError(f"section {section!r} must map names to mappings of options")
    return Settings(
        profile=profile,
        data=resolve(DataConfig, profile, tree.get("data"), section="data"),
        train=resolve(TrainConfig, profile, tree.get("train"), section="train"),
        verify=resolve(VerifyConfig, profile, tree.get("verify"), section="verify"),
        model=resolve(ModelConfig, profile, tree.get("model"), section="model"),
        keys=resolve(KeyFilterConfig, profile, tree.get("keys"), section="keys"),
        overrides={k: tree.get(k) or {} for k in ("methods", "attacks", "datasets")},
    )


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=canonical_json)
    return str(obj)


def canonical_json(obj: Any) -> str:
    """Canonical JSON: sorted keys (and sorted sets), no whitespace; stable across processes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default)


def stable_hash(obj: Any, length: int = 16) -> str:
    """SHA-256 of the canonical JSON of ``obj``, hex, truncated to ``length``."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]
