"""Helpers for definition tests: write TOML files into a temporary directory."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

#: A small valid definition; tests append to it or replace parts.
MINIMAL = """
[workflow]
name = "demo"
namespace = "test"

[[stages]]
name = "only"
rscript = "noop"
"""

Write = Callable[[str, str], Path]


@pytest.fixture
def write(tmp_path: Path) -> Write:
    """``write("name.toml", text)`` writes dedented text under tmp_path; returns the path."""

    def write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    return write


@pytest.fixture
def minimal() -> str:
    """The text of a small valid definition."""
    return MINIMAL
