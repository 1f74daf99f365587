"""The bounded queue of frames waiting to be written to one console client.

Replies and tailed output go in with ``await put``, which waits for room: only the
connection's own tasks (its request handlers and tails) ever wait there, never the engine's,
and a connection that waits too long is closed by its writer. ``put_nowait`` never waits and
says whether the frame fitted. Events do not pass through here: they wait in their
``EventStream`` (see ``wfe.engine.console.hub``), which counts what did not fit.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import trio


class Outbox:
    """Frames for one client, at most ``max_frames`` of them and about ``max_bytes`` of text."""

    def __init__(
        self,
        *,
        max_frames: int = 256,
        max_bytes: int = 8 * 1024 * 1024,
        on_put: Callable[[], None] = lambda: None,
    ) -> None:
        if max_frames < 2:
            raise ValueError(f"max_frames must be at least 2, not {max_frames}")
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self._frames: deque[str] = deque()
        self._bytes = 0
        self._readable = trio.lowlevel.ParkingLot()
        self._writable = trio.lowlevel.ParkingLot()
        self._on_put = on_put
        self._closed = False
        self.refused = 0  # frames refused by put_nowait over the outbox's life

    def __len__(self) -> int:
        return len(self._frames)

    def room(self, size: int = 0) -> bool:
        """Whether one more frame of ``size`` characters fits now."""
        if len(self._frames) >= self.max_frames:
            return False
        return not self._frames or self._bytes + size <= self.max_bytes

    def put_nowait(self, frame: str) -> bool:
        """Queue ``frame`` if it fits; return whether it was queued. Never waits."""
        if self._closed or not self.room(len(frame)):
            self.refused += 1
            return False
        self._append(frame)
        return True

    async def put(self, frame: str) -> None:
        """Queue ``frame``, waiting for room. Raises ``trio.ClosedResourceError`` once closed."""
        await trio.lowlevel.checkpoint_if_cancelled()
        while not self._closed and not self.room(len(frame)):
            await self._writable.park()
        if self._closed:
            raise trio.ClosedResourceError("the connection is closing")
        self._append(frame)
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def get(self) -> str:
        """Take the oldest frame, waiting for one. Raises ``trio.EndOfChannel`` once closed and empty."""
        while not self._frames:
            if self._closed:
                raise trio.EndOfChannel
            await self._readable.park()
        return self.get_nowait()

    def get_nowait(self) -> str:
        """Take the oldest frame; raises ``trio.WouldBlock`` when there is none."""
        if not self._frames:
            raise trio.WouldBlock
        frame = self._frames.popleft()
        self._bytes -= len(frame)
        self._writable.unpark_all()
        return frame

    def close(self) -> None:
        """Refuse new frames; wake every waiter (``get`` drains what is left first)."""
        self._closed = True
        self._readable.unpark_all()
        self._writable.unpark_all()

    def _append(self, frame: str) -> None:
        self._frames.append(frame)
        self._bytes += len(frame)
        self._readable.unpark()
        self._on_put()
