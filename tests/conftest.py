import os
import time
from pathlib import Path

import pytest

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
PLUGIN_DIR = Path(__file__).parent / "plugins"

# The suite runs grids in process (monkeypatches must reach the cells); Ray is tested explicitly
# by tests/test_grid.py. `wmbench run` itself defaults to the ray executor.
os.environ.setdefault("WMBENCH_EXECUTOR", "serial")


def fmnist_available() -> bool:
    return FMNIST_DIR.is_dir() or bool(os.environ.get("WMBENCH_DATA"))


needs_fmnist = pytest.mark.skipif(not fmnist_available(), reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")

# Small Fashion-MNIST subsets keep end-to-end tests to seconds.
FMNIST_SMALL = [
    "--set", "data.owner_size=1500", "--set", "data.attacker_size=600", "--set", "data.test_size=600",
]


@pytest.fixture
def plugin_path(monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGIN_DIR))
    return PLUGIN_DIR


def wait_until_quiet(folder: Path, seconds: float = 3.0, limit: float = 90.0) -> None:
    """Wait until no file under ``folder`` appears or changes for ``seconds`` (at most ``limit``):
    a worker of a killed driver may still be finishing the cell in hand."""
    def state() -> list:
        files = []
        for path in folder.rglob("*") if folder.is_dir() else []:
            if not path.is_file():
                continue
            try:
                files.append((str(path), path.stat().st_mtime_ns))
            except FileNotFoundError:  # a temporary file renamed meanwhile: the next look sees the change
                pass
        return sorted(files)

    last, quiet_since, end = None, time.time(), time.time() + limit
    while time.time() - quiet_since < seconds and time.time() < end:
        now = state()
        if now != last:
            last, quiet_since = now, time.time()
        time.sleep(0.2)
