"""Buckets in the repository: deposit, withdraw, update, expire, cancel, delete, query."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wfe.engine.repository import Repository, open_repository
from wfe.engine.repository.works import (
    WorkQuery,
    bucket_counts,
    cancel_work,
    count_works,
    delete_works,
    deposit_works,
    expire_work,
    find_works,
    read_work,
    update_and_withdraw,
    update_work,
    withdraw_work,
)
from wfe.engine.works.model import UnknownWork, Work, WorkError, WorkStatus


def work(**fields: Any) -> Work:
    return Work(**{"pipeline": "p", **fields})


async def kinds(repo: Repository, subject: str) -> list[str]:
    return [e.kind for e in await repo.events_since(0) if e.subject == subject]


async def test_withdraw_hands_out_highest_priority_first_then_oldest(repo: Repository) -> None:
    """A bucket serves priority 5 before 1, and within a priority the oldest deposit first;
    a deposit of many returns their ids in order and emits one event each."""
    ids = await repo.write(
        deposit_works(
            [work(priority=1), work(priority=5), work(priority=3), work(priority=5)], by="t"
        )
    )
    assert ids == ["w0000001", "w0000002", "w0000003", "w0000004"]
    assert await kinds(repo, "w0000002") == ["work.deposited"]
    order = []
    while (got := await repo.write(withdraw_work(WorkQuery(pipeline="p"), worker="w"))) is not None:
        assert got.status is WorkStatus.RUNNING and got.start is not None
        order.append(got.id)
    assert order == ["w0000002", "w0000004", "w0000003", "w0000001"]
    assert await kinds(repo, "w0000002") == ["work.deposited", "work.withdrawn"]


async def test_withdraw_filters_by_site_tags_event_user_and_priority(repo: Repository) -> None:
    """Only a queued work of the pipeline that matches every filter is withdrawn."""
    await repo.write(
        deposit_works(
            [
                work(site="chime", tags=["a", "b"], event=[7, 9], user="ann", priority=2),
                work(pipeline="other"),
                work(site="kko"),
            ],
            by=None,
        )
    )

    async def take(**filters: Any) -> str | None:
        got = await repo.write(withdraw_work(WorkQuery(pipeline="p", **filters), worker="w"))
        return None if got is None else got.id

    assert await take(site="gbo") is None
    assert await take(tags=("a", "c")) is None
    assert await take(event=8) is None
    assert await take(user="bob") is None
    assert await take(priority=4) is None
    assert await take(site="chime", tags=("b", "a"), event=9, user="ann", priority=2) == "w0000001"
    assert await take(site="kko") == "w0000003"
    assert await take() is None  # "other" is another pipeline's bucket


async def test_a_deposit_is_all_or_nothing(repo: Repository) -> None:
    """A work that already has an id spoils its whole deposit: nothing is stored."""
    with pytest.raises(WorkError, match="^id: set by the bucket"):
        await repo.write(deposit_works([work(), work(id="w9")], by=None))
    assert await repo.read(count_works(WorkQuery())) == 0
    assert await repo.events_since(0) == []


async def test_update_records_success_and_fences_by_attempt(repo: Repository) -> None:
    """The running attempt's update records results and stops the clock; an update for
    another attempt, of a field that is fixed, or of a work that is not running changes
    nothing."""
    (wid,) = await repo.write(deposit_works([work()], by=None))
    with pytest.raises(WorkError, match="is queued: only a running work is updated"):
        await repo.write(update_work(wid, attempt=1, changes={"status": "success"}, by="w"))
    await repo.write(withdraw_work(WorkQuery(pipeline="p"), worker="w"))
    with pytest.raises(WorkError, match="attempt 2 is over"):
        await repo.write(update_work(wid, attempt=2, changes={"status": "success"}, by="w"))
    with pytest.raises(WorkError, match="^priority: may not be updated"):
        update_work(wid, attempt=1, changes={"priority": 5}, by="w")
    with pytest.raises(WorkError, match="^status: an update sets running, success or failure"):
        await repo.write(update_work(wid, attempt=1, changes={"status": "queued"}, by="w"))
    with pytest.raises(UnknownWork):
        await repo.write(update_work("w404", attempt=1, changes={}, by="w"))
    done = await repo.write(
        update_work(
            wid, attempt=1, changes={"results": 3, "status": "success", "plots": ["a.png"]}, by="w"
        )
    )
    assert (done.status, done.results, done.plots) == (WorkStatus.SUCCESS, 3, ["a.png"])
    assert done.stop is not None
    assert await repo.read(read_work(wid)) == done


async def test_failures_requeue_until_retries_are_spent(repo: Repository) -> None:
    """A failed attempt puts the work back with attempt + 1 while attempt <= retries; the
    last one ends it in failure with that attempt's reason."""
    (wid,) = await repo.write(deposit_works([work(retries=1)], by=None))
    for attempt in (1, 2):
        got = await repo.write(withdraw_work(WorkQuery(pipeline="p"), worker="w"))
        assert got is not None and got.attempt == attempt
        after = await repo.write(
            update_work(
                wid,
                attempt=attempt,
                changes={"status": "failure", "results": {"error": f"boom {attempt}"}},
                by="w",
            )
        )
    assert after.status is WorkStatus.FAILURE and after.attempt == 2
    assert after.results == {"error": "boom 2"}
    assert await kinds(repo, wid) == [
        "work.deposited",
        "work.withdrawn",
        "work.updated",
        "work.requeued",
        "work.withdrawn",
        "work.updated",
        "work.failed",
    ]


