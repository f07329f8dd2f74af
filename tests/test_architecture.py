"""The house rules of ARCHITECTURE.md, checked on the source: no import loop anywhere in
``wmbench`` (core, built-in methods and attacks), imports inside the core that only run down the
data's path, no core module importing the package facade, and an ARCHITECTURE.md that names
every core module. Imports inside functions count like any other (they are still a dependency).
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Optional, Set

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: Source folders and the package each installs as (pyproject's package-dir).
SOURCES = {"wmbench": ROOT / "wmbench", "wmbench.methods": ROOT / "methods", "wmbench.attacks": ROOT / "attacks"}

#: The core's layers, lowest first: a module may import modules of its own or a lower layer only.
#: Foundation modules and plugins import each other freely (the loop test still applies).
LAYERS: List[List[str]] = [
    ["wmbench.version", "wmbench.errors", "wmbench.utils", "wmbench.augment"],
    ["wmbench.registry", "wmbench.config", "wmbench.cache", "wmbench.blackbox", "wmbench.verification",
     "wmbench.training", "wmbench.data*", "wmbench.models*", "wmbench.api", "wmbench.methods*", "wmbench.attacks*"],
    ["wmbench.cell"],
    ["wmbench.spec", "wmbench.records"],
    ["wmbench.plan"],
    ["wmbench.artifacts"],
    ["wmbench.evaluate"],
    ["wmbench.tasks"],
    ["wmbench.progress"],
    ["wmbench.executor"],
    ["wmbench.results"],
    ["wmbench.runner"],
    ["wmbench.tune", "wmbench.calibrate", "wmbench.testing*", "wmbench.tracking"],
    ["wmbench.report*", "wmbench.audit"],
    ["wmbench.cli"],
    ["wmbench"],
]


def _modules() -> Dict[str, Path]:
    out: Dict[str, Path] = {}
    for package, folder in SOURCES.items():
        for path in sorted(folder.rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package, *parts])] = path
    return out


MODULES = _modules()


def _target(name: str) -> Optional[str]:
    """The module ``name`` refers to (itself, or the closest package that exists)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _package_of(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def imports_of(module: str) -> Set[str]:
    """The wmbench modules ``module`` imports (``from pkg import sub`` counts as ``pkg.sub``)."""
    path = MODULES[module]
    found: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                package = _package_of(module, path)
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}" if base else package
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        for name in names:
            target = _target(name) if name.startswith("wmbench") else None
            if target and target != module:
                found.add(target)
    return found


GRAPH = {module: imports_of(module) for module in MODULES}


def find_cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Every strongly connected component with more than one module (Tarjan's algorithm)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    cycles: List[List[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def layer_of(module: str) -> int:
    for rank, layer in enumerate(LAYERS):
        for pattern in layer:
            if module == pattern or (pattern.endswith("*") and (module == pattern[:-1] or module.startswith(pattern[:-1] + "."))):
                return rank
    raise KeyError(module)


def test_the_checker_sees_imports_and_finds_loops():
    assert "wmbench.plan" in GRAPH["wmbench.runner"]  # module-level import
    assert "wmbench.methods.keyfilter" in GRAPH["wmbench.artifacts"]  # import inside a function
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_loop_in_wmbench():
    cycles = find_cycles(GRAPH)
    assert not cycles, "import loops (each line: modules that import each other in a loop):\n" + "\n".join(
        " ↔ ".join(c) for c in cycles)


def test_every_module_has_a_layer():
    missing = [m for m in MODULES if m.startswith("wmbench") and _layer_or_none(m) is None]
    assert not missing, f"add these modules to LAYERS (and ARCHITECTURE.md): {missing}"


def _layer_or_none(module: str) -> Optional[int]:
    try:
        return layer_of(module)
    except KeyError:
        return None


def test_imports_only_run_down_the_layers():
    upward = [f"{a} (layer {layer_of(a)}) imports {b} (layer {layer_of(b)})"
              for a, targets in GRAPH.items() for b in sorted(targets) if layer_of(b) > layer_of(a)]
    assert not upward, "imports against the data's path:\n" + "\n".join(upward)


def test_no_module_imports_the_package_facade():
    offenders = [m for m, targets in GRAPH.items() if "wmbench" in targets and m != "wmbench"]
    assert not offenders, f"import from wmbench.version (or the module itself), not the package: {offenders}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("wmbench.") and
                                          not m.startswith(("wmbench.methods", "wmbench.attacks"))))
def test_architecture_md_names_every_core_module(module):
    text = (ROOT / "ARCHITECTURE.md").read_text()
    short = module.split(".", 1)[1].replace(".", "/")
    assert f"`{short}" in text, f"ARCHITECTURE.md does not mention `{short}`"


def test_long_core_modules_say_why():
    """No core module above ~400 lines without a reason in its docstring ("Why one module")."""
    long = []
    for module, path in MODULES.items():
        if module.startswith(("wmbench.methods", "wmbench.attacks")):
            continue
        lines = len(path.read_text().splitlines())
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        if lines > 420 and "Why one module" not in doc:
            long.append(f"{module}: {lines} lines")
    assert not long, "split these modules or give the reason in their docstring ('Why one module: ...'): " + str(long)
