"""Stopping `wfe engine` politely cancels nothing (issue 12, item 1; decision #42), and a
long outage runs nothing twice (issue 10, finding 1; decision #41).

A real `wfe engine` with a real local agent runs an RScript that records each of its
executions in a file outside the engine's books. The engine is stopped with SIGTERM (or
SIGINT, as Ctrl-C sends) while the script runs and started again: the job ends succeeded as
the same attempt, its script ran once, and nothing was recorded cancelled. A second signal
during a stop ends the process at once.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
import trio

from wfe.engine.cli.client import connect_config
from wfe.engine.cli.demo import make_workspace
from wfe.engine.config import load_config

from .test_restart import kill_local_agents, read_db, start_engine, wait_ready

pytestmark = pytest.mark.slow

COUNTING = """#!/bin/sh
# wfe-rscript: 1
# name: counted
# version: 1.0
# interpreter: sh
# description: append a line to a file outside the books, sleep, print and succeed
# param runs: str the file that counts executions
# param seconds: float = 2 how long to sleep
runs=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["runs"])' "$WFE_PARAMS")
seconds=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["seconds"])' "$WFE_PARAMS")
echo "$WFE_JOB_ID $WFE_ATTEMPT $$" >> "$runs"
echo before
sleep "$seconds"
echo after
"""


def workspace(tmp_path: Path) -> Any:
    config = make_workspace(tmp_path / "ws", agents=1)
    scripts = config.root / "rscripts"
    scripts.mkdir(exist_ok=True)
    (scripts / "counted.sh").write_text(COUNTING)
    toml = config.root / "wfe.toml"
    text = toml.read_text().replace("[engine]\n", '[engine]\nrscripts = ["rscripts"]\n', 1)
    toml.write_text(text)
    return load_config(toml)


def executions(runs: Path) -> int:
    """How many executions of the counted script have started so far."""
    return len(runs.read_text().splitlines()) if runs.exists() else 0


async def run_counted(config: Any, runs: Path, *, jobs: int, seconds: float) -> list[str]:
    """Start ``jobs`` counted scripts; return their job ids once every one has started."""
    async with connect_config(config) as client:
        ids = [
            (
                await client.call(
                    "run", rscript="counted", params={"runs": str(runs), "seconds": seconds}
                )
            )["job"]
            for _ in range(jobs)
        ]
    with trio.fail_after(30):
        while executions(runs) < jobs:  # noqa: ASYNC110 - another process's file
            await trio.sleep(0.05)
    return ids


async def start_again_and_wait(config: Any, log: Path, jobs: list[str]) -> subprocess.Popen[bytes]:
    """Start the engine again; every job must end succeeded as its first and only attempt."""
    (config.run_dir / "api.port").unlink()
    process = start_engine(config.root / "wfe.toml", log)
    await wait_ready(config, process)
    with trio.fail_after(60):
        async with connect_config(config) as client:
            for job_id in jobs:
                done = await client.call("wait", job=job_id)
                assert done["state"] == "succeeded", done
    for job_id in jobs:
        rows = read_db(
            config.repository_path,
            "SELECT attempt, state FROM attempts WHERE job_id = ?",
            (job_id,),
        )
        assert rows == [(1, "succeeded")], rows
    return process


def stop_everything(config: Any, *processes: subprocess.Popen[bytes] | None) -> None:
    for process in processes:
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait()
    kill_local_agents(config)


async def stop_while_running(tmp_path: Path, signum: int) -> None:
    config = workspace(tmp_path)
    log, runs = tmp_path / "engine.log", tmp_path / "runs"
    first = start_engine(config.root / "wfe.toml", log)
    second: subprocess.Popen[bytes] | None = None
    try:
        await wait_ready(config, first)
        [job_id] = await run_counted(config, runs, jobs=1, seconds=3.0)
        first.send_signal(signum)
        assert first.wait(timeout=30) == 0
        assert read_db(
            config.repository_path, "SELECT state FROM attempts WHERE job_id = ?", (job_id,)
        ) == [("running",)]
        second = await start_again_and_wait(config, log, [job_id])
        assert len(runs.read_text().splitlines()) == 1  # it ran once
        output = read_db(
            config.repository_path,
            "SELECT data FROM output WHERE job_id = ? ORDER BY seq",
            (job_id,),
        )
        assert b"".join(r[0] for r in output) == b"before\nafter\n"
        cancelled = read_db(
            config.repository_path,
            "SELECT COUNT(*) FROM events WHERE data LIKE '%cancel%'",
        )
        assert cancelled == [(0,)]
    finally:
        stop_everything(config, first, second)


async def test_sigterm_while_a_script_runs_cancels_nothing(tmp_path: Path) -> None:
    """SIGTERM, then a start: the job succeeds as the same attempt, run once."""
    await stop_while_running(tmp_path, signal.SIGTERM)


async def test_ctrl_c_while_a_script_runs_cancels_nothing(tmp_path: Path) -> None:
    """SIGINT (Ctrl-C), then a start: the same."""
    await stop_while_running(tmp_path, signal.SIGINT)


async def test_a_second_signal_during_a_slow_stop_stops_at_once(tmp_path: Path) -> None:
    """The local agent is frozen (SIGSTOP), so the stop waits for it; a second SIGTERM ends
    the engine at once (exit 128 + 15), as safe as a crash."""
    config = workspace(tmp_path)
    log = tmp_path / "engine.log"
    engine = start_engine(config.root / "wfe.toml", log)
    agent_pid: int | None = None
    try:
        await wait_ready(config, engine)
        lock = config.agents_dir / "local-1" / "spool" / "agent.lock"
        with trio.fail_after(30):
            while not lock.exists() or not lock.read_text().strip():  # noqa: ASYNC110
                await trio.sleep(0.05)
        agent_pid = int(lock.read_text().split()[0])
        os.kill(agent_pid, signal.SIGSTOP)
        engine.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            while b"send it again to stop at once" not in log.read_bytes():  # noqa: ASYNC110
                await trio.sleep(0.05)
        engine.send_signal(signal.SIGTERM)
        assert engine.wait(timeout=30) == 128 + signal.SIGTERM
        assert b"SIGTERM received again: stopping at once" in log.read_bytes()
    finally:
        if agent_pid is not None:
            os.kill(agent_pid, signal.SIGCONT)
        if engine.poll() is None:
            engine.kill()
            engine.wait()
        kill_local_agents(config)


async def test_an_engine_down_past_reconcile_grace_runs_nothing_twice(tmp_path: Path) -> None:
    """SIGKILL of the engine while two scripts run; the next start comes after more than
    `reconcile_grace` (1 s here), so the agents, reconnecting with their backoff, may be
    declared lost first: their attempts are not fenced (the lease is 60 s), so they are
    reattached when the agents are back, and every script runs exactly once (issue 10,
    finding 1: 6 of 6 ran twice)."""
    config = workspace(tmp_path)
    toml = config.root / "wfe.toml"
    toml.write_text(
        toml.read_text().replace(
            "heartbeat_deadline = 10.0\n", "heartbeat_deadline = 3.0\nreconcile_grace = 1.0\n"
        )
    )
    config = load_config(toml)
    log, runs = tmp_path / "engine.log", tmp_path / "runs"
    first = start_engine(toml, log)
    second: subprocess.Popen[bytes] | None = None
    try:
        await wait_ready(config, first)
        jobs = await run_counted(config, runs, jobs=2, seconds=6.0)
        first.send_signal(signal.SIGKILL)
        first.wait()
        await trio.sleep(4)  # longer than reconcile_grace + heartbeat_deadline
        second = await start_again_and_wait(config, log, jobs)
        assert sorted(line.split()[0] for line in runs.read_text().splitlines()) == sorted(jobs)
    finally:
        stop_everything(config, first, second)