async def test_an_expiry_is_fenced_by_its_attempt(repo: Repository) -> None:
    """An expired lease requeues its attempt once; a stale expiry changes nothing; the last
    allowed attempt expiring fails the work with the reason in its results."""
    (wid,) = await repo.write(deposit_works([work(retries=1)], by=None))
    await repo.write(withdraw_work(WorkQuery(pipeline="p"), worker="w"))
    again = await repo.write(expire_work(wid, 1, "gone"))
    assert again is not None and (again.status, again.attempt) == (WorkStatus.QUEUED, 2)
    assert await repo.write(expire_work(wid, 1, "gone")) is None
    await repo.write(withdraw_work(WorkQuery(pipeline="p"), worker="w"))
    failed = await repo.write(expire_work(wid, 2, "gone again"))
    assert failed is not None and failed.status is WorkStatus.FAILURE
    assert failed.results == {"error": "gone again"}


async def test_cancel_delete_and_queries(repo: Repository) -> None:
    """Queries filter by status, tags, group and time range, count and page; an operator
    cancels a queued work and deletes works; an ended work cannot be cancelled."""
    works = [
        work(tags=["x"] if i % 2 else None, group=["g"], creation=1000.0 + i) for i in range(7)
    ]
    ids = await repo.write(deposit_works(works, by=None))
    cancelled = await repo.write(cancel_work(ids[0], by="op"))
    assert cancelled.status is WorkStatus.CANCELLED
    with pytest.raises(WorkError, match="has ended"):
        await repo.write(cancel_work(ids[0], by="op"))
    assert await repo.read(count_works(WorkQuery(statuses=(WorkStatus.QUEUED,)))) == 6
    assert await repo.read(count_works(WorkQuery(tags=("x",)))) == 3
    assert await repo.read(count_works(WorkQuery(group="g", since=1002.0, until=1005.0))) == 3
    page = await repo.read(find_works(WorkQuery(pipeline="p"), limit=3, offset=2))
    assert [w.id for w in page] == ids[4:1:-1]
    assert await repo.read(bucket_counts) == {"p": {"cancelled": 1, "queued": 6}}
    assert await repo.write(delete_works([ids[1], ids[2]], by="op")) == ids[1:3]
    with pytest.raises(UnknownWork):
        await repo.write(delete_works([ids[3], "w404"], by="op"))
    assert await repo.read(count_works(WorkQuery())) == 5  # the failed delete removed nothing


