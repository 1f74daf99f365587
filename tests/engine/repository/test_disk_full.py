"""A full disk loses no write: the refused batch waits, new work is refused, all commits later.

Two kinds of "full disk", both real SQLite errors: ``PRAGMA max_page_count`` on the writer's
connection (set by the ops themselves; SQLite then fails a write with SQLITE_FULL exactly as on
a full disk, and raising it gives the room back), and a real 8 MB tmpfs that a filler file
fills (ENOSPC from the kernel). Real time with ``fail_after`` guards: real threads run.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import outcome
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from wfe.engine.repository import (
    Repository,
    RepositoryError,
    RepositoryFull,
    Tx,
    open_repository,
)

if TYPE_CHECKING:
    from tests.engine.repository.conftest import SmallFs

GUARD = 20


class PageLimit:
    """A disk of ``pages`` database pages: each op wrapped by ``limited`` sets the writer
    connection's ``max_page_count`` before it runs, so a write past it fails with SQLITE_FULL.
    ``grow()`` is the space returning."""

    def __init__(self, pages: int) -> None:
        self.pages = pages
        self.tries: dict[str, int] = {}
        self._retried = threading.Event()

    def limited(self, name: str, op: Callable[[Tx], Any]) -> Callable[[Tx], Any]:
        def run(tx: Tx) -> Any:
            self.tries[name] = self.tries.get(name, 0) + 1
            if self.tries[name] >= 2:
                self._retried.set()
            tx.execute(f"PRAGMA max_page_count = {self.pages:d}")
            return op(tx)

        return run

    async def retried(self) -> None:
        """Return once some op has run a second time (its batch was tried again)."""
        await trio.to_thread.run_sync(self._retried.wait, abandon_on_cancel=True)

    def grow(self) -> None:
        self.pages = 1 << 30


def blob(name: str, size: int, seq: int = 0) -> Callable[[Tx], str]:
    def op(tx: Tx) -> str:
        tx.execute(
            "INSERT INTO output (job_id, attempt, seq, stream, data)"
            " VALUES (?, 1, ?, 'stdout', zeroblob(?))",
            (name, seq, size),
        )
        tx.emit("output.stored", name, {"seq": seq})
        return name

    return op


async def page_count(repo: Repository) -> int:
    return int(await repo.read(lambda c: c.execute("PRAGMA page_count").fetchone()[0]))


def committed(path: Path) -> list[tuple[int, str, str]]:
    """Every event in the file: (id, subject, data)."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT id, subject, data FROM events ORDER BY id").fetchall()
    finally:
        conn.close()


async def test_a_batch_the_disk_refuses_waits_and_commits_in_order_when_room_returns(
    repo: Repository, gate: Any, repo_path: Path
) -> None:
    """SQLITE_FULL in one op fails no op: its batch is kept and tried again, writes queued
    behind it wait, new work is refused with a one-line reason and reads go on; once there
    is room everything commits, in the order it was written."""
    disk = PageLimit(await page_count(repo) + 8)
    outcomes: dict[str, object] = {}

    async def run(name: str, op: Callable[[Tx], Any]) -> None:
        outcomes[name] = await repo.write(op)

    with trio.fail_after(GUARD):
        await gate.hold()
        async with trio.open_nursery() as nursery:
            for name, size in (("small-1", 100), ("huge", 1 << 20), ("small-2", 100)):
                nursery.start_soon(run, name, disk.limited(name, blob(name, size)))
                await gate.settle()
            gate.release()
            await repo.wait_trouble(present=True)
            nursery.start_soon(run, "behind", blob("behind", 100))  # queued behind the held batch
            await disk.retried()
            with pytest.raises(RepositoryFull) as refused:
                repo.admit_new_work()
            trouble, writable, stats = repo.trouble, repo.writable, repo.statistics()
            stored_while_full = await repo.read(
                lambda c: c.execute("SELECT count(*) FROM output").fetchone()[0]
            )
            told_while_full = dict(outcomes)
            disk.grow()
        await repo.wait_trouble(present=False)
        repo.admit_new_work()  # accepted again
    assert told_while_full == {} and stored_while_full == 0  # nothing failed, nothing half-stored
    assert not writable and stats.disk_full and stats.held_retries >= 1
    assert trouble is not None and trouble.full and trouble.held_ops >= 3
    message = str(refused.value)
    assert message.startswith("repository disk is full (") and "MB free at " in message
    assert message.endswith("): new work refused until space returns")
    assert "\n" not in message
    assert outcomes == {name: name for name in ("small-1", "huge", "small-2", "behind")}
    assert repo.writable and not repo.statistics().disk_full
    events = committed(repo_path)
    assert [subject for _, subject, _ in events] == ["small-1", "huge", "small-2", "behind"]
    assert [i for i, _, _ in events] == list(range(events[0][0], events[0][0] + 4))


