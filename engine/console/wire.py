"""A console connection's byte stream, and the event frames written to it at once.

Theory of operation: every byte trio-websocket writes to a console client goes through a
``Wire`` (its ``send_all``), which also replays the bytes read with the HTTP request head
before reading on. A tick of the hub hands the same event frame to hundreds of streams; for
a connection whose writer has nothing in hand, the session writes the frame here with
``send_now``: one non-blocking ``writev`` of a prebuilt header and the shared body, from the
tick itself, with no task woken (decision #29). It is refused, and the frame goes the usual
way through the connection's writer, whenever anything else is being written (``busy``),
when the socket is full, or on any socket error (the writer then meets the error and closes
the connection properly). When only part of a frame fits, the rest waits in the wire and
goes out before any later byte (``send_chunks``, or the next ``send_all``): frames never
interleave. The connection's writer sends what the tick could not with ``send_chunks``: the
same prebuilt messages, waiting for room.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import trio

_MAX_CHUNKS = 512  # well under IOV_MAX (1024 on Linux): more are joined into one


class Wire(trio.abc.Stream):
    """``stream`` with ``prefix`` read back first, and ``send_now`` for whole frames."""

    def __init__(self, stream: trio.abc.Stream, prefix: bytes = b"") -> None:
        self._stream = stream
        self._prefix = prefix
        self._socket = stream.socket if isinstance(stream, trio.SocketStream) else None
        self._rest: bytes | memoryview = b""  # the end of a frame not written yet
        self._lock = trio.StrictFIFOLock()  # held while writing: send_all, send_chunks
        self._closed = False

    # --- reading ---------------------------------------------------------------------------

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._prefix:
            size = len(self._prefix) if max_bytes is None else max_bytes
            data, self._prefix = self._prefix[:size], self._prefix[size:]
            await trio.lowlevel.checkpoint()
            return data
        return bytes(await self._stream.receive_some(max_bytes))

    # --- writing ---------------------------------------------------------------------------

    @property
    def pending(self) -> bool:
        """Whether the end of a frame waits to be written (by ``send_chunks`` or ``send_all``)."""
        return bool(self._rest)

    @property
    def busy(self) -> bool:
        """Whether a write is under way or waiting: ``send_now`` refuses then."""
        return self._lock.locked() or bool(self._rest)

    def send_now(self, chunks: Sequence[bytes]) -> bool:
        """Write the frame ``chunks`` join to without waiting; return whether it was taken.

        Taken means written whole, or in part with the rest ``pending``. Refused (False): the
        wire is busy or closed, is not a socket, the socket is full, or it failed.
        """
        if self.busy:
            return False
        return self._write(chunks)

    async def send_chunks(self, chunks: Sequence[bytes]) -> None:
        """Write what ``send_now`` left pending, then the whole messages ``chunks`` join to,
        waiting for room (the rest of the writer's path: it is the only one that waits)."""
        async with self._lock:
            await self._send_rest()
            if not chunks:
                return
            if len(chunks) > _MAX_CHUNKS:
                chunks = [b"".join(chunks)]
            if self._socket is None:
                await self._stream.send_all(b"".join(chunks))
                return
            if not self._write(chunks):  # full, or failing: _send_rest waits, or says what failed
                self._rest = memoryview(b"".join(chunks))
            await self._send_rest()

    def _write(self, chunks: Sequence[bytes]) -> bool:
        """One non-blocking ``writev``; keep what did not fit in ``_rest``; False if nothing went."""
        if self._socket is None or self._closed:
            return False
        fd = self._socket.fileno()
        if fd < 0:
            return False
        try:
            sent = os.writev(fd, chunks)
        except OSError:  # full (BlockingIOError) or broken: nothing was written
            return False
        if sent < sum(len(chunk) for chunk in chunks):
            self._rest = memoryview(b"".join(chunks))[sent:]
        return True

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        async with self._lock:
            await self._send_rest()
            await self._stream.send_all(data)

    async def _send_rest(self) -> None:
        """Write ``_rest``, trimming it as bytes go: ``pending`` stays true while the writer
        waits, and a cancelled write leaves exactly the bytes not sent (never sent twice)."""
        while self._rest:
            fd = -1 if self._socket is None or self._closed else self._socket.fileno()
            if fd < 0:
                raise trio.ClosedResourceError("the console connection is closed")
            try:
                sent = os.write(fd, self._rest)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(fd)
                continue
            except OSError as exc:
                raise trio.BrokenResourceError(f"socket connection broken: {exc}") from exc
            self._rest = self._rest[sent:]

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        if isinstance(self._stream, trio.abc.HalfCloseableStream):
            await self._stream.send_eof()

    async def aclose(self) -> None:
        self._closed = True
        await self._stream.aclose()
