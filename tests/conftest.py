import os
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
