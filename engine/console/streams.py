"""One ``subscribe`` stream of one connection: events waiting for the next tick, frames ready to write.

Theory of operation: streams with the same filter form a ``StreamGroup``. The hub adds each
committed batch to a group once, as one comma-joined string of event objects, whatever the
number of its streams. On every tick the group joins what it collected into one ``Frame``
and hands that same frame to each of its streams: its text is joined, and compressed, once
for all of them, so a crowd of watchers costs the engine one body per tick plus one write
each. What a stream holds is bounded (``max_pending`` events not yet handed to its writer):
a stream that has no room for the whole tick takes the batches that fit, counts the rest as
missed, and tells its client in a ``missed`` notice after what it kept.

A stream opened with ``compress`` gets its events as binary messages
(``wfe.protocols.console_frames``): event JSON shrinks about sevenfold, and the bytes each
watcher costs the kernel shrink with it.

A stream whose connection has nothing else to write takes its frame at once, from the tick:
its session writes the whole websocket message with ``send_now`` (``Frame.chunks``: a small
header and the shared body, no copy of it; see ``wfe.engine.console.wire``). Only a stream that
already holds frames, or whose connection is busy, keeps the frame for its writer task.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import attrs

from wfe.protocols.console_frames import binary_events, compress_events
from wfe.protocols.ws_frames import BINARY, TEXT, frame_header

if TYPE_CHECKING:
    from wfe.engine.console.filters import EventFilter


class Frame:
    """The events of one tick for the streams that held the same batches."""

    __slots__ = ("body", "_zlib", "_utf8")

    def __init__(self, body: str) -> None:
        self.body = body  # comma-joined event objects
        self._zlib: bytes | None = None
        self._utf8: bytes | None = None

    def chunks(self, stream_id: int, compress: bool) -> tuple[bytes, ...]:
        """The whole websocket message for ``stream_id``, header first; the body is shared."""
        if compress:
            body = self._compressed()
            head = binary_events(stream_id, b"")
            return frame_header(BINARY, len(head) + len(body)) + head, body
        if self._utf8 is None:
            self._utf8 = self.body.encode()
        head = f'{{"stream":{stream_id},"events":['.encode()
        return frame_header(TEXT, len(head) + len(self._utf8) + 2) + head, self._utf8, b"]}"

    def _compressed(self) -> bytes:
        if self._zlib is None:
            self._zlib = compress_events(self.body)
        return self._zlib


class EventStream:
    """One ``subscribe`` of one connection. ``wake`` is called when it has something to write;
    ``send_now(stream, frame)``, if given, writes a frame at once or returns False."""

    def __init__(
        self,
        stream_id: int,
        where: EventFilter,
        *,
        max_pending: int,
        wake: Callable[[], None],
        compress: bool = False,
        send_now: Callable[[EventStream, Frame], bool] | None = None,
    ) -> None:
        self.id = stream_id
        self.filter = where
        self.compress = compress
        self.max_pending = max_pending
        self._wake = wake
        self._send_now = send_now
        self._frames: list[Frame] = []  # handed over at ticks, not yet taken by the writer
        self._held = 0  # events in them
        self._missed: list[int] | None = None  # [first_id, last_id, count]
        self.sent = 0
        self.missed_total = 0

    @property
    def due(self) -> bool:
        """Whether the writer has something to send now."""
        return bool(self._frames) or self._missed is not None

    def deliver(self, frame: Frame, batches: Sequence[Batch], count: int) -> None:
        """Take a tick's ``frame`` (the ``count`` events of ``batches``), or what fits of it."""
        if not self.due and self._send_now is not None and self._send_now(self, frame):
            self.sent += count
            return
        if self._missed is None and self._held + count <= self.max_pending:
            self._frames.append(frame)
            self._held += count
        else:
            kept = []
            for batch in batches:
                if self._missed is None and self._held + batch.count <= self.max_pending:
                    kept.append(batch.joined)
                    self._held += batch.count
                else:
                    self.miss(batch.first_id, batch.last_id, batch.count)
            if kept:
                self._frames.append(Frame(",".join(kept)))
        self._wake()

    def miss(self, first_id: int, last_id: int, count: int) -> None:
        """Count events that did not fit; every later batch is missed too until the notice goes."""
        if self._missed is None:
            self._missed = [first_id, last_id, count]
            self._wake()
        else:
            self._missed[1] = last_id
            self._missed[2] += count
        self.missed_total += count

    def take_chunks(self) -> tuple[list[bytes], int]:
        """The websocket messages to write now, as chunks for one ``writev``, and how many
        messages: one for each frame it holds (bodies shared, not copied), then the missed
        notice (if any)."""
        chunks: list[bytes] = []
        messages = len(self._frames) + (self._missed is not None)
        for frame in self._frames:
            chunks += frame.chunks(self.id, self.compress)
        self.sent += self._held
        self._frames, self._held = [], 0
        if self._missed is not None:
            first, last, count = self._missed
            notice = (
                f'{{"stream":{self.id},"missed":{{"first_id":{first},"last_id":{last},"count":{count}}}}}'
            ).encode()
            chunks += (frame_header(TEXT, len(notice)), notice)
            self._missed = None
        return chunks, messages


@attrs.frozen
class Batch:
    """What one committed batch holds for one filter: ``count`` events, JSON, comma-joined."""

    first_id: int
    last_id: int
    count: int
    joined: str


class StreamGroup:
    """The streams of one filter, and the batches they get at the next tick."""

    def __init__(self, where: EventFilter) -> None:
        self.filter = where
        self.members: dict[EventStream, int] = {}  # stream -> batches it joined too late for
        self.batches: list[Batch] = []
        self.count = 0

    def add(self, batch: Batch) -> None:
        self.batches.append(batch)
        self.count += batch.count

    def join(self, stream: EventStream) -> None:
        """Add ``stream``: it gets what is committed from now on, not what already waits."""
        self.members[stream] = len(self.batches)

    def deliver(self) -> int:
        """Hand what waits to every member, as one shared frame; return the frames built."""
        if not self.batches:
            return 0
        frame = Frame(",".join(b.joined for b in self.batches))
        built = 1
        for stream, late in self.members.items():
            if late:
                rest = self.batches[late:]
                if rest:
                    stream.deliver(
                        Frame(",".join(b.joined for b in rest)), rest, sum(b.count for b in rest)
                    )
                    built += 1
                self.members[stream] = 0
            else:
                stream.deliver(frame, self.batches, self.count)
        self.batches, self.count = [], 0
        return built
