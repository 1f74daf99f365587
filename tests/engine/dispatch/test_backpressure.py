"""Backpressure on the repository's write queue: ``Repository.room`` and the local agent link.

Real SQLite files and the real writer; the flood goes through a real agent (in this trio run)
running the shipped ``bigoutput`` script as a child process, over the real Unix socket. Real
time with ``fail_after`` guards: threads and processes are in flight.
"""

from __future__ import annotations

import functools
import hashlib
import json
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
import trio.testing

from wfe.agents.config import load_config
from wfe.agents.main import make_agent
from wfe.agents.spool import Spool
from wfe.engine.config import AgentsSection, JobsSection
from wfe.engine.dispatch.controller import AgentController
from wfe.engine.repository import Event, Repository, Tx, open_repository, queries
from wfe.engine.repository.repository import ROOM_LIMIT
from wfe.engine.runtime.jobs import Completions
from wfe.engine.transports.local import serve_local_agents
from wfe.links.stream import open_local_link
from wfe.rscripts.loader import ScriptLibrary

MB = 1024 * 1024


class Hold:
    """An op that parks the writer's worker thread until released (``inline_max=0`` only)."""

    def __init__(self) -> None:
        self._entered = threading.Event()
        self._release = threading.Event()

    def op(self, tx: Tx) -> None:
        self._entered.set()
        self._release.wait(30)  # a guard against a hung test, never reached when tests pass

    async def entered(self) -> None:
        await trio.to_thread.run_sync(self._entered.wait, abandon_on_cancel=True)

    def release(self) -> None:
        self._release.set()


def _nothing(tx: Tx) -> None:
    return None


@asynccontextmanager
async def held_repository(path: Path, **options: Any) -> AsyncIterator[tuple[Repository, Hold]]:
    """A repository whose writer is parked inside a batch; released when the block exits."""
    async with open_repository(path, inline_max=0, **options) as repo:
        hold = Hold()
        repo.write_nowait(hold.op)
        try:
            with trio.fail_after(5):
                await hold.entered()
            yield repo, hold
        finally:
            hold.release()


async def test_room_returns_at_once_while_the_queue_is_within_the_limit(tmp_path: Path) -> None:
    """With the writer busy and 10 writes queued, ``room(10)`` returns at once, without
    waiting for the writer."""
    async with held_repository(tmp_path / "wfe.db") as (repo, _):
        for _ in range(10):
            repo.write_nowait(_nothing)
        assert repo.statistics().queue_depth == 10
        with trio.fail_after(5):
            await repo.room(10)
        assert repo.statistics().queue_depth == 10
        assert repo.statistics().commits == 0


async def test_room_waits_while_the_queue_is_over_the_limit_and_returns_once_drained(
    tmp_path: Path,
) -> None:
    """``room(5)`` with 10 writes queued behind a busy writer waits; once the writer takes
    them it returns, with the queue at or under the limit."""
    returned = trio.Event()
    depth_at_return: list[int] = []

    async def wait_for_room(repo: Repository) -> None:
        await repo.room(5)
        depth_at_return.append(repo.statistics().queue_depth)
        returned.set()

    with trio.fail_after(10):
        async with held_repository(tmp_path / "wfe.db") as (repo, hold):
            for _ in range(10):
                repo.write_nowait(_nothing)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(wait_for_room, repo)
                await trio.testing.wait_all_tasks_blocked()
                assert not returned.is_set()
                assert repo.statistics().queue_depth == 10
                hold.release()
                await returned.wait()
            assert depth_at_return[0] <= 5
            await repo.flush()
            assert repo.statistics().ops == 12  # the hold, the ten, the flush


async def test_room_waits_again_when_one_batch_does_not_bring_the_queue_under_the_limit(
    tmp_path: Path,
) -> None:
    """With batches of at most 4 ops and 10 queued, ``room(3)`` does not return after the
    first batch is taken (6 still queued) but only once the queue is at 3 or fewer."""
    with trio.fail_after(10):
        async with held_repository(tmp_path / "wfe.db", max_batch=4) as (repo, hold):
            for _ in range(10):
                repo.write_nowait(_nothing)
            async with trio.open_nursery() as nursery:
                seen: list[tuple[int, int]] = []

                async def wait_for_room() -> None:
                    await repo.room(3)
                    stats = repo.statistics()
                    seen.append((stats.queue_depth, stats.commits))

                nursery.start_soon(wait_for_room)
                await trio.testing.wait_all_tasks_blocked()
                hold.release()
            [(depth, commits)] = seen
            assert depth <= 3
            assert commits >= 2  # the hold's batch and the first 4 were done: 4 more taken


