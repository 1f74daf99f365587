"""The agent starts dispatched attempts concurrently, keeps each attempt's messages in order,
and keeps fsyncs off the start of an attempt."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from wfe.agents.spool import Spool
from wfe.protocols.messages import (
    Ack,
    AgentStatus,
    AttemptRef,
    Capabilities,
    FinishReason,
    JobAccepted,
    JobFinished,
    Message,
    OutputChunk,
    Shutdown,
    StatusRequest,
)


class GatedSpool(Spool):
    """A real spool whose ``begin_output`` and ``drop`` wait for a gate for chosen jobs."""

    def __init__(self, path: Path, *, slow_begin: str = "", slow_drop: str = "") -> None:
        super().__init__(path)
        self.slow_begin, self.slow_drop = slow_begin, slow_drop
        self.gate = trio.Event()
        self.waiting = trio.Event()

    async def begin_output(self, job_id: str, attempt: int) -> None:
        if job_id == self.slow_begin:
            self.waiting.set()
            await self.gate.wait()
        await super().begin_output(job_id, attempt)

    async def drop(self, job_id: str, attempt: int) -> bool:
        if job_id == self.slow_drop:
            self.waiting.set()
            await self.gate.wait()
        return await super().drop(job_id, attempt)


async def collect(link, h, count: int) -> dict[str, list[Message]]:
    """Messages per job id until ``count`` results have arrived."""
    per_job: dict[str, list[Message]] = {}
    finished = 0
    while finished < count:
        message = await h.receive(link)
        per_job.setdefault(message.job_id, []).append(message)
        finished += isinstance(message, JobFinished)
    return per_job


async def test_two_dispatches_start_without_waiting_for_each_other(
    agents, engine, h, tmp_path: Path
) -> None:
    """Two scripts that each wait for the other's marker both finish: they run side by side."""
    agents.start(agents.build())
    link = await engine.accept()
    await h.receive(link)  # hello
    a, b = tmp_path / "a", tmp_path / "b"
    for mine, other, job in ((a, b, "job-a"), (b, a, "job-b")):
        script = f"touch {mine}\nwhile [ ! -e {other} ]; do sleep 0.01; done\n"
        await link.send(h.make_dispatch(script, job_id=job))
    per_job = await collect(link, h, 2)
    for job in ("job-a", "job-b"):
        assert isinstance(per_job[job][0], JobAccepted)
        assert per_job[job][-1].reason is FinishReason.EXITED
        assert per_job[job][-1].exit_code == 0


async def test_a_slow_start_does_not_hold_up_the_next_dispatch(
    agents, engine, h, tmp_path: Path
) -> None:
    """While one attempt is still being set up, the next dispatch is read, started and finished."""
    spool = GatedSpool(tmp_path / "spool", slow_begin="slow")
    agents.start(agents.build(spool=spool))
    link = await engine.accept()
    await h.receive(link)  # hello
    await link.send(h.make_dispatch("echo slow\n", job_id="slow"))
    await link.send(h.make_dispatch("echo fast\n", job_id="fast"))
    seen, finished = await h.receive_until_finished(link)
    assert finished.job_id == "fast" and finished.reason is FinishReason.EXITED
    assert all(m.job_id == "fast" for m in seen)
    assert spool.waiting.is_set() and not spool.gate.is_set()
    await link.send(h.make_dispatch("echo slow\n", job_id="slow"))  # still starting: a duplicate
    spool.gate.set()
    seen, finished = await h.receive_until_finished(link)
    assert isinstance(seen[0], JobAccepted) and seen[0].job_id == "slow"
    assert finished.job_id == "slow" and h.output_of(seen) == b"slow\n"


async def test_an_attempt_still_starting_is_counted_and_cancellable(
    agents, engine, h, tmp_path: Path
) -> None:
    """A reserved attempt holds its slot; cancelled before it starts, it ends without running."""
    spool = GatedSpool(tmp_path / "spool", slow_begin="job-1")
    agents.start(agents.build(spool=spool, capabilities=Capabilities(slots=1)))
    link = await engine.accept()
    await h.receive(link)  # hello
    runs = tmp_path / "runs"
    await link.send(h.make_dispatch(f"echo ran > {runs}\n"))
    await link.send(h.make_dispatch("true\n", job_id="other"))
    refused = await h.receive(link)
    assert refused.job_id == "other" and "no free slot" in refused.reason
    await link.send(StatusRequest())
    status = await h.receive(link, skip=())
    assert isinstance(status, AgentStatus)
    assert status.free_slots == 0 and status.running == (AttemptRef(job_id="job-1", attempt=1),)
    await link.send(Shutdown(reason="bye"))
    spool.gate.set()
    seen, finished = await h.receive_until_finished(link)
    assert seen == [] and finished.reason is FinishReason.CANCELLED
    with trio.fail_after(h.GUARD):
        await agents.done.wait()
    assert not runs.exists()


