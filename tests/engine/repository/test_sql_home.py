"""All SQL lives in the repository package (engine/repository/), behind typed functions.

A scan of the source: no string literal outside ``engine/repository/`` holds an SQL statement
(``SELECT ... FROM``, ``INSERT INTO``, ``UPDATE ... SET``, ``DELETE FROM``; f-strings are read
with their placeholders). And the console reaches the running engine only through the
``Engine`` facade: no console module names ``engine.repo`` or ``engine.controller``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import wfe

ROOT = Path(wfe.__file__).resolve().parent.parent
PARTS = ("engine", "agents", "protocols", "links", "rscripts")
HOME = ROOT / "engine" / "repository"

# SQL keywords in capitals, as every statement in wfe is written (prose says "select from").
SQL = re.compile(
    r"\bSELECT\b[\s\S]*?\bFROM\b|\bINSERT\s+(?:OR\s+\w+\s+)?INTO\b|\bUPDATE\s+\w+\s+SET\b"
    r"|\bDELETE\s+FROM\b"
)


def literal_text(node: ast.AST) -> str | None:
    """The text of a string literal, an f-string with ``{}`` for its placeholders, or None."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(
            v.value if isinstance(v, ast.Constant) and isinstance(v.value, str) else "{}"
            for v in node.values
        )
    return None


def sql_literals(path: Path) -> list[tuple[int, str]]:
    """``(line, text)`` of every string literal of ``path`` that holds an SQL statement."""
    tree = ast.parse(path.read_text(), filename=str(path))
    inside_fstring = {
        id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values
    }
    found = []
    for node in ast.walk(tree):
        if id(node) in inside_fstring:
            continue  # read as part of its f-string
        text = literal_text(node)
        if text is not None and SQL.search(text):
            found.append((getattr(node, "lineno", 0), text.strip().splitlines()[0][:60]))
    return found


def sources() -> list[Path]:
    return sorted(p for part in PARTS for p in (ROOT / part).rglob("*.py"))


def test_the_scan_finds_sql_where_it_is() -> None:
    """The scan sees statements in plain strings and f-strings (the repository's own)."""
    found = sql_literals(HOME / "jobs.py")
    texts = " ".join(text for _, text in found)
    assert "INSERT INTO jobs" in texts and "SELECT {} FROM jobs" in texts
    assert not SQL.search("the interactive terminal console: select a job from the list")


def test_no_sql_outside_the_repository_package() -> None:
    """Every SQL statement of wfe is in engine/repository/."""
    outside = {
        f"{path.relative_to(ROOT)}:{line}: {text}"
        for path in sources()
        if not path.is_relative_to(HOME)
        for line, text in sql_literals(path)
    }
    assert not outside, "SQL outside engine/repository/:\n" + "\n".join(sorted(outside))


def test_console_operations_use_the_engine_facade_only() -> None:
    """No console module reaches past the Engine facade into its repository or controller."""
    reach = re.compile(r"\bengine\.(repo|controller)\b")
    offenders = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in sorted((ROOT / "engine" / "console").glob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), start=1)
        if reach.search(line) and not line.lstrip().startswith("#")
    ]
    assert not offenders, "console past the facade:\n" + "\n".join(offenders)
