"""An agent started by hand with default settings keeps its place with a real engine."""

from __future__ import annotations

import functools
from pathlib import Path

import trio
from trio.testing import MockClock

from wfe.agents.config import load_config
from wfe.agents.core import DEFAULT_HEARTBEAT
from wfe.agents.keeper_link import open_keeper
from wfe.agents.main import make_agent
from wfe.agents.spool import Spool
from wfe.engine.config import AgentsSection, JobsSection
from wfe.engine.dispatch.controller import AgentController
from wfe.engine.repository import open_repository, queries
from wfe.engine.runtime.jobs import Completions
from wfe.engine.transports.local import serve_local_agents
from wfe.links.stream import open_local_link
from wfe.rscripts.loader import ScriptLibrary


def test_the_default_heartbeat_is_well_under_the_engines_default_deadline() -> None:
    """The agent's default heartbeat is the engine's own for its local agents, a fifth of the
    engine's default heartbeat deadline."""
    engine = AgentsSection()
    assert DEFAULT_HEARTBEAT == engine.heartbeat
    assert DEFAULT_HEARTBEAT <= engine.heartbeat_deadline / 4


async def test_a_hand_started_agent_with_defaults_stays_connected_past_the_deadline(
    autojump_clock: MockClock, tmp_path: Path, short_dir: Path
) -> None:
    """``wfe agent --socket ...`` and nothing else, against an engine with its default
    ``[agents]`` settings: three heartbeat deadlines later the agent is still connected and
    was never declared lost."""
    autojump_clock.autojump_threshold = 0.05  # the agent starts with a few worker-thread calls
    deadline = AgentsSection().heartbeat_deadline
    socket_path = short_dir / "agents.sock"
    config = load_config(
        [
            "--name",
            "by-hand",
            "--socket",
            str(socket_path),
            "--spool",
            str(tmp_path / "spool"),
            "--workdir",
            str(tmp_path / "work"),
        ]
    )
    agent = make_agent(config, Spool(config.spool), None)
    async with open_keeper(config.spool):  # started now, in real time; it waits for the agent
        pass
    async with open_repository(tmp_path / "wfe.db", inline=True) as repo:
        controller = AgentController(
            repo=repo,
            scripts=ScriptLibrary.scan(),
            completions=Completions(),
            agents=AgentsSection(),
            jobs=JobsSection(),
        )
        async with trio.open_nursery() as nursery, repo.subscribe() as committed:
            await nursery.start(controller.run)
            await nursery.start(serve_local_agents, controller, socket_path)
            nursery.start_soon(agent.run, functools.partial(open_local_link, socket_path))
            with trio.fail_after(deadline / 2):
                async for event in committed:
                    if event.subject == "by-hand":  # its hello is committed
                        break
            connected_at = trio.current_time()
            await trio.sleep(3 * deadline)
            assert trio.current_time() - connected_at >= 3 * deadline
            [row] = queries.agent_table(controller)
            assert row["state"] == "connected"
            events = await repo.read(queries.events_for("by-hand"))
            states = [e["data"]["state"] for e in events if e["kind"] == "agent.state"]
            assert "lost" not in states and "disconnected" not in states
            nursery.cancel_scope.cancel()
