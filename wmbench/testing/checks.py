"""The contract checks of :mod:`wmbench.testing`, one function each (the list and their costs are
in that module's docstring).

Every check is called as ``check(plugin, **options)``: ``plugin`` is a class or a registered
name (:func:`~wmbench.testing.pipeline.resolve_plugin`), ``options`` are those of
:data:`~wmbench.testing.pipeline.DEFAULTS`. A check raises one :class:`AssertionError` that names
the plugin and the check and lists every problem found (prefixed with the cell's label mode).
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from wmbench.config import PROFILE_NAMES, parse_set, resolve
from wmbench.registry import DATASETS
from wmbench.testing.pipeline import options, pipeline, resolve_plugin

ACCESS = frozenset({"probs", "labels", "weights"})
Check = Callable[..., None]


class _Fail:
    """Collects the problems of one check and raises them as one AssertionError."""

    def __init__(self, kind: str, name: str, check: str) -> None:
        self.prefix = f"{kind} {name!r} fails {check}"
        self.problems: List[str] = []

    def __call__(self, problem: str, cell: str = "") -> None:
        self.problems.append(f"{cell} {problem}" if cell else problem)

    def raise_if_any(self) -> None:
        if self.problems:
            raise AssertionError(self.prefix + ": " + "; ".join(self.problems))


def _check(func: Callable[..., None]) -> Check:
    """Turn ``func(kind, name, cls, opts, fail)`` into the public ``check(plugin, **options)``."""

    @functools.wraps(func)
    def check(plugin: Any, **given: Any) -> None:
        kind, name, cls = resolve_plugin(plugin)
        fail = _Fail(kind, name, func.__name__)
        func(kind, name, cls, options(given), fail)
        fail.raise_if_any()

    return check


# --------------------------------------------------------------------------------------------
# instant checks (methods and attacks)
# --------------------------------------------------------------------------------------------
@_check
def check_config_is_frozen_dataclass(kind: str, name: str, cls: type, opts: Dict[str, Any], fail: _Fail) -> None:
    """``Config`` is a dataclass, buildable without arguments, whose instances are frozen."""
    config = getattr(cls, "Config", None)
    if not (isinstance(config, type) and dataclasses.is_dataclass(config)):
        return fail(f"Config must be a @dataclass(frozen=True) class, got {config!r}")
    try:
        instance = config()
    except TypeError as exc:
        return fail(f"Config() cannot be built without arguments ({exc}); give every field a default (the paper's)")
    fields = dataclasses.fields(config)
    attr = fields[0].name if fields else "_wmbench_probe"
    try:
        setattr(instance, attr, getattr(instance, attr, None))
    except dataclasses.FrozenInstanceError:
        return None
    fail(f"{config.__qualname__} is not frozen (setting {attr!r} worked); declare it @dataclass(frozen=True)")


@_check
def check_config_defaults_validate(kind: str, name: str, cls: type, opts: Dict[str, Any], fail: _Fail) -> None:
    """The default ``Config()`` (the paper's settings) passes its own ``validate()``."""
    try:
        config = cls.Config()
        if callable(getattr(config, "validate", None)):
            config.validate()
    except Exception as exc:  # noqa: BLE001 - the failure to report
        fail(f"the default Config() does not validate: {type(exc).__name__}: {exc}")


@_check
def check_profiles_resolve(kind: str, name: str, cls: type, opts: Dict[str, Any], fail: _Fail) -> None:
    """``Config.PROFILES`` has exactly smoke, quick and paper, and each resolves and validates."""
    profiles = getattr(getattr(cls, "Config", None), "PROFILES", None)
    if not isinstance(profiles, Mapping):
        return fail(f"Config.PROFILES must map {', '.join(PROFILE_NAMES)} to overrides, got {profiles!r}")
    missing, extra = set(PROFILE_NAMES) - set(profiles), set(profiles) - set(PROFILE_NAMES)
    if missing or extra:
        fail(f"Config.PROFILES must have exactly {', '.join(PROFILE_NAMES)} (missing: "
             f"{', '.join(sorted(missing)) or '-'}; unknown: {', '.join(sorted(extra)) or '-'})")
    for profile in PROFILE_NAMES:
        try:
            resolve(cls.Config, profile, section=f"{kind}s.{name}")
        except Exception as exc:  # noqa: BLE001
            fail(f"profile {profile!r} does not resolve: {type(exc).__name__}: {exc}")


@_check
def check_class_attributes(kind: str, name: str, cls: type, opts: Dict[str, Any], fail: _Fail) -> None:
    """What ``wmbench list``, the planner and the report read from the class is there and well-typed."""
    if not (cls.__doc__ or "").strip():
        fail("the class has no docstring (paper, idea, parameters)")
    if cls.name != name:
        fail(f"`name` is {cls.name!r} but it is registered as {name!r}")
    for attr in ("paper", "category"):
        if not isinstance(getattr(cls, attr, None), str) or not getattr(cls, attr).strip():
            fail(f"`{attr}` must be a non-empty string, got {getattr(cls, attr, None)!r}")
    if not isinstance(cls.year, int) or isinstance(cls.year, bool) or cls.year <= 0:
        fail(f"`year` must be a positive int, got {cls.year!r}")
    if inspect.isabstract(cls):
        fail(f"abstract method(s) not implemented: {', '.join(sorted(cls.__abstractmethods__))}")
    if kind == "method":
        if not isinstance(cls.exposes, frozenset) or not cls.exposes or not cls.exposes <= ACCESS:
            fail(f"`exposes` must be a non-empty frozenset of {sorted(ACCESS)}, got {cls.exposes!r}")
        if not isinstance(cls.min_classes, int) or cls.min_classes < 2:
            fail(f"`min_classes` must be an int >= 2, got {cls.min_classes!r}")
        if cls.default_key_filter not in ("none", "two_stage"):
            fail(f"`default_key_filter` must be 'none' or 'two_stage', got {cls.default_key_filter!r}")
        return None
    if not isinstance(cls.needs, frozenset) or not cls.needs <= ACCESS:
        fail(f"`needs` must be a frozenset of {sorted(ACCESS)}, got {cls.needs!r}")
    config = getattr(cls, "Config", None)
    fields = {f.name for f in dataclasses.fields(config)} if dataclasses.is_dataclass(config) else set()
    if not isinstance(cls.label_modes, tuple) or not set(cls.label_modes) <= {"soft", "hard"} or (
            cls.label_modes and "labels" not in fields):
        fail(f"`label_modes` must be a tuple of 'soft'/'hard' with a `labels` Config field, got {cls.label_modes!r}")
    for attr in ("cacheable", "knows_watermark"):
        if not isinstance(getattr(cls, attr), bool):
            fail(f"`{attr}` must be a bool, got {getattr(cls, attr)!r}")


# --------------------------------------------------------------------------------------------
# end-to-end checks: they read the plugin's pipeline run
# --------------------------------------------------------------------------------------------
def _cells(kind: str, name: str, cls: type, opts: Dict[str, Any], fail: _Fail) -> List[Tuple[str, Dict[str, Any]]]:
    """``(label, record)`` of the plugin's finished cells; every unfinished cell is a problem."""
    result = pipeline(kind, name, cls, opts)
    for problem in result["problems"]:
        fail(problem)
    if not result["records"] and not result["problems"]:
        fail("the pipeline ran no cell")
    return [(f"[{r['cell']['labels']}]" if r["cell"].get("labels") else "", r) for r in result["records"]]


def _observed(kind: str, name: str, cls: type, opts: Dict[str, Any], fail: _Fail
              ) -> List[Tuple[str, Dict[str, Any], Optional[Dict[str, Any]]]]:
    """``(label, record, observed run)`` of an attack's finished cells."""
    seen = pipeline(kind, name, cls, opts)["seen"]
    out = []
    for label, record in _cells(kind, name, cls, opts, fail):
        match = [s for s in seen if s["labels"] == (record["cell"].get("labels") or "")]
        if not match:
            fail("its run() was not observed (the model came from an artifact store)", label)
        out.append((label, record, match[-1] if match else None))
    return out


@_check
def check_embeds_and_verifies(kind: str, name: str, cls: type, opts: Dict[str, Any], fail: _Fail) -> None:
    """Its own verification detects its victim: WSR >= ``min_wsr``, ``p_value_chance`` <= ``max_p_value``."""
    for _, record in _cells(kind, name, cls, opts, fail):
        victim = record["metrics"]["victim"]
        if victim["detected"] != 1.0 or victim["wsr"] < opts["min_wsr"]:
            fail(f"its own verification does not detect its victim (WSR {victim['wsr']:.3f}, needs >= "
                 f"{opts['min_wsr']:g}; detected={bool(victim['detected'])}): the victim does not carry the watermark")
        if not victim["p_value_chance"] <= opts["max_p_value"]:
            fail(f"the victim's key hits are not significant (p_value_chance {victim['p_value_chance']:.3g} > "
                 f"{opts['max_p_value']:g})")


@_check
def check_not_detected_on_clean(kind: str, name: str, cls: type, opts: Dict[str, Any], fail: _Fail) -> None:
    """Its verification does not detect the benign model (same data and schedule, no watermark)."""
    for _, record in _cells(kind, name, cls, opts, fail):
        benign = record["metrics"]["benign"]
        if benign["detected"] != 0.0:
            fail(f"it detects its watermark on the clean benign model (WSR {benign['wsr']:.3f} >= threshold "
                 f"{benign['threshold']:g}): verification would accuse innocent models")


@_check
def check_keeps_accuracy(kind: str, name: str, cls: type, opts: Dict[str, Any], fail: _Fail) -> None:
    """Victim test accuracy >= benign test accuracy - ``max_acc_drop``."""
    for _, record in _cells(kind, name, cls, opts, fail):
        victim, benign = record["metrics"]["victim"]["acc"], record["metrics"]["benign"]["acc"]
        if victim < benign - opts["max_acc_drop"]:
            fail(f"victim test accuracy {victim:.3f} is more than {opts['max_acc_drop']:g} below the benign "
                 f"model's {benign:.3f}")


def _least_acc(opts: Mapping[str, Any]) -> Tuple[float, float]:
    """``(min_acc, chance)``; chance is 1/K of the data set (its ``num_classes`` override or default)."""
    override = ((parse_set(opts["overrides"]).get("datasets") or {}).get(opts["dataset"]) or {}).get("num_classes")
    chance = 1.0 / int(override or DATASETS.get(opts["dataset"]).num_classes)
    return (chance + 0.2 if opts["min_acc"] is None else opts["min_acc"]), chance


@_check
def check_returns_working_model(kind: str, name: str, cls: type, opts: Dict[str, Any], fail: _Fail) -> None:
    """The returned model's test accuracy >= ``min_acc`` (default: chance + 0.2)."""
    least, chance = _least_acc(opts)
    for label, record in _cells(kind, name, cls, opts, fail):
        acc = record["metrics"]["attack"]["acc"]
        if acc < least:
            fail(f"the returned model's test accuracy {acc:.3f} is not clearly above chance ({chance:.3f}; "
                 f"needs >= {least:.3f})", label)


@_check
def check_changes_the_model(kind: str, name: str, cls: type, opts: Dict[str, Any], fail: _Fail) -> None:
    """The returned model differs from its input: fidelity to the victim < 1, or another WSR."""
    for label, record in _cells(kind, name, cls, opts, fail):
        attack, victim = record["metrics"]["attack"], record["metrics"]["victim"]
        if attack["fidelity"] >= 1.0 and attack["wsr"] == victim["wsr"]:
            fail(f"the returned model behaves exactly like its input (fidelity {attack['fidelity']:.3f}, WSR "
                 f"unchanged at {attack['wsr']:.3f}): nothing was attacked", label)


@_check
def check_leaves_input_unchanged(kind: str, name: str, cls: type, opts: Dict[str, Any], fail: _Fail) -> None:
    """No parameter or buffer of the model it was given (or that its Blackbox wraps) changed in ``run``."""
    for label, _, seen in _observed(kind, name, cls, opts, fail):
        if seen and seen["changed"]:
            fail(f"run() modified the model it was given ({len(seen['changed'])} tensors, e.g. "
                 f"{seen['changed'][0]}); work on wmbench.api.private_copy(target)", label)


@_check
def check_counts_queries(kind: str, name: str, cls: type, opts: Dict[str, Any], fail: _Fail) -> None:
    """Reported queries >= 0, recorded as reported, and equal to the images its Blackbox answered."""
    for label, record, seen in _observed(kind, name, cls, opts, fail):
        if seen is None:
            continue
        reported, answered = seen["reported"], seen["answered"]
        if not isinstance(reported, int) or reported < 0:
            fail(f"AttackOutcome.queries must be an int >= 0, got {reported!r}", label)
        elif record["metrics"]["attack"]["queries"] != reported:
            fail(f"the record says {record['metrics']['attack']['queries']:g} queries but the attack reported "
                 f"{reported}", label)
        if answered is not None and reported != answered:
            fail(f"it reported {reported} queries but sent {answered} images to the Blackbox; report "
                 "AttackOutcome(queries=target.queries)", label)


@_check
def check_stealing_gets_only_a_blackbox(kind: str, name: str, cls: type, opts: Dict[str, Any], fail: _Fail) -> None:
    """Without ``weights`` in its needs it receives (and works with) a Blackbox; stealing needs no weights."""
    if "stealing" in str(cls.category) and "weights" in cls.needs:
        fail(f"its category {cls.category!r} says stealing but it needs 'weights'; a stealing attack only queries")
    for label, _, seen in _observed(kind, name, cls, opts, fail):
        if seen is None or "weights" in seen["needs"]:
            continue
        if not seen["blackbox"]:
            fail(f"it needs {sorted(seen['needs'])} but received the model itself", label)
        elif seen["needs"] == {"labels"} and not seen["hard_label"]:
            fail("it needs only labels but received a probability Blackbox", label)


METHOD_CHECKS: Tuple[Check, ...] = (
    check_config_is_frozen_dataclass, check_config_defaults_validate, check_profiles_resolve, check_class_attributes,
    check_embeds_and_verifies, check_not_detected_on_clean, check_keeps_accuracy)
ATTACK_CHECKS: Tuple[Check, ...] = (
    check_config_is_frozen_dataclass, check_config_defaults_validate, check_profiles_resolve, check_class_attributes,
    check_returns_working_model, check_changes_the_model, check_leaves_input_unchanged, check_counts_queries,
    check_stealing_gets_only_a_blackbox)
