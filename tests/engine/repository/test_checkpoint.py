"""WAL checkpoints run in the background, not inside the writer's commits; inline mode for MockClock."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import trio
import trio.testing

from wfe.engine.repository import Event, Tx, open_repository

GUARD = 10


def blob_row(n: int) -> object:
    def op(tx: Tx) -> None:
        tx.execute(
            "INSERT INTO output (job_id, attempt, seq, stream, data)"
            " VALUES ('job', 1, ?, 'stdout', zeroblob(8192))",
            (n,),
        )

    return op


async def test_checkpoints_copy_the_wal_back_in_the_background(repo_path: Path) -> None:
    """Commits trigger a background checkpoint that moves pages into the database file."""
    with trio.fail_after(GUARD):
        async with open_repository(repo_path, checkpoint_interval=0) as repo:
            autocheckpoint = await repo.write(
                lambda tx: tx.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
            )
            file = trio.Path(repo_path)
            size_before = (await file.stat()).st_size
            checkpointed = repo.wait_checkpointed
            async with trio.open_nursery() as nursery:
                nursery.start_soon(checkpointed)  # parked before the commits below
                await trio.testing.wait_all_tasks_blocked()
                for n in range(200):
                    repo.write_nowait(blob_row(n))  # type: ignore[arg-type]
                await repo.flush()
            while (await file.stat()).st_size == size_before:
                await checkpointed()  # a run may have started before the last commit
            stats = repo.statistics()
    assert autocheckpoint == 0  # the writer's commits never checkpoint
    assert stats.checkpoints >= 1 and stats.wal_frames > 0
    assert (await file.stat()).st_size > 200 * 8192
    assert not await trio.Path(f"{repo_path}-wal").exists()  # closing removed the WAL
    conn = sqlite3.connect(repo_path)
    assert conn.execute("SELECT count(*) FROM output").fetchone()[0] == 200


async def test_inline_mode_runs_on_a_mock_clock(repo_path: Path, autojump_clock: object) -> None:
    """With inline=True, writes, reads and events work while virtual time jumps."""
    async with open_repository(repo_path, inline=True) as repo:
        async with repo.subscribe() as subscription:
            start = trio.current_time()
            await trio.sleep(3600)
            await repo.write(lambda tx: tx.emit("job.state", "job-1", {"state": "running"}))
            event = await subscription.__anext__()
            assert trio.current_time() == start + 3600
        assert isinstance(event, Event) and event.subject == "job-1"
        assert await repo.events_since(0) == [event]
        assert repo.statistics().checkpoints == 0  # SQLite's own autocheckpoint does it inline


def chunk_row(n: int, size: int = 64 * 1024) -> object:
    def op(tx: Tx) -> None:
        tx.execute(
            "INSERT INTO output (job_id, attempt, seq, stream, data)"
            " VALUES ('job', 1, ?, 'stdout', zeroblob(?))",
            (n, size),
        )
        tx.emit("output.stored", "job", {"seq": n})

    return op


async def test_the_wal_stays_under_its_limit_while_readers_read(repo_path: Path) -> None:
    """20 MB written through a repository whose WAL limit is 1 MB: the WAL file is cut back
    each time it passes half the limit, never grows past the limit, although a reader reads
    all the while; every row is stored."""
    wal = trio.Path(f"{repo_path}-wal")
    largest = 0
    reads = 0
    with trio.fail_after(GUARD * 3):
        async with open_repository(repo_path, wal_max_mb=1) as repo:

            async def reader() -> None:
                nonlocal reads
                while True:
                    await repo.read(lambda c: c.execute("SELECT count(*) FROM output").fetchone())
                    reads += 1

            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader)
                for n in range(320):
                    await repo.write(chunk_row(n))  # type: ignore[arg-type]
                    if await wal.exists():
                        largest = max(largest, (await wal.stat()).st_size)
                nursery.cancel_scope.cancel()
            stats = repo.statistics()
            rows = await repo.read(lambda c: c.execute("SELECT count(*) FROM output").fetchone()[0])
    assert rows == 320 and reads > 0
    assert stats.wal_truncations >= 10  # about one per half MB
    assert stats.wal_pause_max > 0  # measured: how long the writer waited for a cut
    assert stats.wal_peak_bytes <= 1024 * 1024
    assert 0 < largest <= 1024 * 1024
    assert stats.wal_peak_bytes >= largest  # the writer saw every size this test saw


async def test_a_reader_that_stays_delays_the_cut_but_never_the_writes(repo_path: Path) -> None:
    """A reader holding one snapshot open keeps the WAL from being cut (SQLite must keep the
    frames it reads), yet writes go on committing; once it ends, the next cut empties the WAL."""
    with trio.fail_after(GUARD * 3):
        async with open_repository(repo_path, wal_max_mb=1) as repo:
            await repo.write(chunk_row(0))  # type: ignore[arg-type]
            reader = sqlite3.connect(
                f"{repo_path.as_uri()}?mode=ro", uri=True, isolation_level=None
            )
            reader.execute("BEGIN")
            assert reader.execute("SELECT count(*) FROM output").fetchone() == (1,)
            for n in range(1, 40):  # 2.5 MB: past the limit, with the reader holding on
                await repo.write(chunk_row(n))  # type: ignore[arg-type]
            held = repo.statistics()
            assert reader.execute("SELECT count(*) FROM output").fetchone() == (1,)  # its snapshot
            reader.execute("ROLLBACK")
            reader.close()
            n = 40
            while repo.statistics().wal_truncations == held.wal_truncations:
                await repo.write(chunk_row(n))  # type: ignore[arg-type]
                n += 1
            after = repo.statistics()
            rows = await repo.read(lambda c: c.execute("SELECT count(*) FROM output").fetchone()[0])
    assert held.wal_bytes > 1024 * 1024  # the reader kept it from being cut
    assert rows == n
    assert after.wal_bytes < 1024 * 1024
