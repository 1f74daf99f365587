"""How the dispatch package is put together: a pure policy and no import cycles."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import wfe.engine.dispatch

PACKAGE = "wfe.engine.dispatch"
ROOT = Path(wfe.engine.dispatch.__file__).parent


def test_the_policy_loads_no_trio_sqlite_or_io_library() -> None:
    """Importing the attempt-end policy in a fresh interpreter loads neither trio, nor
    sqlite3, nor outcome: its decisions cannot await, read a clock of trio's or the
    repository."""
    code = (
        "import sys, wfe.engine.dispatch.policy;"
        "print(','.join(m for m in ('trio', 'sqlite3', 'outcome') if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == ""


def _imports(path: Path) -> set[str]:
    """The modules of the dispatch package that ``path`` imports, at any level."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == PACKAGE:
                found |= {f"{PACKAGE}.{alias.name}" for alias in node.names}
            elif node.module.startswith(PACKAGE + "."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith(PACKAGE + ".")}
    return found


def test_the_dispatch_modules_import_each_other_without_a_cycle() -> None:
    """No module of the dispatch package imports, directly or not, one that imports it
    back (output_fill no longer imports the controller)."""
    graph = {
        f"{PACKAGE}.{path.stem}": _imports(path)
        for path in ROOT.glob("*.py")
        if path.stem != "__init__"
    }
    assert f"{PACKAGE}.controller" not in graph[f"{PACKAGE}.output_fill"]
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, f"import cycle: {' -> '.join((*path, module))}"
        if module in done:
            return
        for imported in graph.get(module, ()):
            visit(imported, (*path, module))
        done.add(module)

    for module in graph:
        visit(module, ())
