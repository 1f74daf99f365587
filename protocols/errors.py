"""Errors raised by the protocol layer."""

from __future__ import annotations


class ProtocolError(Exception):
    """Base class of every error raised by ``protocols``."""


class DecodeError(ProtocolError, ValueError):
    """Bytes that are not a valid message: malformed, oversized, or of an unknown type."""


class IllegalTransition(ProtocolError):
    """An event arrived that the state machine cannot handle in its current state."""
