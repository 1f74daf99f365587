"""The ``jobs`` table: job states, the row types, and the typed reads and writes on it.

A job is one recorded call: of an action (kind ``action``) or of an RScript on an agent
(kind ``rscript``). Every change here runs inside a write op of the repository writer and
emits its event in the same transaction. The states are ``wfe.engine.job_states`` (a leaf
module the CLI loads too); ``wfe.engine.runtime.jobs`` re-exports them and the row types.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable

import attrs

from wfe.engine.job_states import TERMINAL as TERMINAL
from wfe.engine.job_states import JobState as JobState
from wfe.engine.repository.rowtypes import Conn, Db, JsonObject, JsonValue, Row
from wfe.engine.repository.writer import Tx
from wfe.engine.runtime.clock import wall_now
from wfe.protocols.attempt import AttemptState


@attrs.frozen(kw_only=True)
class NewJob:
    """What is needed to record a new job."""

    kind: str
    name: str
    params: JsonObject
    parent_id: str | None = None
    root_id: str | None = None
    call_seq: int | None = None
    state: JobState = JobState.PENDING
    priority: int = 0
    # decoded JSON whose keys only the dispatch reads (timeout, memory, on...): see LiveJob
    requirements: JsonObject = attrs.Factory(dict)
    max_attempts: int = 1
    request_id: str | None = None
    by: str | None = None  # who asked for it (a console token name); None: the engine itself


@attrs.frozen(kw_only=True)
class JobRow:
    """A job as read back from the repository."""

    id: str
    kind: str
    name: str
    parent_id: str | None
    root_id: str
    call_seq: int | None
    params: JsonObject
    state: JobState
    priority: int
    requirements: JsonObject  # as in NewJob
    max_attempts: int
    attempts: int
    created_at: float
    started_at: float | None
    ended_at: float | None
    result: JsonValue
    error: str | None
    request_id: str | None

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL


JOB_COLUMNS = (
    "id, kind, name, parent_id, root_id, call_seq, params, state, priority, requirements, "
    "max_attempts, attempts, created_at, started_at, ended_at, result, error, request_id"
)

#: The terminal states as an SQL list, for ``state IN (...)`` / ``NOT IN``.
TERMINAL_SQL = ", ".join(f"'{s.value}'" for s in sorted(TERMINAL))


def job_from_row(row: Row) -> JobRow:
    """Build a ``JobRow`` from a row selected with ``JOB_COLUMNS``."""
    (id_, kind, name, parent_id, root_id, call_seq, params, state, priority, requirements,
     max_attempts, attempts, created_at, started_at, ended_at, result, error, request_id) = row  # fmt: skip
    return JobRow(
        id=id_,
        kind=kind,
        name=name,
        parent_id=parent_id,
        root_id=root_id,
        call_seq=call_seq,
        params=json.loads(params),
        state=JobState(state),
        priority=priority,
        requirements=json.loads(requirements),
        max_attempts=max_attempts,
        attempts=attempts,
        created_at=created_at,
        started_at=started_at,
        ended_at=ended_at,
        result=None if result is None else json.loads(result),
        error=error,
        request_id=request_id,
    )


def job_view(job: JobRow, *extra: str) -> JsonObject:
    """A job as shown to people (CLI, console): its identity, state and times, plus the
    ``extra`` fields asked for (``priority``, ``requirements``, ``params``, ``result``,
    ``request``)."""
    view: JsonObject = {
        "id": job.id,
        "kind": job.kind,
        "name": job.name,
        "state": job.state,
        "parent": job.parent_id,
        "root": job.root_id,
        "attempts": job.attempts,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "ended_at": job.ended_at,
        "error": job.error,
    }
    more: JsonObject = {
        "priority": job.priority,
        "requirements": job.requirements,
        "params": job.params,
        "result": job.result,
        "request": job.request_id,
    }
    view.update((name, more[name]) for name in extra)
    return view


# --- writes -------------------------------------------------------------------------------------


def create_job(new: NewJob) -> Callable[[Tx], JobRow]:
    """A write op that records ``new`` and returns it; if the parent already made call
    ``call_seq`` (a replay after restart) it returns that job instead of a new one."""

    def op(tx: Tx) -> JobRow:
        return insert_job(tx, new)[0]

    return op


def insert_job(tx: Tx, new: NewJob) -> tuple[JobRow, bool]:
    """Record ``new`` inside a write op; return ``(job, True)``, or ``(existing, False)`` when
    the parent already made call ``call_seq`` (a replay after restart: nothing is written)."""
    if new.parent_id is not None and new.call_seq is not None:
        row = tx.execute(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE parent_id = ? AND call_seq = ?",
            (new.parent_id, new.call_seq),
        ).fetchone()
        if row is not None:
            return job_from_row(row), False
    job_id = f"j{tx.allocate('job'):06d}"
    now = wall_now()
    params = json.dumps(new.params)
    requirements = json.dumps(new.requirements)
    started_at = now if new.state is JobState.RUNNING else None
    root_id = new.root_id or job_id
    tx.execute(
        "INSERT INTO jobs (id, kind, name, parent_id, root_id, call_seq, params, state, priority,"
        " requirements, max_attempts, created_at, request_id, started_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            job_id,
            new.kind,
            new.name,
            new.parent_id,
            root_id,
            new.call_seq,
            params,
            new.state,
            new.priority,
            requirements,
            new.max_attempts,
            now,
            new.request_id,
            started_at,
        ),
    )
    data: JsonObject = {
        "kind": new.kind,
        "name": new.name,
        "parent": new.parent_id,
        "state": new.state,
    }
    if new.request_id is not None:
        data["request"] = new.request_id
    if new.by is not None:
        data["by"] = new.by
    tx.emit("job.created", job_id, data)
    # The row as a SELECT would return it (params and requirements decoded from what was
    # stored, so the caller's dicts are not shared), without reading it back.
    job = JobRow(
        id=job_id,
        kind=new.kind,
        name=new.name,
        parent_id=new.parent_id,
        root_id=root_id,
        call_seq=new.call_seq,
        params=json.loads(params),
        state=new.state,
        priority=new.priority,
        requirements=json.loads(requirements),
        max_attempts=new.max_attempts,
        attempts=0,
        created_at=now,
        started_at=started_at,
        ended_at=None,
        result=None,
        error=None,
        request_id=new.request_id,
    )
    return job, True


def set_job_state(
    job_id: str,
    state: JobState,
    *,
    result: JsonValue = None,
    error: str | None = None,
    started: bool = False,
) -> Callable[[Tx], None]:
    """A write op that moves a job to ``state`` (stamping start or end time) with its event.

    A ``result`` that is not JSON raises ``TypeError`` inside the op (nothing is written)."""

    def op(tx: Tx) -> None:
        now = wall_now()
        if state in TERMINAL:
            tx.execute(
                "UPDATE jobs SET state = ?, ended_at = ?, result = ?, error = ? WHERE id = ?",
                (state, now, None if result is None else json.dumps(result), error, job_id),
            )
        elif started:
            tx.execute(
                "UPDATE jobs SET state = ?, started_at = COALESCE(started_at, ?) WHERE id = ?",
                (state, now, job_id),
            )
        else:
            tx.execute("UPDATE jobs SET state = ? WHERE id = ?", (state, job_id))
        data: JsonObject = {"state": state}
        if error is not None:
            data["error"] = error
        tx.emit("job.state", job_id, data)

    return op


def reset_job(tx: Tx, job_id: str, state: JobState, *, max_attempts: int) -> JobRow:
    """Put a finished job back to ``state`` with ``max_attempts``, its end, result and error
    cleared (a retry), and emit its ``job.state`` event; return the row as reset."""
    tx.execute(
        "UPDATE jobs SET state = ?, max_attempts = ?, ended_at = NULL, result = NULL,"
        " error = NULL WHERE id = ?",
        (state, max_attempts, job_id),
    )
    tx.emit("job.state", job_id, {"state": state, "retry": True})
    job = get_job(tx, job_id)
    assert job is not None  # it was just updated, inside this transaction
    return job


# --- reads --------------------------------------------------------------------------------------


def get_job(db: Db, job_id: str) -> JobRow | None:
    """The job ``job_id``, or None."""
    row = db.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return None if row is None else job_from_row(row)


def read_job(job_id: str) -> Callable[[Conn], JobRow | None]:
    """A read function returning one job, or None."""

    def fn(conn: Conn) -> JobRow | None:
        return get_job(conn, job_id)

    return fn


def tree_jobs_in(db: Db, root_id: str, states: Iterable[JobState]) -> list[JobRow]:
    """The jobs of ``root_id``'s tree (itself included) in one of ``states``, by id."""
    wanted = tuple(states)
    marks = ", ".join("?" * len(wanted))
    rows = db.execute(
        f"SELECT {JOB_COLUMNS} FROM jobs WHERE root_id = ? AND state IN ({marks}) ORDER BY id",
        (root_id, *wanted),
    ).fetchall()
    return [job_from_row(r) for r in rows]


