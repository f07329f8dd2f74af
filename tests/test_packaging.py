"""The built-in plugins install under the wmbench namespace, and pyproject lists every package."""
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_package_list_matches_folders():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    setup = pyproject["tool"]["setuptools"]
    listed = set(setup["packages"])
    mapping = setup["package-dir"]
    on_disk = set()
    for package, folder in mapping.items():
        base = ROOT / folder
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base)
            on_disk.add(".".join([package, *rel.parts]) if rel.parts else package)
    assert on_disk == listed


def test_builtins_import_under_namespace():
    import wmbench.attacks.knockoff
    import wmbench.methods.badnets

    assert wmbench.methods.badnets.BadNets.name == "badnets"
    assert wmbench.attacks.knockoff.Knockoff.name == "knockoff"
