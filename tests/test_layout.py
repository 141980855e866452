"""The package's shape: no import circles (lazy imports count), weights below the registry,
no module importing another's private names, no sys.path edits.

These read the source with ``ast``; nothing is imported or run.
"""

import ast
from pathlib import Path

import pytest

from conftest import REPO

PACKAGES = ("zoo", "train")
SCRIPTS = ("eval", "tools", "tests")


def _modules(package: str) -> dict:
    """{dotted module name: path} for every module of a package in the repo."""
    root = REPO / package
    modules = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _runtime_nodes(tree: ast.AST):
    """Every node, function bodies included, but not ``if TYPE_CHECKING:`` blocks (they never run)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for other in node.orelse:
                yield other
                yield from _runtime_nodes(other)
        else:
            yield node
            yield from _runtime_nodes(node)


def _imports(module: str, path: Path):
    """(imported module, imported names) for every import that runs, function bodies included."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, ()
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            yield base, tuple(alias.name for alias in node.names)


def _import_graph(package: str) -> dict:
    """Which of the package's modules each module imports. Importing ``zoo.models._common``
    also runs ``zoo/models/__init__.py``, so it counts as importing ``zoo.models`` too; the
    importer's own packages are left out (``from . import x`` inside zoo/weights/ is not a
    circle through zoo)."""
    modules = _modules(package)
    graph = {m: set() for m in modules}
    for module, path in modules.items():
        for target, names in _imports(module, path):
            for candidate in [f"{target}.{n}" for n in names] + [target]:
                while candidate:
                    if candidate in modules and candidate != module \
                            and not module.startswith(candidate + "."):
                        graph[module].add(candidate)
                    candidate = candidate.rpartition(".")[0]
    return graph


def _circles(graph: dict) -> list:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
                circles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return circles


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_circles(package):
    assert _circles(_import_graph(package)) == []


def test_circles_are_found():
    # the check itself: the registry <-> weights circle this layout removed would be reported
    graph = {"zoo.registry": {"zoo.weights"}, "zoo.weights": {"zoo.registry"}, "zoo.data": set()}
    assert _circles(graph) == [["zoo.registry", "zoo.weights"]]


def test_weights_never_import_the_registry():
    graph = _import_graph("zoo")
    for module in graph:
        if module == "zoo.weights" or module.startswith("zoo.weights."):
            assert "zoo.registry" not in graph[module], module


def _python_files():
    for folder in PACKAGES + SCRIPTS:
        yield from (REPO / folder).rglob("*.py")
    yield REPO / "hubconf.py"


def test_no_module_imports_another_modules_private_names():
    # a package's own modules may share private names (zoo/models/resnet.py and
    # zoo/models/_common.py); nothing outside it reaches in (tests are left out: they may test
    # private helpers directly)
    found = []
    for path in _python_files():
        relative = path.relative_to(REPO)
        if relative.parts[0] == "tests":
            continue
        module = ".".join(relative.with_suffix("").parts)
        for target, names in _imports(module, path):
            if target.split(".")[0] not in PACKAGES:
                continue
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            private += [p for p in target.split(".") if p.startswith("_") and not p.startswith("__")]
            if private and not target.startswith(module.rpartition(".")[0] + "."):
                found.append(f"{relative}: from {target} import {', '.join(names)}")
    assert found == []


def test_no_sys_path_edits():
    edits = [f"{path.relative_to(REPO)}:{n}" for path in _python_files() if path.name != "test_layout.py"
             for n, line in enumerate(path.read_text().splitlines(), 1)
             if "sys.path.insert" in line or "sys.path.append" in line]
    assert edits == []
