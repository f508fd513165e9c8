"""Imports run one way (docs/architecture.md): no circle between the project's files."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("dist_train", "planners")


def _module(path: Path, root: Path = REPO) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str], root: Path = REPO) -> set[str]:
    """The project's modules that importing ``path`` runs, lazy imports inside functions too
    (the rule is one way, wherever the import stands), not those under ``if TYPE_CHECKING``.

    As Python runs them: ``from package import module`` runs the module (and the package);
    ``from package import name`` needs the package's ``name``, its own package's too; an
    import of ``a.b.c`` runs ``a`` and ``a.b`` first, except the packages ``path`` lies in,
    which run before it."""
    own = _module(path, root)
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    ancestors = {".".join(own.split(".")[:i]) for i in range(1, own.count(".") + 1)}
    found: set[str] = set()
    for node in _runtime_imports(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = {a.name for a in node.names}
        else:
            base = node.module or ""
            if node.level:  # relative: from the package, up level - 1
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*up, base] if base else up)
            targets = set()
            for a in node.names:
                sub = f"{base}.{a.name}"
                submodule = sub in modules or _is_submodule(root, base, a.name)
                targets.add(sub if submodule else base)
        for target in targets:
            found.add(target)
            parts = target.split(".")
            found |= {".".join(parts[:i]) for i in range(1, len(parts))} - ancestors
    return {m for m in found if m in modules and m != own}


def _is_submodule(root: Path, package: str, name: str) -> bool:
    """Whether ``package.name`` is a module (a compiled extension too), not an attribute."""
    folder = root.joinpath(*package.split("."))
    return (folder / name).is_dir() or any(folder.glob(f"{name}.*"))


def _runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """The imports of ``tree`` outside ``if TYPE_CHECKING:`` blocks."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph(root: Path = REPO, packages: tuple[str, ...] = PACKAGES) -> dict[str, set[str]]:
    files = [f for p in packages for f in (root / p).rglob("*.py")]
    modules = {_module(f, root) for f in files}
    return {_module(f, root): _imports(f, modules, root) for f in files}


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


def _package(root: Path, files: dict[str, str]) -> dict[str, set[str]]:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return import_graph(root, ("pkg",))


def test_the_graph_has_the_arrows_python_runs(tmp_path: Path) -> None:
    """Circles that fail at import ("partially initialized module") are found; imports that
    run fine are not circles."""
    init = "from pkg.models.dlrm import DLRM\nMODELS = [DLRM]\n"
    # a module that needs a name of its own package, whose __init__ imports it: a circle
    cycle = _package(tmp_path / "a", {"pkg/models/__init__.py": init, "pkg/__init__.py": "",
        "pkg/models/dlrm.py": "from pkg.models import MODELS\nDLRM = 1\n"})  # fmt: skip
    assert find_cycle(cycle) == ["pkg.models", "pkg.models.dlrm", "pkg.models"]
    # importing a.b.c runs a.b's __init__, which may import the importer back
    parents = _package(tmp_path / "b", {"pkg/__init__.py": "", "pkg/models/base.py": "",
        "pkg/config.py": "import pkg.models.base\n",
        "pkg/models/__init__.py": "from pkg.config import x\n"})  # fmt: skip
    assert find_cycle(parents) == ["pkg.config", "pkg.models", "pkg.config"]
    # a submodule (a compiled one too) from its own package, and imports for type checkers
    fine = _package(tmp_path / "c", {"pkg/__init__.py": "", "pkg/models/_ext.c": "",
        "pkg/models/__init__.py": "from pkg.models.dot import f\n",
        "pkg/models/dot.py": "from pkg.models import _ext\nfrom . import util\n",
        "pkg/models/util.py": "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from pkg.models.dot import f\n"})  # fmt: skip
    assert find_cycle(fine) is None
    assert fine["pkg.models.dot"] == {"pkg.models.util"}


def test_no_circle_between_the_projects_files() -> None:
    graph = import_graph()
    assert "dist_train.driver" in graph["dist_train.cli.commands"]  # lazy imports are read too
    assert "planners.types" in graph["dist_train.validate"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])
