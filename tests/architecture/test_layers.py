"""The tree's shape, read from the source (docs/architecture.md): imports go one way
between packages, no module-level import circle anywhere, no project import hidden inside
a function, and no production module past about 600 lines unless its docstring says why
it is one responsibility."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import ROOT

# what each package may import: those of a lower layer, and itself
LAYERS = {
    "protocol": 0,
    "net": 1,
    "sandbox": 2,
    "tasks": 3,
    "dealer": 4,
    "jobber": 4,
    "relay": 5,
    "allocator": 5,
}
# imports inside functions that are there for a reason other than dodging a circle
LAZY = {
    # a dealer imports tasks and never needs wasmtime: only Payload.run loads the sandbox
    ("tasks/_payload.py", "sandbox"),
}
MAX_LINES = 600
WHY = "Why one module"


def _modules() -> dict[str, Path]:
    found = {}
    for package in LAYERS:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(path: Path) -> list[tuple[str, bool, int]]:
    """(module imported, at module level?, line) for each project import in `path`."""
    tree = ast.parse(path.read_text(), str(path))
    top = set()
    for node in tree.body:
        top.add(id(node))
        if isinstance(node, ast.If | ast.Try):  # `if TYPE_CHECKING:`, try/except ImportError
            top.update(id(n) for n in ast.walk(node))
    out = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            base = node.module
            names = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names
            ]
        for name in names:
            if name.split(".")[0] in LAYERS:
                out.append((name, id(node) in top, node.lineno))
    return out


def _where(module: str, path: Path, line: int) -> str:
    return f"{path.relative_to(ROOT)}:{line} ({module})"


def test_packages_import_only_lower_layers() -> None:
    wrong = []
    for module, path in MODULES.items():
        own = module.split(".")[0]
        for name, _, line in _imports(path):
            other = name.split(".")[0]
            if other != own and LAYERS[other] >= LAYERS[own]:
                wrong.append(f"{_where(module, path, line)} imports {name}")
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_no_project_import_is_hidden_in_a_function() -> None:
    hidden = []
    for module, path in MODULES.items():
        rel = str(path.relative_to(ROOT))
        for name, at_top, line in _imports(path):
            if not at_top and (rel, name.split(".")[0]) not in LAZY:
                hidden.append(f"{_where(module, path, line)} imports {name} in a function")
    assert not hidden, "\n".join(hidden)


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def test_no_import_circle() -> None:
    graph = {
        m: {t for n, at_top, _ in _imports(p) if at_top and (t := _resolve(n)) and t != m}
        for m, p in MODULES.items()
    }
    # a package's __init__ is imported before any of its modules: not an edge of its own
    for m, targets in graph.items():
        targets.difference_update({m.rpartition(".")[0]} if "." in m else set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                on.discard(w)
                part.append(w)
                if w == v:
                    break
            if len(part) > 1:
                circles.append(sorted(part))

    for v in graph:
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"


def test_long_modules_say_why_they_are_one() -> None:
    long = []
    for path in MODULES.values():
        lines = path.read_text().count("\n")
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        if lines > MAX_LINES and WHY not in doc:
            long.append(f"{path.relative_to(ROOT)}: {lines} lines")
    assert not long, f"past {MAX_LINES} lines with no '{WHY}' in the docstring:\n" + "\n".join(long)


def test_the_checks_see_the_tree() -> None:
    # each rule above is only as good as what it reads: every package, and real edges
    assert {m.split(".")[0] for m in MODULES} == set(LAYERS)
    assert ("dealer._core", True) in {(n, t) for n, t, _ in _imports(MODULES["dealer._server"])}
