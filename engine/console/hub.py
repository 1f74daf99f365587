"""One subscription to the repository's events for the whole console, fanned out to streams.

Theory of operation: the hub takes committed events from the repository in batches,
encodes each event to JSON once, and hands each batch once to each group of streams that
share a filter (``wfe.engine.console.streams``), whatever the number of streams. One tick for
all groups, at most every ``flush_interval`` seconds and less often when many streams are
open (a write costs the engine about the same whatever it holds), turns what each group
collected into one frame that its streams share (joined and compressed once), so a hundred
watchers cost a hundred writes per tick, not per event. A stream holds at most
``max_pending`` events for its client; what does not fit is counted as missed and reported
in order.
Nothing here awaits a client, so the engine never waits for one; a connection whose client
stops reading altogether is closed by its writer (``stall_timeout``).

The hub also learns which request (and namespace) each job belongs to from ``job.created``
and ``request.created`` events (``wfe.engine.console.filters``), so that streams can be
filtered by request or namespace, and wakes the ``wait`` operations when a job's terminal
``job.state`` is committed.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import trio

from wfe.engine.console.filters import EventFilter, EventIndex
from wfe.engine.console.streams import Batch, EventStream, StreamGroup
from wfe.engine.repository import Event, Missed
from wfe.engine.runtime.jobs import TERMINAL

if TYPE_CHECKING:
    from wfe.engine.runtime.facade import Engine

__all__ = ["ConsoleHub", "EventFilter", "EventIndex", "EventStream", "Rate", "encode_event"]


def encode_event(event: Event) -> str:
    """An event as the JSON object clients get (its data as stored, when the event has it)."""
    data = event.raw
    if data is None:
        data = json.dumps(event.data, separators=(",", ":"), default=str)
    return (
        f'{{"id":{event.id},"at":{event.at!r},"kind":{_string(event.kind)},'
        f'"subject":{_string(event.subject)},"data":{data}}}'
    )


_string = json.encoder.encode_basestring_ascii  # a str as a JSON string, as json.dumps writes it


class Rate:
    """Events per second over the last ``window`` seconds of trio time."""

    def __init__(self, window: float = 10.0) -> None:
        self.window = window
        self.total = 0
        self._samples: deque[tuple[float, int]] = deque()

    def add(self, count: int, now: float) -> None:
        self.total += count
        if not self._samples or now - self._samples[-1][0] >= 0.25:
            self._samples.append((now, self.total))
        while len(self._samples) > 2 and now - self._samples[1][0] > self.window:
            self._samples.popleft()

    def per_second(self, now: float) -> float:
        if not self._samples:
            return 0.0
        t0, n0 = self._samples[0]
        span = max(now - t0, 1.0)
        return round((self.total - n0) / span, 1)


class ConsoleHub:
    """Fans committed events out to every ``EventStream``; wakes ``wait_job`` callers."""

    def __init__(
        self,
        engine: Engine,
        *,
        max_buffer: int = 20_000,
        flush_interval: float = 0.1,
        frames_per_second: float = 1000.0,
    ) -> None:
        self.engine = engine
        self.max_buffer = max_buffer
        self.flush_interval = flush_interval
        self.frames_per_second = frames_per_second
        self.index = EventIndex()
        self.rate = Rate()
        self.streams: set[EventStream] = set()
        self.groups: dict[EventFilter, StreamGroup] = {}
        self._job_end: dict[str, trio.Event] = {}
        self._waiting = trio.Event()  # set when a stream holds events for the next tick
        self.missed_by_hub = 0
        self.ticks = 0
        self.frames_built = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Subscribe, learn the index, and fan out until cancelled or the repository closes."""
        async with self.engine.subscribe(max_buffer=self.max_buffer) as subscription:
            self.index.seed(*await self.engine.event_index_seed())
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._tick_loop)
                task_status.started()
                while True:
                    items = await subscription.receive_batch(1000)
                    if not items:
                        break
                    self.publish(items)
                nursery.cancel_scope.cancel()

    def tick_interval(self) -> float:
        """Seconds between two ticks: ``flush_interval``, or longer when so many streams are
        open that a frame each would exceed ``frames_per_second``."""
        return max(self.flush_interval, len(self.streams) / self.frames_per_second)

    async def _tick_loop(self) -> None:
        last = -float("inf")
        while True:
            await self._waiting.wait()
            self._waiting = trio.Event()
            wait = last + self.tick_interval() - trio.current_time()
            if wait > 0:
                await trio.sleep(wait)
            last = trio.current_time()
            self.tick()

    def add(self, stream: EventStream) -> None:
        """Start fanning out to ``stream``: it gets what is committed from now on."""
        self.streams.add(stream)
        self.groups.setdefault(stream.filter, StreamGroup(stream.filter)).join(stream)

    def discard(self, stream: EventStream) -> None:
        self.streams.discard(stream)
        group = self.groups.get(stream.filter)
        if group is not None:
            group.members.pop(stream, None)
            if not group.members:
                del self.groups[stream.filter]

    def tick(self) -> None:
        """Hand what every group collected to its streams, one shared frame per group."""
        self.ticks += 1
        for group in self.groups.values():
            self.frames_built += group.deliver()

    def publish(self, items: Sequence[Event | Missed]) -> None:
        """Hand one batch to the streams (synchronously: nothing here waits)."""
        events: list[Event] = []
        for item in items:
            if isinstance(item, Missed):  # the hub itself fell behind: every stream missed these
                self._flush(events)
                events = []
                count = item.last_id - item.first_id + 1
                self.missed_by_hub += count
                self.tick()  # what came before the gap goes first
                for stream in self.streams:
                    stream.miss(item.first_id, item.last_id, count)
            else:
                events.append(item)
        self._flush(events)

    def _flush(self, events: list[Event]) -> None:
        if not events:
            return
        self.rate.add(len(events), trio.current_time())
        learned = [self.index.learn(e) for e in events]
        for event in events:
            if event.kind == "job.state" and event.data.get("state") in TERMINAL:
                waiter = self._job_end.pop(event.subject, None)
                if waiter is not None:
                    waiter.set()
        if not self.streams:
            return
        texts = [encode_event(e) for e in events]
        for where, group in self.groups.items():
            if where.everything:
                picked: Sequence[int] = range(len(events))
            else:
                picked = [
                    i
                    for i, (e, (req, ns)) in enumerate(zip(events, learned, strict=True))
                    if where.matches(e, req, ns)
                ]
            if picked:
                group.add(
                    Batch(
                        events[picked[0]].id,
                        events[picked[-1]].id,
                        len(picked),
                        ",".join(texts[i] for i in picked),
                    )
                )
        self._waiting.set()

    def job_ended(self, job_id: str) -> trio.Event:
        """An event set when ``job_id``'s terminal state is committed from now on."""
        return self._job_end.setdefault(job_id, trio.Event())

    def statistics(self, now: float) -> dict[str, Any]:
        return {
            "events_total": self.rate.total,
            "events_per_second": self.rate.per_second(now),
            "streams": len(self.streams),
            "missed_by_hub": self.missed_by_hub,
            "ticks": self.ticks,
            "frames_built": self.frames_built,
        }
