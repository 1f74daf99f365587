"""The XMPP client both sides use (wfe.links.xmpp.XmppClient), against a real Prosody."""

from __future__ import annotations

import base64
import os
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import attrs
import pytest
import trio

from wfe.engine.devtools.prosody import ProsodyServer
from wfe.links.xmpp import (
    Event,
    MessageReceived,
    Offline,
    Online,
    XmppClient,
    XmppRefused,
    open_xmpp_client,
)
from wfe.protocols.messages import Ack, OutputChunk, Stream

from .conftest import client_settings

if TYPE_CHECKING:
    from conftest import Account

pytestmark = pytest.mark.xmpp


@asynccontextmanager
async def online(
    server: ProsodyServer, account: Account, **options: Any
) -> AsyncIterator[XmppClient]:
    async with open_xmpp_client(client_settings(server, account, **options)) as client:
        assert isinstance(await client.events.receive(), Online)
        yield client


def leaves(group: BaseException) -> list[BaseException]:
    if isinstance(group, BaseExceptionGroup):
        return [leaf for e in group.exceptions for leaf in leaves(e)]
    return [group]


async def next_message(client: XmppClient) -> MessageReceived:
    while True:
        event: Event = await client.events.receive()
        if isinstance(event, MessageReceived):
            return event


async def test_messages_arrive_whole_and_in_order(
    prosody: ProsodyServer, new_account: Callable[[ProsodyServer], Account]
) -> None:
    """Small, big and multi-part messages queued in one burst arrive in order, each whole."""
    big = OutputChunk(
        job_id="j", attempt=1, stream=Stream.STDOUT, seq=0, data=os.urandom(64 * 1024)
    )
    split = Ack(job_id=base64.b64encode(os.urandom(300_000)).decode(), attempt=1)  # > 1 stanza
    sent = [Ack(job_id=f"job-{n}", attempt=n) for n in range(300)]
    sent[100:100] = [big, split]
    with trio.fail_after(30):
        async with (
            online(prosody, new_account(prosody)) as a,
            online(prosody, new_account(prosody)) as b,
        ):
            for message in sent:
                a.send_message(b.jid, message)
            assert a.stanzas_sent > len(sent)  # the split message took several stanzas
            received = [await next_message(b) for _ in sent]
    assert [r.message for r in received] == sent
    assert {r.sender for r in received} == {a.jid}


async def test_sending_while_offline_is_a_broken_resource(
    prosody_factory: Callable[..., ProsodyServer], new_account: Callable[[ProsodyServer], Account]
) -> None:
    """While the server is away sending raises BrokenResourceError; the client comes back by
    itself (a new instance) and sends again."""
    server = prosody_factory()
    with trio.fail_after(30):
        async with online(server, new_account(server)) as client:
            first = client.instance
            await trio.to_thread.run_sync(server.stop)
            assert isinstance(await client.events.receive(), Offline)
            with pytest.raises(trio.BrokenResourceError, match="not connected"):
                client.send_message(client.jid, Ack(job_id="j", attempt=1))
            await trio.to_thread.run_sync(server.start)
            assert isinstance(await client.events.receive(), Online)
            assert client.instance != first
            client.send_message(client.jid, Ack(job_id="j", attempt=2))
            assert (await next_message(client)).message == Ack(job_id="j", attempt=2)


async def test_a_wrong_password_is_refused_for_good(
    prosody: ProsodyServer, new_account: Callable[[ProsodyServer], Account]
) -> None:
    """Failing to authenticate before any session raises XmppRefused with one line saying so."""
    account = new_account(prosody)
    bad = attrs.evolve(client_settings(prosody, account), password="wrong")
    with (
        trio.fail_after(20),
        pytest.RaisesGroup(pytest.RaisesExc(XmppRefused), flatten_subgroups=True) as caught,
    ):
        async with open_xmpp_client(bad):
            await trio.sleep_forever()
    (error,) = leaves(caught.value)
    assert (
        str(error)
        == f"xmpp: {account.jid}: authentication failed: check the JID and the password file"
    )


async def test_starttls_is_required_when_asked(
    prosody: ProsodyServer, new_account: Callable[[ProsodyServer], Account]
) -> None:
    """With tls = starttls, a server that offers no STARTTLS is refused before authenticating."""
    account = new_account(prosody)
    with (
        trio.fail_after(20),
        pytest.RaisesGroup(pytest.RaisesExc(XmppRefused), flatten_subgroups=True) as caught,
    ):
        async with open_xmpp_client(
            attrs.evolve(client_settings(prosody, account), tls="starttls")
        ):
            await trio.sleep_forever()
    (error,) = leaves(caught.value)
    assert (
        str(error)
        == f"xmpp: {account.jid}: the server does not offer STARTTLS (tls = 'starttls' requires it)"
    )


async def test_a_malformed_payload_is_refused_and_the_stream_goes_on(
    prosody: ProsodyServer,
    new_account: Callable[[ProsodyServer], Account],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A payload that does not decode is logged on one line and dropped; the next one arrives."""
    with trio.fail_after(20):
        async with (
            online(prosody, new_account(prosody)) as a,
            online(prosody, new_account(prosody)) as b,
        ):
            a.send_stanza(
                f'<message to="{b.jid}" type="normal"><wfe xmlns="urn:wfe:agent:1">{{"v":1}}</wfe></message>'
            )
            a.send_message(b.jid, Ack(job_id="after", attempt=1))
            assert (await next_message(b)).message == Ack(job_id="after", attempt=1)
    refusals = [r.getMessage() for r in caplog.records if "malformed" in r.getMessage()]
    assert refusals == [
        f"xmpp: refused a malformed payload from {a.jid}: $.type: unknown message type None"
    ]


async def test_messages_stored_while_offline_are_dropped_as_stale(
    prosody: ProsodyServer, new_account: Callable[[ProsodyServer], Account]
) -> None:
    """A message the server kept for us while we were offline is dropped, not delivered."""
    sender, receiver = new_account(prosody), new_account(prosody)
    with trio.fail_after(20):
        async with online(prosody, sender) as a:
            a.send_message(f"{receiver.jid}/wfe", Ack(job_id="stale", attempt=1))
            await a.drain()
            async with online(prosody, receiver) as b:
                a.send_message(b.jid, Ack(job_id="fresh", attempt=1))
                assert (await next_message(b)).message == Ack(job_id="fresh", attempt=1)
                assert b.stale_dropped == 1


async def test_a_server_that_stops_answering_is_noticed_by_the_keepalive(
    prosody_factory: Callable[..., ProsodyServer], new_account: Callable[[ProsodyServer], Account]
) -> None:
    """Pings notice a server that froze (SIGSTOP, no TCP close): the client goes offline, and
    comes back by itself once the server answers again."""
    server = prosody_factory()
    with trio.fail_after(30):
        async with online(
            server, new_account(server), keepalive=0.5, connect_timeout=2.0
        ) as client:
            assert server.pid is not None
            os.kill(server.pid, signal.SIGSTOP)
            try:
                offline = await client.events.receive()
                assert isinstance(offline, Offline)
            finally:
                os.kill(server.pid, signal.SIGCONT)
            while not isinstance(await client.events.receive(), Online):
                pass
            client.send_message(client.jid, Ack(job_id="back", attempt=1))
            assert (await next_message(client)).message == Ack(job_id="back", attempt=1)
