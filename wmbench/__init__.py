"""wmbench: a benchmark harness for DNN black-box watermarks under stealing and removal attacks."""
__version__ = "0.1.0"

from typing import Any

__all__ = ["__version__", "run", "results", "report", "registry"]


def run(*args: Any, **kwargs: Any):
    """Run a grid; see :func:`wmbench.runner.run` (imported lazily to keep start-up fast)."""
    from wmbench.runner import run as _run

    return _run(*args, **kwargs)


def __getattr__(name: str) -> Any:
    if name in ("results", "report", "registry", "runner", "config"):
        import importlib

        return importlib.import_module(f"wmbench.{name}")
    raise AttributeError(f"module 'wmbench' has no attribute {name!r}")
