"""The ``attempts``, ``output`` and ``agents`` tables: what the agent controller writes and reads.

Each write op emits the event for its change in the same transaction; the controller
(``wfe.engine.dispatch``) is the only writer of these tables. Reads run on a reader's
connection (``Repository.read``) and return typed rows.
"""

from __future__ import annotations

import enum
import json
import sqlite3
from collections.abc import Callable, Mapping, Sequence

import attrs

from wfe.engine.repository.input_split import split_job
from wfe.engine.repository.jobs import (
    JOB_COLUMNS,
    TERMINAL,
    JobRow,
    JobState,
    NewJob,
    insert_job,
    job_from_row,
)
from wfe.engine.repository.rowtypes import JsonObject, JsonValue
from wfe.engine.repository.writer import Tx
from wfe.engine.runtime.clock import wall_now
from wfe.protocols.attempt import AttemptMachine, AttemptState
from wfe.protocols.messages import Capabilities, JobFinished, OutputChunk


class AgentState(enum.StrEnum):
    """An agent's state as the ``agents.state`` column holds it."""

    CONNECTED = "connected"  # said hello; the engine hears it
    DISCONNECTED = "disconnected"  # its connection closed; it may come back within its deadline
    LOST = "lost"  # silent past its heartbeat deadline: no new work goes to it


# --- what follows an attempt's end -------------------------------------------------------


@attrs.frozen(kw_only=True)
class JobEnded:
    """The job ends with the attempt, in ``state`` (with ``error`` unless it succeeded)."""

    state: JobState
    error: str | None = None


@attrs.frozen(kw_only=True)
class JobRequeued:
    """The job waits for its next attempt, which may start ``delay`` seconds after the end;
    ``changed``: requirements its stage's ``on_retry`` rules changed for it (e.g. memory);
    ``keep``: how many of its inputs it keeps when they are split (``input_split``), and
    ``why`` the split, for its event."""

    delay: float
    changed: Mapping[str, JsonValue] = attrs.field(factory=dict)
    keep: int | None = None
    why: str = ""


# --- writes -------------------------------------------------------------------------------


def attempts_dispatched(
    machines: Sequence[AttemptMachine],
    replicas: Mapping[tuple[str, int], JsonValue] | None = None,
) -> Callable[[Tx], None]:
    """Record a round of dispatches (one transaction for the round), with the replicas of
    their inputs the attempts that read replicas were given (``(job, attempt) -> JSON``)."""

    def op(tx: Tx) -> None:
        now = wall_now()
        for m in machines:
            _dispatched(tx, m.job_id, m.attempt, m.state, m.agent, now)
        if replicas:
            tx.executemany(
                "UPDATE attempts SET replicas = ? WHERE job_id = ? AND attempt = ?",
                [(json.dumps(v), job, attempt) for (job, attempt), v in replicas.items()],
            )

    return op


def job_created_and_dispatched(new: NewJob, agent: str) -> Callable[[Tx], tuple[JobRow, bool]]:
    """Record a new RScript job and its first attempt, dispatched to ``agent``, in one op.

    Returns ``(job, True)``; for a replayed call (the parent already made it) it returns
    ``(existing job, False)`` and records no attempt. The write-ahead rule holds: both are
    committed before the dispatch is sent.
    """

    def op(tx: Tx) -> tuple[JobRow, bool]:
        job, created = insert_job(tx, new)
        if created:
            _dispatched(tx, job.id, 1, AttemptState.DISPATCHED, agent, wall_now())
        return job, created

    return op


def _dispatched(
    tx: Tx, job_id: str, attempt: int, state: AttemptState, agent: str | None, now: float
) -> None:
    tx.execute(
        "INSERT INTO attempts (job_id, attempt, state, agent, dispatched_at) VALUES (?, ?, ?, ?, ?)",
        (job_id, attempt, state.value, agent, now),
    )
    tx.execute(
        "UPDATE jobs SET attempts = ?, state = ?, started_at = COALESCE(started_at, ?)"
        " WHERE id = ?",
        (attempt, JobState.RUNNING, now, job_id),
    )
    tx.emit("attempt.state", job_id, {"attempt": attempt, "state": state.value, "agent": agent})


