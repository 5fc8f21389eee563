"""The code's layout: layers that import only downwards, no import cycle, no module over 500
lines.

The import graph is read with ``ast`` from every module of the ``cartflow`` package, every import
counted wherever it stands (in a function, under ``TYPE_CHECKING``). An import names the module
it imports, not the packages above it: ``from cartflow.pipeline.outcomes.common import X`` is an
edge to ``cartflow.pipeline.outcomes.common`` only.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO / "src"
MAX_LINES = 500
LAYERS = ("io", "gating", "panels", "pipeline", "store", "report", "run", "simulate", "cli")
"""The package's folders from the bottom up: a module imports only from its own layer or the
ones below it (``cartflow/__init__.py``, the version, is below them all)."""


def project_modules() -> dict[str, Path]:
    """Dotted module name → file, for every module of the project's packages."""
    modules = {}
    for path in sorted((SOURCE / "cartflow").rglob("*.py")):
        parts = path.relative_to(SOURCE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of ``name`` that is a project module (None: not the project's)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """The dotted names an import statement imports (relative ones made absolute)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        anchor = module.split(".") if is_package else module.split(".")[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join([*anchor, *([base] if base else [])])
    return [f"{base}.{alias.name}" for alias in node.names] + [base]


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module → the project modules it imports."""
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        edges = set()
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            names = _imported(node, module, is_package)
            if isinstance(node, ast.ImportFrom):  # `from a import b`: b if a module, else a
                submodules = [n for n in names[:-1] if n in modules]
                names = submodules if len(submodules) == len(names) - 1 else names
            edges |= {t for n in names if (t := _known(n, modules)) is not None}
        graph[module] = edges - {module}
    return graph


def cycle_groups(graph: dict[str, set[str]]) -> list[set[str]]:
    """The groups of modules that import each other, directly or through others."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (``[a, b, …, a]``) per group of modules that import each other."""
    return [_cycle_in(group, graph) for group in cycle_groups(graph)]


def _cycle_in(group: set[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest cycle through the group's first module (breadth first, within the group)."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(graph[node] & group):
                if target == start:
                    return [*paths[node], start]
                if target not in paths:
                    paths[target] = [*paths[node], target]
                    following.append(target)
        frontier = following
    raise AssertionError(f"no cycle through {start}")  # a strongly connected group has one


def test_the_cycle_finder_reports_a_cycle_and_ignores_a_chain():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_imports_inside_functions_and_relative_ones_are_edges(tmp_path):
    modules = {"p": tmp_path / "__init__.py", "p.a": tmp_path / "a.py", "p.b": tmp_path / "b.py"}
    modules["p"].write_text("from p.a import thing\n")
    modules["p.a"].write_text("def f():\n    from . import b\n    return b\n")
    modules["p.b"].write_text("import json\nfrom .a import f\n")
    graph = import_graph(modules)
    assert graph == {"p": {"p.a"}, "p.a": {"p.b"}, "p.b": {"p.a"}}
    assert find_cycles(graph) == [["p.a", "p.b", "p.a"]]


def test_the_project_has_no_import_cycle():
    modules = project_modules()
    assert "cartflow.run.batch" in modules and "cartflow.gating" in modules  # the walk found them
    graph = import_graph(modules)
    found = [
        f"{' → '.join(_cycle_in(group, graph))} (group: {', '.join(sorted(group))})"
        for group in cycle_groups(graph)
    ]
    assert not found, "import cycles:\n" + "\n".join(found)


def test_no_module_is_over_500_lines():
    """Every module of the package at most MAX_LINES lines."""
    lengths = {
        str(path.relative_to(REPO)): len(path.read_text(encoding="utf-8").splitlines())
        for path in project_modules().values()
    }
    over = sorted((n, name) for name, n in lengths.items() if n > MAX_LINES)
    assert not over, f"modules over {MAX_LINES} lines:\n" + "\n".join(
        f"{name}: {n}" for n, name in over
    )


def layer_of(module: str) -> int:
    """The rank of a module's layer (0: the package root)."""
    parts = module.split(".")
    return LAYERS.index(parts[1]) + 1 if len(parts) > 1 else 0


def test_every_module_lies_in_a_layer():
    modules = project_modules()
    strays = [m for m in modules if m != "cartflow" and m.split(".")[1] not in LAYERS]
    assert not strays, f"modules outside the layers {LAYERS}: {strays}"


def test_no_module_imports_from_a_layer_above_its_own():
    """The gating library imports nothing of the application; the stages no store, report,
    run or command line; the store no report or run; and so on up to the command line."""
    graph = import_graph(project_modules())
    name = {m: LAYERS[layer_of(m) - 1] if layer_of(m) else "root" for m in graph}
    upward = sorted(
        f"{module} ({name[module]}) imports {target} ({name[target]})"
        for module, targets in graph.items()
        for target in targets
        if layer_of(target) > layer_of(module)
    )
    assert not upward, "imports from a higher layer:\n" + "\n".join(upward)
