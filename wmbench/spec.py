"""The grid specification: what a user asks ``wmbench run`` / ``wmbench tune`` / :func:`wmbench.run` for.

:class:`GridSpec` is the one options object of every entry point: the command line builds one
from its arguments, the Python API from keyword arguments (``GridSpec.of("badnets", "knockoff",
"fmnist", profile="quick")``) and Ray Tune from the same fields (its ``--grid`` axes are the
spec's ``sweeps``). Building a spec checks what can be checked without the registry (seeds,
retries, resources, the executor's name, chain syntax); names are resolved by planning
(:mod:`wmbench.plan`), after ``--plugin`` modules have registered theirs.

The parsing helpers of the grid's own syntax live here too: ``--seeds 0,1,2``, chains
``knockoff+ftal``, sweeps ``attacks.knockoff.budget=1000,5000`` and the default run folder.
"""
from __future__ import annotations

import dataclasses
import math
import operator
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from wmbench.config import PROFILE_NAMES, parse_set
from wmbench.errors import UserError

#: Executors a spec may name; ``auto`` is Ray when it is installed, else serial (with a warning).
EXECUTORS: Tuple[str, ...] = ("ray", "serial", "auto")
DEFAULT_EXECUTOR_ENV = "WMBENCH_EXECUTOR"
#: What the Ray backend does with CPUs no runnable task asked for (see ``GridSpec.spare_cpus``).
SPARE_CPUS: Tuple[str, ...] = ("share", "none")


def default_executor(cli: bool = False) -> str:
    """The executor used when a spec names none: ``$WMBENCH_EXECUTOR``, else ``"auto"`` (Ray) for
    the command line and ``"serial"`` for :func:`wmbench.run` (in process: predictable in notebooks)."""
    return os.environ.get(DEFAULT_EXECUTOR_ENV) or ("auto" if cli else "serial")


#: The command-line flag of each sequence field, for messages.
_FLAGS = {"overrides": "--set", "sweeps": "--sweep", "plugins": "--plugin"}
#: Devices a spec may name: ``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``.
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


def _strings(name: str, value: Any) -> Tuple[str, ...]:
    """A string or an iterable of strings as a tuple; anything else raises :class:`UserError`."""
    if isinstance(value, str):
        return (value,)
    try:
        items = tuple(value)
    except TypeError:
        items = (value,)
    if not all(isinstance(item, str) for item in items):
        raise UserError(f"{_FLAGS.get(name, '--' + name)} needs a string or a list of strings, got {value!r}")
    return items


def _names(name: str, value: str | Sequence[str]) -> Tuple[str, ...]:
    """``"a,b"`` or ``["a", "b"]`` -> ``("a", "b")`` (blank items dropped); a name given twice
    raises :class:`UserError` (it would be the same cells twice)."""
    items = value.split(",") if isinstance(value, str) else _strings(name, value)
    names = tuple(item.strip() for item in items if item.strip())
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UserError(f"--{name} repeats {', '.join(repeated)}; give each name once")
    return names


def parse_seeds(seeds: str | int | Sequence[int]) -> Tuple[int, ...]:
    """``"0,1,2"`` (or a sequence of ints) -> ``(0, 1, 2)``; malformed, negative or repeated
    seeds raise :class:`UserError` (a repeated seed would be the same cell twice)."""
    if isinstance(seeds, str):
        try:
            values = [int(s) for s in seeds.split(",") if s.strip()]
        except ValueError:
            raise UserError(f"malformed --seeds {seeds!r}; expected comma-separated integers such as 0,1,2") from None
    else:
        try:
            items = [seeds] if isinstance(seeds, int) else list(seeds)
            if any(isinstance(s, bool) for s in items):
                raise TypeError("a bool is not a seed")
            values = [operator.index(s) for s in items]
        except TypeError:
            raise UserError(f"--seeds needs whole numbers, got {seeds!r}") from None
    if not values or any(v < 0 for v in values):
        raise UserError(f"--seeds needs one or more non-negative integers, got {seeds!r}")
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise UserError(f"--seeds repeats {', '.join(map(str, repeated))}; give each seed once (e.g. 0,1,2)")
    return tuple(values)


