"""Job records: the write operations on the ``jobs`` table, and waiting for a job to end.

A job is one recorded call: of an action (kind ``action``) or of an RScript on an agent
(kind ``rscript``). Every change here is a write op for the repository writer and emits its
event in the same transaction. ``Completions`` lets a tasklet wait for a job's end, which it
learns of only after the end is committed.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

from wfe.engine.runtime.clock import wall_now


class JobState(enum.StrEnum):
    """The state of a job; the ``jobs.state`` column holds its value.

    Actions: pending -> running -> succeeded | failed | cancelled. RScript jobs: queued ->
    running -> succeeded | failed | cancelled (their attempts carry the detail, as
    ``AttemptState``). A ``StrEnum``: a member equals its value, as stored and as sent.
    """

    PENDING = "pending"  # an action job recorded, its tasklet not started yet
    QUEUED = "queued"  # an RScript job waiting for an agent with a free slot
    RUNNING = "running"  # an action's tasklet runs, or an RScript job has an attempt on an agent
    SUCCEEDED = "succeeded"  # ended well: the result is recorded
    FAILED = "failed"  # ended badly: the error is recorded
    CANCELLED = "cancelled"  # stopped by an operator (or its parent's end) before it ended


TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


@attrs.frozen(kw_only=True)
class NewJob:
    """What is needed to record a new job."""

    kind: str
    name: str
    params: dict[str, Any]
    parent_id: str | None = None
    root_id: str | None = None
    call_seq: int | None = None
    state: JobState = JobState.PENDING
    priority: int = 0
    requirements: dict[str, Any] = attrs.Factory(dict)
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
    params: dict[str, Any]
    state: JobState
    priority: int
    requirements: dict[str, Any]
    max_attempts: int
    attempts: int
    created_at: float
    started_at: float | None
    ended_at: float | None
    result: Any
    error: str | None
    request_id: str | None

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL


JOB_COLUMNS = (
    "id, kind, name, parent_id, root_id, call_seq, params, state, priority, requirements, "
    "max_attempts, attempts, created_at, started_at, ended_at, result, error, request_id"
)


def job_from_row(row: Any) -> JobRow:
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


def create_job(new: NewJob) -> Callable[[Any], JobRow]:
    """A write op that records ``new`` and returns it; if the parent already made call
    ``call_seq`` (a replay after restart) it returns that job instead of a new one."""

    def op(tx: Any) -> JobRow:
        return insert_job(tx, new)[0]

    return op


def insert_job(tx: Any, new: NewJob) -> tuple[JobRow, bool]:
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
    started_at = now if new.state == "running" else None
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
    data: dict[str, Any] = {
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
    state: str,
    *,
    result: Any = None,
    error: str | None = None,
    started: bool = False,
) -> Callable[[Any], None]:
    """A write op that moves a job to ``state`` (stamping start or end time) with its event."""

    def op(tx: Any) -> None:
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
        data: dict[str, Any] = {"state": state}
        if error is not None:
            data["error"] = error
        tx.emit("job.state", job_id, data)

    return op


def read_job(job_id: str) -> Callable[[Any], JobRow | None]:
    """A read function returning one job, or None."""

    def fn(conn: Any) -> JobRow | None:
        row = conn.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else job_from_row(row)

    return fn


@attrs.frozen(kw_only=True)
class JobOutcome:
    """How a job ended."""

    job_id: str
    state: str
    result: Any = None
    error: str | None = None


class Completions:
    """Lets tasks wait for jobs to end. Only ever resolved after the end is committed."""

    def __init__(self) -> None:
        self._events: dict[str, trio.Event] = {}
        self._outcomes: dict[str, JobOutcome] = {}
        self._waiters: dict[str, int] = {}

    def resolve(self, outcome: JobOutcome, *, keep: bool = True) -> None:
        """Record ``outcome`` and wake its waiters. With ``keep=False`` (a root job, which no
        tasklet will join) it is kept only while someone is waiting for it."""
        if keep or outcome.job_id in self._waiters:
            self._outcomes[outcome.job_id] = outcome
        event = self._events.pop(outcome.job_id, None)
        if event is not None:
            event.set()

    def known(self, job_id: str) -> JobOutcome | None:
        return self._outcomes.get(job_id)

    async def wait(
        self, job_id: str, lookup: Callable[[], Awaitable[JobOutcome | None]] | None = None
    ) -> JobOutcome:
        """Return the job's outcome, waiting for it if it has not ended yet.

        ``lookup`` finds an outcome already committed (e.g. in the repository); it is asked
        after this waiter is registered, so an end that lands meanwhile is not missed.
        """
        self._waiters[job_id] = self._waiters.get(job_id, 0) + 1
        try:
            if job_id not in self._outcomes and lookup is not None:
                found = await lookup()
                if found is not None:
                    return found
            while (outcome := self._outcomes.get(job_id)) is None:
                event = self._events.setdefault(job_id, trio.Event())
                await event.wait()
            return outcome
        finally:
            left = self._waiters.pop(job_id) - 1
            if left:
                self._waiters[job_id] = left

    def forget(self, job_id: str) -> None:
        """Drop a consumed outcome so that memory stays bounded."""
        self._outcomes.pop(job_id, None)
