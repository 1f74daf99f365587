"""The controller's typed repository functions (``wfe.engine.repository.attempts``), on a
real SQLite file."""

from __future__ import annotations

from wfe.engine.repository import Repository, attempts, queries
from wfe.engine.repository.jobs import JobState, NewJob, create_job
from wfe.engine.repository.writer import Tx
from wfe.protocols.attempt import AgentLost, AttemptMachine, AttemptState, Dispatched, Finished
from wfe.protocols.messages import Capabilities, FinishReason, JobFinished


async def _queued(repo: Repository) -> str:
    new = NewJob(kind="rscript", name="noop", params={}, state=JobState.QUEUED, max_attempts=3)
    return (await repo.write(create_job(new))).id


def _machine(job_id: str, attempt: int, agent: str = "a") -> AttemptMachine:
    machine = AttemptMachine(job_id=job_id, attempt=attempt, timeout=60.0)
    machine.handle(Dispatched(agent=agent, at=0.0))
    return machine


async def test_an_attempt_end_and_the_requeue_commit_together(repo: Repository) -> None:
    """A failed attempt's end and its job queued again are one transaction: the attempt row,
    the job's state and both events, in that order, with the retry's delay."""
    job_id = await _queued(repo)
    machine = _machine(job_id, 1)
    await repo.write(attempts.attempts_dispatched([machine]))
    machine.handle(Finished(reason=FinishReason.EXITED, at=1.0, exit_code=3))
    ended = attempts.attempt_ended(machine, None, attempts.JobRequeued(delay=2.0))
    await repo.write(ended)
    detail = await repo.read(queries.job_detail(job_id))
    assert detail["state"] == JobState.QUEUED
    events = await repo.read(queries.events_for(job_id))
    assert [(e["kind"], e["data"].get("state")) for e in events][-2:] == [  # type: ignore[union-attr]
        ("attempt.state", "failed"),
        ("job.state", "queued"),
    ]
    assert events[-1]["data"] == {"state": "queued", "retry_after": 2.0, "next_attempt": 2}


async def test_the_last_attempt_reads_back_typed_with_its_result(repo: Repository) -> None:
    """last_attempt is the latest attempt, its result decoded; None for a job with none."""
    job_id = await _queued(repo)
    assert await repo.read(attempts.last_attempt(job_id)) is None
    machine = _machine(job_id, 1)
    await repo.write(attempts.attempts_dispatched([machine]))
    report = JobFinished(
        job_id=job_id, attempt=1, reason=FinishReason.EXITED, exit_code=0, result={"n": [1, 2]}
    )
    machine.handle(Finished(reason=FinishReason.EXITED, at=1.0, exit_code=0))
    end = attempts.JobEnded(state=JobState.SUCCEEDED)
    await repo.write(attempts.attempt_ended(machine, report, end))
    record = await repo.read(attempts.last_attempt(job_id))
    assert record is not None
    assert (record.attempt, record.state, record.agent, record.exit_code) == (
        1,
        "succeeded",
        "a",
        0,
    )
    assert record.result == {"n": [1, 2]}


async def test_recovery_reads_unfinished_jobs_with_their_attempt_counts(repo: Repository) -> None:
    """load_unfinished counts failed and lost attempts and names the last one's state and
    agent; a job without attempts has none; a finished job is not there."""
    busy, fresh, done = await _queued(repo), await _queued(repo), await _queued(repo)
    first, second, third = _machine(busy, 1, "a"), _machine(busy, 2, "b"), _machine(busy, 3, "c")
    await repo.write(attempts.attempts_dispatched([first, second, third]))
    first.handle(Finished(reason=FinishReason.EXITED, at=1.0, exit_code=1))
    second.handle(AgentLost(at=2.0))
    for machine in (first, second):
        await repo.write(attempts.attempt_ended(machine, None, attempts.JobRequeued(delay=0.0)))
    await repo.write(attempts.job_ended_without_attempt(done, JobState.CANCELLED, "cancelled"))
    found = {u.job.id: u.last for u in await repo.read(attempts.load_unfinished)}
    assert found == {
        busy: attempts.LastAttempt(
            attempt=3, failures=1, lost=1, state=AttemptState.DISPATCHED, agent="c"
        ),
        fresh: None,
    }


async def test_known_agents_keep_their_transport_and_unreadable_capabilities_are_none(
    repo: Repository,
) -> None:
    """An agent seen is known with its capabilities and transport; a lost one says so; a
    capabilities column that is not what an agent offers reads as None, not an error."""
    caps = Capabilities(slots=4, site="cern", tags=("gpu",))
    connected, lost = attempts.AgentState.CONNECTED, attempts.AgentState.LOST
    await repo.write(attempts.agent_seen("a", "xmpp", caps, connected))
    await repo.write(attempts.agent_seen("b", "local", Capabilities(slots=1), connected))
    await repo.write(attempts.agent_state("b", lost, "missed its heartbeat deadline"))

    def garble(tx: Tx) -> None:
        tx.execute("UPDATE agents SET capabilities = '[1, 2]' WHERE name = 'b'")

    await repo.write(garble)
    known = await repo.read(attempts.known_agents)
    assert known == [
        attempts.KnownAgent(name="a", transport="xmpp", capabilities=caps, lost=False),
        attempts.KnownAgent(name="b", transport="local", capabilities=None, lost=True),
    ]
