"""The agent's side of a lease, sans-IO: number what it sends, and turn the engine's answers
into the time until which its attempts may run (docs/decisions.md #41).

The agent calls ``sent(now)`` for each ``AgentHello`` / ``AgentStatus`` and puts the returned
``seq`` in it; for each ``Lease(seq, ttl)`` the engine answers with, ``granted(lease)`` returns
the new end of the lease (the send time of that message plus ``ttl``, on the agent's clock) or
None when it does not extend it. Counting from the *send* time makes a slow trip shorten the
lease, never lengthen it. Time enters as an argument; nothing here reads a clock.
"""

from __future__ import annotations

import math

from wfe.protocols.messages import Lease

#: How many unanswered send times are remembered (an engine that grants no lease at all).
MAX_UNANSWERED = 64


class LeaseTracker:
    """Numbers an agent's status messages and tracks the lease the engine grants for them."""

    def __init__(self) -> None:
        self.seq = 0  # of the last message numbered
        self.until = -math.inf  # the lease's end, on the agent's clock
        self._sent_at: dict[int, float] = {}  # seq -> when it was sent, until answered

    def sent(self, now: float) -> int:
        """Number a message sent at ``now``; returns its ``seq``."""
        self.seq += 1
        self._sent_at[self.seq] = now
        if len(self._sent_at) > MAX_UNANSWERED:
            del self._sent_at[min(self._sent_at)]
        return self.seq

    def granted(self, lease: Lease) -> float | None:
        """The lease's new end if ``lease`` extends it, else None (unknown or stale seq)."""
        sent = self._sent_at.get(lease.seq)
        if sent is None:
            return None
        for seq in [s for s in self._sent_at if s <= lease.seq]:
            del self._sent_at[seq]
        until = sent + lease.ttl
        if until <= self.until:
            return None
        self.until = until
        return until
