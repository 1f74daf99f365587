"""Rendering for the terminal: tables, jobs, job trees and JSON.

Tables and trees are drawn with ``rich`` when standard output is a terminal and as plain
aligned text otherwise (pipes, files, tests), so ``wfe status | grep failed`` sees the same
columns a person does and no escape codes. Values are shown for people: a dict as
``key=value`` pairs, a list joined with commas, never a Python repr. ``print_json`` writes
times (keys ``at`` and ``*_at``) as ISO 8601 strings with their zone.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

from wfe.engine.job_states import JobState

#: Keys that hold wall-clock times (seconds since the epoch) in engine answers.
TIME_KEYS = frozenset({"at", "first_seen", "last_seen"})


def seconds(value: float | None) -> str:
    """A duration for people: ``0.42 s``, ``3.1 s``, ``2 min 5 s``; ``-`` when unknown."""
    if value is None:
        return "-"
    if value < 10:
        return f"{value:.2f} s"
    if value < 120:
        return f"{value:.1f} s"
    return f"{int(value // 60)} min {int(value % 60)} s"


def iso_time(value: float) -> str:
    """Seconds since the epoch as ISO 8601 in UTC with its zone, to the millisecond."""
    return datetime.fromtimestamp(value, tz=UTC).isoformat(timespec="milliseconds")


def _is_time_key(key: str) -> bool:
    return key in TIME_KEYS or key.endswith("_at")


def with_iso_times(data: Any) -> Any:
    """``data`` with every number under a time key (``at``, ``*_at``) as an ISO 8601 string."""
    if isinstance(data, dict):
        return {
            k: (
                iso_time(v)
                if _is_time_key(str(k)) and isinstance(v, int | float) and not isinstance(v, bool)
                else with_iso_times(v)
            )
            for k, v in data.items()
        }
    if isinstance(data, list):
        return [with_iso_times(v) for v in data]
    return data


def print_json(data: Any, *, file: TextIO | None = None) -> None:
    """``data`` as indented JSON with ISO 8601 times."""
    print(json.dumps(with_iso_times(data), indent=2), file=file or sys.stdout)


def show(value: Any) -> str:
    """A value as text for a table cell or a detail line: ``-`` for None, ``k=v`` pairs for
    a dict, comma-joined items for a list, times never here (callers format them)."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return " ".join(f"{k}={_inner(v)}" for k, v in value.items()) or "-"
    if isinstance(value, list | tuple):
        return ", ".join(_inner(v) for v in value) or "-"
    return str(value)


def _inner(value: Any) -> str:
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    if isinstance(value, str) and (not value or " " in value):
        return json.dumps(value)
    return show(value)


def local_time(value: float | None) -> str:
    """A wall-clock time for a table: local ``YYYY-MM-DD HH:MM:SS``; ``-`` when unknown."""
    if value is None:
        return "-"
    return datetime.fromtimestamp(value).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def is_terminal(stream: TextIO | None = None) -> bool:
    stream = stream or sys.stdout
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Rows of dicts as plain aligned columns (keys of the first row are the headers)."""
    if not rows:
        return "(none)"
    headers = list(rows[0])
    cells = [[show(r.get(h)) for h in headers] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    return "\n".join(lines)


#: Colours of states in tables: a job's (``JobState``), a request's, an agent's, an attempt's.
_STATE_STYLES = {
    JobState.SUCCEEDED: "green",
    "completed": "green",
    "connected": "green",
    JobState.FAILED: "bold red",
    "lost": "red",
    JobState.CANCELLED: "yellow",
    JobState.RUNNING: "cyan",
    JobState.QUEUED: "blue",
}


def _console() -> Any:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=False)


def print_table(rows: Sequence[dict[str, Any]], *, title: str | None = None) -> None:
    """Print rows as a table: ``rich`` on a terminal, plain columns otherwise."""
    if not is_terminal():
        if title:
            print(title)
        print(format_table(rows))
        return
    from rich.table import Table
    from rich.text import Text

    if not rows:
        _console().print(Text("(none)", style="dim"))
        return
    table = Table(title=title, header_style="bold", box=None, pad_edge=False)
    for header in rows[0]:
        table.add_column(header.upper(), overflow="fold")
    for row in rows:
        table.add_row(
            *(Text(show(row.get(h)), style=_STATE_STYLES.get(str(row.get(h)), "")) for h in rows[0])
        )
    _console().print(table)


def print_job(job: dict[str, Any]) -> None:
    """A job's detail: header, error, result, attempts, then its tree when given."""
    print(f"{job['id']}  {job['kind']} {job['name']}  {job['state']}")
    if job.get("error"):
        print(f"  error: {job['error']}")
    if job.get("result") is not None:
        print(f"  result: {show(job['result'])}")
    if job.get("attempt_list"):
        ran_with = any(a.get("ran_with") for a in job["attempt_list"])  # on_retry rules
        print_table(
            [
                {
                    "attempt": a["attempt"],
                    "state": a["state"],
                    "agent": a["agent"],
                    "exit": a["exit_code"],
                    "duration": seconds(a["duration"]),
                    **({"ran with": a.get("ran_with")} if ran_with else {}),
                    "detail": a["detail"],
                }
                for a in job["attempt_list"]
            ]
        )
    if job.get("tree") and job["tree"].get("children"):
        print_tree(job["tree"])
    elif job.get("descendants"):
        counts = ", ".join(f"{n} {state}" for state, n in sorted(job["descendants"].items()))
        print(f"  descendants: {counts}")


def _label(node: dict[str, Any]) -> str:
    parts = [node["id"], node["kind"], node["name"], node["state"]]
    if node.get("agent"):
        parts.append(f"on {node['agent']}")
    if node.get("exit_code") is not None:
        parts.append(f"exit {node['exit_code']}")
    if node.get("duration") is not None:
        parts.append(seconds(node["duration"]))
    if node.get("error"):
        parts.append(f"- {node['error'][:80]}")
    return "  ".join(parts)


def tree_lines(node: dict[str, Any], prefix: str = "") -> Iterator[str]:
    """A job tree (``listing.job_tree``) as indented plain text, one job a line."""
    children = node.get("children") or []
    for i, child in enumerate(children):
        last = i == len(children) - 1
        yield f"{prefix}{'`-- ' if last else '|-- '}{_label(child)}"
        yield from tree_lines(child, prefix + ("    " if last else "|   "))


def print_tree(root: dict[str, Any]) -> None:
    """A job and its descendants: a ``rich`` tree on a terminal, indented text otherwise."""
    more = "  (more jobs not shown)" if root.get("truncated") else ""
    if not is_terminal():
        print(_label(root) + more)
        for line in tree_lines(root):
            print(line)
        return
    from rich.text import Text
    from rich.tree import Tree

    def add(branch: Any, node: dict[str, Any]) -> None:
        for child in node.get("children") or []:
            add(branch.add(_styled(child)), child)

    def _styled(node: dict[str, Any]) -> Text:
        return Text(_label(node), style=_STATE_STYLES.get(node["state"], ""))

    top = Tree(Text(_label(root) + more, style="bold"))
    add(top, root)
    _console().print(top)
