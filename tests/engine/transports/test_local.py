"""The local transport's outbox: what the controller queues reaches the agent in order, framed."""

from __future__ import annotations

import logging

import pytest
import trio

from wfe.engine.transports.local import LocalAgentLink
from wfe.protocols import codec
from wfe.protocols.framing import FrameDecoder
from wfe.protocols.messages import Ack, Cancel, Message, StatusRequest


class RecordingStream(trio.abc.SendStream):
    """A send stream that keeps every ``send_all`` call's bytes."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.wrote = trio.Event()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()
        self.writes.append(bytes(data))
        self.wrote.set()

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


def decode(data: bytes) -> list[Message]:
    return [codec.decode(payload) for payload in FrameDecoder().feed(data)]


async def test_messages_queued_together_go_out_in_one_write_in_order() -> None:
    """Three messages queued before the pump runs are sent with one write, in order."""
    stream = RecordingStream()
    outbox = LocalAgentLink(stream)
    sent: list[Message] = [
        Ack(job_id="j000001", attempt=1),
        Cancel(job_id="j000002", attempt=3, reason="deadline passed"),
        StatusRequest(),
    ]
    for message in sent:
        outbox.send_nowait(message)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(outbox.pump)
            await stream.wrote.wait()
            nursery.cancel_scope.cancel()
    assert len(stream.writes) == 1
    assert decode(stream.writes[0]) == sent


async def test_a_message_too_large_is_dropped_and_the_rest_still_go(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A message over the size limit is logged and dropped; the ones around it are sent."""
    stream = RecordingStream()
    outbox = LocalAgentLink(stream, max_bytes=200)
    before, after = Ack(job_id="j000001", attempt=1), Ack(job_id="j000003", attempt=1)
    outbox.send_nowait(before)
    outbox.send_nowait(Cancel(job_id="j000002", attempt=1, reason="x" * 500))
    outbox.send_nowait(after)
    with trio.fail_after(5), caplog.at_level(logging.ERROR, logger="wfe.local"):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(outbox.pump)
            await stream.wrote.wait()
            nursery.cancel_scope.cancel()
    assert decode(b"".join(stream.writes)) == [before, after]
    assert "cannot send Cancel" in caplog.text


async def test_over_a_socket_messages_keep_their_order_when_the_buffer_fills() -> None:
    """Messages go straight to the socket while it takes them, then wait in the outbox; the
    agent receives every one, in order, once it reads."""
    ours, theirs = trio.socket.socketpair()
    stream = trio.SocketStream(ours)
    outbox = LocalAgentLink(stream)
    sent = [Cancel(job_id=f"j{n:06d}", attempt=1, reason="x" * 8000) for n in range(300)]
    for message in sent[:150]:
        outbox.send_nowait(message)  # ~1.2 MB: more than the socket buffer holds
    received: list[Message] = []
    decoder = FrameDecoder()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(outbox.pump)
            for message in sent[150:]:
                outbox.send_nowait(message)
            while len(received) < len(sent):
                data = await theirs.recv(65536)
                received.extend(codec.decode(p) for p in decoder.feed(data))
            nursery.cancel_scope.cancel()
    assert received == sent
    theirs.close()
    await stream.aclose()


async def test_a_closed_outbox_writes_nothing_more() -> None:
    """After close (the connection is ending) messages are dropped, not written."""
    ours, theirs = trio.socket.socketpair()
    stream = trio.SocketStream(ours)
    outbox = LocalAgentLink(stream)
    outbox.send_nowait(Ack(job_id="j000001", attempt=1))
    outbox.close()
    outbox.send_nowait(Ack(job_id="j000002", attempt=1))
    with trio.fail_after(5):
        await outbox.pump()  # returns at once: closed
    await stream.aclose()
    data = b""
    while chunk := await theirs.recv(65536):
        data += chunk
    assert decode(data) == [Ack(job_id="j000001", attempt=1)]
    theirs.close()
