"""A running engine whose repository's disk fills up: it stays up, refuses new work, loses
nothing, and resumes by itself when space returns (issue 10, finding 7, repository side).

Everything is real: the repository on its own 8 MB tmpfs (filled by a file, so SQLite gets
ENOSPC from the kernel), the engine with one local agent process, its console on loopback,
and ``wfe`` commands run as processes. Real time; every wait is under ``trio.fail_after``.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
import pytest
import trio

from wfe.engine.cli.demo import make_workspace
from wfe.engine.config import Config
from wfe.engine.console.api import serve_api
from wfe.engine.keys import read_token
from wfe.engine.runtime.daemon import Engine, open_engine

if TYPE_CHECKING:
    from tests.engine.repository.conftest import SmallFs

GUARD = 90.0
OUTPUT_BYTES = 3 * 1024 * 1024  # more than the room left on the filesystem


def bigoutput_bytes(size: int, line_length: int = 100) -> bytes:
    """What the shipped ``bigoutput`` RScript writes: numbered lines, cut at ``size`` bytes."""
    out = bytearray()
    k = 0
    while len(out) < size:
        out += f"{k:09d} {chr(ord('a') + k % 26) * (line_length - 11)}\n".encode("ascii")
        k += 1
    return bytes(out[:size])


@attrs.frozen
class Running:
    engine: Engine
    config: Config


@pytest.fixture
async def running(tmp_path: Path, small_fs: SmallFs) -> AsyncIterator[Running]:
    """An engine whose repository is on ``small_fs`` (its agents' spools are not)."""
    config = make_workspace(tmp_path / "ws", agents=1)
    config = attrs.evolve(
        config, engine=attrs.evolve(config.engine, repository=str(small_fs.path / "wfe.db"))
    )
    with trio.fail_after(GUARD):
        async with open_engine(config) as engine, trio.open_nursery() as nursery:
            port = await nursery.start(lambda task_status: serve_api(
                engine, host="127.0.0.1", port=0, token=read_token(config),
                task_status=task_status))  # fmt: skip
            (config.run_dir / "api.port").write_text(f"{port}\n")  # as `wfe engine` does
            async with engine.repo.subscribe() as events:  # until the agent is connected
                while not any(a["state"] == "connected" for a in engine.agents()):
                    await events.__anext__()
            yield Running(engine, config)
            nursery.cancel_scope.cancel()


async def wfe(config: Config, *args: str) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(
        [sys.executable, "-m", "wfe", *args, "--config", str(config.root / "wfe.toml")],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )


def events(path: Path) -> list[tuple[int, str, str]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT id, kind, subject FROM events ORDER BY id").fetchall()
    finally:
        conn.close()


async def test_a_full_disk_refuses_new_work_loses_nothing_and_resumes_by_itself(
    running: Running, small_fs: SmallFs
) -> None:
    """The disk fills while a job streams 3 MB of output: the engine stays up, `wfe run` is
    refused with the reason (naming the free space and where), reads still answer, every
    event committed before is kept; once the filler is deleted the held writes commit by
    themselves, the job ends succeeded with every byte of its output, and new work runs."""
    engine, config = running.engine, running.config
    db = config.repository_path
    with trio.fail_after(GUARD):
        first = await engine.run_rscript("noop", {})
        assert (await engine.wait(first)).state == "succeeded"
        before = events(db)
        small_fs.fill(leave=256 * 1024)
        job = await engine.run_rscript("bigoutput", {"size": OUTPUT_BYTES})
        await engine.repo.wait_trouble(present=True)
        refused = await wfe(config, "run", "--rscript", "noop")
        status = await wfe(config, "status", "--json")
        held_events = events(db)
        small_fs.release()
        await engine.repo.wait_trouble(present=False)
        ended = await engine.wait(job)
        output = await engine.output(job)
        after = await wfe(config, "run", "--rscript", "noop", "--wait")
    stderr = refused.stderr.decode()
    assert refused.returncode != 0 and refused.stdout == b""
    assert "repository disk is full (" in stderr and f"MB free at {small_fs.path})" in stderr
    assert "new work refused until space returns" in stderr
    assert len(stderr.strip().splitlines()) == 1
    assert status.returncode == 0, status.stderr  # reads answer while the disk is full
    assert held_events[: len(before)] == before
    assert ended.state == "succeeded", ended
    assert output == bigoutput_bytes(OUTPUT_BYTES)  # never silently truncated
    assert after.returncode == 0, after.stderr
    final = events(db)
    assert final[: len(before)] == before
    assert [i for i, _, _ in final] == list(range(1, len(final) + 1))
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
