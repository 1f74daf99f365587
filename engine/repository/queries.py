"""Read functions for status, logs and listings. Each runs on a read-only connection."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs

from wfe.engine.errors import UnknownJob
from wfe.engine.repository.jobs import JOB_COLUMNS, JobState, job_from_row, job_view
from wfe.engine.repository.rowtypes import Conn, JsonObject, Row

if TYPE_CHECKING:
    from wfe.engine.dispatch.controller import AgentController

_ATTEMPT_KEYS = (
    "attempt", "state", "agent", "exit_code", "signal", "reason", "detail",
    "dispatched_at", "started_at", "ended_at", "duration", "chunks", "ran_with",
)  # fmt: skip


def _job_dict(row: Row) -> JsonObject:
    return job_view(job_from_row(row), "priority", "requirements", "params", "result")


def job_detail(job_id: str) -> Callable[[Conn], JsonObject]:
    """One job with its attempts and direct children. Raises ``UnknownJob``."""

    def fn(conn: Conn) -> JsonObject:
        row = conn.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise UnknownJob(f"no job {job_id}")
        detail = _job_dict(row)
        detail["attempt_list"] = [
            {**dict(zip(_ATTEMPT_KEYS, r, strict=True)), "ran_with": json.loads(r[-1] or "null")}
            for r in conn.execute(
                f"SELECT {', '.join(_ATTEMPT_KEYS)} FROM attempts WHERE job_id = ? ORDER BY attempt",
                (job_id,),
            )
        ]  # ran_with: what on_retry rules may change, e.g. {"memory": ..., "inputs": 4}
        detail["children"] = [
            {"id": r[0], "kind": r[1], "name": r[2], "state": r[3]}
            for r in conn.execute(
                "SELECT id, kind, name, state FROM jobs WHERE parent_id = ? ORDER BY call_seq",
                (job_id,),
            )
        ]
        counts = conn.execute(
            "SELECT state, COUNT(*) FROM jobs WHERE root_id = ? AND id != ? GROUP BY state",
            (job_id, job_id),
        ).fetchall()
        detail["descendants"] = dict(counts)
        return detail

    return fn


def job_list(
    *, limit: int, state: JobState | None, root_only: bool
) -> Callable[[Conn], list[JsonObject]]:
    """Jobs newest first, in full (``_job_dict``): at most ``limit``, in ``state`` if given."""
    from wfe.engine.repository.listing import find_jobs

    states = (state,) if state is not None else ()
    return find_jobs(limit=limit, states=states, root_only=root_only, shape=_job_dict)


def job_output(job_id: str, attempt: int | None) -> Callable[[Conn], bytes]:
    """The full stored output of an attempt (the last one by default)."""

    def fn(conn: Conn) -> bytes:
        n = _attempt_of(conn, job_id, attempt)
        if n is None:
            return b""
        chunks = conn.execute(
            "SELECT data FROM output WHERE job_id = ? AND attempt = ? ORDER BY seq", (job_id, n)
        ).fetchall()
        return b"".join(c[0] for c in chunks)

    return fn


@attrs.frozen
class OutputPage:
    """Bytes ``[offset, offset + len(data))`` of an attempt's stored output of ``size`` bytes."""

    data: bytes
    offset: int
    size: int


def output_page(
    job_id: str, attempt: int | None, offset: int, limit: int
) -> Callable[[Conn], OutputPage]:
    """At most ``limit`` bytes of an attempt's output from ``offset``, reading only the chunks
    they are in, and cut before a UTF-8 character that would not end in the page (unless the
    page could hold no whole character)."""

    def fn(conn: Conn) -> OutputPage:
        n = _attempt_of(conn, job_id, attempt)
        if n is None:
            return OutputPage(data=b"", offset=offset, size=0)
        sizes = conn.execute(
            "SELECT seq, length(data) FROM output WHERE job_id = ? AND attempt = ? ORDER BY seq",
            (job_id, n),
        ).fetchall()
        size = sum(length for _, length in sizes)
        start = min(offset, size)
        end = min(start + limit, size)
        wanted, at = [], 0
        for seq, length in sizes:
            if at < end and at + length > start:
                wanted.append((seq, at))
            at += length
        parts = []
        for seq, chunk_at in wanted:
            (data,) = conn.execute(
                "SELECT data FROM output WHERE job_id = ? AND attempt = ? AND seq = ?",
                (job_id, n, seq),
            ).fetchone()
            parts.append(data[max(start - chunk_at, 0) : end - chunk_at])
        data = b"".join(parts)
        if end < size:
            data = _whole_characters(data)
        return OutputPage(data=data, offset=start, size=size)

    return fn