async def test_an_op_that_wraps_the_disk_error_is_not_failed_alone(
    repo: Repository,
) -> None:
    """An op that turns SQLITE_FULL into its own exception still holds its batch: a full disk
    is never an op's failure."""
    disk = PageLimit(await page_count(repo) + 4)

    def wrapping(tx: Tx) -> str:
        try:
            return blob("wrapped", 1 << 20)(tx)
        except sqlite3.OperationalError as exc:
            raise ValueError(f"could not store the output: {exc}") from exc

    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            result: list[str] = []

            async def run() -> None:
                result.append(await repo.write(disk.limited("wrapped", wrapping)))

            nursery.start_soon(run)
            await disk.retried()
            assert result == []
            disk.grow()
    assert result == ["wrapped"]
    assert repo.statistics().failed_ops == 0


async def test_output_chunks_on_a_full_disk_all_commit_before_the_attempts_end(
    repo_path: Path, make_gate: Any
) -> None:
    """Sixteen output chunks queued without waiting, then the attempt's end: the disk fills
    after a few chunks; none is dropped, the end waits behind them, and once there is room
    every chunk is stored and the end is committed after the last of them."""
    told: list[outcome.Outcome[Any]] = []
    with trio.fail_after(GUARD):
        async with open_repository(repo_path, inline_max=0, max_batch=4) as repo:
            disk = PageLimit(await page_count(repo) + 40)  # room for a few 16 KiB chunks
            gate = make_gate(repo)
            await gate.hold()
            for seq in range(16):
                op = disk.limited(f"chunk-{seq}", blob("job-1", 16 * 1024, seq))
                repo.write_nowait(op, then=told.append)
            async with trio.open_nursery() as nursery:

                async def end() -> None:
                    await repo.write(lambda tx: tx.emit("attempt.ended", "job-1", {"chunks": 16}))

                nursery.start_soon(end)
                await gate.settle()
                gate.release()
                await repo.wait_trouble(present=True)
                await disk.retried()
                stored_while_full = await repo.read(
                    lambda c: c.execute("SELECT count(*) FROM output").fetchone()[0]
                )
                heard_while_full = len(told)
                disk.grow()
            chunks = await repo.read(
                lambda c: [r[0] for r in c.execute("SELECT seq FROM output ORDER BY seq")]
            )
    assert 0 < stored_while_full < 16  # the disk really filled part-way
    assert heard_while_full == stored_while_full  # only committed chunks were answered
    assert all(isinstance(o, outcome.Value) for o in told) and len(told) == 16
    assert chunks == list(range(16))
    events = committed(repo_path)
    assert [s for _, s, _ in events][-1] == "job-1" and '"chunks":16' in events[-1][2]
    assert [i for i, _, _ in events] == list(range(events[0][0], events[0][0] + 17))


async def test_closing_while_the_disk_is_full_fails_only_what_was_never_committed(
    repo_path: Path,
) -> None:
    """Closing with writes held tries them once more, then fails them with RepositoryFull;
    everything committed before is in the file, and the writer stops cleanly."""
    failures: list[BaseException] = []

    async def run(repo: Repository, op: Callable[[Tx], Any]) -> None:
        try:
            await repo.write(op)
        except RepositoryError as exc:
            failures.append(exc)

    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            async with open_repository(repo_path, inline_max=0) as repo:
                await repo.write(blob("kept", 100))
                disk = PageLimit(await page_count(repo) + 4)
                nursery.start_soon(run, repo, disk.limited("huge", blob("huge", 1 << 20)))
                await repo.wait_trouble(present=True)
    [failure] = failures
    assert isinstance(failure, RepositoryFull)
    assert "repository disk is full" in str(failure)
    assert [s for _, s, _ in committed(repo_path)] == ["kept"]
    async with open_repository(repo_path) as repo:  # and it opens and writes again
        assert await repo.write(blob("again", 100)) == "again"
    assert [s for _, s, _ in committed(repo_path)] == ["kept", "again"]