async def test_job_accepted_precedes_each_attempts_chunks_and_result(agents, engine, h) -> None:
    """With several attempts starting at once, each one's messages come accepted, chunks, result."""
    agents.start(agents.build(capabilities=Capabilities(slots=4)))
    link = await engine.accept()
    await h.receive(link)  # hello
    jobs = [f"job-{i}" for i in range(4)]
    for job in jobs:
        await link.send(h.make_dispatch(f"echo {job}\necho {job} >&2\necho done\n", job_id=job))
    per_job = await collect(link, h, len(jobs))
    assert sorted(per_job) == jobs
    for job, messages in per_job.items():
        accepted, *chunks, finished = messages
        assert isinstance(accepted, JobAccepted), messages
        assert all(isinstance(c, OutputChunk) for c in chunks), messages
        assert [c.seq for c in chunks] == list(range(len(chunks)))
        assert finished.chunks == len(chunks)
        assert h.output_of(chunks).count(job.encode()) == 2


async def test_an_ack_does_not_hold_up_the_next_dispatch(agents, engine, h, tmp_path: Path) -> None:
    """A slow spool drop runs aside: the next dispatch runs; the acked result is no longer held."""
    spool = GatedSpool(tmp_path / "spool", slow_drop="job-1")
    agent = agents.build(spool=spool)
    agents.start(agent)
    link = await engine.accept()
    await h.receive(link)  # hello
    await link.send(h.make_dispatch("true\n"))
    await h.receive_until_finished(link)
    await link.send(Ack(job_id="job-1", attempt=1))
    await link.send(h.make_dispatch("true\n", job_id="next"))
    _, finished = await h.receive_until_finished(link)
    assert finished.job_id == "next"
    assert spool.waiting.is_set()
    assert AttemptRef(job_id="job-1", attempt=1) not in agent.status().held  # the heartbeat's view
    await link.send(StatusRequest())  # answered once the drop is done
    spool.gate.set()
    status = await h.receive(link, skip=())
    assert isinstance(status, AgentStatus)
    assert status.held == (AttemptRef(job_id="next", attempt=1),)
    assert spool.get("job-1", 1) is None


async def test_the_workdir_is_removed_after_the_result_unless_kept(
    agents, engine, h, tmp_path: Path
) -> None:
    """An attempt's directory is gone once the agent stops; with keep_workdirs it stays."""
    for keep in (False, True):
        agents.done = trio.Event()
        workdir = tmp_path / f"work-{keep}"
        spool = Spool(tmp_path / f"spool-{keep}")
        agents.start(agents.build(workdir=workdir, keep_workdirs=keep, spool=spool))
        link = await engine.accept()
        await h.receive(link)  # hello
        await link.send(h.make_dispatch("echo hi > file\n", job_id=f"job-{keep}"))
        _, finished = await h.receive_until_finished(link)
        assert finished.job_id == f"job-{keep}" and finished.reason is FinishReason.EXITED
        await link.send(Shutdown())
        with trio.fail_after(h.GUARD):
            await agents.done.wait()
        assert [p.name for p in workdir.iterdir()] == ([f"job-{keep}-1"] if keep else [])


async def test_a_noop_attempt_costs_one_fsync(
    agents, engine, h, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without output: no fsync to start it; one fdatasync of the journal before sending."""
    synced: list[str] = []
    real_fsync, real_fdatasync = os.fsync, os.fdatasync

    def fsync(fd: int) -> None:
        synced.append("fsync " + os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def fdatasync(fd: int) -> None:
        synced.append("fdatasync " + os.readlink(f"/proc/self/fd/{fd}"))
        real_fdatasync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "fdatasync", fdatasync)
    agent = agents.build()
    agents.start(agent)
    link = await engine.accept()
    await h.receive(link)  # hello
    synced.clear()  # start-up rewrites the journal
    await link.send(h.make_dispatch("true\n"))
    seen, finished = await h.receive_until_finished(link)
    assert isinstance(seen[0], JobAccepted) and finished.chunks == 0
    assert synced == [f"fdatasync {agent.spool.path}/journal"]
    assert agent.spool.get("job-1", 1) == finished
    assert Spool(agent.spool.path).get("job-1", 1) == finished  # on disk, not just in memory
