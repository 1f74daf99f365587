"""Review of decision #29 (the tick writes event frames itself): a session over a real
trio-websocket server connection on a socket pair, read by a raw wsproto client, so that the
order of bytes on the wire is what is checked. The review found two bugs, since fixed: a
stream's events overtaking the reply that names it, and the rest of a frame sent twice after
a cancelled write."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from trio_websocket import WebSocketConnection, wrap_server_stream
from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection
from wsproto.events import AcceptConnection, BytesMessage, CloseConnection, Request, TextMessage
from wsproto.extensions import PerMessageDeflate

from wfe.engine.console import protocol
from wfe.engine.console.filters import EventFilter
from wfe.engine.console.hub import ConsoleHub
from wfe.engine.console.session import ClientStalled, Limits, Session
from wfe.engine.console.streams import Frame
from wfe.engine.console.tokens import Principal, Role
from wfe.engine.console.wire import Wire
from wfe.engine.repository import Event

from .conftest import fill

GUARD = 10  # seconds: everything here is local and small


@attrs.define
class Peer:
    """The client end: a raw socket and a wsproto client that parses what arrives."""

    stream: trio.SocketStream
    conn: WSConnection
    got: list[Any] = attrs.field(factory=list)  # str / bytes messages, ("close", code)
    received: int = 0  # bytes read after the handshake
    partial: list[Any] = attrs.field(factory=list)  # parts of a message not yet finished

    def nothing_more(self) -> bool:
        """Whether no byte waits unread (call once every task is blocked)."""
        try:
            os.read(self.stream.socket.fileno(), 1)
        except BlockingIOError:
            return True
        return False

    async def read(self, count: int) -> list[Any]:
        """Read until ``count`` messages (a close counts) have arrived; return them all."""
        while len(self.got) < count:
            data = await self.stream.receive_some(65536)
            assert data, f"the connection ended after {self.got!r}"
            self.received += len(data)
            self.conn.receive_data(data)
            for event in self.conn.events():
                if isinstance(event, TextMessage | BytesMessage):
                    self.partial.append(event.data)
                    if event.message_finished:
                        self.got.append(self.partial[0][:0].join(self.partial))
                        self.partial = []
                elif isinstance(event, CloseConnection):
                    self.got.append(("close", event.code))
        return self.got


@asynccontextmanager
async def websocket_pair(
    nursery: trio.Nursery,
) -> AsyncIterator[tuple[WebSocketConnection, Wire, Peer]]:
    """A server ``WebSocketConnection`` over a ``Wire`` on one end of a socket pair (as
    ``ConsoleServer._websocket`` builds it) and a raw client on the other."""
    left, right = trio.socket.socketpair()
    server_stream, client_stream = trio.SocketStream(left), trio.SocketStream(right)
    conn = WSConnection(ConnectionType.CLIENT)
    await client_stream.send_all(conn.send(Request(host="127.0.0.1", target="/")))
    wire = Wire(server_stream)
    request = await wrap_server_stream(nursery, wire, message_queue_size=1)
    ws = await request.accept()
    accepted = False
    while not accepted:
        conn.receive_data(await client_stream.receive_some(65536))
        accepted = any(isinstance(e, AcceptConnection) for e in conn.events())
    try:
        yield ws, wire, Peer(client_stream, conn)
    finally:
        with trio.CancelScope(shield=True):
            for s in (server_stream, client_stream):
                await s.aclose()


def new_session(
    ws: WebSocketConnection, wire: Wire, nursery: trio.Nursery, **limits: Any
) -> Session:
    hub = ConsoleHub(engine=None)  # type: ignore[arg-type]
    return Session(
        server=SimpleNamespace(hub=hub),  # type: ignore[arg-type]
        ws=ws,
        wire=wire,
        principal=Principal(name="watcher", role=Role.VIEWER),
        nursery=nursery,
        limits=Limits(**limits),
    )


def start_writer(session: Session, nursery: trio.Nursery) -> list[BaseException]:
    """Run ``session.pump`` as the server does: what ends the session is recorded, not raised."""
    ended: list[BaseException] = []

    async def writer() -> None:
        try:
            await session.pump()
        except Exception as exc:  # ClientStalled, ClientGone, ConnectionClosed
            ended.append(exc)

    nursery.start_soon(writer)
    return ended


def commit(session: Session, *ids: int) -> None:
    """Events committed and one tick of the hub (as ``_tick_loop`` runs it)."""
    session.server.hub.publish(
        [Event(id=i, at=0.0, kind="job.state", subject="j1", data={"n": i}) for i in ids]
    )
    session.server.hub.tick()


def wsproto_frame(event: Any) -> bytes:
    """The bytes wsproto's server side writes for ``event``."""
    return Connection(ConnectionType.SERVER).send(event)