async def test_a_full_filesystem_holds_writes_until_space_returns(small_fs: SmallFs) -> None:
    """On a real 8 MB filesystem that another file fills, output written without waiting is
    held (ENOSPC), never dropped; new work is refused naming the free space and the directory;
    reads go on; once the filler is deleted every held write commits by itself."""
    path = small_fs.path / "wfe.db"
    told: list[outcome.Outcome[Any]] = []
    with trio.fail_after(GUARD):
        async with open_repository(path) as repo:
            await repo.write(blob("before", 1000))
            small_fs.fill(leave=64 * 1024)
            for seq in range(40):
                repo.write_nowait(blob("job-1", 32 * 1024, seq), then=told.append)
            await repo.wait_trouble(present=True)
            with pytest.raises(RepositoryFull) as refused:
                repo.admit_new_work()
            before = await repo.read(
                lambda c: c.execute(
                    "SELECT count(*) FROM output WHERE job_id = 'before'"
                ).fetchone()
            )
            heard_while_full = len(told)
            small_fs.release()
            await repo.wait_trouble(present=False)
            await repo.flush()
            stored = await repo.read(
                lambda c: [
                    r[0]
                    for r in c.execute("SELECT seq FROM output WHERE job_id = 'job-1' ORDER BY seq")
                ]
            )
    assert before == (1,)  # reads worked while full
    assert heard_while_full < 40
    message = str(refused.value)
    assert message.startswith("repository disk is full (0.")  # under 1 MB left
    assert f"MB free at {small_fs.path}): new work refused until space returns" in message
    assert len(told) == 40 and all(isinstance(o, outcome.Value) for o in told)
    assert stored == list(range(40))
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    ids = [r[0] for r in conn.execute("SELECT id FROM events ORDER BY id")]
    assert ids == list(range(1, 42))


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=0, max_value=48 * 1024), min_size=1, max_size=24),
    room_pages=st.integers(min_value=0, max_value=40),
    full_for=st.integers(min_value=1, max_value=5),
    max_batch=st.integers(min_value=1, max_value=8),
)
def test_whatever_the_disk_refuses_every_write_commits_once_in_order(
    sizes: list[int], room_pages: int, full_for: int, max_batch: int
) -> None:
    """For any writes, any room left and any number of refused tries before space returns:
    every write is answered once, with its own value, every chunk is stored, and the events
    are in the order written with contiguous ids. (Inline writer on a MockClock: the waits
    between tries take no real time.)"""

    class Disk(PageLimit):
        def limited(self, name: str, op: Callable[[Tx], Any]) -> Callable[[Tx], Any]:
            inner = super().limited(name, op)

            def run(tx: Tx) -> Any:
                if max(self.tries.values(), default=0) >= full_for:
                    self.grow()  # space returns after `full_for` tries of some write
                return inner(tx)

            return run

    told: list[tuple[int, outcome.Outcome[Any]]] = []

    def tell(seq: int, result: outcome.Outcome[Any]) -> None:
        told.append((seq, result))

    async def main(path: Path) -> tuple[list[int], list[tuple[int, str, str]]]:
        async with open_repository(path, inline=True, max_batch=max_batch) as repo:
            disk = Disk(await page_count(repo) + room_pages)
            for seq, size in enumerate(sizes):
                op = disk.limited(f"chunk-{seq}", blob("job", size, seq))
                repo.write_nowait(op, then=functools.partial(tell, seq))
            await repo.flush()
            stored = await repo.read(
                lambda c: [r[0] for r in c.execute("SELECT seq FROM output ORDER BY seq")]
            )
        return stored, committed(path)

    with tempfile.TemporaryDirectory() as tmp:
        stored, events = trio.run(
            main, Path(tmp) / "wfe.db", clock=trio.testing.MockClock(autojump_threshold=0)
        )
    assert [seq for seq, _ in told] == list(range(len(sizes)))
    assert all(o == outcome.Value("job") for _, o in told)
    assert stored == list(range(len(sizes)))
    assert [json.loads(data)["seq"] for _, _, data in events] == list(range(len(sizes)))
    assert [i for i, _, _ in events] == list(range(1, len(sizes) + 1))
