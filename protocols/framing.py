"""Length-prefixed framing of messages on a byte stream (the local transport).

A frame is a 4-byte big-endian length followed by that many bytes of one encoded message.
``FrameDecoder`` is fed whatever bytes arrived and returns the complete frames; it keeps
the remainder. A declared length above the limit is refused before any of it is buffered.
"""

from __future__ import annotations

import struct

from wfe.protocols.errors import DecodeError
from wfe.protocols.messages import MAX_MESSAGE_BYTES

_HEADER = struct.Struct(">I")


def frame(payload: bytes) -> bytes:
    """Return ``payload`` with its length prefix."""
    return _HEADER.pack(len(payload)) + payload


class FrameDecoder:
    """Split a byte stream into frames."""

    def __init__(self, *, max_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self._buffer = bytearray()
        self._max_bytes = max_bytes

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data`` and return every frame now complete, in order.

        Raises ``DecodeError`` if a frame declares more than ``max_bytes``; the decoder is
        then unusable, as the stream has lost its framing.
        """
        self._buffer += data
        frames: list[bytes] = []
        while len(self._buffer) >= _HEADER.size:
            (length,) = _HEADER.unpack_from(self._buffer)
            if length > self._max_bytes:
                raise DecodeError(f"frame of {length} bytes exceeds the limit of {self._max_bytes}")
            end = _HEADER.size + length
            if len(self._buffer) < end:
                break
            frames.append(bytes(self._buffer[_HEADER.size : end]))
            del self._buffer[:end]
        return frames

    @property
    def pending(self) -> int:
        """Bytes received that do not yet form a whole frame."""
        return len(self._buffer)
