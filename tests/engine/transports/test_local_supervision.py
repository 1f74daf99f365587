"""The engine notices local agent processes that exit, and fails fast when one cannot start.

Real engines with real local agent processes, real time, every wait under ``trio.fail_after``.
An agent that "cannot start" is simulated exactly as it happens when the ``agents`` package
is not installed: its command runs ``python -P -m`` a module that does not exist.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from wfe.engine.cli.demo import make_workspace
from wfe.engine.config import AgentGroup
from wfe.engine.runtime.daemon import Engine, open_engine
from wfe.engine.transports.local_agents import LocalAgentFailed, LocalAgents, watch_local_agents

GUARD = 30.0


class Records(logging.Handler):
    """Keeps the records of one logger and wakes trio waiters when one arrives."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._arrived = trio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self._arrived.set()
        self._arrived = trio.Event()

    def lines(self, level: int = logging.DEBUG) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= level]

    async def wait_for(self, level: int) -> str:
        while not self.lines(level):
            await self._arrived.wait()
        return self.lines(level)[0]


@pytest.fixture
def local_log() -> Iterator[Records]:
    handler = Records()
    logger = logging.getLogger("wfe.local")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.fixture
def uninstalled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Local agents start as if the ``agents`` package were not installed."""

    def command(self: LocalAgents, name: str) -> list[str]:
        return [sys.executable, "-P", "-m", "wfe_agents_not_installed", "--name", name]

    monkeypatch.setattr(LocalAgents, "command", command)


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[LocalAgents]:
    """The ``LocalAgents`` the engines of a test start."""
    made: list[LocalAgents] = []

    class Recorded(LocalAgents):
        async def start(self) -> None:
            made.append(self)
            await super().start()

    monkeypatch.setattr("wfe.engine.runtime.daemon.LocalAgents", Recorded)
    return made


async def wait_connected(engine: Engine, count: int) -> None:
    while sum(1 for a in engine.agents() if a["state"] == "connected") < count:  # noqa: ASYNC110
        await trio.sleep(0.02)  # a snapshot to poll: the registry has no event for this


async def test_an_agent_that_cannot_start_stops_the_engine(
    tmp_path: Path, uninstalled: None
) -> None:
    """The engine raises LocalAgentFailed naming the agent, its exit code and its last log line."""
    config = make_workspace(tmp_path / "ws", agents=2)
    with trio.fail_after(GUARD), pytest.raises(ExceptionGroup) as caught:
        async with open_engine(config):
            await trio.sleep_forever()
    [error] = caught.value.exceptions
    assert isinstance(error, LocalAgentFailed)
    message = str(error)
    name = message.split()[2]
    assert name in ("local-1", "local-2")
    assert message.startswith(f"local agent {name} cannot start: exit code 1: ")
    agent_log = config.agents_dir / name / "agent.log"
    assert message.endswith(f": No module named wfe_agents_not_installed (in {agent_log})")


def test_wfe_demo_fails_fast_with_that_line(uninstalled: None) -> None:
    """`wfe demo` exits 1 with the agent's line instead of waiting for agents that never come."""
    from wfe.engine.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["demo", "--files", "1", "--agents", "1", "--clean"])
    assert code == 1
    lines = err.getvalue().splitlines()
    assert len(lines) == 1, err.getvalue()
    assert lines[0].startswith("wfe: error: local agent local-1 cannot start: exit code 1: ")
    assert ": No module named wfe_agents_not_installed (in " in lines[0]


async def test_an_agent_that_exits_later_is_logged_and_started_again(
    tmp_path: Path, local_log: Records, started: list[LocalAgents]
) -> None:
    """A connected agent that exits logs one error line (agent, code, last log line, when it
    starts again); it is started again and connects; the engine goes on."""
    config = make_workspace(tmp_path / "ws", agents=1)
    with trio.fail_after(GUARD):
        async with open_engine(config) as engine:
            await wait_connected(engine, 1)
            agent_log = config.agents_dir / "local-1" / "agent.log"
            [local] = started
            first = local.processes["local-1"]
            os.kill(first.pid, signal.SIGTERM)
            line = await local_log.wait_for(logging.ERROR)
            last = agent_log.read_text().splitlines()[-1].strip()
            assert line == (
                f"local agent local-1 exited with code 0: {last} (in {agent_log});"
                " starting it again in 1 s"
            )
            assert "agent stopped" in last
            while local.processes["local-1"] is first:  # noqa: ASYNC110 - a snapshot to poll
                await trio.sleep(0.05)
            await wait_connected(engine, 1)
            assert local.restarts["local-1"] == 1
            assert await engine.jobs() == []  # the engine goes on
    assert len(local_log.lines(logging.ERROR)) == 1


async def test_a_killed_agents_running_job_ends_as_the_same_attempt(
    tmp_path: Path, started: list[LocalAgents]
) -> None:
    """SIGKILL of a local agent while its script runs: the engine starts it again, the new
    agent adopts the script from its keeper, and the job succeeds as attempt 1 with all of
    its output (issue 10, findings 3, 8 and 9)."""
    config = make_workspace(tmp_path / "ws", agents=1)
    with trio.fail_after(GUARD):
        async with open_engine(config) as engine:
            await wait_connected(engine, 1)
            [local] = started
            job_id = await engine.run_rscript(
                "sleep_echo", {"message": "tick", "lines": 3, "seconds": 2.0}
            )
            while not (await engine.job(job_id))["attempt_list"]:  # noqa: ASYNC110
                await trio.sleep(0.05)
            await trio.sleep(0.5)  # it runs: its lines are printed, it sleeps
            os.kill(local.processes["local-1"].pid, signal.SIGKILL)
            done = await engine.wait(job_id)
            job = await engine.job(job_id)
            assert done.state == "succeeded"
            assert [a["state"] for a in job["attempt_list"]] == ["succeeded"]
            assert await engine.output(job_id) == b"tick\ntick\ntick\n"
            assert local.restarts["local-1"] == 1


async def test_a_duplicate_is_quiet_and_watches_the_agent_from_before(
    tmp_path: Path, local_log: Records
) -> None:
    """A second process for a running agent exits at once without an error, and is replaced
    by watching the one that runs; the agents the engine stops are quiet too."""
    config = make_workspace(tmp_path / "ws", agents=1)
    with trio.fail_after(GUARD):
        async with open_engine(config) as engine:
            await wait_connected(engine, 1)
            again = LocalAgents(
                groups={"local": AgentGroup(count=1)},
                slots=1,
                socket_path=config.run_dir / "agents.sock",
                directory=config.agents_dir,
                public_key=None,
                heartbeat=1.0,
            )
            await again.start()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch_local_agents, again, engine.controller)
                while not any("still runs from before" in x for x in local_log.lines()):  # noqa: ASYNC110
                    await trio.sleep(0.02)  # a log to poll
                nursery.cancel_scope.cancel()
            assert [p.returncode for p in again.processes.values()] == [3]
    assert local_log.lines(logging.WARNING) == []


def test_the_duplicate_exit_code_is_the_agents() -> None:
    """The engine's idea of a duplicate's exit code is the one the agent uses."""
    from wfe.agents.main import EXIT_LOCKED as AGENT_EXIT_LOCKED
    from wfe.engine.transports.local_agents import EXIT_LOCKED

    assert EXIT_LOCKED == AGENT_EXIT_LOCKED