async def tick_one_big_event(session: Session, size: int) -> None:
    """Subscribe ``session`` to every event, then commit and tick one event of ``size`` bytes."""
    await trio.testing.wait_all_tasks_blocked()
    session.open_event_stream(EventFilter())
    session.streams_opened_here()
    await trio.testing.wait_all_tasks_blocked()
    big = Event(id=1, at=0.0, kind="job.state", subject="j1", data={"pad": "x" * size})
    session.server.hub.publish([big])
    session.server.hub.tick()


# --- bugs --------------------------------------------------------------------------------


async def test_a_direct_frame_never_precedes_the_reply_that_names_its_stream() -> None:
    """The reply to subscribe reaches the client before any event of the stream it opens.

    The interleaving, with real tasks: the writer is idle (_writing False). The subscribe
    handler queues its reply (Outbox.put appends, which wakes the writer, then checkpoints),
    resumes before the writer in the next scheduling batch (trio runs a batch in either order)
    and calls streams_opened_here (the stream is no longer in _ready); the tick task, woken by
    a commit in that same batch, runs next and finds _writing still False. Here the three
    steps run in that order without yielding. The web page (console.js onFrame) drops frames
    of a stream it does not know yet: those events are lost with no missed notice."""
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery, websocket_pair(nursery) as (ws, wire, peer):
            session = new_session(ws, wire, nursery)
            start_writer(session, nursery)
            await trio.testing.wait_all_tasks_blocked()  # the writer waits, idle
            stream = session.open_event_stream(EventFilter())  # the subscribe handler ...
            reply = protocol.ok(5, {"stream": stream.id, "after": 0})
            assert session.outbox.put_nowait(reply)  # ... queues its reply (the writer wakes)
            session.streams_opened_here()  # ... and resumes first: its stream is announced
            commit(session, 1)  # the tick runs before the writer
            first, second = await peer.read(2)
            assert json.loads(first) == {"id": 5, "ok": True, "result": {"stream": 1, "after": 0}}
            assert json.loads(second)["events"][0]["id"] == 1
            nursery.cancel_scope.cancel()


async def subscribe_race() -> list[Any]:
    """One run of the race: the order (reply ids, "events") in which the client reads."""
    async with trio.open_nursery() as nursery, websocket_pair(nursery) as (ws, wire, peer):
        session = new_session(ws, wire, nursery)
        hub = session.server.hub
        start_writer(session, nursery)
        nursery.start_soon(hub._tick_loop)
        await trio.testing.wait_all_tasks_blocked()
        go = trio.Event()

        async def other_reply() -> None:  # another request's reply, or tail output
            await go.wait()
            session.outbox.put_nowait(protocol.ok(4, {}))

        async def publish() -> None:  # ConsoleHub.run hands over a committed batch
            await go.wait()
            hub.publish([Event(id=1, at=0.0, kind="job.state", subject="j1", data={})])

        async def subscribe() -> None:  # ConsoleServer._handle of a subscribe
            stream = session.open_event_stream(EventFilter())
            await go.wait()
            await session.send(protocol.ok(5, {"stream": stream.id, "after": 0}))
            session.streams_opened_here()

        for task in (other_reply, publish, subscribe):
            nursery.start_soon(task)
            await trio.testing.wait_all_tasks_blocked()
        go.set()
        order = [json.loads(m).get("id", "events") for m in await peer.read(3)]
        nursery.cancel_scope.cancel()
    return order


