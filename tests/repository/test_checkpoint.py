"""WAL checkpoints run in the background, not inside the writer's commits; inline mode for MockClock."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import trio
import trio.testing

from engine.repository import Event, Tx, open_repository

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
            checkpointed = repo._checkpointer.wait_checkpointed
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
