"""Helpers for definition tests: write TOML files into a temporary directory."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from wfe.engine.definitions import DefinitionError, load_definition

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


def refused(write: Write, text: str) -> str:
    """Load ``text`` as main.toml; the one-line message it is refused with, after the file
    it names."""
    with pytest.raises(DefinitionError) as info:
        load_definition(write("main.toml", text))
    message = str(info.value)
    assert "\n" not in message, message
    return message.split(".toml: ", 1)[1]


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