def split_chain(attack: str) -> List[str]:
    """``"knockoff+ftal"`` -> ``["knockoff", "ftal"]``: the second attack runs on the first's output."""
    parts = [p.strip() for p in attack.split("+")]
    if any(not p for p in parts):
        raise UserError(f"malformed attack chain {attack!r}; expected names joined by '+', e.g. knockoff+ftal")
    if "none" in parts and len(parts) > 1:
        raise UserError(f"'none' cannot be part of an attack chain ({attack!r})")
    return parts


def _leaf(tree: Any, key: str) -> Any:
    for part in key.split("."):
        tree = tree[part]
    return tree


def expand_sweeps(sweeps: Sequence[str]) -> List[Dict[str, Any]]:
    """``["attacks.knockoff.budget=1000,5000", "train.epochs=[2,4]"]`` -> the grid of combinations,
    each a flat ``{key: value}``; ``[{}]`` when there is no sweep. Each combination becomes its own
    cells (resumable and schedulable like any other)."""
    axes: List[Tuple[str, List[Any]]] = []
    for item in sweeps:
        key, sep, raw = item.partition("=")
        if not sep or "." not in key:
            raise UserError(f"malformed --sweep {item!r}; expected section.key=v1,v2,... (e.g. attacks.knockoff.budget=1000,5000)")
        node = _leaf(parse_set([f"{key}={raw}"]), key)
        values = list(node) if isinstance(node, list) else [_leaf(parse_set([f"{key}={v}"]), key) for v in raw.split(",")]
        if not values:
            raise UserError(f"--sweep {item!r} has no values")
        repeated = [v for i, v in enumerate(values) if v in values[:i]]
        if repeated:
            raise UserError(f"--sweep {key} repeats {repeated[0]!r}; give each value once")
        if any(key == k for k, _ in axes):
            raise UserError(f"--sweep {key} given twice; give all its values in one --sweep {key}=v1,v2,...")
        axes.append((key, values))
    combos: List[Dict[str, Any]] = [{}]
    for key, values in axes:
        combos = [{**c, key: v} for c in combos for v in values]
    return combos


def default_run_dir(datasets: Sequence[str], profile: str, root: str = "results") -> Path:
    """``results/<datasets>-<profile>``: the same command always lands in the same folder."""
    name = "-".join(sorted(datasets)) + f"-{profile}"
    return Path(root) / re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _number(name: str, value: Any, *, minimum: float, strict: bool, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > minimum if strict else value >= minimum)
    if not ok:
        bound = f"{'above' if strict else 'at least'} {minimum:g}"
        raise UserError(f"--{name.replace('_', '-')} must be a finite number {bound}, got {value!r}")