def attempt_started(m: AttemptMachine) -> Callable[[Tx], None]:
    """Record that the agent started the attempt."""

    def op(tx: Tx) -> None:
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
    then: JobEnded | JobRequeued,
    ran_with: Mapping[str, JsonValue] | None = None,
) -> Callable[[Tx], JsonObject | None]:
    """Record the end of an attempt (with ``ran_with``: the requirements it ran with), and in
    the same transaction what follows it: the end of its job, or the job queued again for
    its next attempt, with the requirements ``on_retry`` changed stored on the job and its
    inputs split when ``then.keep`` says so. Returns the split's event data when there was
    one (``input_split.split_job``), else None."""

    def op(tx: Tx) -> JsonObject | None:
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
        data: JsonObject = {"attempt": m.attempt, "state": m.state.value, "agent": m.agent}
        if m.exit_code is not None:
            data["exit_code"] = m.exit_code
        if m.detail:
            data["detail"] = m.detail
        tx.emit("attempt.state", m.job_id, data)
        if ran_with:
            tx.execute(
                "UPDATE attempts SET ran_with = ? WHERE job_id = ? AND attempt = ?",
                (json.dumps(dict(ran_with), sort_keys=True), m.job_id, m.attempt),
            )
        if isinstance(then, JobRequeued):
            for key, value in sorted(then.changed.items()):
                tx.execute(
                    "UPDATE jobs SET requirements = json_set(requirements, ?, json(?)) WHERE id = ?",
                    (f"$.{key}", json.dumps(value), m.job_id),
                )
            split = None
            if then.keep is not None:
                split = split_job(tx, m.job_id, m.attempt, then.keep, then.why)
            _requeued(tx, m.job_id, m.attempt, then.delay)
            return split
        tx.execute(
            "UPDATE jobs SET state = ?, ended_at = ?, result = ?, error = ? WHERE id = ?",
            (then.state, now, None if result is None else json.dumps(result), then.error, m.job_id),
        )
        event: JsonObject = {"state": then.state.value}
        if then.error:
            event["error"] = then.error
        tx.emit("job.state", m.job_id, event)
        return None

    return op


def _requeued(tx: Tx, job_id: str, attempt: int, delay: float) -> None:
    tx.execute("UPDATE jobs SET state = ? WHERE id = ?", (JobState.QUEUED, job_id))
    tx.emit(
        "job.state",
        job_id,
        {"state": JobState.QUEUED.value, "retry_after": delay, "next_attempt": attempt + 1},
    )


