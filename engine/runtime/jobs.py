"""Waiting for a job to end, and the job types the runtime uses.

``Completions`` lets a tasklet wait for a job's end, which it learns of only after the end
is committed. The job states, rows and the SQL that reads and writes them live in
``wfe.engine.repository.jobs``; they are re-exported here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import attrs
import trio

from wfe.engine.repository.jobs import (
    JOB_COLUMNS,
    TERMINAL,
    JobRow,
    JobState,
    NewJob,
    create_job,
    insert_job,
    job_from_row,
    read_job,
    set_job_state,
)
from wfe.engine.repository.rowtypes import JsonValue

__all__ = [
    "JOB_COLUMNS",
    "TERMINAL",
    "Completions",
    "JobOutcome",
    "JobRow",
    "JobState",
    "NewJob",
    "create_job",
    "insert_job",
    "job_from_row",
    "read_job",
    "set_job_state",
]


@attrs.frozen(kw_only=True)
class JobOutcome:
    """How a job ended."""

    job_id: str
    state: JobState = attrs.field(converter=JobState)
    result: JsonValue = None
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
