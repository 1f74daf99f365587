"""The local transport: protocol messages as length-prefixed frames on a Unix socket.

``StreamLink`` speaks frames (``wfe.protocols.framing``) of encoded messages
(``wfe.protocols.codec``) over any trio byte stream; the engine side can wrap its end of the
socket in the same class. A frame that does not decode is logged and dropped and the
connection stays up; a frame that declares more than ``MAX_MESSAGE_BYTES`` means the
stream has lost its framing, so the connection is closed.
"""

from __future__ import annotations

import collections
import logging
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import trio

from wfe.links.errors import MessageTooLarge
from wfe.protocols import codec
from wfe.protocols.errors import DecodeError
from wfe.protocols.framing import FrameDecoder, frame
from wfe.protocols.messages import MAX_MESSAGE_BYTES, Message

log = logging.getLogger("wfe.agent.link")

_RECEIVE_BYTES = 256 * 1024


class StreamLink:
    """A ``Link`` over a trio byte stream, one frame per message."""

    def __init__(self, stream: trio.abc.Stream, *, max_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self._stream = stream
        self._max_bytes = max_bytes
        self._send_lock = trio.Lock()
        self._decoder = FrameDecoder(max_bytes=max_bytes)
        self._ready: collections.deque[Message] = collections.deque()
        self._closed = False

    async def send(self, message: Message) -> None:
        """Send one message; frames never interleave. Raises ``MessageTooLarge``."""
        data = self._frame(message)
        async with self._send_lock:
            await self._stream.send_all(data)

    async def send_many(self, messages: Sequence[Message]) -> None:
        """Send several messages in order, in one write. Raises ``MessageTooLarge`` (then
        none is sent)."""
        data = b"".join([self._frame(m) for m in messages])
        async with self._send_lock:
            await self._stream.send_all(data)

    def _frame(self, message: Message) -> bytes:
        payload = codec.encode(message)
        if len(payload) > self._max_bytes:
            raise MessageTooLarge(
                f"{type(message).__name__} of {len(payload)} bytes exceeds the limit of {self._max_bytes}"
            )
        return frame(payload)

    def receive(self) -> AsyncIterator[Message]:
        """Iterate over incoming messages until the connection closes."""
        return self

    def __aiter__(self) -> AsyncIterator[Message]:
        return self

    async def __anext__(self) -> Message:
        while not self._ready:
            if self._closed:
                raise StopAsyncIteration
            try:
                data = await self._stream.receive_some(_RECEIVE_BYTES)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                self._closed = True
                continue
            try:
                frames = self._decoder.feed(bytes(data))
            except DecodeError as exc:
                log.error("closing the connection: %s", exc)
                self._closed = True
                await self.aclose()
                continue
            for payload in frames:
                try:
                    self._ready.append(codec.decode(payload, max_bytes=self._max_bytes))
                except DecodeError as exc:
                    log.warning("dropped a frame that does not decode: %s", exc)
        return self._ready.popleft()

    async def aclose(self) -> None:
        """Close the connection; ``receive`` then ends."""
        self._closed = True
        await self._stream.aclose()


@asynccontextmanager
async def open_local_link(socket_path: str | os.PathLike[str]) -> AsyncIterator[StreamLink]:
    """Connect to the engine's Unix socket at ``socket_path`` and yield the link.

    Raises ``OSError`` when nothing listens there. The socket is closed on exit.
    """
    stream = await trio.open_unix_socket(os.fspath(socket_path))
    link = StreamLink(stream)
    try:
        yield link
    finally:
        await link.aclose()
