"""Killing the engine with SIGKILL mid-workload loses nothing, and a restart reconciles.

A real `wfe engine` process with two real local agents runs the demo workflow; the engine
is SIGKILLed while RScripts are running; the repository must open cleanly with every
event committed before the kill, and after a restart every job must end succeeded, the
attempts that were running at the kill recorded from the agents (same attempt number),
not failed and not run again.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from wfe.engine.cli.client import connect_config
from wfe.engine.cli.demo import make_workspace

pytestmark = pytest.mark.slow


def start_engine(config_path: Path, log: Path) -> subprocess.Popen[bytes]:
    """`wfe engine`, started from inside the workspace as an operator would (the workspace
    has an agents/ folder, which must not shadow the agents package)."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "wfe", "engine", "--config", "wfe.toml"],
            stdout=out,
            stderr=out,
            cwd=config_path.parent,
            start_new_session=True,
        )


async def wait_ready(config: Any, process: subprocess.Popen[bytes]) -> None:
    """Wait for the engine to write its port file (removed before each start)."""
    port_file = config.run_dir / "api.port"
    with trio.fail_after(30):
        while not port_file.exists():
            assert process.poll() is None, "engine exited early"
            await trio.sleep(0.05)


def kill_local_agents(config: Any) -> None:
    """SIGKILL the workspace's local agents still running (the engine starts them in their
    own sessions, so they outlive a killed engine). Each names its pid in the ``agent.lock``
    of its spool; a pid is killed only if that process still works in the agent's home, so
    no other process is ever hit."""
    for lock in sorted(config.agents_dir.glob("*/spool/agent.lock")):
        home = lock.parent.parent.resolve()
        try:
            pid = int(lock.read_text().split()[0])
            if Path(f"/proc/{pid}/cwd").resolve() == home:
                os.kill(pid, signal.SIGKILL)
        except (ValueError, IndexError, OSError):
            continue  # no pid written, or that process has gone


async def connected_agents(client: Any) -> int:
    return len([a for a in await client.call("agents") if a["state"] == "connected"])


def read_db(path: Path, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


async def test_sigkill_mid_workload_then_restart_reconciles(tmp_path: Path) -> None:
    config = make_workspace(tmp_path / "ws", agents=2)
    config_path = config.root / "wfe.toml"
    log = tmp_path / "engine.log"
    first = start_engine(config_path, log)
    second: subprocess.Popen[bytes] | None = None
    try:
        await wait_ready(config, first)
        async with connect_config(config) as client:
            with trio.fail_after(30):
                # another process's state, polled: there is no event to wait on
                while await connected_agents(client) < 2:  # noqa: ASYNC110
                    await trio.sleep(0.1)
            started = await client.call(
                "run",
                action="demo.survey",
                params={"files": 6, "seconds": 1.5, "data_dir": str(config.root / "data")},
            )
            root = started["job"]
            # wait until some RScripts have finished and some are running on the agents
            with trio.fail_after(60):
                while True:
                    status = await client.call("status", job=root)
                    counts = status["descendants"]
                    running = read_db(
                        config.repository_path,
                        "SELECT job_id, attempt FROM attempts WHERE state = 'running'",
                    )
                    if counts.get("succeeded", 0) >= 2 and len(running) >= 2:
                        break
                    await trio.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait()

        # The file opens cleanly and keeps every committed event.
        assert read_db(config.repository_path, "PRAGMA integrity_check") == [("ok",)]
        events_before = read_db(
            config.repository_path, "SELECT id, kind, subject FROM events ORDER BY id"
        )
        running_at_kill = set(
            read_db(
                config.repository_path,
                "SELECT job_id, attempt FROM attempts WHERE state = 'running'",
            )
        )
        assert running_at_kill, "the kill should have caught RScripts running"

        (config.run_dir / "api.port").unlink()
        second = start_engine(config_path, log)
        await wait_ready(config, second)
        with trio.fail_after(120):  # a dead engine fails the test here rather than hang it
            async with connect_config(config) as client:
                done = await client.call("wait", job=root)
        assert done["state"] == "succeeded", done

        events_after = read_db(
            config.repository_path, "SELECT id, kind, subject FROM events ORDER BY id"
        )
        assert events_after[: len(events_before)] == events_before
        # every RScript succeeded; none failed
        states = dict(
            read_db(
                config.repository_path,
                "SELECT state, COUNT(*) FROM jobs WHERE kind = 'rscript' GROUP BY state",
            )
        )
        assert states == {"succeeded": 13}, states
        # the attempts running at the kill were reconciled: the same attempt succeeded
        for job_id, attempt in running_at_kill:
            rows = read_db(
                config.repository_path,
                "SELECT attempt, state, agent FROM attempts WHERE job_id = ? ORDER BY attempt",
                (job_id,),
            )
            assert rows[-1][1] == "succeeded"
            assert (attempt, "succeeded") in [(a, s) for a, s, _ in rows], (job_id, rows)
            assert "failed" not in [s for _, s, _ in rows]
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
        # agents of the first engine that outlived it exit when asked by the second, or after
        # their give-up time; make sure none is left behind by this test
        kill_local_agents(config)


async def test_two_engines_cannot_share_a_workspace(tmp_path: Path) -> None:
    """The second engine on one workspace is refused with one line naming the lock."""
    from wfe.engine.errors import EngineError
    from wfe.engine.runtime.daemon import open_engine

    config = make_workspace(tmp_path / "ws", agents=0)
    async with open_engine(config):
        with pytest.raises(EngineError, match="another engine is running on this workspace"):
            async with open_engine(config):
                pass  # pragma: no cover
