"""Leases and fencing on a MockClock: a lost agent's attempts run again only once they are
fenced (its lease ran out, or it came back and said they are dead); late results are kept;
the engine's own outages never count against an agent."""

from __future__ import annotations

import pytest
import trio
from trio.testing import MockClock

from wfe.engine.dispatch.policy import FENCE_MARGIN
from wfe.protocols.messages import Ack, Dispatch, FinishReason, JobFinished, Lease

from ..conftest import AGENTS, Harness
from .test_controller import outcome, submit

FENCE = AGENTS.lease + FENCE_MARGIN


async def test_every_status_is_answered_with_a_lease_for_its_seq(
    autojump_clock: MockClock, harness: Harness
) -> None:
    """The hello and each heartbeat get Lease(seq, ttl = [agents] lease)."""
    agent = harness.agent("a", silent=True)
    agent.heartbeat()
    leases = await agent.receive(Lease, 2)
    assert all(lease.ttl == AGENTS.lease for lease in leases)


async def test_a_lost_agents_job_runs_again_only_once_its_lease_has_fenced_it(
    autojump_clock: MockClock, harness: Harness
) -> None:
    """Silent from its hello on: lost at the heartbeat deadline (no new work for it), but its
    running job is dispatched again only lease + margin after the hello was heard."""
    quiet = harness.agent("quiet", slots=1, silent=True)
    heard = trio.current_time()
    job_id = await submit(harness)
    [dispatch] = await quiet.receive(Dispatch)
    quiet.accept(dispatch)
    other = harness.agent("other", slots=1)
    await trio.sleep(AGENTS.heartbeat_deadline + 0.1)
    assert harness.controller.agents["quiet"].lost
    assert other.of_type(Dispatch) == []  # lost, but not yet fenced
    [again] = await other.receive(Dispatch)
    assert trio.current_time() == pytest.approx(heard + FENCE)
    assert (again.job_id, again.attempt) == (job_id, 2)
    other.finish(again)
    assert (await outcome(harness, job_id)).state == "succeeded"
    job = await harness.job(job_id)
    assert [a["state"] for a in job["attempt_list"]] == ["lost", "succeeded"]


async def test_the_fence_counts_from_the_last_heartbeat_heard(
    autojump_clock: MockClock, harness: Harness
) -> None:
    """An agent that went silent after heartbeats is fenced lease + margin after the last."""
    agent = harness.agent("a", slots=1, silent=True)
    job_id = await submit(harness)
    [dispatch] = await agent.receive(Dispatch)
    agent.accept(dispatch)
    for _ in range(3):
        await trio.sleep(AGENTS.heartbeat)
        agent.heartbeat(running=((job_id, 1),))
    last = trio.current_time()
    other = harness.agent("b", slots=1)
    [again] = await other.receive(Dispatch)
    assert trio.current_time() == pytest.approx(last + FENCE)
    assert again.attempt == 2


async def test_an_agent_back_before_the_fence_with_the_attempt_running_keeps_it(
    autojump_clock: MockClock, harness: Harness
) -> None:
    """Lost at its deadline, back before the fence still running it: no second dispatch."""
    agent = harness.agent("a", slots=1, silent=True)
    other = harness.agent("b", slots=1)
    job_id = await submit(harness, on="a")
    [dispatch] = await agent.receive(Dispatch)
    agent.accept(dispatch)
    agent.disconnect()
    await trio.sleep(AGENTS.heartbeat_deadline + 1)
    assert harness.controller.agents["a"].lost
    agent.connect(running=((job_id, 1),))
    await trio.sleep(2 * FENCE)
    agent.heartbeat(running=((job_id, 1),))
    agent.finish(dispatch)
    assert (await outcome(harness, job_id)).state == "succeeded"
    assert len(agent.of_type(Dispatch)) == 1 and other.of_type(Dispatch) == []


async def test_an_agent_back_without_the_attempt_confirms_it_dead_at_once(
    autojump_clock: MockClock, harness: Harness
) -> None:
    """Back before the fence, holding neither the attempt nor its result: it is dead for
    sure, so the job runs again now, not at the fence."""
    agent = harness.agent("a", slots=1, silent=True)
    await submit(harness)
    [dispatch] = await agent.receive(Dispatch)
    agent.accept(dispatch)
    agent.disconnect()
    await trio.sleep(AGENTS.heartbeat_deadline + 1)
    back = trio.current_time()
    agent.connect()
    [_, again] = await agent.receive(Dispatch, 2)
    assert trio.current_time() == pytest.approx(back)
    assert again.attempt == 2


