"""The transport-neutral connection the agent core talks through.

A ``Link`` carries protocol messages both ways between one agent and the engine. The local
transport (``wfe.links.stream``) and the XMPP transport implement it; the agent core sees
nothing else of the transport. A link is single-use: once ``receive`` ends, the
connection is gone and the agent opens a new link.

A link may also offer ``async def send_many(messages)``: the same as sending each in
order, in one write where it can (``StreamLink`` and ``XmppLink`` do: one frame write, or
one drain of the XMPP client's queue). The core uses it, when present, for messages that are
ready together (a short attempt's ``JobAccepted`` and ``JobFinished``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from wfe.protocols.messages import Message


class Link(Protocol):
    """One open connection to the engine."""

    async def send(self, message: Message) -> None:
        """Send one message. Raises ``trio.BrokenResourceError`` or ``trio.ClosedResourceError``
        when the connection is gone, ``wfe.agents.errors.MessageTooLarge`` when it cannot travel."""
        ...

    def receive(self) -> AsyncIterator[Message]:
        """Iterate over incoming messages; the iteration ends when the connection closes."""
        ...
