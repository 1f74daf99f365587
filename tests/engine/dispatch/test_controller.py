"""The agent controller on a MockClock: dispatch, results, timeouts, loss and retries."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from trio.testing import MockClock

from wfe.engine.dispatch.policy import FENCE_MARGIN
from wfe.protocols.messages import Ack, Cancel, Dispatch, FinishReason, JobRefused, Resume

from ..conftest import AGENTS, JOBS, FakeAgent, Harness


async def submit(
    h: Harness, name: str = "noop", params: dict[str, Any] | None = None, **options: Any
) -> str:
    return await h.controller.submit(name, params or {}, **options)


async def outcome(h: Harness, job_id: str) -> Any:
    from wfe.engine.runtime.jobs import JobOutcome

    async def lookup() -> JobOutcome | None:
        job = await h.job(job_id)
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return JobOutcome(
                job_id=job_id, state=job["state"], result=job["result"], error=job["error"]
            )
        return None

    return await h.completions.wait(job_id, lookup)


async def test_a_job_runs_and_is_acknowledged_after_commit(
    autojump_clock: MockClock, harness: Harness
) -> None:
    """dispatch -> accepted -> finished: the job succeeds, and the ack follows the commit."""
    agent = harness.agent("a")
    job_id = await submit(harness)
    [dispatch] = await agent.receive(Dispatch)
    assert (dispatch.job_id, dispatch.attempt, dispatch.script_name) == (job_id, 1, "noop")
    agent.accept(dispatch)
    agent.finish(dispatch, result={"answer": 42})
    done = await outcome(harness, job_id)
    assert done.state == "succeeded"
    await agent.receive(Ack)
    job = await harness.job(job_id)
    assert job["state"] == "succeeded"
    assert job["attempt_list"][0]["state"] == "succeeded"
    assert job["result"] == {"answer": 42}


async def test_higher_priority_is_dispatched_first(
    autojump_clock: MockClock, harness: Harness
) -> None:
    """With one slot, the queue is served by priority, then age."""
    low = await submit(harness, priority=0)
    high = await submit(harness, priority=5)
    agent = harness.agent("a", slots=1)
    [first] = await agent.receive(Dispatch)
    assert first.job_id == high
    agent.finish(first)
    second = (await agent.receive(Dispatch, 2))[1]
    assert second.job_id == low


async def test_a_silent_agent_is_lost_and_its_job_goes_elsewhere_once_fenced(
    autojump_clock: MockClock, harness: Harness
) -> None:
    """No heartbeat: the agent is lost at heartbeat_deadline, and its job goes elsewhere once
    its lease (granted on its hello) has run out, plus the fence margin."""
    quiet = harness.agent("quiet", slots=1, silent=True)
    job_id = await submit(harness)
    [dispatch] = await quiet.receive(Dispatch)
    quiet.accept(dispatch)
    start = trio.current_time()
    await trio.sleep(
        AGENTS.heartbeat_deadline - 1
    )  # other joins later, so it is not silent as long
    other = harness.agent("other", slots=1)
    [again] = await other.receive(Dispatch)
    assert trio.current_time() - start == pytest.approx(AGENTS.lease + FENCE_MARGIN)
    assert (again.job_id, again.attempt) == (job_id, 2)
    other.finish(again)
    assert (await outcome(harness, job_id)).state == "succeeded"
    job = await harness.job(job_id)
    assert [a["state"] for a in job["attempt_list"]] == ["lost", "succeeded"]


async def test_heartbeats_keep_an_agent_alive(autojump_clock: MockClock, harness: Harness) -> None:
    """An agent that reports in time is never declared lost."""
    agent = harness.agent("a", slots=1, silent=True)
    job_id = await submit(harness)
    [dispatch] = await agent.receive(Dispatch)
    agent.accept(dispatch)
    for _ in range(20):
        await trio.sleep(AGENTS.heartbeat)
        agent.heartbeat(running=((job_id, 1),))
    assert not harness.controller.agents["a"].lost
    agent.finish(dispatch)
    assert (await outcome(harness, job_id)).state == "succeeded"


async def test_a_job_that_kills_every_agent_fails_after_max_redispatch(
    autojump_clock: MockClock, harness: Harness
) -> None:
    """Lost max_redispatch + 1 times: the job fails with the reason, it does not loop forever."""
    job_id = await submit(harness)
    for n in range(AGENTS.max_redispatch + 1):
        agent = harness.agent(f"victim-{n}", slots=1)
        [dispatch] = await agent.receive(Dispatch)
        assert dispatch.attempt == n + 1
        agent.disconnect()  # and never comes back: lost, then fenced when its lease is out
        await trio.sleep(AGENTS.lease + FENCE_MARGIN + 0.5)
    done = await outcome(harness, job_id)
    assert done.state == "failed"
    assert done.error == f"lost its agent 3 times (max_redispatch {AGENTS.max_redispatch})"


async def test_a_disconnected_agent_that_comes_back_in_time_keeps_its_job(
    autojump_clock: MockClock, harness: Harness
) -> None:
    """A reconnect within the deadline, still running the attempt, reattaches it."""
    agent = harness.agent("a", slots=1, silent=True)
    job_id = await submit(harness)
    [dispatch] = await agent.receive(Dispatch)
    agent.accept(dispatch)
    agent.disconnect()
    await trio.sleep(AGENTS.heartbeat_deadline / 2)
    agent.connect(running=((job_id, 1),))
    for _ in range(4):  # past the first deadline, which the reconnect cancelled
        await trio.sleep(AGENTS.heartbeat)
        agent.heartbeat(running=((job_id, 1),))
    agent.finish(dispatch)
    assert (await outcome(harness, job_id)).state == "succeeded"
    assert len(agent.of_type(Dispatch)) == 1


async def test_a_refused_dispatch_goes_to_another_attempt(
    autojump_clock: MockClock, harness: Harness
) -> None:
    """An agent's refusal is not the job's failure: the next attempt runs."""
    agent = harness.agent("a", slots=1)
    job_id = await submit(harness)
    [dispatch] = await agent.receive(Dispatch)
    agent.say(JobRefused(job_id=job_id, attempt=1, reason="bad signature"))
    [_, again] = await agent.receive(Dispatch, 2)
    assert again.attempt == 2
    agent.finish(again)
    assert (await outcome(harness, job_id)).state == "succeeded"


async def test_failures_retry_with_exponential_backoff(
    autojump_clock: MockClock, start_controller: Any
) -> None:
    """retries=2: attempts at 0, backoff, 3 * backoff later; then the job fails with the exit code."""
    h = await start_controller(jobs={"retries": 2, "backoff": 2.0})
    agent = h.agent("a", slots=1)
    job_id = await submit(h)
    times = []
    for n in range(3):
        dispatch = (await agent.receive(Dispatch, n + 1))[n]
        times.append(trio.current_time())
        agent.finish(dispatch, exit_code=3)
    done = await outcome(h, job_id)
    assert done.state == "failed"
    assert done.error == "attempt 3 exited with code 3"
    assert [round(b - a, 6) for a, b in zip(times, times[1:], strict=False)] == [2.0, 4.0]


async def test_an_attempt_with_no_report_times_out(
    autojump_clock: MockClock, harness: Harness
) -> None:
    """No result by timeout + grace: the attempt times out and the agent is told to kill it."""
    agent = harness.agent("a", slots=1)
    start = trio.current_time()
    job_id = await submit(harness, timeout=10.0)
    [dispatch] = await agent.receive(Dispatch)
    agent.accept(dispatch)

    done = await outcome(harness, job_id)
    assert trio.current_time() - start == pytest.approx(10.0 + 5.0)
    assert done.state == "failed"
    assert done.error == "attempt 1 timed out after 10 s"
    [cancel] = agent.of_type(Cancel)
    assert (cancel.job_id, cancel.attempt) == (job_id, 1)


async def test_the_agents_own_timeout_report_is_recorded(
    autojump_clock: MockClock, harness: Harness
) -> None:
    """An agent that killed a script at its timeout reports it; the attempt is timed_out."""
    agent = harness.agent("a")
    job_id = await submit(harness)
    [dispatch] = await agent.receive(Dispatch)
    agent.finish(dispatch, exit_code=None, signal=15, reason=FinishReason.TIMED_OUT)
    done = await outcome(harness, job_id)
    assert done.state == "failed"
    job = await harness.job(job_id)
    assert job["attempt_list"][0]["state"] == "timed_out"


async def test_waiting_for_an_agent_times_out(
    autojump_clock: MockClock, start_controller: Any
) -> None:
    """With no agent to take it, a job fails after wait_agent_timeout, exactly."""
    h = await start_controller(jobs={"wait_agent_timeout": 30.0})
    start = trio.current_time()
    job_id = await submit(h)
    done = await outcome(h, job_id)
    assert trio.current_time() - start == 30.0
    assert (done.state, done.error) == ("failed", "no agent took it within 30 s")


async def test_the_overall_timeout_cancels_a_running_attempt(
    autojump_clock: MockClock, start_controller: Any
) -> None:
    """The job's overall deadline kills its running attempt and fails the job."""
    h = await start_controller(jobs={"overall_timeout": 20.0})
    agent = h.agent("a")
    job_id = await submit(h)
    [dispatch] = await agent.receive(Dispatch)
    agent.accept(dispatch)
    [cancel] = await agent.receive(Cancel)
    assert cancel.job_id == job_id
    agent.finish(dispatch, exit_code=None, signal=9, reason=FinishReason.CANCELLED)
    done = await outcome(h, job_id)
    assert (done.state, done.error) == ("failed", "overall timeout of 20 s exceeded")