async def test_a_result_reported_as_fenced_runs_the_job_again_at_once(
    autojump_clock: MockClock, harness: Harness
) -> None:
    """FENCED from the agent (its lease ran out): a loss, the job is dispatched again."""
    agent = harness.agent("a", slots=1)
    job_id = await submit(harness)
    [dispatch] = await agent.receive(Dispatch)
    agent.accept(dispatch)
    agent.finish(dispatch, exit_code=None, signal=15, reason=FinishReason.FENCED)
    [_, again] = await agent.receive(Dispatch, 2)
    assert (again.job_id, again.attempt) == (job_id, 2)
    agent.finish(again)
    assert (await outcome(harness, job_id)).state == "succeeded"


async def test_a_late_success_becomes_the_outcome_of_a_job_still_waiting(
    autojump_clock: MockClock, harness: Harness
) -> None:
    """Fenced and requeued with no agent to take it; then its agent comes back holding the
    success: the job succeeds with that result, acknowledged, and runs no second time."""
    agent = harness.agent("a", slots=1, silent=True)
    job_id = await submit(harness, on="a")
    [dispatch] = await agent.receive(Dispatch)
    agent.accept(dispatch)
    agent.disconnect()
    await trio.sleep(FENCE + 1)
    job = await harness.job(job_id)
    assert job["attempt_list"][0]["state"] == "lost" and job["state"] == "queued"
    late = JobFinished(
        job_id=job_id, attempt=1, reason=FinishReason.EXITED, exit_code=0, result={"x": 1}
    )
    agent.connect(held=((job_id, 1),))
    agent.say(late)
    done = await outcome(harness, job_id)
    assert done.state == "succeeded" and done.result == {"x": 1}
    await agent.receive(Ack)
    job = await harness.job(job_id)
    assert [a["state"] for a in job["attempt_list"]] == ["succeeded"]
    await trio.sleep(1)
    assert len(agent.of_type(Dispatch)) == 1


async def test_a_late_result_while_the_job_runs_again_is_kept_on_its_attempt(
    autojump_clock: MockClock, harness: Harness
) -> None:
    """The job runs again elsewhere when the old agent's result arrives: the old attempt's
    row records what really happened, the running attempt decides the job."""
    old = harness.agent("old", slots=1, silent=True)
    job_id = await submit(harness)
    [first] = await old.receive(Dispatch)
    old.accept(first)
    old.disconnect()
    new = harness.agent("new", slots=1)
    [again] = await new.receive(Dispatch)
    new.accept(again)
    old.connect(held=((job_id, 1),))
    old.say(JobFinished(job_id=job_id, attempt=1, reason=FinishReason.EXITED, exit_code=3))
    await old.receive(Ack)
    job = await harness.job(job_id)
    assert job["attempt_list"][0]["state"] == "failed"
    assert job["attempt_list"][0]["exit_code"] == 3
    new.finish(again)
    assert (await outcome(harness, job_id)).state == "succeeded"


async def test_time_the_engine_was_offline_never_counts_against_an_agent(
    autojump_clock: MockClock, harness: Harness
) -> None:
    """The transport is down for three deadlines: its agent is not lost meanwhile, and when
    the transport is up again its deadline counts from then."""
    agent = harness.agent("a", slots=1, silent=True)
    agent.transport = "fake"
    harness.controller.transport_down("fake")
    await trio.sleep(3 * AGENTS.heartbeat_deadline)
    assert not harness.controller.agents["a"].lost
    harness.controller.transport_up("fake")
    up = trio.current_time()
    await trio.sleep(AGENTS.heartbeat_deadline - 0.5)
    assert not harness.controller.agents["a"].lost
    await trio.sleep(1)
    assert harness.controller.agents["a"].lost
    assert trio.current_time() - up > AGENTS.heartbeat_deadline


async def test_queued_work_no_agent_can_take_is_counted(
    autojump_clock: MockClock, harness: Harness
) -> None:
    """With no agent, or none with the tag a job needs, its job is unplaceable."""
    job_id = await submit(harness)
    assert harness.controller.unplaceable() == [job_id]
    assert harness.controller.statistics()["unplaceable"] == 1
    harness.agent("a", slots=1, tags=("cpu",))
    tagged = await submit(harness, requires={"tags": ["gpu"]})
    await trio.sleep(0.1)
    assert harness.controller.unplaceable() == [tagged]


async def test_a_cancel_of_a_job_on_a_lost_agent_ends_at_its_grace(
    autojump_clock: MockClock, harness: Harness
) -> None:
    """Cancelling runs nothing again, so it need not wait for the fence: a job on a lost agent
    is cancelled once the cancel's grace has passed."""
    agent = harness.agent("a", slots=1, silent=True)
    job_id = await submit(harness)
    [dispatch] = await agent.receive(Dispatch)
    agent.accept(dispatch)
    agent.disconnect()
    await trio.sleep(AGENTS.heartbeat_deadline + 1)
    asked = trio.current_time()
    await harness.controller.cancel(job_id)
    assert (await outcome(harness, job_id)).state == "cancelled"
    assert trio.current_time() - asked == pytest.approx(5.0)  # the harness's grace
    assert trio.current_time() - asked < FENCE
