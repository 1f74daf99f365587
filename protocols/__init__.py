"""The agent protocol of wfe, sans-IO.

Message classes, their encoding, framing for byte streams, and the state machines that
the engine and the agents drive. Nothing here performs I/O or reads a clock: time enters
as an argument. See ``docs/architecture.md``.
"""

from __future__ import annotations

from wfe.protocols.errors import DecodeError, IllegalTransition, ProtocolError

__all__ = ["DecodeError", "IllegalTransition", "ProtocolError"]
