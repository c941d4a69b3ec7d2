"""The package's import graph has no cycles, and no import inside a function hides one.

The graph is read statically (``ast``) from every module of ``structured_hf``, with every import statement wherever
it sits: at module level, inside functions, under ``if TYPE_CHECKING``. An import of ``a.b.c`` also imports the
packages ``a.b`` and ``a`` (their ``__init__`` runs first) unless the importing module is inside them already, so
those edges are in the graph too: that is how ``models -> interventions.suppression`` was a cycle although
``suppression.py`` itself never imported a model (``interventions/__init__`` imports ``surgery``, which does).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "structured_hf"
ROOT = PACKAGE.name


def _modules() -> dict[str, tuple[Path, bool]]:
    """``{dotted module name: (file, is a package __init__)}`` for every module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return out


MODULES = _modules()


def _targets(module: str, is_package: bool, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The package modules an import statement names (a submodule when ``from X import sub`` names one)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        if node.level:
            package = (module if is_package else module.rpartition(".")[0]).split(".")
            base = ".".join(package[: len(package) - node.level + 1])
            source = f"{base}.{node.module}" if node.module else base
        else:
            source = node.module or ""
        names = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in MODULES else source for alias in node.names]
    out = []
    for name in names:
        while name not in MODULES and "." in name:  # `import a.b.attr` style: the longest module prefix
            name = name.rpartition(".")[0]
        if name in MODULES:
            out.append(name)
    return out


def _ancestors(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def import_graph() -> dict[str, dict[str, int]]:
    """``{module: {imported module: line of the first import}}``, package ``__init__`` edges included."""
    graph: dict[str, dict[str, int]] = {}
    for module, (path, is_package) in MODULES.items():
        own = set(_ancestors(module))
        edges: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _targets(module, is_package, node):
                    for name in _ancestors(target):
                        if name in MODULES and name not in own:
                            edges.setdefault(name, node.lineno)
        graph[module] = edges
    return graph


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One cycle ``[a, b, ..., a]`` of the graph, or ``None`` (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def _describe(cycle: list[str], graph: dict[str, dict[str, int]]) -> str:
    return "\n".join(
        f"  {a} -> {b} (line {graph[a][b]} of {MODULES[a][0].relative_to(PACKAGE.parent)})"
        for a, b in zip(cycle, cycle[1:])
    )


def test_the_graph_sees_the_package():
    graph = import_graph()
    assert len(graph) > 50 and f"{ROOT}.hub" in graph and f"{ROOT}.cards" in graph
    # Edges the rest of this file relies on: a relative import, a submodule named in `from . import`, a package
    # __init__ reached through one of its submodules.
    assert f"{ROOT}.cards" in graph[f"{ROOT}.hub"]
    assert f"{ROOT}.cards.color_autoencoder" in graph[f"{ROOT}.cards"]
    assert f"{ROOT}.training" not in graph[f"{ROOT}.training.sweep"]
    assert f"{ROOT}.interventions" in graph[f"{ROOT}.evaluation.language"]  # via interventions.surgery


def test_find_cycle_finds_one():
    """The checker is not blind: a planted cycle (and one through a package's __init__) is reported."""
    assert find_cycle({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": 1}, "b": {}, "c": {"a": 1}}) is None
    graph = import_graph()
    graph[f"{ROOT}.sites"] = {**graph[f"{ROOT}.sites"], f"{ROOT}.experiment": 1}
    assert find_cycle(graph) is not None


def test_no_import_cycle_inside_the_package():
    graph = import_graph()
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle:\n" + _describe(cycle, graph)


# Imports inside functions are for optional dependencies (sentence-transformers, vaderSentiment, a transformers
# pipeline) or heavy ones a code path may never need; an import of our own package inside a function only ever hid
# a cycle, and the graph has none to hide.
def _function_level_package_imports() -> list[str]:
    found = []
    for module, (path, is_package) in MODULES.items():
        for fn in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)) and _targets(module, is_package, node):
                    found.append(f"{module}:{node.lineno}")
    return found


def test_no_function_level_imports_of_the_package():
    left = _function_level_package_imports()
    assert not left, f"imports of structured_hf modules inside functions (move them to the top of the module): {left}"


def test_function_level_imports_are_seen():
    """The scan is not blind: a function-level import in a planted module is reported."""
    source = "def f():\n    from .sites import capture\n    import numpy\n"
    fn = ast.parse(source).body[0]
    imports = [n for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert [_targets(f"{ROOT}.planted", False, n) for n in imports] == [[f"{ROOT}.sites"], []]
