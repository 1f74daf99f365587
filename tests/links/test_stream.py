"""The local transport: frames of encoded messages on a Unix socket."""

from __future__ import annotations

import logging
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from wfe.agents.errors import MessageTooLarge
from wfe.links.stream import StreamLink, open_local_link
from wfe.protocols import codec
from wfe.protocols.framing import frame
from wfe.protocols.messages import (
    MAX_MESSAGE_BYTES,
    Ack,
    OutputChunk,
    StatusRequest,
    Stream,
)

GUARD = 10.0


@pytest.fixture
async def pair() -> AsyncIterator[tuple[StreamLink, trio.SocketStream]]:
    """A link on one end of a real Unix socket pair, the raw stream on the other."""
    a, b = trio.socket.socketpair()
    link, raw = StreamLink(trio.SocketStream(a)), trio.SocketStream(b)
    yield link, raw
    await link.aclose()
    await raw.aclose()


async def next_message(link: StreamLink) -> object:
    with trio.fail_after(GUARD):
        async for message in link.receive():
            return message
    return None  # the iteration ended: the connection closed


async def test_messages_travel_both_ways() -> None:
    """What one link sends the other receives, in order, split across reads or not."""
    a, b = trio.socket.socketpair()
    left, right = StreamLink(trio.SocketStream(a)), StreamLink(trio.SocketStream(b))
    chunk = OutputChunk(job_id="j", attempt=1, stream=Stream.STDERR, seq=0, data=bytes(200_000))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(left.send, chunk)
        assert await next_message(right) == chunk
    await right.send(Ack(job_id="j", attempt=1))
    assert await next_message(left) == Ack(job_id="j", attempt=1)
    await left.aclose()
    assert await next_message(right) is None
    await right.aclose()


async def test_a_frame_may_arrive_byte_by_byte(
    pair: tuple[StreamLink, trio.SocketStream],
) -> None:
    """Framing does not depend on how the bytes are split."""
    link, raw = pair
    data = frame(codec.encode(StatusRequest())) * 2
    for i in range(len(data)):
        await raw.send_all(data[i : i + 1])
    assert await next_message(link) == StatusRequest()
    assert await next_message(link) == StatusRequest()


async def test_a_frame_that_does_not_decode_is_dropped_and_the_link_stays(
    pair: tuple[StreamLink, trio.SocketStream], caplog: pytest.LogCaptureFixture
) -> None:
    """Garbage in one frame is logged and skipped; the next message still arrives."""
    link, raw = pair
    await raw.send_all(frame(b"{not json") + frame(b'{"v":1,"type":"nope"}'))
    await raw.send_all(frame(codec.encode(StatusRequest())))
    with caplog.at_level(logging.WARNING, logger="wfe.agent.link"):
        assert await next_message(link) == StatusRequest()
    assert [r.getMessage().startswith("dropped a frame") for r in caplog.records] == [True, True]


async def test_an_oversize_frame_closes_the_connection(
    pair: tuple[StreamLink, trio.SocketStream],
) -> None:
    """A frame declaring more than MAX_MESSAGE_BYTES ends the link; the peer sees it close."""
    link, raw = pair
    await raw.send_all(struct.pack(">I", MAX_MESSAGE_BYTES + 1) + b"xx")
    assert await next_message(link) is None
    with trio.fail_after(GUARD):
        assert await raw.receive_some() == b""


async def test_a_message_too_large_to_travel_is_refused_on_send(
    pair: tuple[StreamLink, trio.SocketStream],
) -> None:
    """send() raises MessageTooLarge instead of sending what the peer would refuse."""
    _, raw = pair
    small = StreamLink(raw, max_bytes=1000)
    chunk = OutputChunk(job_id="j", attempt=1, stream=Stream.STDOUT, seq=0, data=bytes(1000))
    with pytest.raises(MessageTooLarge, match="OutputChunk of .* bytes exceeds the limit of 1000"):
        await small.send(chunk)


async def test_open_local_link_connects_to_a_listening_socket(short_dir: Path) -> None:
    """open_local_link speaks to whoever listens on the path; nothing listening is OSError."""
    path = trio.Path(short_dir / "engine.sock")
    with pytest.raises(OSError):
        async with open_local_link(path):
            pass
    sock = trio.socket.socket(trio.socket.AF_UNIX)
    await sock.bind(str(path))
    sock.listen(1)
    listener = trio.SocketListener(sock)
    try:
        async with open_local_link(path) as link:
            server = StreamLink(await listener.accept())
            await link.send(StatusRequest())
            assert await next_message(server) == StatusRequest()
            await server.aclose()
    finally:
        await listener.aclose()
        await path.unlink()


async def test_send_many_writes_the_frames_in_order_in_one_write() -> None:
    """send_many puts every message's frame on the stream in one send_all, in order."""
    a, b = trio.socket.socketpair()
    stream, raw = trio.SocketStream(a), trio.SocketStream(b)
    messages = [Ack(job_id="j", attempt=1), StatusRequest(), Ack(job_id="k", attempt=2)]
    writes: list[bytes] = []
    real = stream.send_all

    async def send_all(data: bytes | bytearray | memoryview) -> None:
        writes.append(bytes(data))
        await real(data)

    stream.send_all = send_all  # type: ignore[method-assign]
    link = StreamLink(stream)
    await link.send_many(messages)
    assert writes == [b"".join(frame(codec.encode(m)) for m in messages)]
    reader = StreamLink(raw)
    assert [await next_message(reader) for _ in messages] == messages
    await link.aclose()
    await reader.aclose()


async def test_send_many_sends_nothing_if_one_message_is_too_large(
    pair: tuple[StreamLink, trio.SocketStream],
) -> None:
    """A message over the limit fails the whole batch before anything is written."""
    link, raw = pair
    big = OutputChunk(
        job_id="j", attempt=1, stream=Stream.STDOUT, seq=0, data=bytes(MAX_MESSAGE_BYTES)
    )
    with pytest.raises(MessageTooLarge):
        await link.send_many([Ack(job_id="j", attempt=1), big])
    await link.send(StatusRequest())
    assert await next_message(StreamLink(raw)) == StatusRequest()