async def test_cancel_a_queued_job_and_a_running_job(
    autojump_clock: MockClock, harness: Harness
) -> None:
    """A queued job is cancelled at once; a running one when its agent confirms the kill."""
    queued = await submit(harness)
    await harness.controller.cancel(queued)
    assert (await outcome(harness, queued)).state == "cancelled"

    agent = harness.agent("a")
    running = await submit(harness)
    [dispatch] = await agent.receive(Dispatch)
    agent.accept(dispatch)
    await harness.controller.cancel(running)
    [cancel] = await agent.receive(Cancel)
    assert cancel.job_id == running
    agent.finish(dispatch, exit_code=None, signal=15, reason=FinishReason.CANCELLED)
    assert (await outcome(harness, running)).state == "cancelled"


async def test_a_duplicate_result_is_acknowledged_and_ignored(
    autojump_clock: MockClock, harness: Harness
) -> None:
    """The same (job, attempt) reported twice is recorded once; both are acknowledged."""
    agent = harness.agent("a")
    job_id = await submit(harness)
    [dispatch] = await agent.receive(Dispatch)
    agent.finish(dispatch, result={"n": 1})
    await outcome(harness, job_id)
    await agent.receive(Ack)
    agent.finish(dispatch, exit_code=1, result={"n": 2})
    acks = await agent.receive(Ack, 2)
    assert len(acks) == 2
    job = await harness.job(job_id)
    assert (job["state"], job["result"]) == ("succeeded", {"n": 1})
    assert len(job["attempt_list"]) == 1


