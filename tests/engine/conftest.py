"""Fixtures for engine tests: a real repository file, a controller, and fake agents.

A ``FakeAgent`` speaks the agent protocol to the controller in memory, so that tests can
say exactly what an agent reports and when (on a MockClock). The real agent is exercised
end to end by the tests that start local agents.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from wfe.engine.config import AgentsSection, JobsSection
from wfe.engine.dispatch.controller import AgentController
from wfe.engine.repository import Repository, open_repository
from wfe.engine.runtime.jobs import Completions
from wfe.protocols.messages import (
    AgentHello,
    AgentStatus,
    AttemptRef,
    Capabilities,
    Dispatch,
    FinishReason,
    JobAccepted,
    JobFinished,
    Message,
)
from wfe.rscripts.loader import ScriptLibrary

AGENTS = AgentsSection(
    heartbeat=1.0, heartbeat_deadline=5.0, max_redispatch=2, reconcile_grace=4.0, lease=10.0
)
JOBS = JobsSection(timeout=60.0, retries=0, backoff=2.0)


@pytest.fixture
async def repo(tmp_path: Path) -> AsyncIterator[Repository]:
    async with open_repository(tmp_path / "wfe.db", inline=True) as repository:
        yield repository


class FakeAgent:
    """An agent in memory: records what the controller sends it; says what the test wants."""

    def __init__(self, controller: AgentController, name: str, slots: int = 2, **caps: Any) -> None:
        self.controller = controller
        self.name = name
        self.capabilities = Capabilities(slots=slots, **caps)
        self.sent: list[Message] = []
        self._arrived = trio.Event()
        self.connected = False
        self.running: set[tuple[str, int]] = set()
        self.transport = "fake"

    # the controller's side of the link
    def send_nowait(self, message: Message) -> None:
        self.sent.append(message)
        self._arrived.set()  # wakes every waiter; each waits again on the new event
        self._arrived = trio.Event()

    def connect(
        self, running: tuple[tuple[str, int], ...] = (), held: tuple[tuple[str, int], ...] = ()
    ) -> None:
        hello = AgentHello(
            name=self.name,
            software="test",
            capabilities=self.capabilities,
            running=tuple(AttemptRef(job_id=j, attempt=a) for j, a in running),
            held=tuple(AttemptRef(job_id=j, attempt=a) for j, a in held),
        )
        self.controller.agent_connected(hello, self, transport=self.transport)
        self.connected = True

    def disconnect(self) -> None:
        self.connected = False
        self.controller.agent_disconnected(self.name, self)

    async def beat(self) -> None:
        """Report status every heartbeat interval while connected, as a live agent does."""
        while True:
            await trio.sleep(self.controller.settings.heartbeat)
            if self.connected:
                self.heartbeat(running=tuple(self.running))

    def say(self, message: Message) -> None:
        self.controller.agent_message(self.name, message)

    def heartbeat(self, running: tuple[tuple[str, int], ...] = ()) -> None:
        refs = tuple(AttemptRef(job_id=j, attempt=a) for j, a in running)
        self.say(
            AgentStatus(
                name=self.name, free_slots=self.capabilities.slots - len(refs), running=refs
            )
        )

    def of_type(self, kind: type[Any]) -> list[Any]:
        return [m for m in self.sent if isinstance(m, kind)]

    async def receive(self, kind: type[Any], count: int = 1) -> list[Any]:
        """Wait until ``count`` messages of ``kind`` have arrived in all; return them."""
        while len(self.of_type(kind)) < count:
            await self._arrived.wait()
        return self.of_type(kind)

    def accept(self, dispatch: Dispatch) -> None:
        self.running.add((dispatch.job_id, dispatch.attempt))
        self.say(JobAccepted(job_id=dispatch.job_id, attempt=dispatch.attempt, pid=1))

    def finish(self, dispatch: Dispatch, exit_code: int = 0, **fields: Any) -> None:
        self.running.discard((dispatch.job_id, dispatch.attempt))
        fields.setdefault("reason", FinishReason.EXITED)
        self.say(
            JobFinished(
                job_id=dispatch.job_id, attempt=dispatch.attempt, exit_code=exit_code, **fields
            )
        )


class Harness:
    """A running controller on a real repository, plus fake agents."""

    def __init__(
        self, controller: AgentController, repo: Repository, completions: Completions
    ) -> None:
        self.controller = controller
        self.repo = repo
        self.completions = completions
        self.nursery: trio.Nursery | None = None  # set once the controller runs

    def agent(self, name: str, slots: int = 2, *, silent: bool = False, **caps: Any) -> FakeAgent:
        """Connect a fake agent; unless ``silent`` it sends heartbeats like a live one."""
        agent = FakeAgent(self.controller, name, slots, **caps)
        agent.connect()
        if not silent:
            assert self.nursery is not None, "start the controller first"
            self.nursery.start_soon(agent.beat)
        return agent

    async def job(self, job_id: str) -> dict[str, Any]:
        from wfe.engine.repository import queries

        return await self.repo.read(queries.job_detail(job_id))


def make_controller(
    repo: Repository, agents: AgentsSection = AGENTS, jobs: JobsSection = JOBS
) -> Harness:
    completions = Completions()
    controller = AgentController(
        repo=repo,
        scripts=ScriptLibrary.scan(),
        completions=completions,
        agents=agents,
        jobs=jobs,
        grace=5.0,
    )
    return Harness(controller, repo, completions)


@pytest.fixture
async def harness(repo: Repository, nursery: trio.Nursery) -> Harness:
    h = make_controller(repo)
    await nursery.start(h.controller.run)
    h.nursery = nursery
    return h


@pytest.fixture
def start_controller(repo: Repository, nursery: trio.Nursery) -> Callable[..., Any]:
    async def start(**settings: Any) -> Harness:
        agents = AgentsSection(**{**_fields(AGENTS), **settings.get("agents", {})})
        jobs = JobsSection(**{**_fields(JOBS), **settings.get("jobs", {})})
        h = make_controller(repo, agents, jobs)
        await nursery.start(h.controller.run)
        h.nursery = nursery
        return h

    return start


def _fields(obj: Any) -> dict[str, Any]:
    import attrs

    return attrs.asdict(obj)