def late_result(
    finished: JobFinished, state: AttemptState, *, job_state: JobState | None
) -> Callable[[Tx], None]:
    """Record the report of an attempt the engine had already ended (lost): the attempt's
    row gets what really happened, with an ``attempt.late_result`` event; with ``job_state``
    (a success that can still be the job's outcome) the job ends with it too."""

    def op(tx: Tx) -> None:
        now = wall_now()
        result = None if finished.result is None else json.dumps(finished.result)
        tx.execute(
            "UPDATE attempts SET state = ?, exit_code = ?, signal = ?, reason = ?, detail = ?,"
            " duration = ?, result = ?, chunks = ? WHERE job_id = ? AND attempt = ?",
            (
                state.value,
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
        data: JsonObject = {"attempt": finished.attempt, "state": state.value}
        if finished.exit_code is not None:
            data["exit_code"] = finished.exit_code
        tx.emit("attempt.late_result", finished.job_id, data)
        if job_state is not None:
            tx.execute(
                "UPDATE jobs SET state = ?, ended_at = ?, result = ?, error = NULL WHERE id = ?",
                (job_state, now, result, finished.job_id),
            )
            tx.emit("job.state", finished.job_id, {"state": job_state.value})

    return op


def job_ended_without_attempt(job_id: str, state: JobState, error: str) -> Callable[[Tx], None]:
    """A queued job that never ran (or waited to run again): cancelled, or given up on."""

    def op(tx: Tx) -> None:
        tx.execute(
            "UPDATE jobs SET state = ?, ended_at = ?, error = ? WHERE id = ?",
            (state, wall_now(), error, job_id),
        )
        tx.emit("job.state", job_id, {"state": state.value, "error": error})

    return op


def output_stored(chunk: OutputChunk) -> Callable[[Tx], None]:
    """Store one output chunk (a chunk sent again is stored once)."""

    def op(tx: Tx) -> None:
        tx.execute(
            "INSERT OR IGNORE INTO output (job_id, attempt, seq, stream, data) VALUES (?, ?, ?, ?, ?)",
            (chunk.job_id, chunk.attempt, chunk.seq, chunk.stream.value, chunk.data),
        )

    return op


def agent_seen(
    name: str, transport: str, capabilities: Capabilities, state: AgentState
) -> Callable[[Tx], None]:
    """Record an agent that said hello: what it offers and how it is connected."""
    caps = json.dumps(attrs.asdict(capabilities))

    def op(tx: Tx) -> None:
        now = wall_now()
        tx.execute(
            "INSERT INTO agents (name, transport, capabilities, state, first_seen, last_seen)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET transport = excluded.transport,"
            " capabilities = excluded.capabilities, state = excluded.state, last_seen = excluded.last_seen",
            (name, transport, caps, state, now, now),
        )
        tx.emit("agent.state", name, {"state": state.value, "transport": transport})

    return op


def agent_state(name: str, state: AgentState, detail: str = "") -> Callable[[Tx], None]:
    """Record an agent's new state (``disconnected``, ``lost``), with why."""

    def op(tx: Tx) -> None:
        tx.execute(
            "UPDATE agents SET state = ?, last_seen = ? WHERE name = ?", (state, wall_now(), name)
        )
        data: JsonObject = {"state": state.value}
        if detail:
            data["detail"] = detail
        tx.emit("agent.state", name, data)

    return op


# --- reads --------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class AttemptRecord:
    """One attempt as recorded."""

    attempt: int
    state: str
    agent: str | None
    exit_code: int | None
    signal: int | None
    reason: str | None
    detail: str | None
    duration: float | None
    result: JsonValue


def last_attempt(job_id: str) -> Callable[[sqlite3.Connection], AttemptRecord | None]:
    """The latest attempt of ``job_id``, or None when it has had none."""

    def fn(conn: sqlite3.Connection) -> AttemptRecord | None:
        row = conn.execute(
            "SELECT attempt, state, agent, exit_code, signal, reason, detail, duration, result"
            " FROM attempts WHERE job_id = ? ORDER BY attempt DESC LIMIT 1",
            (job_id,),
        ).fetchone()
        if row is None:
            return None
        attempt, state, agent, exit_code, signal, reason, detail, duration, result = row
        return AttemptRecord(
            attempt=attempt,
            state=state,
            agent=agent,
            exit_code=exit_code,
            signal=signal,
            reason=reason,
            detail=detail,
            duration=duration,
            result=None if result is None else json.loads(result),
        )

    return fn


def attempt_state(job_id: str, attempt: int) -> Callable[[sqlite3.Connection], str | None]:
    """The recorded state of one attempt, or None when there is no such attempt."""

    def fn(conn: sqlite3.Connection) -> str | None:
        row = conn.execute(
            "SELECT state FROM attempts WHERE job_id = ? AND attempt = ?", (job_id, attempt)
        ).fetchone()
        return None if row is None else str(row[0])

    return fn


def output_count(job_id: str, attempt: int) -> Callable[[sqlite3.Connection], int]:
    """The seq after the highest stored output chunk of an attempt (0 for none)."""

    def fn(conn: sqlite3.Connection) -> int:
        row = conn.execute(
            "SELECT COALESCE(MAX(seq) + 1, 0) FROM output WHERE job_id = ? AND attempt = ?",
            (job_id, attempt),
        ).fetchone()
        return int(row[0])

    return fn


def output_seqs(job_id: str, attempt: int) -> Callable[[sqlite3.Connection], list[int]]:
    """The seqs of an attempt's stored output chunks, in order."""

    def fn(conn: sqlite3.Connection) -> list[int]:
        rows = conn.execute(
            "SELECT seq FROM output WHERE job_id = ? AND attempt = ? ORDER BY seq",
            (job_id, attempt),
        )
        return [int(seq) for (seq,) in rows]

    return fn


# --- after a restart ------------------------------------------------------------------------


_FAILURES = (AttemptState.FAILED.value, AttemptState.TIMED_OUT.value)


@attrs.frozen(kw_only=True)
class LastAttempt:
    """What recovery needs of an unfinished job's attempts."""

    attempt: int  # the latest one's number
    failures: int  # attempts that failed or timed out
    lost: int  # attempts lost
    state: AttemptState  # the latest one's
    agent: str | None  # the latest one's


@attrs.frozen(kw_only=True)
class Unfinished:
    """An RScript job that had not ended, and a summary of its attempts (None: none yet)."""

    job: JobRow
    last: LastAttempt | None


def load_unfinished(conn: sqlite3.Connection) -> list[Unfinished]:
    """Every unfinished RScript job, oldest first, with a summary of its attempts."""
    ended = tuple(state.value for state in TERMINAL)
    rows = conn.execute(
        f"SELECT {JOB_COLUMNS} FROM jobs WHERE kind = 'rscript'"
        f" AND state NOT IN ({', '.join('?' * len(ended))}) ORDER BY id",
        ended,
    ).fetchall()
    jobs: list[Unfinished] = []
    for row in rows:
        job = job_from_row(row)
        summary = conn.execute(
            "SELECT MAX(attempt), SUM(state IN (?, ?)), SUM(state = ?) FROM attempts WHERE job_id = ?",
            (*_FAILURES, AttemptState.LOST.value, job.id),
        ).fetchone()
        last: LastAttempt | None = None
        if summary[0] is not None:
            state, agent = conn.execute(
                "SELECT state, agent FROM attempts WHERE job_id = ? AND attempt = ?",
                (job.id, summary[0]),
            ).fetchone()
            last = LastAttempt(
                attempt=summary[0],
                failures=summary[1] or 0,
                lost=summary[2] or 0,
                state=AttemptState(state),
                agent=agent,
            )
        jobs.append(Unfinished(job=job, last=last))
    return jobs


@attrs.frozen(kw_only=True)
class KnownAgent:
    """An agent the books know: how it last connected and what it offered (None: not
    readable)."""

    name: str
    transport: str
    capabilities: Capabilities | None
    lost: bool


def known_agents(conn: sqlite3.Connection) -> list[KnownAgent]:
    """Every agent recorded, by name."""
    agents = []
    rows = conn.execute("SELECT name, transport, capabilities, state FROM agents ORDER BY name")
    for name, transport, caps, state in rows:
        agents.append(
            KnownAgent(
                name=name,
                transport=transport,
                capabilities=_capabilities(caps),
                lost=state == AgentState.LOST,
            )
        )
    return agents


def _capabilities(text: str) -> Capabilities | None:
    try:
        data = json.loads(text)
        return Capabilities(
            slots=int(data.get("slots", 1)),
            memory=data.get("memory"),
            site=data.get("site", "local"),
            tags=tuple(data.get("tags", ())),
            storage=tuple(data.get("storage", ())),
        )
    except (TypeError, ValueError, AttributeError):
        return None