async def test_a_result_resent_before_its_end_is_committed_is_not_acknowledged_early(
    autojump_clock: MockClock, harness: Harness
) -> None:
    """A result that arrives again while the first one's end is still being committed gets
    no Ack of its own: an Ack then would let the agent drop a result that is not committed
    yet. The one Ack comes after the commit."""
    agent = harness.agent("a")
    job_id = await submit(harness)
    [dispatch] = await agent.receive(Dispatch)
    agent.finish(dispatch, result={"n": 1})
    agent.finish(dispatch, result={"n": 1})  # resent before the end can have been written
    assert agent.of_type(Ack) == []
    await outcome(harness, job_id)
    await agent.receive(Ack)
    await trio.sleep(1)
    assert len(agent.of_type(Ack)) == 1
    job = await harness.job(job_id)
    assert (job["state"], job["result"]) == ("succeeded", {"n": 1})


async def test_bad_parameters_are_refused_before_anything_is_recorded(
    autojump_clock: MockClock, harness: Harness
) -> None:
    """A wrong type or an unknown RScript raises; no job is written."""
    from wfe.rscripts.errors import ParamError, UnknownRScript

    with pytest.raises(ParamError, match="sleep_echo: parameter 'seconds' must be float"):
        await submit(harness, "sleep_echo", {"seconds": "soon"})
    with pytest.raises(UnknownRScript, match="no_such"):
        await submit(harness, "no_such")
    count = await harness.repo.read(lambda c: c.execute("SELECT COUNT(*) FROM jobs").fetchone()[0])
    assert count == 0


