"""Committed events and the subscriptions that stream them.

The writer hands every committed batch of events to ``EventHub.publish`` on the trio thread, after
COMMIT and in id order. ``publish`` never awaits and never blocks: each subscription has a bounded
buffer, and when a subscriber is too slow the events that do not fit are not queued but counted
into one ``Missed(first_id, last_id)`` marker, which the subscriber receives in their place, after
the events it did buffer and before any later ones. It catches up with
``Repository.events_since(first_id - 1)`` and goes on iterating. A marker, not an exception, so
a console can recover without re-subscribing.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

import attrs
import trio

#: What the writer hands over for one committed event: (id, at, kind, subject, data as JSON text).
EventRow = tuple[int, float, str, str, str]


@attrs.frozen(kw_only=True)
class Event:
    """A committed state change, as stored in the ``events`` table."""

    id: int
    at: float  # wall-clock unix seconds of the batch that committed it
    kind: str  # what happened, e.g. "job.state"
    subject: str  # what it happened to, e.g. a job id
    data: dict[str, Any] = attrs.field(factory=dict, hash=False)
    #: ``data`` as the JSON text stored, when the event came from a row (the console sends it on)
    raw: str | None = attrs.field(default=None, eq=False, hash=False, repr=False)

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Event:
        """Build an event from an ``events`` row ``(id, at, kind, subject, data)``."""
        text = row[4]
        data = {} if text == "{}" else json.loads(text)
        return cls(id=row[0], at=row[1], kind=row[2], subject=row[3], data=data, raw=text)


@attrs.frozen(kw_only=True)
class Missed:
    """This subscription skipped the committed events ``first_id..last_id`` (inclusive): too slow."""

    first_id: int
    last_id: int


class Subscription:
    """An async iterator of committed ``Event``s in id order, with ``Missed`` markers for gaps.

    Iteration ends (``StopAsyncIteration``) once the repository has closed and the buffer is
    drained. Get one from ``Repository.subscribe()``; it only sees events committed after that.

    Every ``__anext__`` is a cancellation point, but it yields to other tasks only once per
    batch the writer published (a subscriber that was waiting has just yielded): the events of
    one commit are taken in one task step, not one step each. As the writer publishes only in
    its own steps, a subscriber draining its buffer cannot hold the loop for more than one
    batch (at most ``max_buffer`` events).
    """

    def __init__(self, max_buffer: int) -> None:
        if max_buffer < 1:
            raise ValueError(f"max_buffer must be at least 1, not {max_buffer}")
        self.max_buffer = max_buffer
        self._buffer: deque[Event] = deque()
        self._missed: tuple[int, int] | None = None
        self._missed_total = 0
        self._closed = False
        self._fresh = False  # events were pushed since this subscriber last yielded
        self._lot = trio.lowlevel.ParkingLot()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event | Missed:
        while True:
            if self._buffer:
                if self._fresh:
                    self._fresh = False
                    await trio.lowlevel.checkpoint()
                else:
                    await trio.lowlevel.checkpoint_if_cancelled()
                return self._buffer.popleft()
            if self._missed is not None:
                await trio.lowlevel.checkpoint()
                first, last = self._missed
                self._missed = None
                return Missed(first_id=first, last_id=last)
            if self._closed:
                await trio.lowlevel.checkpoint()
                raise StopAsyncIteration
            await self._lot.park()
            self._fresh = False  # parked: it has just yielded

    async def receive_batch(self, max_items: int = 1000) -> list[Event | Missed]:
        """Wait for at least one item, then return every item waiting (up to ``max_items``).

        One checkpoint per batch instead of one per event: the way to keep up with a busy
        writer. Returns ``[]`` once the subscription has ended and is drained.
        """
        while not self._buffer and self._missed is None and not self._closed:
            await self._lot.park()
        await trio.lowlevel.checkpoint()
        self._fresh = False
        items: list[Event | Missed] = []
        while len(items) < max_items and (item := self.receive_nowait()) is not None:
            items.append(item)
        return items

    def receive_nowait(self) -> Event | Missed | None:
        """Return the next buffered item, or None when nothing is waiting."""
        if self._buffer:
            return self._buffer.popleft()
        if self._missed is not None:
            first, last = self._missed
            self._missed = None
            return Missed(first_id=first, last_id=last)
        return None

    @property
    def buffered(self) -> int:
        """How many events are waiting to be taken."""
        return len(self._buffer)

    @property
    def missed_total(self) -> int:
        """How many events this subscription has skipped so far, over its whole life."""
        return self._missed_total

    def _push(self, events: Sequence[Event]) -> None:
        room = 0 if self._missed is not None else self.max_buffer - len(self._buffer)
        if room >= len(events):
            self._buffer.extend(events)
        else:
            if room > 0:
                self._buffer.extend(events[:room])
            skipped = events[max(room, 0) :]
            first = skipped[0].id if self._missed is None else self._missed[0]
            self._missed = (first, skipped[-1].id)
            self._missed_total += len(skipped)
        self._fresh = True
        self._lot.unpark_all()

    def _close(self) -> None:
        self._closed = True
        self._lot.unpark_all()


class EventHub:
    """Fans committed events out to the live subscriptions; never waits for any of them."""

    def __init__(self) -> None:
        self._subscriptions: list[Subscription] = []
        self._closed = False

    def __len__(self) -> int:
        return len(self._subscriptions)

    def add(self, subscription: Subscription) -> None:
        if self._closed:
            subscription._close()
        else:
            self._subscriptions.append(subscription)

    def remove(self, subscription: Subscription) -> None:
        if subscription in self._subscriptions:
            self._subscriptions.remove(subscription)
        subscription._close()

    def publish(self, rows: Iterable[EventRow], events: Sequence[Event] | None = None) -> None:
        """Hand committed events to every subscription (``events`` when already decoded)."""
        if not self._subscriptions:
            return
        if events is None:
            events = [Event.from_row(row) for row in rows]
        if not events:
            return
        for subscription in self._subscriptions:
            subscription._push(events)

    def close(self) -> None:
        """End every subscription (each still yields what it had buffered)."""
        self._closed = True
        for subscription in self._subscriptions:
            subscription._close()
        self._subscriptions.clear()
