"""Write and read operations on the ``attempts`` and ``output`` tables.

Each op emits the event for the change in the same transaction. The controller calls
these; nothing else writes attempts.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from wfe.engine.runtime.clock import wall_now
from wfe.engine.runtime.jobs import JobRow, NewJob, insert_job
from wfe.protocols.attempt import AttemptMachine, AttemptState
from wfe.protocols.messages import JobFinished, OutputChunk


def attempts_dispatched(machines: Sequence[AttemptMachine]) -> Callable[[Any], None]:
    """Record a round of dispatches (one transaction for the round)."""

    def op(tx: Any) -> None:
        now = wall_now()
        for m in machines:
            _dispatched(tx, m.job_id, m.attempt, m.state.value, m.agent, now)

    return op


def job_created_and_dispatched(new: NewJob, agent: str) -> Callable[[Any], tuple[JobRow, bool]]:
    """Record a new RScript job and its first attempt, dispatched to ``agent``, in one op.

    Returns ``(job, True)``; for a replayed call (the parent already made it) it returns
    ``(existing job, False)`` and records no attempt. The write-ahead rule holds: both are
    committed before the dispatch is sent.
    """

    def op(tx: Any) -> tuple[JobRow, bool]:
        job, created = insert_job(tx, new)
        if created:
            _dispatched(tx, job.id, 1, AttemptState.DISPATCHED.value, agent, wall_now())
        return job, created

    return op


def _dispatched(
    tx: Any, job_id: str, attempt: int, state: str, agent: str | None, now: float
) -> None:
    tx.execute(
        "INSERT INTO attempts (job_id, attempt, state, agent, dispatched_at) VALUES (?, ?, ?, ?, ?)",
        (job_id, attempt, state, agent, now),
    )
    tx.execute(
        "UPDATE jobs SET attempts = ?, state = 'running', started_at = COALESCE(started_at, ?)"
        " WHERE id = ?",
        (attempt, now, job_id),
    )
    tx.emit("attempt.state", job_id, {"attempt": attempt, "state": state, "agent": agent})


def attempt_started(m: AttemptMachine) -> Callable[[Any], None]:
    def op(tx: Any) -> None:
        tx.execute(
            "UPDATE attempts SET state = ?, started_at = ? WHERE job_id = ? AND attempt = ?",
            (m.state.value, wall_now(), m.job_id, m.attempt),
        )
        tx.emit(
            "attempt.state",
            m.job_id,
            {"attempt": m.attempt, "state": m.state.value, "agent": m.agent},
        )

    return op


def attempt_ended(
    m: AttemptMachine,
    finished: JobFinished | None,
    *,
    job_state: str | None,
    job_error: str | None = None,
) -> Callable[[Any], None]:
    """Record the end of an attempt and, when ``job_state`` is given, of its job."""

    def op(tx: Any) -> None:
        now = wall_now()
        result = finished.result if finished else None
        tx.execute(
            "UPDATE attempts SET state = ?, exit_code = ?, signal = ?, reason = ?, detail = ?,"
            " ended_at = ?, duration = ?, result = ?, chunks = ? WHERE job_id = ? AND attempt = ?",
            (
                m.state.value,
                m.exit_code,
                m.signal,
                finished.reason.value if finished else None,
                m.detail or (finished.detail if finished else None),
                now,
                finished.duration if finished else None,
                None if result is None else json.dumps(result),
                finished.chunks if finished else None,
                m.job_id,
                m.attempt,
            ),
        )
        data: dict[str, Any] = {"attempt": m.attempt, "state": m.state.value, "agent": m.agent}
        if m.exit_code is not None:
            data["exit_code"] = m.exit_code
        if m.detail:
            data["detail"] = m.detail
        tx.emit("attempt.state", m.job_id, data)
        if job_state is not None:
            tx.execute(
                "UPDATE jobs SET state = ?, ended_at = ?, result = ?, error = ? WHERE id = ?",
                (
                    job_state,
                    now,
                    None if result is None else json.dumps(result),
                    job_error,
                    m.job_id,
                ),
            )
            event: dict[str, Any] = {"state": job_state}
            if job_error:
                event["error"] = job_error
            tx.emit("job.state", m.job_id, event)

    return op


def late_result(
    finished: JobFinished, state: str, *, job_state: str | None
) -> Callable[[Any], None]:
    """Record the report of an attempt the engine had already ended (lost): the attempt's
    row gets what really happened, with an ``attempt.late_result`` event; with ``job_state``
    (a success that can still be the job's outcome) the job ends with it too."""

    def op(tx: Any) -> None:
        now = wall_now()
        result = None if finished.result is None else json.dumps(finished.result)
        tx.execute(
            "UPDATE attempts SET state = ?, exit_code = ?, signal = ?, reason = ?, detail = ?,"
            " duration = ?, result = ?, chunks = ? WHERE job_id = ? AND attempt = ?",
            (
                state,
                finished.exit_code,
                finished.signal,
                finished.reason.value,
                finished.detail or None,
                finished.duration,
                result,
                finished.chunks,
                finished.job_id,
                finished.attempt,
            ),
        )
        data: dict[str, Any] = {"attempt": finished.attempt, "state": state}
        if finished.exit_code is not None:
            data["exit_code"] = finished.exit_code
        tx.emit("attempt.late_result", finished.job_id, data)
        if job_state is not None:
            tx.execute(
                "UPDATE jobs SET state = ?, ended_at = ?, result = ?, error = NULL WHERE id = ?",
                (job_state, now, result, finished.job_id),
            )
            tx.emit("job.state", finished.job_id, {"state": job_state})

    return op


def job_ended_without_attempt(job_id: str, state: str, error: str) -> Callable[[Any], None]:
    """A queued job that never ran: cancelled, or given up waiting for an agent."""

    def op(tx: Any) -> None:
        tx.execute(
            "UPDATE jobs SET state = ?, ended_at = ?, error = ? WHERE id = ?",
            (state, wall_now(), error, job_id),
        )
        tx.emit("job.state", job_id, {"state": state, "error": error})

    return op


def job_requeued(job_id: str, attempt: int, delay: float) -> Callable[[Any], None]:
    def op(tx: Any) -> None:
        tx.execute("UPDATE jobs SET state = 'queued' WHERE id = ?", (job_id,))
        tx.emit(
            "job.state",
            job_id,
            {"state": "queued", "retry_after": delay, "next_attempt": attempt + 1},
        )

    return op


def output_stored(chunk: OutputChunk) -> Callable[[Any], None]:
    def op(tx: Any) -> None:
        tx.execute(
            "INSERT OR IGNORE INTO output (job_id, attempt, seq, stream, data) VALUES (?, ?, ?, ?, ?)",
            (chunk.job_id, chunk.attempt, chunk.seq, chunk.stream.value, chunk.data),
        )

    return op


def agent_seen(
    name: str, transport: str, capabilities: dict[str, Any], state: str
) -> Callable[[Any], None]:
    def op(tx: Any) -> None:
        now = wall_now()
        tx.execute(
            "INSERT INTO agents (name, transport, capabilities, state, first_seen, last_seen)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET transport = excluded.transport,"
            " capabilities = excluded.capabilities, state = excluded.state, last_seen = excluded.last_seen",
            (name, transport, json.dumps(capabilities), state, now, now),
        )
        tx.emit("agent.state", name, {"state": state, "transport": transport})

    return op


def agent_state(name: str, state: str, detail: str = "") -> Callable[[Any], None]:
    def op(tx: Any) -> None:
        tx.execute(
            "UPDATE agents SET state = ?, last_seen = ? WHERE name = ?", (state, wall_now(), name)
        )
        tx.emit("agent.state", name, {"state": state, **({"detail": detail} if detail else {})})

    return op


def last_attempt(job_id: str) -> Callable[[Any], dict[str, Any] | None]:
    def fn(conn: Any) -> dict[str, Any] | None:
        row = conn.execute(
            "SELECT attempt, state, agent, exit_code, signal, reason, detail, duration, result"
            " FROM attempts WHERE job_id = ? ORDER BY attempt DESC LIMIT 1",
            (job_id,),
        ).fetchone()
        if row is None:
            return None
        keys = (
            "attempt",
            "state",
            "agent",
            "exit_code",
            "signal",
            "reason",
            "detail",
            "duration",
            "result",
        )
        record = dict(zip(keys, row, strict=True))
        record["result"] = None if record["result"] is None else json.loads(record["result"])
        return record

    return fn


def attempt_state(job_id: str, attempt: int) -> Callable[[Any], str | None]:
    """The recorded state of one attempt, or None when there is no such attempt."""

    def fn(conn: Any) -> str | None:
        row = conn.execute(
            "SELECT state FROM attempts WHERE job_id = ? AND attempt = ?", (job_id, attempt)
        ).fetchone()
        return None if row is None else str(row[0])

    return fn


def output_count(job_id: str, attempt: int) -> Callable[[Any], int]:
    def fn(conn: Any) -> int:
        row = conn.execute(
            "SELECT COALESCE(MAX(seq) + 1, 0) FROM output WHERE job_id = ? AND attempt = ?",
            (job_id, attempt),
        ).fetchone()
        return int(row[0])

    return fn


def output_seqs(job_id: str, attempt: int) -> Callable[[Any], list[int]]:
    """The seqs of an attempt's stored output chunks, in order."""

    def fn(conn: Any) -> list[int]:
        rows = conn.execute(
            "SELECT seq FROM output WHERE job_id = ? AND attempt = ? ORDER BY seq",
            (job_id, attempt),
        )
        return [int(seq) for (seq,) in rows]

    return fn
