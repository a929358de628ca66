"""The package's import structure: no circle among its modules, and the command line is a leaf nothing imports.

Every ``import`` statement counts, at module level and inside functions (a lazy import still ties two modules
together): the modules are parsed, not imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "mmmamba_bench"
ROOT = Path(__file__).resolve().parents[1]


def module_files(package_dir: Path) -> dict[str, Path]:
    """``{"pkg.sub.mod": path}`` for every ``.py`` file of the package (``__init__.py`` names the package)."""
    out = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports_of(name: str, path: Path, modules: set[str]) -> list[tuple[str, int]]:
    """The package modules that the file of module ``name`` imports anywhere in it: ``[(module, line)]``."""
    is_package = path.name == "__init__.py"
    here = name.split(".") if is_package else name.split(".")[:-1]  # the package relative imports start from
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = here[:len(here) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            # `from pkg import sub` imports the module pkg.sub when there is one, else a name of pkg
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        for target in targets:
            # `import pkg.sub.mod` binds the innermost module that exists in the package
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.append((target, node.lineno))
    return found


def import_graph(package_dir: Path) -> dict[str, dict[str, int]]:
    """``{module: {imported package module: first line}}``."""
    files = module_files(package_dir)
    graph: dict[str, dict[str, int]] = {}
    for name, path in files.items():
        edges: dict[str, int] = {}
        for target, line in imports_of(name, path, set(files)):
            edges.setdefault(target, line)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def describe(graph: dict[str, dict[str, int]], component: list[str]) -> str:
    ties = [f"{a} -> {b} (line {graph[a][b]})" for a in component for b in component if b in graph[a]]
    return "circle of " + ", ".join(component) + ": " + "; ".join(ties)


# ---- the checker itself can fail -----------------------------------------------------------------------------------

def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root / "pkg"


def test_checker_finds_module_level_and_function_level_circles(tmp_path):
    pkg = _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from pkg.b import f\n",
        "pkg/b.py": "def f():\n    from pkg import a\n",  # lazy, inside a function: still a circle
        "pkg/sub/__init__.py": "",
        "pkg/sub/c.py": "from ..d import g\nimport os\n",
        "pkg/d.py": "import pkg.sub.c\n",
        "pkg/e.py": "from pkg import a\n",  # imports into a circle, is not part of one
    })
    graph = import_graph(pkg)
    assert graph["pkg.sub.c"] == {"pkg.d": 1}  # relative import resolved; os is not a package module
    assert sorted(cycles(graph)) == [["pkg.a", "pkg.b"], ["pkg.d", "pkg.sub.c"]]


def test_checker_passes_a_tree_without_circles(tmp_path):
    pkg = _write(tmp_path, {"pkg/__init__.py": "", "pkg/a.py": "from . import b\n", "pkg/b.py": "import json\n"})
    assert cycles(import_graph(pkg)) == []


# ---- the package ---------------------------------------------------------------------------------------------------

def test_no_import_circle_in_the_package():
    graph = import_graph(ROOT / PACKAGE)
    assert len(graph) > 50  # the package was found and read
    found = cycles(graph)
    assert not found, "\n".join(describe(graph, c) for c in found)


# Entry points, not library modules: ``python -m mmmamba_bench`` runs the CLI (as the console script does).
ENTRY_POINTS = {f"{PACKAGE}.__main__"}


def test_nothing_imports_the_command_line():
    graph = import_graph(ROOT / PACKAGE)
    cli = f"{PACKAGE}.cli"
    assert cli in graph
    importers = sorted(f"{m} (line {edges[cli]})" for m, edges in graph.items()
                       if cli in edges and m not in ENTRY_POINTS)
    assert not importers, f"{cli} must stay a leaf; imported by {importers}"
