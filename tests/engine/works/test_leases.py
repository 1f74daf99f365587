"""The lease task: a running work whose worker stops sending heartbeats goes back to its bucket."""

from __future__ import annotations

import pytest
import trio

from wfe.engine.repository import Repository
from wfe.engine.repository.works import (
    WorkQuery,
    deposit_works,
    read_work,
    update_work,
    withdraw_work,
)
from wfe.engine.works.leases import Lease, Leases, due
from wfe.engine.works.model import Work, WorkError, WorkStatus


async def withdraw(repo: Repository, leases: Leases) -> Work:
    got = await repo.write(withdraw_work(WorkQuery(pipeline="p"), worker="w"))
    assert got is not None
    leases.hold(got)
    return got


async def wait_status(repo: Repository, work_id: str, status: WorkStatus) -> Work:
    async with repo.subscribe() as events:
        while (now := await repo.read(read_work(work_id))).status is not status:
            await events.__anext__()
    return now


def test_due_leases_are_those_past_their_deadline() -> None:
    """``due`` picks the leases whose deadline is at or before now, soonest first."""
    held = {
        name: Lease(work_id=name, attempt=1, period=5.0, deadline=deadline)
        for name, deadline in (("a", 3.0), ("b", 1.0), ("c", 9.0))
    }
    assert [x.work_id for x in due(held, 3.0)] == ["b", "a"]
    assert due(held, 0.5) == []


async def test_a_silent_worker_loses_its_work_at_the_lease_end(
    repo: Repository, autojump_clock: trio.abc.Clock
) -> None:
    """Without heartbeats the work is queued again, as attempt 2, exactly ``timeout``
    seconds after it was withdrawn; with them it stays running."""
    (wid,) = await repo.write(deposit_works([Work(pipeline="p", timeout=10)], by=None))
    leases = Leases(repo)
    async with trio.open_nursery() as nursery:
        await nursery.start(leases.run)
        start = trio.current_time()
        await withdraw(repo, leases)
        for _ in range(3):  # heartbeats every 6 s keep it
            await trio.sleep(6)
            leases.renew(wid, 1)
        assert (await repo.read(read_work(wid))).status is WorkStatus.RUNNING
        again = await wait_status(repo, wid, WorkStatus.QUEUED)
        assert trio.current_time() == start + 18 + 10
        assert again.attempt == 2 and leases.expired == 1
        with pytest.raises(WorkError, match="attempt 1 holds no lease"):
            leases.renew(wid, 1)
        with pytest.raises(WorkError, match="attempt 1 is over"):
            await repo.write(update_work(wid, attempt=1, changes={"status": "success"}, by="w"))
        nursery.cancel_scope.cancel()


async def test_spent_retries_end_in_failure_with_the_reason(
    repo: Repository, autojump_clock: trio.abc.Clock
) -> None:
    """A work whose every lease runs out fails after ``retries + 1`` attempts, its results
    saying why; a released lease (the work ended) never expires."""
    (wid, other) = await repo.write(
        deposit_works(
            [Work(pipeline="p", timeout=5, retries=1, priority=5), Work(pipeline="p")], by=None
        )
    )
    leases = Leases(repo)
    async with trio.open_nursery() as nursery:
        await nursery.start(leases.run)
        start = trio.current_time()
        await withdraw(repo, leases)
        await wait_status(repo, wid, WorkStatus.QUEUED)
        await withdraw(repo, leases)
        failed = await wait_status(repo, wid, WorkStatus.FAILURE)
        assert trio.current_time() == start + 10
        assert failed.attempt == 2
        assert failed.results == {
            "error": "lease of 5 s ran out on attempt 2 (the worker stopped sending heartbeats)"
        }
        got = await withdraw(repo, leases)
        assert got.id == other
        await repo.write(update_work(other, attempt=1, changes={"status": "success"}, by="w"))
        leases.release(other)
        await trio.sleep(2 * 3600)
        assert (await repo.read(read_work(other))).status is WorkStatus.SUCCESS
        assert leases.held() == {}
        nursery.cancel_scope.cancel()


async def test_a_restarted_engine_gives_running_works_a_full_lease(
    repo: Repository, autojump_clock: trio.abc.Clock
) -> None:
    """``recover`` holds every running work's lease for its full timeout from now."""
    (wid,) = await repo.write(deposit_works([Work(pipeline="p", timeout=30)], by=None))
    await repo.write(withdraw_work(WorkQuery(pipeline="p"), worker="w"))
    await trio.sleep(1000)  # the engine was down: it does not count
    leases = Leases(repo)
    assert await leases.recover() == 1
    async with trio.open_nursery() as nursery:
        await nursery.start(leases.run)
        start = trio.current_time()
        await wait_status(repo, wid, WorkStatus.QUEUED)
        assert trio.current_time() == start + 30
        nursery.cancel_scope.cancel()
