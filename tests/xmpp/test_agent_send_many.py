"""The agent's XMPP link sends messages that are ready together with one drain, in order,
against a real Prosody: a short attempt's ``JobAccepted`` and ``JobFinished`` go out together."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import trio

from wfe.agents.core import Agent
from wfe.agents.spool import Spool
from wfe.agents.xmpp_connector import XmppConnector, XmppLink
from wfe.engine.devtools.prosody import ProsodyServer
from wfe.links.xmpp import (
    Event,
    MessageReceived,
    PresenceReceived,
    UploadReceived,
    XmppClient,
    open_xmpp_client,
)
from wfe.protocols.messages import (
    AgentHello,
    Capabilities,
    Dispatch,
    FinishReason,
    JobAccepted,
    JobFinished,
    Limits,
    Message,
    OutputChunk,
    Stream,
)
from wfe.protocols.signing import script_sha256
from wfe.protocols.xmpp import PresenceInfo

from .conftest import client_settings

if TYPE_CHECKING:
    from conftest import Account

pytestmark = pytest.mark.xmpp

#: Guard for anything that waits on Prosody or real processes.
GUARD = 15.0


class Pair:
    """A test-side controller and an agent-side connector in a session with it."""

    def __init__(self, controller: XmppClient, connector: XmppConnector) -> None:
        self.controller = controller
        self.connector = connector
        self.discovered = trio.Event()  # the connector looked for the upload service

    async def next_event(self) -> MessageReceived | UploadReceived:
        """The controller's next message or upload reference."""
        with trio.fail_after(GUARD):
            while True:
                event: Event = await self.controller.events.receive()
                if isinstance(event, MessageReceived | UploadReceived):
                    return event

    async def next_message(self) -> Message:
        event = await self.next_event()
        assert isinstance(event, MessageReceived), event
        return event.message


@contextlib.asynccontextmanager
async def paired(
    server: ProsodyServer,
    new_account: Callable[[ProsodyServer], Account],
    monkeypatch: pytest.MonkeyPatch,
    **hosted: Any,
) -> AsyncIterator[Pair]:
    """Log in a controller and an agent connector; yield once the controller answered the
    agent's presence (so ``pair.connector()`` opens a session at once)."""
    controller_account, agent_account = new_account(server), new_account(server)
    connector = XmppConnector(
        client_settings(server, agent_account),
        controllers=[controller_account.jid],
        max_dispatch_age=None,
        wait_limit=GUARD,
    )
    async with open_xmpp_client(client_settings(server, controller_account)) as controller:
        pair = Pair(controller, connector)
        discover = connector._discover

        async def discovered(client: XmppClient) -> None:
            await discover(client)
            pair.discovered.set()

        monkeypatch.setattr(connector, "_discover", discovered)
        async with connector.hosted(**hosted):
            with trio.fail_after(GUARD):
                async for event in controller.events:
                    if isinstance(event, PresenceReceived) and event.info is not None:
                        assert event.info.role == "agent"
                        controller.send_presence(
                            event.sender, PresenceInfo(role="controller", instance="c1")
                        )
                        break
            yield pair


def count_drains(client: XmppClient, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the client's drains from now on; the list's one item is the count."""
    drains = [0]
    drain = client.drain

    async def counted() -> None:
        drains[0] += 1
        await drain()

    monkeypatch.setattr(client, "drain", counted)
    return drains


def chunk(seq: int, data: bytes) -> OutputChunk:
    return OutputChunk(job_id="job-1", attempt=1, stream=Stream.STDOUT, seq=seq, data=data)


async def test_send_many_sends_in_order_with_one_drain(
    prosody: ProsodyServer,
    new_account: Callable[[ProsodyServer], Account],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``send_many`` delivers every message, in the order given, and waits for one drain
    instead of one per message."""
    sent: list[Message] = [JobAccepted(job_id="job-1", attempt=1, pid=42)]
    sent += [chunk(seq, f"line {seq}\n".encode()) for seq in range(20)]
    sent.append(JobFinished(job_id="job-1", attempt=1, reason=FinishReason.EXITED, chunks=20))
    async with paired(prosody, new_account, monkeypatch) as pair, pair.connector() as link:
        assert pair.connector.client is not None
        drains = count_drains(pair.connector.client, monkeypatch)
        await link.send_many(sent)
        assert drains == [1]
        assert [await pair.next_message() for _ in sent] == sent


async def test_send_many_keeps_uploaded_output_between_its_neighbours(
    prosody: ProsodyServer,
    new_account: Callable[[ProsodyServer], Account],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Big incompressible chunks in a ``send_many`` go by HTTP upload, and their reference
    arrives after the message before them and before the message after them."""
    sent: list[Message] = [
        JobAccepted(job_id="job-1", attempt=1, pid=42),
        chunk(0, os.urandom(64 * 1024)),
        chunk(1, os.urandom(64 * 1024)),
        JobFinished(job_id="job-1", attempt=1, reason=FinishReason.EXITED, chunks=2),
    ]
    async with paired(prosody, new_account, monkeypatch) as pair:
        with trio.fail_after(GUARD):
            await pair.discovered.wait()
        assert pair.connector.upload_service is not None, "the test Prosody offers uploads"
        async with pair.connector() as link:
            await link.send_many(sent)
            assert await pair.next_message() == sent[0]
            upload = await pair.next_event()
            assert isinstance(upload, UploadReceived)
            assert (upload.ref.seq, upload.ref.chunks) == (0, 2)
            assert await pair.next_message() == sent[3]
    assert pair.connector.uploads == 1


async def test_a_short_attempts_start_and_end_travel_together_over_xmpp(
    prosody: ProsodyServer,
    new_account: Callable[[ProsodyServer], Account],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """The agent core, over XMPP, sends a short attempt's ``JobAccepted`` and ``JobFinished``
    in one ``send_many``; the controller receives them, in that order."""
    calls: list[list[type[Message]]] = []
    send_many = XmppLink.send_many

    async def recorded(self: XmppLink, messages: Sequence[Message]) -> None:
        calls.append([type(m) for m in messages])
        await send_many(self, messages)

    monkeypatch.setattr(XmppLink, "send_many", recorded)
    capabilities = Capabilities(slots=2, memory=1 << 30, site="here")
    agent = Agent(
        name="xmpp-agent",
        capabilities=capabilities,
        spool=Spool(tmp_path / "spool"),
        workdir=tmp_path / "work",
        heartbeat=60.0,
        kill_grace=0.5,
        accept_after=GUARD,  # the script ends sooner, whatever the load
    )
    script = "exit 0\n"
    dispatch = Dispatch(
        job_id="job-1",
        attempt=1,
        script_name="test",
        script=script,
        sha256=script_sha256(script),
        params={},
        limits=Limits(timeout=20.0),
    )
    async with (
        paired(prosody, new_account, monkeypatch, capabilities=capabilities) as pair,
        agent.open(),
        pair.connector() as link,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(agent.serve, link)
        hello = await pair.next_message()
        assert isinstance(hello, AgentHello) and hello.name == "xmpp-agent"
        pair.controller.send_message(link.client.jid, dispatch)
        accepted, finished = await pair.next_message(), await pair.next_message()
        assert isinstance(accepted, JobAccepted) and accepted.job_id == "job-1"
        assert isinstance(finished, JobFinished)
        assert (finished.reason, finished.exit_code) == (FinishReason.EXITED, 0)
        assert calls == [[JobAccepted, JobFinished]]
        nursery.cancel_scope.cancel()