async def test_restart_reconciles_with_what_agents_report(
    autojump_clock: MockClock, repo: Any, nursery: trio.Nursery
) -> None:
    """After a restart: a result held in a spool is recorded, a running attempt is
    reattached, an attempt the agent does not know is lost and retried at once, and an
    agent that never comes back is lost after reconcile_grace and its attempts run again
    once fenced."""
    from ..conftest import make_controller

    first = make_controller(repo)
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as inner:
            await inner.start(first.controller.run)
            a = FakeAgent(first.controller, "a", slots=3)
            b = FakeAgent(first.controller, "b", slots=1)
            a.connect()
            b.connect()
            jobs = [await submit(first) for _ in range(4)]
            dispatches = await a.receive(Dispatch, 3)
            [on_b] = await b.receive(Dispatch)
            for d in (*dispatches, on_b):
                (a if d in dispatches else b).accept(d)
            await repo.flush()
            scope.cancel()  # the engine dies: nothing more is recorded
    held, running, unknown = dispatches
    second = make_controller(repo)
    counts = await second.controller.recover()
    assert counts == {"queued": 0, "awaiting_agent": 4, "failed": 0}
    await nursery.start(second.controller.run)
    start = trio.current_time()
    a2 = FakeAgent(second.controller, "a", slots=3)
    a2.connect(running=((running.job_id, 1),), held=((held.job_id, 1),))
    nursery.start_soon(a2.beat)
    a2.finish(held)  # the agent resends what it holds
    assert (await outcome(second, held.job_id)).state == "succeeded"
    [resume] = await a2.receive(Resume)
    assert (resume.job_id, resume.next_seq) == (running.job_id, 0)
    [retry] = await a2.receive(Dispatch)
    assert (retry.job_id, retry.attempt) == (unknown.job_id, 2)
    a2.finish(retry)
    a2.finish(running)
    for job_id in (held.job_id, running.job_id, unknown.job_id):
        assert (await outcome(second, job_id)).state == "succeeded"
    assert [a["state"] for a in (await second.job(unknown.job_id))["attempt_list"]] == [
        "lost",
        "succeeded",
    ]
    # b never returns: lost at reconcile_grace, its attempt is dispatched to a2 once fenced:
    # a lease it may have had was granted before the restart, so it is out lease + margin on
    [_, moved] = await a2.receive(Dispatch, 2)
    assert trio.current_time() - start == pytest.approx(AGENTS.lease + FENCE_MARGIN)
    assert (moved.job_id, moved.attempt) == (on_b.job_id, 2)
    assert set(jobs) == {held.job_id, running.job_id, unknown.job_id, on_b.job_id}


_ = JOBS


async def test_per_job_backoff_wait_and_overall_override_the_defaults(
    autojump_clock: MockClock, harness: Harness
) -> None:
    """Options given at submission beat [jobs]: backoff between attempts, wait for an agent."""
    waiting = await submit(harness, wait_agent=7.0)
    start = trio.current_time()
    assert (await outcome(harness, waiting)).error == "no agent took it within 7 s"
    assert trio.current_time() - start == 7.0
    agent = harness.agent("a", slots=1)
    job_id = await submit(harness, retries=1, backoff=0.5)
    [first] = await agent.receive(Dispatch)
    t0 = trio.current_time()
    agent.finish(first, exit_code=2)
    [_, second] = await agent.receive(Dispatch, 2)
    assert trio.current_time() - t0 == pytest.approx(0.5)
    agent.finish(second)
    assert (await outcome(harness, job_id)).state == "succeeded"


async def test_a_cancel_while_the_end_is_written_changes_nothing(
    autojump_clock: MockClock, harness: Harness
) -> None:
    """The final result wins over a cancel that arrives before it is committed."""
    from wfe.engine.errors import UnknownJob

    agent = harness.agent("a")
    job_id = await submit(harness)
    [dispatch] = await agent.receive(Dispatch)
    agent.finish(dispatch)  # the end is decided now and written in the background
    with pytest.raises(UnknownJob):
        await harness.controller.cancel(job_id)
    assert (await outcome(harness, job_id)).state == "succeeded"


async def test_a_job_for_a_free_slot_is_recorded_and_dispatched_in_one_commit(
    autojump_clock: MockClock, harness: Harness
) -> None:
    """Nothing queued and a slot free: the job and its dispatch share one commit, made
    before the agent hears of it, and the dispatch is out when submit returns."""
    agent = harness.agent("a")
    commits_at_send: list[int] = []
    deliver = agent.send_nowait

    def send_nowait(message: Any) -> None:
        commits_at_send.append(harness.repo.statistics().commits)
        deliver(message)

    agent.send_nowait = send_nowait  # type: ignore[method-assign]
    await harness.repo.flush()
    before = harness.repo.statistics().commits
    job_id = await submit(harness)
    [dispatch] = agent.of_type(Dispatch)  # already sent: no waiting
    assert (dispatch.job_id, dispatch.attempt) == (job_id, 1)
    assert commits_at_send == [before + 1]  # committed, in one transaction, before the send
    events = await harness.repo.events_since(0)
    created, dispatched = [e for e in events if e.subject == job_id]
    assert (created.kind, dispatched.kind, dispatched.data["state"]) == (
        "job.created",
        "attempt.state",
        "dispatched",
    )
    assert created.at == dispatched.at  # one batch
    job = await harness.job(job_id)
    assert (job["state"], job["attempt_list"][0]["agent"]) == ("running", "a")