async def test_with_real_tasks_a_subscribe_reply_is_never_overtaken_by_its_events() -> None:
    """In one scheduling batch another reply wakes the idle writer, the hub publishes a commit
    (waking the tick task) and a subscribe handler queues its reply. Whatever order trio picks
    for the next batch, the client reads the subscribe reply before the stream's events.
    (Before the fix about one run in ten ends with the event first; 150 runs are tried.)"""
    for _ in range(150):
        with trio.fail_after(GUARD):
            order = await subscribe_race()
        assert order.index(5) < order.index("events"), order


def drain(peer: Peer) -> int:
    """Read every byte waiting for the client without blocking; return how many."""
    total = 0
    while True:
        try:
            data = os.read(peer.stream.socket.fileno(), 1 << 20)
        except BlockingIOError:
            return total
        assert data, "the connection ended"
        total += len(data)


async def test_a_stalled_slow_client_is_never_sent_the_same_bytes_twice(mock_clock: Any) -> None:
    """A client that reads, but too slowly, while the writer sends the rest of a frame the
    tick wrote in part: once the writer gives up (ClientStalled) and the server closes the
    connection (4008), the client has received at most that frame and the close frame, never
    bytes of the frame a second time (~0.9 MB of them here: a corrupt stream)."""
    with trio.fail_after(1000):  # MockClock: only the jump below moves it
        async with trio.open_nursery() as nursery, websocket_pair(nursery) as (ws, wire, peer):
            session = new_session(ws, wire, nursery, stall_timeout=30.0)
            ended = start_writer(session, nursery)
            await tick_one_big_event(session, 2_000_000)
            assert wire.pending
            received = 0
            for _ in range(4):  # the client reads some; the writer sends more of the rest
                await trio.testing.wait_all_tasks_blocked()
                received += drain(peer)
            await trio.testing.wait_all_tasks_blocked()
            assert wire.pending and not ended
            mock_clock.jump(31.0)
            await trio.testing.wait_all_tasks_blocked()
            assert isinstance(ended[0], ClientStalled)
            nursery.start_soon(ws.aclose, 4008, "too slow")  # as _authenticated's finally does
            for _ in range(40):  # the client reads again: whatever the server still sends
                await trio.testing.wait_all_tasks_blocked()
                received += drain(peer)
            close = len(wsproto_frame(CloseConnection(code=4008, reason="too slow")))
            assert received <= session.bytes_sent + close
            nursery.cancel_scope.cancel()


# --- what was checked and found sound ----------------------------------------------------


async def test_a_frame_refused_at_a_frame_boundary_still_stalls_the_client(
    autojump_clock: Any,
) -> None:
    """With the socket full exactly at a frame boundary the tick's write is refused with
    nothing kept in the wire; the frame goes to the writer, whose write waits and, after
    stall_timeout, raises ClientStalled (the server then closes the connection)."""
    async with trio.open_nursery() as nursery, websocket_pair(nursery) as (ws, wire, _peer):
        session = new_session(ws, wire, nursery, stall_timeout=5.0)
        ended = start_writer(session, nursery)
        await trio.testing.wait_all_tasks_blocked()
        stream = session.open_event_stream(EventFilter())
        session.streams_opened_here()
        await trio.testing.wait_all_tasks_blocked()
        fill(wire._stream)  # type: ignore[arg-type]
        start = trio.current_time()
        commit(session, 1)
        assert session.frames_direct == 0 and not wire.pending  # refused whole
        assert stream.due or session._writing  # held, or already taken by the woken writer
        with trio.fail_after(60):
            while not ended:  # noqa: ASYNC110 (virtual time)
                await trio.sleep(0.5)
        assert isinstance(ended[0], ClientStalled)
        assert 5.0 <= trio.current_time() - start <= 5.5
        nursery.cancel_scope.cancel()


async def test_the_server_negotiates_no_extension_even_when_offered_one() -> None:
    """A client offering permessage-deflate is accepted without it (no RSV bits, no
    compression context): the frames the tick writes are plain RFC 6455 frames."""
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            left, right = trio.socket.socketpair()
            server_stream, client_stream = trio.SocketStream(left), trio.SocketStream(right)
            conn = WSConnection(ConnectionType.CLIENT)
            offer = Request(host="h", target="/", extensions=[PerMessageDeflate()])
            await client_stream.send_all(conn.send(offer))
            request = await wrap_server_stream(nursery, Wire(server_stream))
            await request.accept()  # as ConsoleServer._websocket does
            head = await client_stream.receive_some(65536)
            conn.receive_data(head)
            (accepted,) = [e for e in conn.events() if isinstance(e, AcceptConnection)]
            assert accepted.extensions == [] and b"extensions" not in head.lower()
            nursery.cancel_scope.cancel()
            with trio.CancelScope(shield=True):
                await server_stream.aclose()
                await client_stream.aclose()


