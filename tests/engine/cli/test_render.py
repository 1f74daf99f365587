"""Terminal rendering: plain text off a terminal, rich on one, no Python reprs, ISO times."""

from __future__ import annotations

import io
import json
from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wfe.engine.cli import render
from wfe.engine.cli.render import (
    format_table,
    iso_time,
    print_table,
    show,
    tree_lines,
    with_iso_times,
)


def test_values_are_shown_without_python_reprs() -> None:
    """A dict result reads ``files=4 bytes=5120``, not ``{'files': 4}``; lists are joined."""
    assert (
        show({"files": 4, "host": "vm", "note": "two words"}) == 'files=4 host=vm note="two words"'
    )
    assert show(["a", 1, {"k": [1]}]) == 'a, 1, {"k":[1]}'
    assert show(None) == "-"
    assert show(True) == "yes"
    table = format_table([{"job": "j1", "result": {"files": 4}}])
    assert "{'" not in table and "files=4" in table


def test_json_times_are_iso_8601_with_a_zone() -> None:
    """Every ``at`` / ``*_at`` number becomes an ISO 8601 string with its zone, nested too;
    other numbers stay numbers."""
    data = {"created_at": 0.0, "duration": 1.5, "jobs": [{"at": 1_700_000_000.25, "n": 3}]}
    out = with_iso_times(data)
    assert out == {
        "created_at": "1970-01-01T00:00:00.000+00:00",
        "duration": 1.5,
        "jobs": [{"at": "2023-11-14T22:13:20.250+00:00", "n": 3}],
    }


@given(st.floats(min_value=0, max_value=4_000_000_000))
def test_iso_time_names_the_instant(value: float) -> None:
    """The ISO string parses back, with its zone, to the same instant cut to the millisecond."""
    parsed = datetime.fromisoformat(iso_time(value))
    assert parsed.tzinfo is not None
    assert -1e-6 <= value - parsed.timestamp() < 0.001 + 1e-6


def test_tables_are_plain_text_off_a_terminal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Piped output is aligned columns with upper-case headers and no escape codes."""
    print_table([{"job": "j000001", "state": "failed"}, {"job": "j2", "state": "succeeded"}])
    out = capsys.readouterr().out
    assert out.splitlines() == ["JOB      STATE", "j000001  failed", "j2       succeeded"]
    assert "\x1b" not in out


def test_tables_use_rich_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a terminal the table is drawn by rich (styled: failed in red)."""
    from rich.console import Console

    buffer = io.StringIO()
    monkeypatch.setattr(render, "is_terminal", lambda stream=None: True)
    monkeypatch.setattr(
        render, "_console", lambda: Console(file=buffer, force_terminal=True, width=80)
    )
    print_table([{"job": "j000001", "state": "failed"}])
    out = buffer.getvalue()
    assert "j000001" in out and "\x1b[1;31mfailed" in out


def test_a_tree_is_drawn_with_its_children_in_order() -> None:
    """``status ROOT`` off a terminal: one job a line, nested by parent, with agent and exit."""
    tree = {
        "id": "j1", "kind": "action", "name": "demo.survey", "state": "succeeded",
        "children": [
            {"id": "j2", "kind": "rscript", "name": "hostinfo", "state": "succeeded",
             "agent": "local-1", "exit_code": 0, "duration": 0.5, "children": []},
            {"id": "j3", "kind": "action", "name": "demo.inspect", "state": "failed",
             "error": "boom", "children": [
                 {"id": "j4", "kind": "rscript", "name": "checksum", "state": "failed",
                  "agent": "local-2", "exit_code": 2, "children": []}]},
        ],
    }  # fmt: skip
    assert list(tree_lines(tree)) == [
        "|-- j2  rscript  hostinfo  succeeded  on local-1  exit 0  0.50 s",
        "`-- j3  action  demo.inspect  failed  - boom",
        "    `-- j4  rscript  checksum  failed  on local-2  exit 2",
    ]
    json.dumps(tree)  # what --json prints is the same structure