def _whole_characters(data: bytes) -> bytes:
    """``data`` without a trailing incomplete UTF-8 sequence (at most 3 bytes go)."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte < 0x80:  # ASCII: nothing is cut
            return data
        if byte >= 0xC0:  # a lead byte: keep its sequence only if it is whole
            need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return data if back >= need else (data[:-back] or data)
    return data  # not UTF-8 there: cut where asked


def _attempt_of(conn: Conn, job_id: str, attempt: int | None) -> int | None:
    """``attempt``, or the job's last; None when it has none. Raises ``UnknownJob``."""
    if attempt is not None:
        return attempt
    row = conn.execute("SELECT MAX(attempt) FROM attempts WHERE job_id = ?", (job_id,)).fetchone()
    if row[0] is None:
        if conn.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() is None:
            raise UnknownJob(f"no job {job_id}")
        return None
    return int(row[0])


def tree_summary(root_id: str) -> Callable[[Conn], list[JsonObject]]:
    """Every RScript job under ``root_id`` with its last attempt: the demo's summary table."""

    def fn(conn: Conn) -> list[JsonObject]:
        rows = conn.execute(
            "SELECT j.id, j.name, j.state, a.attempt, a.agent, a.exit_code, a.duration, j.parent_id"
            " FROM jobs j LEFT JOIN attempts a ON a.job_id = j.id AND a.attempt = j.attempts"
            " WHERE j.root_id = ? AND j.kind = 'rscript' ORDER BY j.id",
            (root_id,),
        ).fetchall()
        keys = ("id", "name", "state", "attempt", "agent", "exit_code", "duration", "parent")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    return fn


def agent_table(controller: AgentController) -> list[JsonObject]:
    """The live agent registry as plain data."""
    return [
        {
            "name": a.name,
            "transport": a.transport,
            "state": "lost" if a.lost else ("connected" if a.link is not None else "disconnected"),
            "slots": a.capabilities.slots,
            "free_slots": a.free_slots,
            "running": [f"{j}#{n}" for j, n in a.attempts],
            "site": a.capabilities.site,
            "tags": list(a.capabilities.tags),
            "memory": a.capabilities.memory,
        }
        for a in sorted(controller.agents.values(), key=lambda a: a.name)
    ]


def events_for(subject: str, limit: int = 200) -> Callable[[Conn], list[JsonObject]]:
    def fn(conn: Conn) -> list[JsonObject]:
        rows = conn.execute(
            "SELECT id, at, kind, data FROM events WHERE subject = ? ORDER BY id LIMIT ?",
            (subject, limit),
        ).fetchall()
        return [{"id": r[0], "at": r[1], "kind": r[2], "data": json.loads(r[3])} for r in rows]

    return fn


def stored_chunks(
    job_id: str, attempt: int, first_seq: int, limit: int = 64
) -> Callable[[Conn], list[tuple[int, str, bytes]]]:
    """A read function: up to ``limit`` stored chunks ``(seq, channel, data)`` from ``first_seq``."""

    def fn(conn: Conn) -> list[tuple[int, str, bytes]]:
        rows = conn.execute(
            "SELECT seq, stream, data FROM output WHERE job_id = ? AND attempt = ? AND seq >= ?"
            " ORDER BY seq LIMIT ?",
            (job_id, attempt, first_seq, limit),
        ).fetchall()
        return [(int(seq), str(stream), bytes(data)) for seq, stream, data in rows]

    return fn