async def test_a_closed_socket_whose_fd_is_reused_is_never_written() -> None:
    """Once the connection's socket is closed (``_connection`` closes the SocketStream, not
    the wire) its fd number goes to the next socket; send_now reads fileno() each time, gets
    -1, and refuses: nothing reaches the socket that now owns the number."""
    left, right = trio.socket.socketpair()
    server_stream = trio.SocketStream(left)
    wire = Wire(server_stream)
    fd = left.fileno()
    await server_stream.aclose()
    right.close()
    reused, other = trio.socket.socketpair()
    try:
        assert fd in (reused.fileno(), other.fileno()), "the fd number was not reused"
        assert not wire.send_now(Frame('{"id":1}').chunks(1, False))
        assert not wire.pending
        for sock in (reused, other):
            with pytest.raises(BlockingIOError):
                os.read(sock.fileno(), 1)
    finally:
        reused.close()
        other.close()


async def test_no_data_frame_follows_the_close_frame_and_a_half_frame_is_finished_first() -> None:
    """A tick writes part of a big frame (the rest waits in the wire); the connection is then
    closed (as revoke does): the client reads the whole frame, then the close frame, and
    nothing after it although later ticks commit more events."""
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery, websocket_pair(nursery) as (ws, wire, peer):
            session = new_session(ws, wire, nursery)
            ended = start_writer(session, nursery)
            await tick_one_big_event(session, 4_000_000)
            assert session.frames_direct == 1 and wire.pending, "4 MB should not fit at once"
            nursery.start_soon(ws.aclose, 4403, "revoked")
            await trio.testing.wait_all_tasks_blocked()
            commit(session, 2)
            commit(session, 3)
            got = await peer.read(2)
            await trio.testing.wait_all_tasks_blocked()
            assert json.loads(got[0])["events"][0]["id"] == 1
            assert got[1] == ("close", 4403)
            close_bytes = len(wsproto_frame(CloseConnection(code=4403, reason="revoked")))
            assert peer.received == session.bytes_sent + close_bytes and peer.nothing_more()
            assert [type(e).__name__ for e in ended] == ["ConnectionClosed"]
            nursery.cancel_scope.cancel()


async def test_accounting_of_event_frames_matches_the_wire() -> None:
    """Frames written whole by the tick, in part (rest by the writer), held for the writer and
    a missed notice: frames_sent counts each message once, bytes_sent is every byte of them
    on the wire, and each stream's sent counts the events it delivered."""
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery, websocket_pair(nursery) as (ws, wire, peer):
            session = new_session(ws, wire, nursery, max_pending=2)
            start_writer(session, nursery)
            await trio.testing.wait_all_tasks_blocked()
            stream = session.open_event_stream(EventFilter())
            session.streams_opened_here()
            await trio.testing.wait_all_tasks_blocked()
            commit(session, 1)  # direct, whole
            big = Event(id=2, at=0.0, kind="job.state", subject="j1", data={"pad": "x" * 2_000_000})
            session.server.hub.publish([big])
            session.server.hub.tick()  # direct, in part
            assert wire.pending
            commit(session, 3)  # held behind the rest
            commit(session, 4, 5, 6)  # over max_pending: missed
            frames = [json.loads(m) for m in await peer.read(4)]
            await trio.testing.wait_all_tasks_blocked()
            assert [[e["id"] for e in f["events"]] for f in frames[:3]] == [[1], [2], [3]]
            assert frames[3]["missed"] == {"first_id": 4, "last_id": 6, "count": 3}
            assert session.frames_sent == 4 and session.frames_direct == 2
            assert session.bytes_sent == peer.received and peer.nothing_more()
            assert stream.sent == 3 and stream.missed_total == 3
            nursery.cancel_scope.cancel()