@attrs.frozen(kw_only=True)
class AttemptEnds:
    """How a job's attempts have ended so far, as counted against its budgets."""

    failures: int  # failed or timed out: counted against ``max_attempts``
    lost: int  # lost with their agent: counted against ``max_redispatch``


def attempt_ends(db: Db, job_id: str) -> AttemptEnds:
    """Count ``job_id``'s failed (or timed-out) and lost attempts."""
    failures, lost = db.execute(
        "SELECT COALESCE(SUM(state IN (?, ?)), 0), COALESCE(SUM(state = ?), 0)"
        " FROM attempts WHERE job_id = ?",
        (AttemptState.FAILED.value, AttemptState.TIMED_OUT.value, AttemptState.LOST.value, job_id),
    ).fetchone()
    return AttemptEnds(failures=int(failures), lost=int(lost))


def unfinished_root_actions(conn: Conn) -> list[JobRow]:
    """Every root action job not yet ended, by id (what a restart runs again)."""
    rows = conn.execute(
        f"SELECT {JOB_COLUMNS} FROM jobs WHERE kind = 'action' AND parent_id IS NULL"
        f" AND state NOT IN ({TERMINAL_SQL}) ORDER BY id"
    ).fetchall()
    return [job_from_row(r) for r in rows]


def job_progress(job_id: str) -> Callable[[Conn], tuple[JobState, int] | None]:
    """A read function: the job's state and how many attempts it has had, or None."""

    def fn(conn: Conn) -> tuple[JobState, int] | None:
        row = conn.execute("SELECT state, attempts FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else (JobState(row[0]), int(row[1]))

    return fn


def unfinished_job_requests(conn: Conn) -> list[tuple[str, str]]:
    """``(job id, request id)`` of every unfinished job that belongs to a request (its own
    or its root's)."""
    rows = conn.execute(
        "SELECT j.id, COALESCE(j.request_id, r.request_id) FROM jobs j JOIN jobs r ON r.id = j.root_id"
        f" WHERE j.state NOT IN ({TERMINAL_SQL}) AND COALESCE(j.request_id, r.request_id) IS NOT NULL"
    ).fetchall()
    return [(str(a), str(b)) for a, b in rows]


@attrs.frozen(kw_only=True)
class TableCounts:
    """What a metrics scrape reads from the tables in one snapshot."""

    jobs: list[tuple[str, str, int]]  # (kind, state, count)
    attempts: list[tuple[str, int]]  # (state, count) of ended attempts
    events: int  # the newest event id


def table_counts(conn: Conn) -> TableCounts:
    """Jobs by kind and state, ended attempts by state, and the newest event id."""
    return TableCounts(
        jobs=[
            (str(k), str(s), int(n))
            for k, s, n in conn.execute(
                "SELECT kind, state, COUNT(*) FROM jobs GROUP BY kind, state"
            )
        ],
        attempts=[
            (str(s), int(n))
            for s, n in conn.execute(
                "SELECT state, COUNT(*) FROM attempts WHERE ended_at IS NOT NULL GROUP BY state"
            )
        ],
        events=int(conn.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0]),
    )
