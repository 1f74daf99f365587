"""The typed functions on the ``jobs`` table (wfe.engine.repository.jobs), on a real SQLite file."""

from __future__ import annotations

import pytest

from wfe.engine.repository import Repository, Tx, jobs
from wfe.engine.repository.jobs import JobState, NewJob


async def _job(repo: Repository, **fields: object) -> jobs.JobRow:
    new = NewJob(kind="rscript", name="checksum", params={"n": 1}, **fields)  # type: ignore[arg-type]
    return await repo.write(jobs.create_job(new))


async def test_a_created_job_reads_back_as_written(repo: Repository) -> None:
    """create_job returns the row exactly as get_job/read_job read it back, state an Enum."""
    made = await _job(repo, state=JobState.QUEUED, requirements={"memory": 64}, max_attempts=3)
    read = await repo.read(jobs.read_job(made.id))
    assert read == made
    assert read.state is JobState.QUEUED and read.root_id == made.id
    assert await repo.read(jobs.read_job("j999999")) is None


async def test_a_replayed_call_returns_the_job_it_made_before(repo: Repository) -> None:
    """insert_job with a (parent, call_seq) already recorded writes nothing and returns it."""
    parent = await _job(repo)
    first = await _job(repo, parent_id=parent.id, root_id=parent.id, call_seq=1)

    def again(tx: Tx) -> tuple[jobs.JobRow, bool]:
        return jobs.insert_job(tx, NewJob(kind="rscript", name="x", params={}, parent_id=parent.id,
                                          root_id=parent.id, call_seq=1))  # fmt: skip

    found, created = await repo.write(again)
    assert (found, created) == (first, False)


async def test_set_job_state_stamps_start_and_end(repo: Repository) -> None:
    """Starting stamps started_at once; a terminal state stamps ended_at with result and error."""
    job = await _job(repo)
    await repo.write(jobs.set_job_state(job.id, JobState.RUNNING, started=True))
    running = await repo.read(jobs.read_job(job.id))
    assert running is not None and running.started_at is not None and running.ended_at is None
    await repo.write(jobs.set_job_state(job.id, JobState.SUCCEEDED, result={"ok": [1, 2]}))
    done = await repo.read(jobs.read_job(job.id))
    assert done is not None and done.finished and done.result == {"ok": [1, 2]}
    assert done.ended_at is not None and done.started_at == running.started_at
    assert await repo.read(jobs.job_progress(job.id)) == (JobState.SUCCEEDED, 0)


async def test_a_result_that_is_not_json_changes_nothing(repo: Repository) -> None:
    """set_job_state with a result json cannot encode raises TypeError; the job is as it was."""
    job = await _job(repo)
    with pytest.raises(TypeError):
        await repo.write(jobs.set_job_state(job.id, JobState.SUCCEEDED, result={1j}))  # type: ignore[arg-type]
    assert (await repo.read(jobs.read_job(job.id))) == job


async def test_unfinished_root_actions_are_found_for_a_restart(repo: Repository) -> None:
    """Only root action jobs that have not ended are listed, oldest first."""
    a = await repo.write(jobs.create_job(NewJob(kind="action", name="a", params={})))
    b = await repo.write(jobs.create_job(NewJob(kind="action", name="b", params={})))
    await repo.write(jobs.create_job(NewJob(kind="action", name="c", params={}, parent_id=a.id,
                                            root_id=a.id, call_seq=1)))  # fmt: skip
    await _job(repo)  # an RScript job: not an action
    await repo.write(jobs.set_job_state(b.id, JobState.FAILED, error="boom"))
    found = await repo.read(jobs.unfinished_root_actions)
    assert [j.id for j in found] == [a.id]


async def test_reset_and_attempt_ends_for_a_retry(repo: Repository) -> None:
    """attempt_ends counts failed/timed-out and lost attempts; reset_job clears the end."""
    job = await _job(repo)
    await repo.write(jobs.set_job_state(job.id, JobState.FAILED, error="exit 1"))

    def attempts(tx: Tx) -> None:
        for n, state in enumerate(["failed", "timed_out", "lost", "succeeded"], start=1):
            tx.execute(
                "INSERT INTO attempts (job_id, attempt, state) VALUES (?, ?, ?)", (job.id, n, state)
            )

    await repo.write(attempts)
    ends = await repo.read(lambda conn: jobs.attempt_ends(conn, job.id))
    assert (ends.failures, ends.lost) == (2, 1)
    assert [
        j.id for j in await repo.read(lambda c: jobs.tree_jobs_in(c, job.id, [JobState.FAILED]))
    ] == [job.id]

    reset = await repo.write(lambda tx: jobs.reset_job(tx, job.id, JobState.QUEUED, max_attempts=3))
    assert reset.state is JobState.QUEUED and reset.max_attempts == 3
    assert (reset.ended_at, reset.result, reset.error) == (None, None, None)
    assert await repo.read(lambda c: jobs.tree_jobs_in(c, job.id, [JobState.FAILED])) == []
