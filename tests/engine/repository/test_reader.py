"""Reads: read-only connections on worker threads, one snapshot per call."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable

import pytest
import trio

from wfe.engine.repository import Repository, Tx

GUARD = 10


def set_counter(value: int) -> Callable[[Tx], None]:
    def op(tx: Tx) -> None:
        tx.execute(
            "INSERT INTO counters (name, value) VALUES ('c', ?)"
            " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (value,),
        )

    return op


def read_counter(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT value FROM counters WHERE name = 'c'").fetchone()[0])


async def test_read_sees_every_returned_write(repo: Repository) -> None:
    """After write() returns, a read sees its data."""
    with trio.fail_after(GUARD):
        for value in range(1, 30):
            await repo.write(set_counter(value))
            assert await repo.read(read_counter) == value


async def test_read_runs_off_the_trio_thread(repo: Repository) -> None:
    """The read function runs on a worker thread."""
    main = threading.get_ident()
    with trio.fail_after(GUARD):
        ident = await repo.read(lambda conn: threading.get_ident())
    assert ident != main


async def test_read_connections_cannot_write(repo: Repository) -> None:
    """A read that tries to write fails; the database is unchanged."""
    with trio.fail_after(GUARD):
        with pytest.raises(sqlite3.OperationalError, match="readonly|read-only"):
            await repo.read(lambda c: c.execute("INSERT INTO counters VALUES ('x', 1)"))
        assert await repo.read(lambda c: c.execute("SELECT count(*) FROM counters").fetchone()) == (
            0,
        )


async def test_read_is_one_snapshot(repo: Repository) -> None:
    """A read sees the database as of its start, even while later writes commit."""
    await repo.write(set_counter(1))
    first_read = threading.Event()
    write_committed = threading.Event()

    def two_reads(conn: sqlite3.Connection) -> tuple[int, int]:
        before = read_counter(conn)
        first_read.set()
        write_committed.wait(GUARD)
        return before, read_counter(conn)

    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            results: list[tuple[int, int]] = []

            async def reader() -> None:
                results.append(await repo.read(two_reads))

            nursery.start_soon(reader)
            await trio.to_thread.run_sync(first_read.wait, abandon_on_cancel=True)
            await repo.write(set_counter(2))
            write_committed.set()
    assert results == [(1, 1)]
    assert await repo.read(read_counter) == 2


async def test_reads_run_concurrently(repo: Repository) -> None:
    """Several reads can be in flight at once (the pool has more than one connection)."""
    barrier = threading.Barrier(3, timeout=GUARD)

    def meet(conn: sqlite3.Connection) -> int:
        barrier.wait()
        return int(conn.execute("SELECT 1").fetchone()[0])

    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(repo.read, meet)
