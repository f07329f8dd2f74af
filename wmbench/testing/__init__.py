"""The plugin author's kit: the contract checks every watermark method and attack must pass.

The built-ins pass them (``tests/test_contract.py``); a third-party package runs the same checks
in its own pytest run, in the spirit of scikit-learn's ``check_estimator``::

    from wmbench.testing import parametrize_with_checks
    from mypkg import MyMark, MyAttack

    @parametrize_with_checks([MyMark, MyAttack])
    def test_wmbench_contract(plugin, check):
        check(plugin)

A plugin is a class or a registered name (``"badnets"``, ``"mypkg.mod:MyMark"``). A class that is
not registered yet is registered, for good, under its own ``name`` (else its lower-cased class
name); a name another class holds is an error. Every check is a function
``check_*(plugin, **options)`` that raises one :class:`AssertionError` naming the plugin, the
check and every problem found; :func:`check_method` / :func:`check_attack` run all checks of a
plugin and list every failure at once.

Instant checks (methods and attacks, milliseconds):

- ``check_config_is_frozen_dataclass``: ``Config`` is a dataclass, buildable without arguments
  (every field has a default: the paper's), whose instances are frozen (configs are hashed
  into cell ids and shared between cells).
- ``check_config_defaults_validate``: ``Config()`` passes its own ``validate()``.
- ``check_profiles_resolve``: ``Config.PROFILES`` has exactly smoke, quick and paper, and each
  resolves with :func:`wmbench.config.resolve` (known keys, right types, validates).
- ``check_class_attributes``: what ``wmbench list``, the planner and the report read: a class
  docstring; ``name`` equal to the registered name; ``paper`` and ``category`` non-empty
  strings; ``year`` a positive int; no abstract method left. Methods: ``exposes`` a non-empty
  subset of probs/labels/weights, ``min_classes`` an int >= 2, ``default_key_filter`` none or
  two_stage. Attacks: ``needs`` a subset of probs/labels/weights, ``label_modes`` soft/hard and
  only with a ``labels`` config field, ``cacheable`` and ``knows_watermark`` booleans.

End-to-end checks read the real pipeline: :func:`wmbench.runner.run` with executor ``serial``,
profile ``smoke`` and the ``synthetic`` data set made small by :data:`TINY_SYNTHETIC`, run once
per plugin and options (every check of the plugin reads that run). Runs go to a fresh folder per
process (a temporary one removed at exit, or one inside ``workdir``) whose artifact store all
plugins share: the benign model, and the BadNets victim the attacks are checked against, are
trained once per process. Cost with one torch thread on a shared 2-core CPU: the first
plugin ~5 s more (benign model); a method ~3-13 s (its victim; DeepTracer's key filter is
the slowest); an attack ~2-14 s for all its label modes (DFME the slowest).

Methods (one cell: the method × ``none``):

- ``check_embeds_and_verifies``: its own verification detects its victim, with WSR >=
  ``min_wsr`` (0.8) and ``p_value_chance`` <= ``max_p_value`` (1e-6).
- ``check_not_detected_on_clean``: it does not detect the benign model (same data, schedule
  and seed, no watermark): it accuses no innocent model.
- ``check_keeps_accuracy``: victim test accuracy >= benign accuracy - ``max_acc_drop`` (0.1).

Attacks (``method`` (BadNets) × the attack, one cell per label mode; the attack's ``run`` is
observed while the pipeline calls it):

- ``check_returns_working_model``: the returned model's test accuracy >= ``min_acc`` (default
  chance + 0.2, i.e. 0.3 on the 10-class synthetic set).
- ``check_changes_the_model``: the returned model differs from its input: fidelity to the
  victim < 1 or a different WSR.
- ``check_leaves_input_unchanged``: no parameter or buffer of the model ``run`` was given (or
  that its Blackbox wraps) changed.
- ``check_counts_queries``: ``AttackOutcome.queries`` is an int >= 0, the record holds that
  number and, through a Blackbox, it equals the images the Blackbox answered.
- ``check_stealing_gets_only_a_blackbox``: an attack whose ``needs`` lack ``weights`` receives
  a :class:`~wmbench.blackbox.Blackbox` (label-only when it needs only labels) and works
  with it; an attack whose category says "stealing" does not need weights. (White-box
  attacks pass it trivially.)

Options, keywords of every check (:data:`DEFAULTS`): ``dataset`` ("synthetic"), ``profile``
("smoke"), ``overrides`` (``--set`` items, applied after :data:`TINY_SYNTHETIC`), ``seed`` (0),
``device`` ("auto"), ``method`` ("badnets": the victim of attack checks), ``min_wsr``,
``max_p_value``, ``max_acc_drop``, ``min_acc``, ``workdir`` (None: a temporary folder).
"""
from __future__ import annotations