# --- many withdrawers at once ----------------------------------------------------------------


async def _race(root: Path, plan: list[tuple[int, int, bool]], workers: int) -> None:
    """Deposit in rounds while ``workers`` tasks withdraw and (sometimes) let leases expire;
    assert no (work, attempt) is ever handed to two withdrawers."""
    async with open_repository(root / "wfe.db") as repo:  # real threads: real interleaving
        handed: dict[tuple[str, int], int] = {}
        deposited: list[str] = []
        done = trio.Event()

        async def worker(me: int) -> None:
            while True:
                got = await repo.write(withdraw_work(WorkQuery(pipeline="p"), worker=f"w{me}"))
                if got is None:
                    if done.is_set():
                        return
                    await trio.lowlevel.checkpoint()
                    continue
                assert got.id is not None
                key = (got.id, got.attempt)
                assert key not in handed, f"{key} handed to w{handed[key]} and w{me}"
                handed[key] = me
                if got.attempt == 1 and int(got.id[1:]) % 3 == 0:
                    await repo.write(expire_work(got.id, got.attempt, "test"))  # comes back
                else:
                    await repo.write(
                        update_work(
                            got.id, attempt=got.attempt, changes={"status": "success"}, by=""
                        )
                    )

        async with trio.open_nursery() as nursery:
            for me in range(workers):
                nursery.start_soon(worker, me)
            for count, priority, pause in plan:
                deposited += await repo.write(
                    deposit_works([work(priority=priority) for _ in range(count)], by=None)
                )
                if pause:
                    await trio.lowlevel.checkpoint()
            done.set()
        assert {w for w, _ in handed} == set(deposited)
        final = await repo.read(find_works(WorkQuery(), limit=10_000))
        assert all(w.status is WorkStatus.SUCCESS for w in final)
        retried = [w.id for w in final if w.id is not None and int(w.id[1:]) % 3 == 0]
        assert all(handed.get((wid, 2)) is not None for wid in retried)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    plan=st.lists(
        st.tuples(st.integers(1, 12), st.integers(1, 5), st.booleans()), min_size=1, max_size=6
    ),
    workers=st.integers(2, 8),
)
def test_concurrent_withdrawers_never_get_the_same_work(
    plan: list[tuple[int, int, bool]], workers: int
) -> None:
    """However deposits, withdrawals, expiries and updates interleave across many
    withdrawers, each (work, attempt) is handed out exactly once and every work ends done."""
    with tempfile.TemporaryDirectory() as root:
        trio.run(_race, Path(root), plan, workers)


def test_the_query_is_a_plain_value() -> None:
    """A query is a frozen value: withdraw uses a copy with the queued status."""
    query = WorkQuery(pipeline="p", statuses=(WorkStatus.SUCCESS,))
    assert attrs.evolve(query, statuses=()) != query


async def test_an_update_can_withdraw_the_next_work_in_the_same_transaction(
    repo: Repository,
) -> None:
    """update_and_withdraw records the update and hands out the next work; when the update
    is refused, nothing is withdrawn."""
    first, second = await repo.write(deposit_works([work(), work()], by=None))
    await repo.write(withdraw_work(WorkQuery(pipeline="p"), worker="w"))
    query = WorkQuery(pipeline="p")
    with pytest.raises(WorkError, match="attempt 2 is over"):
        await repo.write(
            update_and_withdraw(
                first, attempt=2, changes={"status": "success"}, by="w", query=query
            )
        )
    assert (await repo.read(read_work(second))).status is WorkStatus.QUEUED
    done, after = await repo.write(
        update_and_withdraw(first, attempt=1, changes={"status": "success"}, by="w", query=query)
    )
    assert done.status is WorkStatus.SUCCESS
    assert after is not None and (after.id, after.status) == (second, WorkStatus.RUNNING)
    events = [e.kind for e in await repo.events_since(0)]
    assert events[-2:] == ["work.updated", "work.withdrawn"]
