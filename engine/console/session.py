"""One authenticated console connection: its outbox, its streams, and the task that writes.

The writer (``pump``) is the only task that writes to the websocket. It sends replies and
tailed output as they are queued, and the frames the hub's tick sealed for each event
stream (see ``wfe.engine.console.hub``: one tick for all streams, at most every
``flush_interval`` seconds, less often when many streams are open). While the writer has
nothing in hand, the tick writes a stream's frame itself (``send_now``, through the
``Wire``): no task wakes for it, which is what makes hundreds of watchers cheap. When one
write takes longer than ``stall_timeout`` (the client has stopped reading and the socket
buffers are full) it raises ``ClientStalled`` and the server closes the connection: a
stalled client costs the engine nothing but memory bounded by the outbox and
``max_pending`` events per stream.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import attrs
import trio
from trio_websocket import ConnectionClosed

from wfe.engine.console.filters import EventFilter
from wfe.engine.console.outbox import Outbox
from wfe.engine.console.streams import EventStream
from wfe.engine.console.tokens import Principal, Role

if TYPE_CHECKING:
    from trio_websocket import WebSocketConnection

    from wfe.engine.console.server import ConsoleServer
    from wfe.engine.console.streams import Frame
    from wfe.engine.console.wire import Wire
    from wfe.engine.runtime.facade import Engine


@attrs.frozen(kw_only=True)
class Limits:
    """How much one connection may take; the defaults suit a loopback operator console."""

    max_request: int = 1024 * 1024  # longer requests get a too_large error; the connection stays
    max_message: int = 16 * 1024 * 1024  # longer messages close the connection (1009)
    auth_timeout: float = 5.0  # seconds from connecting to a good ``auth`` (head, upgrade, auth)
    stall_timeout: float = 30.0  # seconds one write may take before the client counts as stalled
    flush_interval: float = 0.1  # least seconds between two ticks (event frames of a stream)
    event_frames_per_second: float = 1000.0  # for all streams together: more, longer ticks
    max_pending: int = 5000  # events one stream holds for its client before it counts misses
    outbox_frames: int = 256  # replies and output frames waiting for one client
    max_inflight: int = 16  # requests of one connection handled at once (then reading waits)
    max_connections: int = 1000  # sockets on the console port, authenticated or not
    max_unauthenticated: int = 64  # of them, not authenticated yet (more: 503 at once)
    admin_reserve: int = 8  # kept for admin tokens: the others stop 8 + 64 short of 1000

    def __attrs_post_init__(self) -> None:
        if self.max_connections <= self.max_unauthenticated + self.admin_reserve:
            raise ValueError(
                f"max_connections ({self.max_connections}) must be more than max_unauthenticated"
                f" + admin_reserve ({self.max_unauthenticated} + {self.admin_reserve})"
            )
        if self.max_unauthenticated < 1 or self.admin_reserve < 0:
            raise ValueError("max_unauthenticated must be at least 1, admin_reserve 0 or more")


class ClientStalled(Exception):
    """A write to the client took longer than ``stall_timeout``."""


class ClientGone(Exception):
    """The client's socket broke under one of the writer's own writes (event frames)."""


class Session:
    """An authenticated connection; ``name`` and ``role`` come from its token."""

    def __init__(
        self,
        *,
        server: ConsoleServer,
        ws: WebSocketConnection,
        wire: Wire,
        principal: Principal,
        nursery: trio.Nursery,
        limits: Limits,
    ) -> None:
        self.server = server
        self.ws = ws
        self.wire = wire
        self.principal = principal
        self.nursery = nursery
        self.limits = limits
        self.outbox = Outbox(max_frames=limits.outbox_frames, on_put=self._poke)
        self.inflight = trio.Semaphore(limits.max_inflight)
        self.event_streams: dict[int, EventStream] = {}
        self.task_streams: dict[int, trio.CancelScope] = {}
        self._ready: dict[int, trio.Event] = {}
        self._opened_by: dict[Any, list[int]] = {}
        self._next_stream = 1
        self._wakeup = trio.Event()
        self._writing = True  # the writer has frames in hand (False only while it waits idle)
        self.frames_sent = 0
        self.frames_direct = 0  # of them written by the tick itself (``send_now``)
        self.bytes_sent = 0

    @property
    def engine(self) -> Engine:
        return self.server.engine

    @property
    def name(self) -> str:
        """The token's name: recorded as ``by`` in the events of every change this session makes."""
        return self.principal.name

    @property
    def role(self) -> Role:
        return self.principal.role

    # --- streams ---------------------------------------------------------------------------

    def _new_stream(self) -> int:
        stream_id = self._next_stream
        self._next_stream += 1
        self._ready[stream_id] = trio.Event()
        self._opened_by.setdefault(trio.lowlevel.current_task(), []).append(stream_id)
        return stream_id

    def open_event_stream(self, where: EventFilter, *, compress: bool = False) -> EventStream:
        """Start a ``subscribe`` stream; its events flow once the reply that names it is queued."""
        stream = EventStream(
            self._new_stream(),
            where,
            max_pending=self.limits.max_pending,
            wake=self._poke,
            compress=compress,
            send_now=self.send_now,
        )
        self.event_streams[stream.id] = stream
        self.server.hub.add(stream)
        return stream

    def open_task_stream(self, body: Callable[[int, trio.Event], Any]) -> int:
        """Start ``body(stream_id, ready)`` as a task of this connection; it must await
        ``ready`` before pushing (the reply naming the stream goes first)."""
        stream_id = self._new_stream()
        scope = trio.CancelScope()
        self.task_streams[stream_id] = scope
        ready = self._ready[stream_id]

        async def run() -> None:
            with scope:
                await body(stream_id, ready)
            self.task_streams.pop(stream_id, None)

        self.nursery.start_soon(run)
        return stream_id

    def close_stream(self, stream_id: int) -> bool:
        """Stop a stream; return whether it was open."""
        self._ready.pop(stream_id, None)
        stream = self.event_streams.pop(stream_id, None)
        if stream is not None:
            self.server.hub.discard(stream)
            return True
        scope = self.task_streams.pop(stream_id, None)
        if scope is not None:
            scope.cancel()
            return True
        return False

    def close_all_streams(self) -> None:
        for stream_id in list(self.event_streams) + list(self.task_streams):
            self.close_stream(stream_id)

    def streams_opened_here(self) -> None:
        """Mark the streams the current task opened as announced (their reply is queued)."""
        for stream_id in self._opened_by.pop(trio.lowlevel.current_task(), ()):
            event = self._ready.pop(stream_id, None)
            if event is not None:
                event.set()
        self._poke()

    # --- sending ---------------------------------------------------------------------------

    async def send(self, frame: str) -> None:
        """Queue a reply or an output frame, waiting for room in the outbox."""
        await self.outbox.put(frame)

    def _poke(self) -> None:
        self._writing = True  # it has something in hand from now on: the tick must not overtake
        self._wakeup.set()

    def send_now(self, stream: EventStream, frame: Frame) -> bool:
        """Write ``stream``'s ``frame`` at once if nothing else is being written to the client;
        False leaves it to the writer (it is busy, the socket is full, or the link is broken)."""
        if self._writing or stream.id in self._ready or self.ws.closed is not None:
            return False
        chunks = frame.chunks(stream.id, stream.compress)
        if not self.wire.send_now(chunks):
            return False
        self.frames_sent += 1
        self.frames_direct += 1
        self.bytes_sent += sum(len(chunk) for chunk in chunks)
        if self.wire.pending:
            self._poke()  # the writer sends the rest of the frame before anything else
        return True

    async def pump(self) -> None:
        """Write queued frames and sealed event frames to the client until cancelled."""
        while True:
            self._writing = True
            if self.wire.pending:
                await self._write_chunks([])  # the rest of a frame the tick wrote in part
                continue
            try:
                frame = self.outbox.get_nowait()
            except trio.WouldBlock:
                pass
            else:
                await self._write(frame)
                continue
            due = [s for s in self.event_streams.values() if s.due and s.id not in self._ready]
            if due:  # what the tick could not write at once (the socket was full, or we busy)
                taken = [s.take_chunks() for s in due]
                await self._write_chunks(
                    [c for chunks, _ in taken for c in chunks], sum(n for _, n in taken)
                )
                continue
            await self._idle()

    async def _idle(self) -> None:
        self._wakeup = trio.Event()
        if len(self.outbox) or self.wire.pending:
            await trio.lowlevel.checkpoint()
            return
        self._writing = False
        await self._wakeup.wait()

    async def _write(self, message: str) -> None:
        await self._timed(self.ws.send_message(message))
        self.frames_sent += 1
        self.bytes_sent += len(message)

    async def _write_chunks(self, chunks: list[bytes], messages: int = 0) -> None:
        """Write whole event messages (``Frame.chunks``) through the wire, waiting for room."""
        if self.ws.closed is not None:  # no data frame may follow a close frame
            raise ConnectionClosed(self.ws.closed)
        try:
            await self._timed(self.wire.send_chunks(chunks))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ClientGone(str(exc)) from None
        self.frames_sent += messages
        self.bytes_sent += sum(len(chunk) for chunk in chunks)

    async def _timed(self, write: Awaitable[None]) -> None:
        with trio.move_on_after(self.limits.stall_timeout) as scope:
            await write
        if scope.cancelled_caught:
            raise ClientStalled(
                f"client stalled: one write took over {self.limits.stall_timeout:g} s (not reading?)"
            )

    def statistics(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role.label,
            "streams": len(self.event_streams) + len(self.task_streams),
            "queued_frames": len(self.outbox),
            "frames_sent": self.frames_sent,
            "frames_direct": self.frames_direct,
            "bytes_sent": self.bytes_sent,
            "events_missed": sum(s.missed_total for s in self.event_streams.values()),
        }
