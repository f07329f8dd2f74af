"""wmbench: a benchmark harness for DNN black-box watermarks under stealing and removal attacks.

The package's public facade; every submodule imports what it needs from its siblings, never
from here (``ARCHITECTURE.md``)."""
from typing import Any

from wmbench.version import __version__

__all__ = ["__version__", "run", "GridSpec", "results", "report", "registry"]


def run(*args: Any, **kwargs: Any):
    """Run a grid; see :func:`wmbench.runner.run` (imported lazily to keep start-up fast)."""
    from wmbench.runner import run as _run

    return _run(*args, **kwargs)


def __getattr__(name: str) -> Any:
    import importlib

    if name == "GridSpec":
        return importlib.import_module("wmbench.spec").GridSpec
    if name in ("results", "report", "registry", "runner", "config", "spec", "tune"):
        return importlib.import_module(f"wmbench.{name}")
    raise AttributeError(f"module 'wmbench' has no attribute {name!r}")
