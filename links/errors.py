"""Errors raised by the transport code both sides share."""

from __future__ import annotations


class LinkError(Exception):
    """Base class of every error raised by ``wfe.links``."""


class MessageTooLarge(LinkError, ValueError):
    """A message whose encoding exceeds what the transport may carry."""


class LinkConfigError(LinkError, ValueError):
    """Transport settings that cannot be used (a password file that cannot be read, say)."""