@dataclass(frozen=True)
class GridSpec:
    """A grid of method × attack × dataset × seed cells and how to run it.

    Grid: ``methods``, ``attacks`` (names, ``"all"``, chains ``"a+b"``), ``datasets``, ``seeds``,
    ``profile`` (smoke / quick / paper), ``overrides`` (``--set`` items), ``sweeps`` (``--sweep``
    items; for ``tune``, its ``--grid`` axes), ``config`` (a YAML/TOML file). Data: ``data_root``,
    ``download``. Output: ``out`` (default ``results/<datasets>-<profile>``), ``cache_dir``
    (default ``<out>/artifacts``), ``overwrite``. Execution: ``executor`` (``""`` = the entry
    point's default, see :func:`default_executor`), ``ray_address``, ``cpus_per_cell``,
    ``gpus_per_cell`` (None: one where the cluster has GPUs), ``spare_cpus`` (``share``: a task
    that starts while fewer are runnable than CPU slots also gets the idle CPUs; ``none``: exactly
    ``cpus_per_cell``, for bit-identical CPU numbers whatever the grid's shape), ``retries``, ``device``,
    ``compile`` (train through ``torch.compile``: :class:`~wmbench.training.Engine`; not part of a
    cell's identity), ``cell_timeout`` (seconds a task may run — a cell, or a model it needs —
    before it is stopped and recorded failed with the reason; None: no limit),
    ``progress`` (None: when stderr is a terminal), ``plugins`` (modules imported first).

    Sequences may be given as comma-separated strings; they are stored as tuples, so two specs
    of the same grid compare equal.
    """

    methods: Tuple[str, ...] = ("badnets",)
    attacks: Tuple[str, ...] = ("none",)
    datasets: Tuple[str, ...] = ("fmnist",)
    seeds: Tuple[int, ...] = (0,)
    profile: str = "quick"
    overrides: Tuple[str, ...] = ()
    sweeps: Tuple[str, ...] = ()
    config: Optional[str] = None
    data_root: Optional[str] = None
    download: bool = False
    out: Optional[str] = None
    cache_dir: Optional[str] = None
    overwrite: bool = False
    plugins: Tuple[str, ...] = ()
    device: str = "auto"
    compile: bool = False
    progress: Optional[bool] = None
    executor: str = ""
    ray_address: Optional[str] = None
    cpus_per_cell: float = 1.0
    gpus_per_cell: Optional[float] = None
    retries: int = 1
    spare_cpus: str = "share"
    cell_timeout: Optional[float] = None

    def __post_init__(self) -> None:
        fix = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 - frozen
        for name in ("methods", "attacks", "datasets"):
            fix(name, _names(name, getattr(self, name)))
            if not getattr(self, name):
                raise UserError(f"--{name} needs at least one name")
        for name in ("overrides", "sweeps", "plugins"):
            fix(name, _strings(name, getattr(self, name)))
        for name in ("out", "cache_dir", "data_root", "config"):
            value = getattr(self, name)
            if value is not None:
                if not isinstance(value, (str, os.PathLike)):
                    raise UserError(f"--{name.replace('_', '-')} must be a path (str or os.PathLike), got {value!r}")
                fix(name, os.fspath(value))
        for name in ("download", "overwrite", "compile", "progress"):
            value = getattr(self, name)
            if not isinstance(value, bool) and not (name == "progress" and value is None):
                raise UserError(f"{name} must be True or False{' or None' if name == 'progress' else ''}, got {value!r}")
        if not isinstance(self.device, str) or not DEVICE_PATTERN.fullmatch(self.device):
            raise UserError(f"unknown --device {self.device!r}; accepted: auto, cpu, cuda or cuda:N")
        fix("seeds", parse_seeds(self.seeds))
        for chain in self.attacks:
            split_chain(chain)
        if self.profile not in PROFILE_NAMES:
            raise UserError(f"unknown profile {self.profile!r}; available: {', '.join(PROFILE_NAMES)}")
        if self.executor and self.executor not in EXECUTORS:
            raise UserError(f"unknown executor {self.executor!r}; accepted: {', '.join(EXECUTORS)}")
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise UserError(f"--retries must be a whole number, 0 or more, got {self.retries!r}")
        _number("cpus_per_cell", self.cpus_per_cell, minimum=0, strict=True)
        if self.spare_cpus not in SPARE_CPUS:
            raise UserError(f"--spare-cpus must be one of {', '.join(SPARE_CPUS)}, got {self.spare_cpus!r}")
        _number("gpus_per_cell", self.gpus_per_cell, minimum=0, strict=False, allow_none=True)
        _number("cell_timeout", self.cell_timeout, minimum=0, strict=True, allow_none=True)

    @classmethod
    def of(cls, methods: str | Sequence[str] = "badnets", attacks: str | Sequence[str] = "none",
           datasets: str | Sequence[str] = "fmnist", **fields: Any) -> "GridSpec":
        """A spec from the positional (methods, attacks, datasets) and keyword fields; unknown
        keywords raise :class:`UserError` naming the accepted ones."""
        _check_fields(fields)
        return cls(methods=methods, attacks=attacks, datasets=datasets, **fields)

    def replace(self, **changes: Any) -> "GridSpec":
        """A copy with ``changes``; unknown fields raise :class:`UserError` naming the accepted ones."""
        _check_fields(changes)
        return dataclasses.replace(self, **changes)

    def executor_or(self, default: str) -> str:
        """The executor this spec names, or ``default``."""
        return self.executor or default


def _check_fields(fields: Dict[str, Any]) -> None:
    """Unknown :class:`GridSpec` field names raise :class:`UserError` naming the accepted ones."""
    known = {f.name for f in dataclasses.fields(GridSpec)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise UserError(f"unknown grid option(s) {', '.join(unknown)}; accepted: {', '.join(sorted(known))}")