import functools
from typing import Any, Iterable, Mapping, Optional, Tuple

from wmbench.testing.checks import (
    ATTACK_CHECKS, METHOD_CHECKS, Check, check_changes_the_model, check_class_attributes,
    check_config_defaults_validate, check_config_is_frozen_dataclass, check_counts_queries,
    check_embeds_and_verifies, check_keeps_accuracy, check_leaves_input_unchanged, check_not_detected_on_clean,
    check_profiles_resolve, check_returns_working_model, check_stealing_gets_only_a_blackbox,
)
from wmbench.testing.pipeline import DEFAULTS, TINY_SYNTHETIC, options, resolve_plugin

__all__ = [
    "check_method", "check_attack", "checks_for", "parametrize_with_checks", "resolve_plugin",
    "METHOD_CHECKS", "ATTACK_CHECKS", "DEFAULTS", "TINY_SYNTHETIC",
    "check_config_is_frozen_dataclass", "check_config_defaults_validate", "check_profiles_resolve",
    "check_class_attributes", "check_embeds_and_verifies", "check_not_detected_on_clean", "check_keeps_accuracy",
    "check_returns_working_model", "check_changes_the_model", "check_leaves_input_unchanged",
    "check_counts_queries", "check_stealing_gets_only_a_blackbox",
]


def checks_for(plugin: Any) -> Tuple[Check, ...]:
    """The checks of a plugin's kind (:data:`METHOD_CHECKS` or :data:`ATTACK_CHECKS`), instant ones first."""
    return METHOD_CHECKS if resolve_plugin(plugin)[0] == "method" else ATTACK_CHECKS


def _check_all(plugin: Any, kind: str, given: Mapping[str, Any]) -> None:
    found, name, cls = resolve_plugin(plugin)
    if found != kind:
        raise TypeError(f"{name!r} is {'an attack' if found == 'attack' else 'a method'}; check it with check_{found}()")
    options(given)
    checks = checks_for(cls)
    failures = []
    for check in checks:
        try:
            check(cls, **given)
        except AssertionError as exc:
            failures.append(str(exc))
    if failures:
        raise AssertionError(f"{kind} {name!r} fails {len(failures)} of {len(checks)} checks:\n- "
                             + "\n- ".join(failures))


def check_method(plugin: Any, **options: Any) -> None:
    """Run every method check on ``plugin`` (a class or a name); one AssertionError lists all failures."""
    _check_all(plugin, "method", options)


def check_attack(plugin: Any, **options: Any) -> None:
    """Run every attack check on ``plugin`` (a class or a name); one AssertionError lists all failures."""
    _check_all(plugin, "attack", options)


def parametrize_with_checks(plugins: Iterable[Any], *, expected_failures: Optional[Mapping[str, str]] = None,
                            **options_: Any) -> Any:
    """``pytest.mark.parametrize("plugin, check", ...)`` over every check of every plugin, with ids
    ``<name>-<check name>``; the test body is ``check(plugin)``. ``options_`` go to every check.
    ``expected_failures`` maps a check name, or ``<name>-<check name>``, to the reason it is
    known to fail: that test is a strict xfail (it fails the run once the check passes)."""
    import pytest  # a test-time dependency only

    options(options_)  # unknown options fail at collection, not in every test
    expected, params = dict(expected_failures or {}), []
    for plugin in plugins:
        _, name, cls = resolve_plugin(plugin)
        for check in checks_for(cls):
            test_id = f"{name}-{check.__name__}"
            reason = expected.get(test_id, expected.get(check.__name__))
            marks = [pytest.mark.xfail(strict=True, raises=AssertionError, reason=reason)] if reason else []
            params.append(pytest.param(cls, functools.partial(check, **options_), id=test_id, marks=marks))
    return pytest.mark.parametrize("plugin, check", params)
