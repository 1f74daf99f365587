"""The engine's side of the transports: local agents on a Unix socket, agents over XMPP."""

from __future__ import annotations
