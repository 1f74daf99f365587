"""The console's wire: event frames written at once from the tick over real loopback TCP, never
interleaved with what trio-websocket writes, and handed back when the socket is full."""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Sequence
from pathlib import Path

import pytest
import trio
from trio_websocket import wrap_client_stream
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, TextMessage

from wfe.engine.console.api import load_ops
from wfe.engine.console.server import ConsoleServer
from wfe.engine.console.session import Limits
from wfe.engine.console.streams import Frame
from wfe.engine.console.wire import Wire
from wfe.engine.keys import read_token
from wfe.engine.runtime.daemon import open_engine
from wfe.protocols.console_frames import decode_binary

from .conftest import GUARD, Console, fill, workspace

BIG = 4 * 1024 * 1024  # more than loopback buffers hold when the reader is small and idle


@pytest.fixture
async def tcp_pair() -> AsyncIterator[tuple[trio.SocketStream, trio.SocketStream]]:
    """A server-side and a client-side stream of one loopback TCP connection, small buffers."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    client_sock = trio.socket.socket()
    client_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await client_sock.connect(("127.0.0.1", port))
    server = await listeners[0].accept()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    client = trio.SocketStream(client_sock)
    yield server, client
    for s in (server, client, *listeners):
        await s.aclose()


async def read_exactly(stream: trio.abc.ReceiveStream, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = await stream.receive_some(size - len(data))
        assert chunk, "the connection ended early"
        data += chunk
    return data


async def written_and_read(
    write: Awaitable[None], client: trio.SocketStream, *parts: Sequence[bytes]
) -> bytes:
    """Await ``write`` while the client reads every byte of ``parts``; return what it read."""
    received = bytearray()

    async def read_all() -> None:
        received.extend(await read_exactly(client, sum(len(c) for part in parts for c in part)))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_all)
        await write
    return bytes(received)


def messages(data: bytes) -> list[str | bytes]:
    client = Connection(ConnectionType.CLIENT)
    client.receive_data(data)
    got: list[str | bytes] = []
    for event in client.events():
        assert isinstance(event, TextMessage | BytesMessage) and event.message_finished
        got.append(event.data)
    return got


async def test_a_frame_written_at_once_is_the_message_the_writer_would_send(
    tcp_pair: tuple[trio.SocketStream, trio.SocketStream],
) -> None:
    """Plain and compressed, a frame written with send_now reads back as exactly the text
    message and the binary message the writer task sends for the same stream."""
    server, client = tcp_pair
    wire = Wire(server)
    frame = Frame('{"id":1,"kind":"job.created"},{"id":2,"kind":"job.state"}')
    plain, packed = frame.chunks(7, False), frame.chunks(300, True)
    with trio.fail_after(GUARD):
        assert wire.send_now(plain) and wire.send_now(packed)
        assert not wire.pending
        data = await read_exactly(client, sum(map(len, plain + packed)))
    text, binary = messages(data)
    assert text == f'{{"stream":7,"events":[{frame.body}]}}'
    assert isinstance(binary, bytes) and decode_binary(binary)["stream"] == 300
    assert decode_binary(binary) == {
        "stream": 300,
        "events": [{"id": 1, "kind": "job.created"}, {"id": 2, "kind": "job.state"}],
    }


async def test_partial_frames_are_completed_in_order(
    tcp_pair: tuple[trio.SocketStream, trio.SocketStream],
) -> None:
    """When only part of a frame fits, the wire keeps the rest, refuses further frames, and
    sends the rest before the next send_all: the peer reads both messages whole, in order."""
    server, client = tcp_pair
    wire = Wire(server)
    body = "".join(f'{{"id":{i},"pad":"{i:0>60}"}},' for i in range(BIG // 80)).rstrip(",")
    first = Frame(body).chunks(1, False)
    second = Frame('{"id":-1}').chunks(2, False)
    with trio.fail_after(GUARD):
        assert wire.send_now(first)
        assert wire.pending and wire.busy, "4 MiB should not fit in the loopback buffers"
        assert not wire.send_now(second), "a frame must not start inside another"
        received = await written_and_read(wire.send_all(b"".join(second)), client, first, second)
        assert not wire.pending
    assert messages(received) == [
        f'{{"stream":1,"events":[{body}]}}',
        '{"stream":2,"events":[{"id":-1}]}',
    ]


async def test_a_full_socket_refuses_and_keeps_nothing(
    tcp_pair: tuple[trio.SocketStream, trio.SocketStream],
) -> None:
    """With the socket full a frame is refused whole: nothing of it is written or kept."""
    server, _client = tcp_pair
    fill(server)
    wire = Wire(server)
    assert not wire.send_now(Frame("{}").chunks(2, False))
    assert not wire.pending and not wire.busy


async def test_a_frame_is_refused_while_trio_websocket_writes(
    tcp_pair: tuple[trio.SocketStream, trio.SocketStream],
) -> None:
    """While a send_all is under way (blocked on a full socket) send_now refuses."""
    server, client = tcp_pair
    wire = Wire(server)
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wire.send_all, b"y" * BIG)
            await trio.testing.wait_all_tasks_blocked()
            assert wire.busy
            assert not wire.send_now(Frame("{}").chunks(1, False))
            assert not wire.pending
            await read_exactly(client, BIG)
        assert not wire.busy
        assert wire.send_now(Frame("{}").chunks(1, False))


async def test_a_closed_wire_or_one_over_no_socket_refuses(
    tcp_pair: tuple[trio.SocketStream, trio.SocketStream],
) -> None:
    """After aclose, or over a stream that is not a socket, send_now refuses."""
    server, _client = tcp_pair
    wire = Wire(server)
    await wire.aclose()
    assert not wire.send_now(Frame("{}").chunks(1, False))
    left, _right = trio.testing.memory_stream_pair()
    assert not Wire(left).send_now(Frame("{}").chunks(1, False))


async def test_flushing_to_a_peer_that_went_away_raises_broken(
    tcp_pair: tuple[trio.SocketStream, trio.SocketStream],
) -> None:
    """The rest of a frame cannot reach a client that reset the connection: send_chunks raises."""
    server, client = tcp_pair
    wire = Wire(server)
    with trio.fail_after(GUARD):
        assert wire.send_now(Frame("z" * BIG).chunks(1, False)) and wire.pending
        client.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await client.aclose()  # linger 0: a reset
        with pytest.raises(trio.BrokenResourceError):
            await wire.send_chunks([])


async def test_a_reset_while_a_frame_is_half_written_ends_only_that_session(
    tmp_path: Path,
) -> None:
    """A watcher that stops reading fills its socket until the tick writes only part of a
    frame (the rest waits in its wire); when it then resets the connection, its session
    ends and the engine and another client go on."""
    config = workspace(tmp_path / "ws")
    token = read_token(config)
    load_ops()
    finished = False
    with trio.fail_after(GUARD):
        async with open_engine(config) as engine, trio.open_nursery() as nursery:
            server = ConsoleServer(engine, bootstrap_token=token, limits=Limits())
            port = await nursery.start(server.serve, "127.0.0.1", 0)
            console = Console(engine, f"ws://127.0.0.1:{port}/", token, config.root)
            await console.wait_for_agents(1)
            sock = trio.socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            await sock.connect(("127.0.0.1", port))
            tcp = trio.SocketStream(sock)
            async with trio.open_nursery() as watcher:
                ws = await wrap_client_stream(
                    watcher, tcp, f"127.0.0.1:{port}", "/", message_queue_size=1
                )
                await ws.send_message(json.dumps({"id": 1, "op": "auth", "args": {"token": token}}))
                await ws.get_message()
                await ws.send_message(json.dumps({"id": 2, "op": "subscribe", "args": {}}))
                await ws.get_message()
                (session,) = server.sessions
                async with console.connect() as good:
                    while not session.wire.pending:  # ... and the watcher reads no more
                        jobs = [(await good.call("run", rscript="noop"))["job"] for _ in range(10)]
                        for job in jobs:
                            await good.call("wait", job=job)
                    assert session.frames_direct > 0
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    await tcp.aclose()  # linger 0: a reset
                    while server.connections > 1:  # its handler has returned  # noqa: ASYNC110
                        await trio.sleep(0.02)
                    assert session not in server.sessions
                    job = (await good.call("run", rscript="noop"))["job"]
                    assert (await good.call("wait", job=job))["state"] == "succeeded"
                    assert (await good.call("stats"))["console"]["connections"] == 1
                    finished = True
                watcher.cancel_scope.cancel()
            nursery.cancel_scope.cancel()
    assert finished, "the test was cancelled: the server crashed (see its exception above)"


async def test_the_writer_sends_held_frames_after_the_rest_waiting_for_room(
    tcp_pair: tuple[trio.SocketStream, trio.SocketStream],
) -> None:
    """send_chunks (the writer's path) writes the rest of a half-written frame first, then
    whole messages, waiting while the socket is full: the peer reads them all, in order."""
    server, client = tcp_pair
    wire = Wire(server)
    big = Frame(",".join(f'{{"id":{i}}}' for i in range(BIG // 10)))
    held = [Frame('{"id":-1}'), Frame('{"id":-2}')]
    first = big.chunks(1, True)
    rest = [c for f in held for c in f.chunks(1, True)]
    with trio.fail_after(GUARD):
        assert wire.send_now(first) and wire.pending
        received = await written_and_read(wire.send_chunks(rest), client, first, rest)
        assert not wire.pending and not wire.busy
    got = [decode_binary(m)["events"] for m in messages(received)]  # type: ignore[arg-type]
    assert got == [json.loads(f"[{f.body}]") for f in (big, *held)]
