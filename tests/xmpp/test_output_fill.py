"""``wfe.engine.dispatch.output_fill``: which output chunks a finished attempt misses, and fetching them."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from wfe.engine.dispatch.output_fill import OutputFill, SeqSet, missing
from wfe.protocols.messages import FinishReason, JobFinished, Message, OutputChunk, Resume, Stream


@given(st.lists(st.integers(min_value=0, max_value=40)), st.integers(min_value=0, max_value=45))
def test_seq_set_is_a_set(seqs: list[int], count: int) -> None:
    """A ``SeqSet`` holds exactly the seqs added, in any order and with repeats, and is whole
    for ``count`` exactly when it holds every seq below ``count``."""
    received = SeqSet()
    for seq in seqs:
        received.add(seq)
    assert [s for s in range(50) if s in received] == sorted(set(seqs))
    assert received.whole(count) == (set(range(count)) <= set(seqs))
    assert missing(count, received.__contains__) == sorted(set(range(count)) - set(seqs))


class FakeRepo:
    """Reads against an in-memory ``output`` table; counts the reads."""

    def __init__(self) -> None:
        self.db = sqlite3.connect(":memory:")
        self.db.execute(
            "CREATE TABLE output (job_id TEXT, attempt INTEGER, seq INTEGER, stream TEXT, data BLOB)"
        )
        self.reads = 0

    def store(self, *seqs: int) -> None:
        for seq in seqs:
            self.db.execute("INSERT INTO output VALUES ('j', 1, ?, 'stdout', x'00')", (seq,))

    async def read(self, fn: Callable[[Any], Any]) -> Any:
        self.reads += 1
        await trio.lowlevel.checkpoint()
        return fn(self.db)


class Link:
    def __init__(self) -> None:
        self.sent: list[Message] = []

    def send_nowait(self, message: Message) -> None:
        self.sent.append(message)


def chunk(seq: int) -> OutputChunk:
    return OutputChunk(job_id="j", attempt=1, stream=Stream.STDOUT, seq=seq, data=b"x")


def finished(chunks: int) -> JobFinished:
    return JobFinished(
        job_id="j", attempt=1, reason=FinishReason.EXITED, exit_code=0, chunks=chunks
    )


async def test_a_result_whose_chunks_all_came_is_complete_without_a_read() -> None:
    """When every counted chunk was seen, ``complete`` returns at once and reads nothing."""
    repo, link = FakeRepo(), Link()
    fill = OutputFill(repo)
    for seq in (2, 0, 1):
        fill.seen(chunk(seq))
    await fill.complete(finished(3), lambda: link)
    assert (repo.reads, link.sent, fill.filled) == (0, [], 0)


async def test_missing_chunks_are_asked_for_and_awaited(autojump_clock: trio.abc.Clock) -> None:
    """Chunks neither stored (before a restart) nor seen are asked for with a ``Resume`` from
    the first missing seq; ``complete`` returns when the last of them arrives."""
    repo, link = FakeRepo(), Link()
    repo.store(0, 1)
    fill = OutputFill(repo)
    fill.seen(chunk(3))
    async with trio.open_nursery() as nursery:
        done = trio.Event()

        async def complete() -> None:
            await fill.complete(finished(6), lambda: link)
            done.set()

        nursery.start_soon(complete)
        await trio.testing.wait_all_tasks_blocked()
        assert link.sent == [Resume(job_id="j", attempt=1, next_seq=2)]
        assert fill.filling("j", 1)
        for seq in (2, 3, 4):  # a replay from 2 on, 3 again
            fill.seen(chunk(seq))
        await trio.testing.wait_all_tasks_blocked()
        assert not done.is_set()
        fill.seen(chunk(5))
    assert done.is_set() and trio.current_time() == 0
    assert (fill.filled, fill.incomplete, fill.filling("j", 1)) == (1, 0, False)


async def test_a_new_link_is_asked_again_and_a_lost_chunk_stops_waiting_after_wait(
    autojump_clock: trio.abc.Clock,
) -> None:
    """While waiting, ``relink`` asks the agent's new link for what is still missing; a chunk
    that never comes ends the wait after ``wait`` seconds, counted as incomplete."""
    repo, old, new = FakeRepo(), Link(), Link()
    fill = OutputFill(repo, wait=30.0)
    fill.seen(chunk(0))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fill.complete, finished(3), lambda: old)
        await trio.testing.wait_all_tasks_blocked()
        fill.seen(chunk(1))
        fill.relink("j", 1, new)
        assert new.sent == [Resume(job_id="j", attempt=1, next_seq=2)]
    assert trio.current_time() == pytest.approx(30.0)
    assert old.sent == [Resume(job_id="j", attempt=1, next_seq=1)]
    assert (fill.filled, fill.incomplete, fill.filling("j", 1)) == (1, 1, False)


class GatedRepo(FakeRepo):
    """A ``FakeRepo`` whose reads wait until ``gate`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = trio.Event()

    async def read(self, fn: Callable[[Any], Any]) -> Any:
        await self.gate.wait()
        return await super().read(fn)


async def test_an_attempt_is_filling_while_its_stored_output_is_read() -> None:
    """From the moment ``complete`` must look for holes, a resent result for the attempt is
    not to be acknowledged (``filling``), and ``relink`` asks nothing before the holes are
    known; once they are, the current link is asked."""
    repo, link, early = GatedRepo(), Link(), Link()
    repo.store(0)
    fill = OutputFill(repo)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fill.complete, finished(3), lambda: link)
        await trio.testing.wait_all_tasks_blocked()
        assert repo.reads == 0 and fill.filling("j", 1)
        fill.relink("j", 1, early)  # the agent's result came again over a new link
        fill.seen(chunk(1))  # seen during the read: no longer missing
        repo.gate.set()
        await trio.testing.wait_all_tasks_blocked()
        assert (early.sent, link.sent) == ([], [Resume(job_id="j", attempt=1, next_seq=2)])
        fill.seen(chunk(2))
    assert (fill.filled, fill.incomplete, fill.filling("j", 1)) == (1, 0, False)


async def test_an_attempt_whose_output_is_stored_whole_stops_filling_after_the_read() -> None:
    """A result whose missing chunks turn out to be stored asks nothing and stops filling."""
    repo, link = FakeRepo(), Link()
    repo.store(0, 1, 2)
    fill = OutputFill(repo)
    await fill.complete(finished(3), lambda: link)
    assert (repo.reads, link.sent, fill.filled, fill.filling("j", 1)) == (1, [], 0, False)
