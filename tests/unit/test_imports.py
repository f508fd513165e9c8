"""Imports run one way (docs/architecture.md): no circle between the project's files."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("dist_train", "planners")


def _module(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The project's modules ``path`` imports, lazily inside functions too (``from package
    import module`` counts as the module, not the package)."""
    own = _module(path)
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up level - 1
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*up, base] if base else up)
            named = {f"{base}.{a.name}" for a in node.names}
            found |= named if named & modules else {base}
    # a package's own modules run after it (Python imports the parent first): no arrow up
    return {m for m in found if m in modules and m != own and not own.startswith(f"{m}.")}


def import_graph() -> dict[str, set[str]]:
    files = [f for p in PACKAGES for f in (REPO / p).rglob("*.py")]
    modules = {_module(f) for f in files}
    return {_module(f): _imports(f, modules) for f in files}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of imports (its modules, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return [*path[path.index(n) :], n]
            if n not in state and (cycle := visit(n)):
                return cycle
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_circle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    # a package's __init__ importing its own module is an arrow like any other
    files = {_module(REPO / "dist_train" / "__init__.py"), _module(REPO / "dist_train" / "x.py")}
    assert files == {"dist_train", "dist_train.x"}


def test_no_circle_between_the_projects_files() -> None:
    graph = import_graph()
    assert "dist_train.driver" in graph["dist_train.cli"]  # lazy imports are read too
    assert "planners.types" in graph["dist_train.validate"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])
