"""Plain-text rendering of tables and jobs for the terminal."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def seconds(value: float | None) -> str:
    """A duration for people: ``0.42 s``, ``3.1 s``, ``2 min 5 s``; ``-`` when unknown."""
    if value is None:
        return "-"
    if value < 10:
        return f"{value:.2f} s"
    if value < 120:
        return f"{value:.1f} s"
    return f"{int(value // 60)} min {int(value % 60)} s"


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Rows of dicts as aligned columns (keys of the first row are the headers)."""
    if not rows:
        return "(none)"
    headers = list(rows[0])
    cells = [[("-" if r.get(h) is None else str(r.get(h))) for h in headers] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    return "\n".join(lines)


def print_table(rows: Sequence[dict[str, Any]]) -> None:
    print(format_table(rows))


def print_job(job: dict[str, Any]) -> None:
    """A job's detail: header, error, attempts, children."""
    print(f"{job['id']}  {job['kind']} {job['name']}  {job['state']}")
    if job.get("error"):
        print(f"  error: {job['error']}")
    if job.get("result") is not None:
        print(f"  result: {job['result']}")
    if job.get("attempt_list"):
        print_table(
            [
                {
                    "attempt": a["attempt"],
                    "state": a["state"],
                    "agent": a["agent"],
                    "exit": a["exit_code"],
                    "duration": seconds(a["duration"]),
                    "detail": a["detail"],
                }
                for a in job["attempt_list"]
            ]
        )
    if job.get("descendants"):
        counts = ", ".join(f"{n} {state}" for state, n in sorted(job["descendants"].items()))
        print(f"  descendants: {counts}")
