"""A job cancelled while it waited and then retried runs once, not once per time it waited."""

from __future__ import annotations

import trio
import trio.testing
from trio.testing import MockClock

from wfe.engine.runtime.jobs import JobState
from wfe.engine.runtime.retry import reset_for_retry
from wfe.protocols.messages import AttemptRef, Dispatch

from ..conftest import FakeAgent, Harness


async def test_a_job_cancelled_in_the_queue_and_retried_is_dispatched_once(
    autojump_clock: MockClock, harness: Harness
) -> None:
    """With no agent, a job waits in line; cancelled, then retried, it waits again. When a
    two-slot agent comes, the job gets one attempt: its line entry from before the cancel
    does not count for the job taken on again."""
    job_id = await harness.controller.submit("noop", {})
    await harness.controller.cancel(job_id)
    await trio.testing.wait_all_tasks_blocked()
    assert (await harness.job(job_id))["state"] == JobState.CANCELLED
    [reset] = await harness.repo.write(reset_for_retry(job_id, by=None))
    harness.controller.retry(reset.job, failures=reset.failures, lost=reset.lost)
    agent = FakeAgent(harness.controller, "a", slots=2)
    agent.connect()
    [dispatch] = await agent.receive(Dispatch)
    await trio.testing.wait_all_tasks_blocked()
    assert (dispatch.job_id, dispatch.attempt) == (job_id, 1)
    assert len(agent.of_type(Dispatch)) == 1
    assert harness.controller.held_by("a") == [AttemptRef(job_id=job_id, attempt=1)]
