"""``wfe retry JOB``: run a failed or cancelled root job again, as a recorded event.

One write op resets the job and every failed or cancelled job in its tree (RScript jobs back
to ``queued``, action jobs back to ``running``; jobs that succeeded keep their results) and
commits a ``job.retried`` event naming who asked and what was reset. Each reset RScript job
gets one more attempt that may fail (``max_attempts`` = the failures it has had + 1, the
count a restart's recovery makes too) and is queued at once; an action root then runs again
from the start and replays its calls (docs/decisions.md #4): succeeded children return their
recorded results, the reset ones are found queued or done.

Only root jobs outside requests are retried here: a child belongs to its parent's run (retry
the root), and a request's jobs belong to the request (``wfe rerun REQUEST``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs

from wfe.engine.errors import EngineError, UnknownJob
from wfe.engine.repository import jobs
from wfe.engine.repository.jobs import JobRow, JobState, attempt_ends
from wfe.engine.repository.writer import Tx

if TYPE_CHECKING:
    from wfe.engine.runtime.facade import Engine

RETRYABLE = (JobState.FAILED, JobState.CANCELLED)


class RetryRefused(EngineError):
    """The job can't be retried (running, succeeded, a child, part of a request)."""


@attrs.frozen(kw_only=True)
class Reset:
    """A job as reset for a retry, with the failed and lost attempts it has had."""

    job: JobRow
    failures: int
    lost: int


def reset_for_retry(job_id: str, *, by: str | None) -> Callable[[Tx], list[Reset]]:
    """A write op: reset ``job_id`` and its failed or cancelled descendants; return the rows
    as reset, the root first. Raises ``UnknownJob`` or ``RetryRefused`` (nothing written)."""

    def op(tx: Tx) -> list[Reset]:
        root = jobs.get_job(tx, job_id)
        if root is None:
            raise UnknownJob(f"no job {job_id}")
        if root.parent_id is not None:
            raise RetryRefused(
                f"job {job_id} is a child of {root.parent_id}: retry the root job {root.root_id}"
            )
        if root.request_id is not None:
            raise RetryRefused(
                f"job {job_id} belongs to request {root.request_id}: use `wfe rerun {root.request_id}`"
            )
        if root.state not in RETRYABLE:
            raise RetryRefused(
                f"job {job_id} is {root.state}: only a failed or cancelled job can be retried"
            )
        reset: list[Reset] = []
        for job in jobs.tree_jobs_in(tx, job_id, RETRYABLE):
            ends = attempt_ends(tx, job.id)
            if job.kind == "rscript":
                state, budget = JobState.QUEUED, ends.failures + 1
            else:
                state, budget = JobState.RUNNING, job.max_attempts
            again = jobs.reset_job(tx, job.id, state, max_attempts=budget)
            reset.append(Reset(job=again, failures=ends.failures, lost=ends.lost))
        reset.sort(key=lambda r: r.job.id != job_id)
        tx.emit(
            "job.retried",
            job_id,
            {
                "by": by,
                "was": root.state,
                "jobs": [r.job.id for r in reset],
            },
        )
        return reset

    return op


async def retry_job(engine: Engine, job_id: str, *, by: str | None) -> dict[str, Any]:
    """Reset ``job_id`` (see ``reset_for_retry``) and run it again; return what was reset."""
    job = await engine.job(job_id)  # raises UnknownJob
    if job["kind"] == "action":
        engine.runner.library.get(job["name"])  # raises UnknownAction before anything is written
    reset = await engine.repo.write(reset_for_retry(job_id, by=by))
    for r in reset:
        if r.job.kind == "rscript":
            engine.controller.retry(r.job, failures=r.failures, lost=r.lost)
    root = reset[0].job
    if root.kind == "action":
        engine.runner.resume(root)
    return {"job": root.id, "state": root.state, "reset": [r.job.id for r in reset]}