async def test_a_new_job_does_not_overtake_one_waiting_for_the_slot(
    autojump_clock: MockClock, harness: Harness
) -> None:
    """A slot that frees while a job waits goes to the waiting job, not to a newer one."""
    agent = harness.agent("a", slots=1)
    first = await submit(harness)
    waiting = await submit(harness)
    [dispatch] = await agent.receive(Dispatch)
    assert dispatch.job_id == first
    agent.finish(dispatch)  # the slot is free now, before any dispatch round has run
    newer = await submit(harness)
    second = (await agent.receive(Dispatch, 2))[1]
    assert second.job_id == waiting
    agent.finish(second)
    third = (await agent.receive(Dispatch, 3))[2]
    assert third.job_id == newer


async def test_a_replayed_call_with_a_free_slot_returns_its_job_and_dispatches_nothing(
    autojump_clock: MockClock, harness: Harness
) -> None:
    """A parent's call made again (after a restart) finds its job; no second attempt is sent."""
    from wfe.engine.runtime.jobs import JobState, NewJob, create_job

    parent = await harness.repo.write(
        create_job(NewJob(kind="action", name="demo.parent", params={}, state=JobState.RUNNING))
    )
    agent = harness.agent("a", slots=2)
    job_id = await submit(harness, parent=parent, call_seq=0)
    [dispatch] = await agent.receive(Dispatch)
    again = await submit(harness, parent=parent, call_seq=0)
    assert again == job_id
    agent.finish(dispatch)
    assert (await outcome(harness, job_id)).state == "succeeded"
    assert len(agent.of_type(Dispatch)) == 1
    job = await harness.job(job_id)
    assert len(job["attempt_list"]) == 1


async def test_an_end_that_cannot_be_committed_is_not_acknowledged_and_stops_the_controller(
    autojump_clock: MockClock, repo: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If an attempt's end fails to commit, the agent gets no Ack (it keeps the result for
    the next start) and the controller stops with the error instead of going on."""
    from wfe.engine.errors import EngineError
    from wfe.engine.repository import attempts

    from ..conftest import make_controller

    def attempt_ended(*args: Any, **kwargs: Any) -> Any:
        def op(tx: Any) -> None:
            raise EngineError("disk on fire")

        return op

    monkeypatch.setattr(attempts, "attempt_ended", attempt_ended)
    h = make_controller(repo)
    agent = FakeAgent(h.controller, "a")
    with pytest.raises(BaseExceptionGroup) as caught:
        async with trio.open_nursery() as nursery:
            await nursery.start(h.controller.run)
            agent.connect()
            await submit(h)
            [dispatch] = await agent.receive(Dispatch)
            agent.accept(dispatch)
            agent.finish(dispatch)
            await trio.sleep_forever()

    def leaves(exc: BaseException) -> list[BaseException]:
        if isinstance(exc, BaseExceptionGroup):
            return [leaf for inner in exc.exceptions for leaf in leaves(inner)]
        return [exc]

    assert [str(leaf) for leaf in leaves(caught.value)] == ["disk on fire"]
    assert agent.of_type(Ack) == []


async def test_a_call_replayed_while_its_end_is_written_is_not_run_again(
    autojump_clock: MockClock, harness: Harness
) -> None:
    """A parent's call made again while the job's end waits to be committed (its output is
    still coming) finds the job: no new attempt, and the end is committed once."""
    from wfe.engine.runtime.jobs import JobState, NewJob, create_job
    from wfe.protocols.messages import OutputChunk, Stream

    parent = await harness.repo.write(
        create_job(NewJob(kind="action", name="demo.parent", params={}, state=JobState.RUNNING))
    )
    agent = harness.agent("a", slots=2)
    job_id = await submit(harness, parent=parent, call_seq=0)
    [dispatch] = await agent.receive(Dispatch)
    agent.accept(dispatch)
    agent.finish(dispatch, chunks=1)  # its one chunk has not arrived: the end waits for it
    await trio.testing.wait_all_tasks_blocked()
    again = await submit(harness, parent=parent, call_seq=0)
    assert again == job_id
    await trio.testing.wait_all_tasks_blocked()
    assert len(agent.of_type(Dispatch)) == 1
    agent.say(OutputChunk(job_id=job_id, attempt=1, stream=Stream.STDOUT, seq=0, data=b"hi\n"))
    assert (await outcome(harness, job_id)).state == "succeeded"
    job = await harness.job(job_id)
    assert [a["state"] for a in job["attempt_list"]] == ["succeeded"]
    assert len(agent.of_type(Dispatch)) == 1
