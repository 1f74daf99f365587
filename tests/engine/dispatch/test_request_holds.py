"""The controller holding a request's jobs back (a paused request), and a cancel that meets a
retry being written."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing
from trio.testing import MockClock

from wfe.engine.dispatch.policy import FENCE_MARGIN
from wfe.protocols.messages import Dispatch

from ..conftest import AGENTS, JOBS, Harness


async def submit(h: Harness, **options: Any) -> str:
    return await h.controller.submit("noop", {}, **options)


async def state_of(h: Harness, job_id: str) -> str:
    await trio.testing.wait_all_tasks_blocked()  # every write queued meanwhile is committed
    return str((await h.job(job_id))["state"])


async def test_a_held_requests_job_requeued_after_a_lost_agent_waits_for_release(
    autojump_clock: MockClock, harness: Harness
) -> None:
    """A job of a held request whose agent is lost is requeued once fenced (no delay) but not
    dispatched while the request is held, though an agent is free; release dispatches it."""
    lost = harness.agent("lost", slots=1, silent=True)
    job_id = await submit(harness, request_id="r1")
    [first] = await lost.receive(Dispatch)
    lost.accept(first)
    harness.controller.hold_request("r1")
    other = harness.agent("other", slots=1)
    lost.disconnect()
    await trio.sleep(AGENTS.heartbeat_deadline + 1)
    assert harness.controller.agents["lost"].lost
    assert await state_of(harness, job_id) == "running"  # lost, not yet fenced
    await trio.sleep(AGENTS.lease + FENCE_MARGIN)
    assert await state_of(harness, job_id) == "queued"
    await trio.sleep(10 * AGENTS.heartbeat)
    assert other.of_type(Dispatch) == []
    assert harness.controller.held_requests() == {"r1": 1}
    harness.controller.release_request("r1")
    [again] = await other.receive(Dispatch)
    assert (again.job_id, again.attempt) == (job_id, 2)
    assert harness.controller.held_requests() == {}


async def test_a_held_requests_job_retried_with_no_backoff_is_kept_back_and_cancellable(
    autojump_clock: MockClock, start_controller: Any
) -> None:
    """backoff = 0: a failed attempt of a held request's job is not retried at once; a cancel
    then ends the job as cancelled with its one attempt."""
    h = await start_controller(jobs={"retries": 2, "backoff": 0.0})
    agent = h.agent("a", slots=1)
    job_id = await submit(h, request_id="r1")
    [first] = await agent.receive(Dispatch)
    h.controller.hold_request("r1")
    agent.finish(first, exit_code=1)
    assert await state_of(h, job_id) == "queued"
    await trio.sleep(10 * AGENTS.heartbeat)
    assert len(agent.of_type(Dispatch)) == 1
    await h.controller.cancel(job_id, reason="request paused")
    assert await state_of(h, job_id) == "cancelled"
    assert [a["state"] for a in (await h.job(job_id))["attempt_list"]] == ["failed"]


async def test_a_queued_job_of_a_request_held_later_is_not_dispatched(
    autojump_clock: MockClock, harness: Harness
) -> None:
    """A job queued before its request is held is not dispatched when an agent comes, and a
    job of another request is; a new job of the held request waits too."""
    queued = await submit(harness, request_id="r1")
    other = await submit(harness, request_id="r2")
    harness.controller.hold_request("r1")
    agent = harness.agent("a", slots=4)
    [dispatch] = await agent.receive(Dispatch)
    assert dispatch.job_id == other
    new = await submit(harness, request_id="r1")
    await trio.sleep(10 * AGENTS.heartbeat)
    assert len(agent.of_type(Dispatch)) == 1
    assert harness.controller.held_requests() == {"r1": 2}
    harness.controller.release_request("r1")
    dispatches = await agent.receive(Dispatch, 3)
    assert {d.job_id for d in dispatches[1:]} == {queued, new}


async def test_a_cancel_before_the_retry_is_written_leaves_the_job_cancelled(
    autojump_clock: MockClock, start_controller: Any
) -> None:
    """A cancel that reaches a job whose failed attempt's end is not committed yet ends it
    cancelled for good: the retry's requeue does not overwrite it as queued."""
    h = await start_controller(jobs={"retries": 2})
    agent = h.agent("a", slots=1)
    job_id = await submit(h)
    [first] = await agent.receive(Dispatch)
    agent.finish(first, exit_code=1)  # its end is being written; the retry is decided
    await h.controller.cancel(job_id)  # no checkpoint in between
    assert await state_of(h, job_id) == "cancelled"
    await trio.sleep(10 * JOBS.backoff)
    assert await state_of(h, job_id) == "cancelled"
    assert len(agent.of_type(Dispatch)) == 1
    assert job_id not in h.controller.jobs
