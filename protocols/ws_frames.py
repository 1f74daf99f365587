"""The header of a server-to-client websocket frame (RFC 6455, section 5.2).

The console writes event frames to idle connections itself, past trio-websocket
(``wfe.engine.console.wire``, decision #29), so that a tick costs one system call per watcher.
A server's frames are never masked, and this server negotiates no extensions, so a whole
message is this header and its payload.
"""

from __future__ import annotations

import struct

TEXT = 0x1
BINARY = 0x2
_FIN = 0x80
_MEDIUM = struct.Struct("!BBH")
_LONG = struct.Struct("!BBQ")


def frame_header(opcode: int, length: int) -> bytes:
    """The header of one final, unmasked frame of ``opcode`` carrying ``length`` bytes."""
    if opcode not in (TEXT, BINARY):
        raise ValueError(f"opcode {opcode:#x}: only text (0x1) and binary (0x2) frames are written")
    if length < 0:
        raise ValueError(f"payload length {length} is negative")
    if length < 126:
        return bytes((_FIN | opcode, length))
    if length < 1 << 16:
        return _MEDIUM.pack(_FIN | opcode, 126, length)
    return _LONG.pack(_FIN | opcode, 127, length)