async def test_a_cancelled_room_leaves_the_writer_as_it_was(tmp_path: Path) -> None:
    """``room`` cancelled while it waits raises nothing past its cancel scope; the queued
    writes still commit and a later ``room`` works."""
    with trio.fail_after(10):
        async with held_repository(tmp_path / "wfe.db") as (repo, hold):
            for _ in range(3):
                repo.write_nowait(_nothing)
            with trio.move_on_after(0.05) as scope:
                await repo.room(0)
            assert scope.cancelled_caught
            hold.release()
            await repo.room(0)
            await repo.flush()
            assert repo.statistics().failed_ops == 0
            assert repo.statistics().ops == 5


async def test_room_returns_after_the_repository_is_closed(tmp_path: Path) -> None:
    """A closed repository has nothing queued: ``room(0)`` returns at once."""
    async with open_repository(tmp_path / "wfe.db") as repo:
        repo.write_nowait(_nothing)
    with trio.fail_after(5):
        await repo.room(0)


# --- a flood of output through a real local agent ----------------------------------------


async def test_a_flood_of_output_keeps_the_queue_bounded_and_stores_every_byte(
    tmp_path: Path, short_dir: Path
) -> None:
    """An agent writing 32 MiB of output while the repository writer is stuck: the engine
    stops reading from it once more than ``ROOM_LIMIT`` writes are queued (the socket pushes
    back and the script waits), so the queue stays at the limit instead of growing to every
    chunk; once the writer moves again every byte is stored, with the sha256 the script
    reported for what it wrote. Held back for longer than its heartbeat deadline, the agent
    is not declared lost: its silence is the engine's doing, and its one attempt succeeds."""
    size = 32 * MB  # at least 512 chunks of at most 64 KiB: twice the limit
    socket_path = short_dir / "agents.sock"
    config = load_config(
        ["--name", "flood", "--socket", str(socket_path), "--spool", str(tmp_path / "spool"),
         "--workdir", str(tmp_path / "work"), "--slots", "1", "--heartbeat", "0.2"]
    )  # fmt: skip
    agent = make_agent(config, Spool(config.spool), None)
    hold = Hold()
    async with open_repository(tmp_path / "wfe.db", inline_max=0) as repo:
        controller = AgentController(
            repo=repo,
            scripts=ScriptLibrary.scan(),
            completions=Completions(),
            agents=AgentsSection(heartbeat=0.2, heartbeat_deadline=1.0),
            jobs=JobsSection(),
        )
        try:
            with trio.fail_after(30):
                async with trio.open_nursery() as nursery, repo.subscribe() as committed:
                    await nursery.start(controller.run)
                    await nursery.start(serve_local_agents, controller, socket_path)
                    nursery.start_soon(agent.run, functools.partial(open_local_link, socket_path))
                    async for event in committed:
                        assert isinstance(event, Event), event  # this test misses nothing
                        if event.subject == "flood":  # its hello is committed
                            break
                    job_id = await controller.submit("bigoutput", {"size": size})
                    async for event in committed:
                        assert isinstance(event, Event), event
                        if event.kind == "attempt.state" and event.data.get("state") == "running":
                            break
                    # The output is flowing: from now on the writer is stuck inside one op.
                    repo.write_nowait(hold.op)
                    await hold.entered()
                    while repo.statistics().queue_depth <= ROOM_LIMIT:  # noqa: ASYNC110
                        await trio.sleep(0.005)  # a counter to poll: no event says it grew
                    # Were the engine still reading, the queue would grow towards every chunk.
                    await trio.testing.wait_all_tasks_blocked(cushion=0.3)
                    assert ROOM_LIMIT < repo.statistics().queue_depth <= ROOM_LIMIT + 1
                    await trio.sleep(1.5)  # held back past the 1 s deadline: real time must pass
                    assert not controller.agents["flood"].lost
                    hold.release()
                    async for event in committed:
                        assert isinstance(event, Event), event
                        if event.subject == job_id and event.kind == "job.state":
                            if event.data.get("state") in ("succeeded", "failed"):
                                assert event.data["state"] == "succeeded", event.data
                                break
                    nursery.cancel_scope.cancel()
        finally:
            hold.release()
        stored = await repo.read(queries.job_output(job_id, None))
        result = await repo.read(_result_of(job_id))
    assert len(stored) == size
    assert hashlib.sha256(stored).hexdigest() == result["results"]["sha256"]
    assert result["results"]["bytes"] == size
    assert result["attempt"] == 1 and not controller.agents["flood"].lost


def _result_of(job_id: str) -> Any:
    def fn(conn: Any) -> Any:
        attempt, text = conn.execute(
            "SELECT attempt, result FROM attempts WHERE job_id = ? ORDER BY attempt DESC LIMIT 1",
            (job_id,),
        ).fetchone()
        return {"attempt": attempt, **json.loads(text)}

    return fn
