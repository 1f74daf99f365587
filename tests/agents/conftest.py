"""Shared helpers for the agent tests, through fixtures: ``h`` (helper functions), ``engine``
(a tiny engine on a Unix socket) and ``agents`` (runs an Agent against it)."""

from __future__ import annotations

import contextlib
import os
import types
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from wfe.agents.core import Agent, AgentExit
from wfe.agents.keeper_link import KeeperLink, open_keeper
from wfe.agents.spool import Spool
from wfe.links.stream import StreamLink, open_local_link
from wfe.protocols.messages import (
    AgentStatus,
    Capabilities,
    Dispatch,
    JobFinished,
    Limits,
    Message,
    OutputChunk,
    Stream,
)
from wfe.protocols.signing import script_sha256

#: Guard for anything that waits on real processes or sockets.
GUARD = 10.0


def make_dispatch(
    script: str,
    *,
    job_id: str = "job-1",
    attempt: int = 1,
    params: dict[str, Any] | None = None,
    timeout: float = 20.0,
    memory: int | None = None,
) -> Dispatch:
    """An unsigned dispatch of ``script`` with a correct sha256."""
    return Dispatch(
        job_id=job_id,
        attempt=attempt,
        script_name="test",
        script=script,
        sha256=script_sha256(script),
        params=params or {},
        limits=Limits(timeout=timeout, memory=memory),
    )


_PF_EXITING = 0x4  # set by the kernel when a process starts to exit, before it closes its files


def is_dead(pid: int) -> bool:
    """True when ``pid`` is gone, a zombie, or irrevocably exiting.

    A killed process closes its pipes before it becomes a zombie, so a reader that saw end of
    file may still find it in /proc for a moment; its ``PF_EXITING`` flag is then set.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    fields = stat.rsplit(")", 1)[1].split()
    return fields[0] in ("Z", "X") or bool(int(fields[6]) & _PF_EXITING)


class FakeEngine:
    """The engine's side of the local transport, as small as a test needs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._send, self._receive = trio.open_memory_channel[StreamLink](16)
        self._links: list[StreamLink] = []
        self._scope: trio.CancelScope | None = None

    async def listen(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Accept connections until ``stop_listening``; each one goes to ``accept``."""
        sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        await sock.bind(str(self.path))
        sock.listen(16)
        listener = trio.SocketListener(sock)
        try:
            with trio.CancelScope() as self._scope:
                task_status.started()
                while True:
                    stream = await listener.accept()
                    link = StreamLink(stream)
                    self._links.append(link)
                    await self._send.send(link)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            await listener.aclose()

    def stop_listening(self) -> None:
        """Refuse new connections (the socket file goes away)."""
        assert self._scope is not None
        self._scope.cancel()

    async def accept(self) -> StreamLink:
        """The next agent connection."""
        with trio.fail_after(GUARD):
            return await self._receive.receive()

    async def aclose(self) -> None:
        for link in self._links:
            await link.aclose()


async def receive(link: StreamLink, *, skip: tuple[type[Any], ...] = (AgentStatus,)) -> Message:
    """The next message on ``link`` that is not of a ``skip`` type; fails if the link closes."""
    with trio.fail_after(GUARD):
        async for message in link.receive():
            if not isinstance(message, skip):
                return message
    raise AssertionError("the link closed")


async def receive_until_finished(
    link: StreamLink, *, skip: tuple[type[Any], ...] = (AgentStatus,)
) -> tuple[list[Message], JobFinished]:
    """Every message up to and including the next ``JobFinished``."""
    seen: list[Message] = []
    while True:
        message = await receive(link, skip=skip)
        if isinstance(message, JobFinished):
            return seen, message
        seen.append(message)


def output_of(messages: list[Message], stream: Stream | None = None) -> bytes:
    """The data of the ``OutputChunk``s among ``messages`` (of one stream if given), in order."""
    return b"".join(
        m.data
        for m in messages
        if isinstance(m, OutputChunk) and (stream is None or m.stream is stream)
    )


@pytest.fixture
async def engine(nursery: trio.Nursery, short_dir: Path) -> AsyncIterator[FakeEngine]:
    fake = FakeEngine(short_dir / "engine.sock")
    await nursery.start(fake.listen)
    yield fake
    fake.stop_listening()
    await fake.aclose()


class WatchedSpool(Spool):
    """A real spool that also tells when it stored a result."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.stored = trio.Event()

    async def store(self, finished: JobFinished, *, alone: bool = False) -> None:
        await super().store(finished, alone=alone)
        self.stored.set()


class AgentRunner:
    """Builds an ``Agent`` on ``tmp_path`` and runs it against the fake engine."""

    def __init__(self, nursery: trio.Nursery, engine: FakeEngine, tmp_path: Path) -> None:
        self.nursery = nursery
        self.engine = engine
        self.spool_path = tmp_path / "spool"
        self.workdir = tmp_path / "work"
        self.outcome: AgentExit | None = None
        self.done = trio.Event()

    def build(self, **kwargs: Any) -> Agent:
        settings: dict[str, Any] = {
            "name": "test-agent",
            "capabilities": Capabilities(slots=2, memory=1 << 30, site="here", tags=("t",)),
            "spool": WatchedSpool(self.spool_path),
            "workdir": self.workdir,
            "heartbeat": 60.0,
            "kill_grace": 0.5,
        }
        settings.update(kwargs)
        return Agent(**settings)

    def start(self, agent: Agent, *, give_up_after: float | None = None) -> None:
        async def run() -> None:
            self.outcome = await agent.run(
                lambda: open_local_link(self.engine.path),
                reconnect_delay=0.02,
                max_reconnect_delay=0.05,
                give_up_after=give_up_after,
            )
            self.done.set()

        self.nursery.start_soon(run)


@pytest.fixture
def agents(nursery: trio.Nursery, engine: FakeEngine, tmp_path: Path) -> AgentRunner:
    return AgentRunner(nursery, engine, tmp_path)


@pytest.fixture
def h() -> types.SimpleNamespace:
    """The helper functions of this module."""
    return types.SimpleNamespace(
        GUARD=GUARD,
        make_dispatch=make_dispatch,
        is_dead=is_dead,
        receive=receive,
        receive_until_finished=receive_until_finished,
        output_of=output_of,
    )


@pytest.fixture
async def keeper(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[KeeperLink]:
    """A real keeper process for attempts run directly (no agent), on its own spool dir."""
    async with open_keeper(tmp_path_factory.mktemp("keeper-spool")) as link:
        yield link
