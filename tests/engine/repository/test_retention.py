"""Purging old finished jobs' output and events: what goes, what is never touched, and the
purge recorded as an event (``wfe.engine.repository.retention`` on a real repository file)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from wfe.engine.config import RetentionSection
from wfe.engine.repository import Repository, open_repository
from wfe.engine.repository.retention import (
    BATCH,
    PURGE_EVENT,
    PurgeCount,
    count_purge,
    keep_trimmed,
    purge_batch,
)

OLD, CUTOFF, NEW = 1000.0, 2000.0, 3000.0


@pytest.fixture
async def repo(tmp_path: Path) -> AsyncIterator[Repository]:
    """Every batch commits on the trio thread, so a purge on the MockClock is committed at
    the virtual time it runs."""
    async with open_repository(tmp_path / "wfe.db", inline=True) as repository:
        yield repository


def _job(
    tx: Any,
    job_id: str,
    *,
    root: str | None = None,
    state: str = "succeeded",
    ended: float | None = OLD,
    request: str | None = None,
) -> None:
    tx.execute(
        "INSERT INTO jobs (id, kind, name, parent_id, root_id, state, created_at, ended_at,"
        " request_id) VALUES (?, 'rscript', 'noop', ?, ?, ?, 0, ?, ?)",
        (job_id, root, root or job_id, state, ended, request),
    )
    tx.execute(
        "INSERT INTO output (job_id, attempt, seq, stream, data) VALUES (?, 1, 0, 'stdout', ?)",
        (job_id, b"x" * 10),
    )
    tx.emit("job.state", job_id, {"state": state})


def _request(tx: Any, rid: str, state: str) -> None:
    tx.execute(
        "INSERT OR IGNORE INTO definitions (sha256, name, namespace, expanded, stored_at)"
        " VALUES ('d', 't', 'n', '{}', 0)"
    )
    tx.execute(
        "INSERT INTO requests (id, workflow, user, number, definition, namespace,"
        " approval_required, state, created_at, updated_at)"
        " VALUES (?, 't', 'u', ?, 'd', 'n', 0, ?, 0, 0)",
        (rid, int(rid[-1]), state),
    )


def _world(tx: Any) -> None:
    _job(tx, "a")  # old, finished: purged with its child
    _job(tx, "a1", root="a", state="failed")
    _job(tx, "b", ended=NEW)  # ended after the cutoff: kept
    _job(tx, "c", state="running", ended=None)  # running: kept
    _job(tx, "d")  # its child made a product: the tree is kept
    _job(tx, "d1", root="d")
    _request(tx, "r1", "completed")
    tx.execute(
        "INSERT INTO products (id, request, stage, batch, job, path, type, size, sha256,"
        " definition, created_at) VALUES ('p1', 'r1', 's', 'b', 'd1', '/p', 't', 1, 'x', 'd', 0)"
    )
    _request(tx, "r2", "running")  # a running (or standing) request keeps its jobs
    _job(tx, "e", request="r2")
    _request(tx, "r3", "archived")  # an ended request's old jobs go
    _job(tx, "f", request="r3")
    _job(tx, "g", state="cancelled")
    _job(tx, "g1", root="g", state="running", ended=None)  # a tree not wholly ended: kept


def _left(conn: Any) -> tuple[list[str], list[str], list[str]]:
    def ids(sql: str) -> list[str]:
        return sorted({r[0] for r in conn.execute(sql)})

    return (
        ids("SELECT job_id FROM output"),
        ids("SELECT subject FROM events WHERE kind = 'job.state'"),
        ids("SELECT id FROM jobs"),
    )


async def test_purge_deletes_only_old_finished_trees_and_records_itself(repo: Repository) -> None:
    """Only trees that wholly ended before the cutoff lose their output and events; running
    jobs, newer ones, a running request's, a product's tree keep everything; job rows stay;
    each batch commits a ``repository.purged`` event with the counts; a dry run only counts."""
    await repo.write(_world)
    before = await repo.read(_left)
    dry = await repo.read(count_purge(CUTOFF))
    assert dry == PurgeCount(roots=2, jobs=3, events=3, output_bytes=30, output_chunks=3)
    assert await repo.read(_left) == before  # a dry run changes nothing

    count, last = await repo.write(purge_batch(CUTOFF, after_id="", by="alice"))
    assert (count, last) == (dry, "f")
    assert await repo.write(purge_batch(CUTOFF, after_id="f", by="alice")) == (PurgeCount(), None)
    output, events, jobs = await repo.read(_left)
    kept = ["b", "c", "d", "d1", "e", "g", "g1"]
    assert output == kept and events == kept
    assert jobs == before[2]  # the books of every job stay

    purged = await repo.read(
        lambda conn: [
            json.loads(r[0])
            for r in conn.execute("SELECT data FROM events WHERE kind = ?", (PURGE_EVENT,))
        ]
    )
    assert purged == [{"before": CUTOFF, "by": "alice", "first": "a", "last": "f", **dry.as_dict()}]


async def test_purge_goes_in_batches(repo: Repository) -> None:
    """More trees than one batch take several write ops, each with its own event, and
    together delete them all."""

    def many(tx: Any) -> None:
        for n in range(BATCH + 5):
            _job(tx, f"j{n:05d}")

    await repo.write(many)
    first, last = await repo.write(purge_batch(CUTOFF, after_id="", by=None))
    assert (first.roots, last) == (BATCH, f"j{BATCH - 1:05d}")
    second, last = await repo.write(purge_batch(CUTOFF, after_id=str(last), by=None))
    assert (second.roots, last) == (5, f"j{BATCH + 4:05d}")
    output, _, _ = await repo.read(_left)
    assert output == []


async def test_retention_purges_at_start_then_every_interval(
    repo: Repository, autojump_clock: trio.testing.MockClock
) -> None:
    """With ``keep_days`` the engine purges at once and then every ``interval`` seconds,
    each time what ended ``keep_days`` before the wall clock; by default it keeps all."""
    day = 86400.0
    wall = {"now": 10 * day}
    await repo.write(lambda tx: _job(tx, "old", ended=8 * day))  # 2 days old at the start
    await repo.write(lambda tx: _job(tx, "young", ended=9.5 * day))
    await keep_trimmed(repo, RetentionSection(), now=lambda: wall["now"])  # returns: keep all
    assert (await repo.read(_left))[0] == ["old", "young"]

    passes: list[float] = []

    def now() -> float:
        passes.append(trio.current_time())
        return wall["now"]

    section = RetentionSection(keep_days=1.0, interval=3600.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: keep_trimmed(repo, section, now=now))
        await trio.sleep(1)
        assert (await repo.read(_left))[0] == ["young"]  # purged at the start
        wall["now"] = 11 * day  # a day later on the wall clock
        await trio.sleep(3600)
        assert (await repo.read(_left))[0] == []
        nursery.cancel_scope.cancel()
    assert passes == [0.0, 3600.0]
    events = await repo.read(
        lambda conn: [
            r[0] for r in conn.execute("SELECT data FROM events WHERE kind = ?", (PURGE_EVENT,))
        ]
    )
    assert [json.loads(e)["by"] for e in events] == ["retention", "retention"]
