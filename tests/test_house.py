"""The shape of the code, so it stays easy to walk into: a few modules at the top of tuning/ and
packages named for what they hold, no module too long to read, no import cycle between modules,
and packages that import downwards along the data flow."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]
PACKAGE = PROJECT / "tuning"
MAX_TOP_MODULES = 10
MAX_LINES = 600
# The packages in data-flow order: a package may import those before it (and itself), never after,
# except the lazy, in-function imports listed in LATE_IMPORTS.
LAYERS = ["config", "paths", "data", "runs", "levers", "models", "infer", "evaluation", "train", "ship", "ui"]


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PROJECT).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def imports(path: Path, known: dict[str, Path], top_level_only: bool = False) -> set[str]:
    """The tuning modules `path` imports (at module level only, when top_level_only)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith("tuning"):
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                found.add(name if name in known else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("tuning")}
    return {name for name in found if name in known}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_tuning_has_few_top_level_modules_and_named_packages():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_MODULES, top
    packages = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists())
    assert set(packages) == set(LAYERS) - {"config", "paths", "models"}, packages
    for package in packages:
        doc = ast.get_docstring(ast.parse((PACKAGE / package / "__init__.py").read_text(encoding="utf-8")))
        assert doc and len(doc) > 80, f"tuning/{package}/__init__.py says what the package holds"


def test_no_module_is_too_long_to_read():
    long = {str(p.relative_to(PROJECT)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"split by concern: {long}"


def test_no_import_cycle_between_modules():
    known = modules()
    graph = {name: imports(path, known) - {name} for name, path in known.items()}
    assert cycles(graph) == []


def test_the_cycle_check_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


@pytest.mark.parametrize("name", sorted(n for n in modules() if layer(n) is not None))
def test_packages_import_downwards_along_the_data_flow(name):
    """What a module imports at load time comes from its own layer or one before it, so a package
    can be read (and tested) without the ones after it: the UI is the top, config the bottom."""
    known = modules()
    upward = sorted(m for m in imports(known[name], known, top_level_only=True)
                    if layer(m) is not None and layer(m) > layer(name))
    assert not upward, f"{name} imports {upward} at load time"


def test_no_private_imports_across_modules():
    """A function another module needs is public in the module that owns it."""
    known = modules()
    problems = []
    for name, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tuning") and node.module != name:
                problems += [f"{name}: from {node.module} import {a.name}" for a in node.names
                             if a.name.startswith("_") and a.name != "__version__"]
    assert not problems, problems
