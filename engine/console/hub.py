"""One subscription to the repository's events for the whole console, fanned out to streams.

Theory of operation: the hub takes committed events from the repository in batches and
encodes each event to JSON once. Each ``subscribe`` stream keeps what it has not sent yet
(at most ``max_pending`` events); its connection's writer sends it as one frame per
``flush_interval``, so a hundred watchers cost a hundred frames per interval, not per event.
A stream that is full when a batch arrives does not queue the batch: it counts it as missed
(first and last id, how many) and tells its client in a ``missed`` frame, in order, at the
next flush. Nothing here awaits a client, so the engine never waits for one; a connection
whose client stops reading altogether is closed by its writer (``stall_timeout``).

The hub also learns which request (and namespace) each job belongs to from ``job.created``
and ``request.created`` events, so that streams can be filtered by request or namespace,
and wakes the ``wait`` operations when a job's terminal ``job.state`` is committed.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import attrs
import trio

from engine.jobs import TERMINAL
from engine.repository import Event, Missed

if TYPE_CHECKING:
    from engine.repository import Repository


@attrs.frozen(kw_only=True)
class EventFilter:
    """Which events a stream wants; an empty filter takes every event."""

    kinds: tuple[str, ...] = ()  # kind prefixes, e.g. ("job.", "request.state")
    subjects: frozenset[str] = frozenset()  # exact subjects (job ids, request ids, agent names)
    request: str | None = None  # the request's own events, and those of its jobs
    namespace: str | None = None  # events of requests (and their jobs) in the namespace

    @property
    def everything(self) -> bool:
        return not (self.kinds or self.subjects or self.request or self.namespace)

    def matches(self, event: Event, request: str | None, namespace: str | None) -> bool:
        if self.kinds and not event.kind.startswith(self.kinds):
            return False
        if self.subjects and event.subject not in self.subjects:
            return False
        if self.request is not None and request != self.request:
            return False
        return self.namespace is None or namespace == self.namespace


class EventIndex:
    """What request and namespace an event belongs to, learned from the events themselves."""

    def __init__(self, max_jobs: int = 200_000) -> None:
        self.max_jobs = max_jobs
        self.job_request: dict[str, str] = {}
        self.request_namespace: dict[str, str] = {}

    def learn(self, event: Event) -> tuple[str | None, str | None]:
        """Return ``(request, namespace)`` of ``event`` (None when unknown)."""
        data = event.data
        kind = event.kind
        if kind.startswith("request."):
            request: str | None = event.subject
            namespace = data.get("namespace")
            if isinstance(namespace, str) and request is not None:
                self.request_namespace[request] = namespace
        else:
            request = data.get("request") if isinstance(data.get("request"), str) else None
            if kind == "job.created":
                parent = data.get("parent")
                if request is None and isinstance(parent, str):
                    request = self.job_request.get(parent)
                if request is not None:
                    self._remember(event.subject, request)
            elif request is None and (kind.startswith("job.") or kind.startswith("attempt.")):
                request = self.job_request.get(event.subject)
        namespace = data.get("namespace")
        if not isinstance(namespace, str):
            namespace = None if request is None else self.request_namespace.get(request)
        return request, namespace

    def _remember(self, job_id: str, request: str) -> None:
        if len(self.job_request) >= self.max_jobs:
            self.job_request.pop(next(iter(self.job_request)))
        self.job_request[job_id] = request

    def seed(self, conn: Any) -> None:
        """Learn the namespaces of requests and the requests of unfinished jobs from the tables."""
        for rid, namespace in conn.execute(
            "SELECT id, namespace FROM requests ORDER BY created_at DESC LIMIT 100000"
        ):
            self.request_namespace[rid] = namespace
        terminal = ", ".join(f"'{s}'" for s in sorted(TERMINAL))
        for job_id, rid in conn.execute(
            "SELECT j.id, COALESCE(j.request_id, r.request_id) FROM jobs j JOIN jobs r ON r.id = j.root_id"
            f" WHERE j.state NOT IN ({terminal}) AND COALESCE(j.request_id, r.request_id) IS NOT NULL"
        ):
            self._remember(job_id, rid)


def encode_event(event: Event) -> str:
    """An event as the JSON object clients get."""
    return json.dumps(
        {
            "id": event.id,
            "at": event.at,
            "kind": event.kind,
            "subject": event.subject,
            "data": event.data,
        },
        separators=(",", ":"),
        default=str,
    )


class EventStream:
    """One ``subscribe`` of one connection: events waiting to be sent, and what it missed."""

    def __init__(
        self, stream_id: int, where: EventFilter, *, max_pending: int, wake: Callable[[], None]
    ) -> None:
        self.id = stream_id
        self.filter = where
        self.max_pending = max_pending
        self._wake = wake
        self._pending: list[str] = []  # comma-joined event objects, one entry per batch
        self._count = 0
        self._missed: list[int] | None = None  # [first_id, last_id, count]
        self.sent = 0
        self.missed_total = 0

    @property
    def due(self) -> bool:
        return bool(self._pending) or self._missed is not None

    def offer(self, first_id: int, last_id: int, count: int, joined: str) -> None:
        """Take a batch of ``count`` events (already JSON, comma-joined), or count it as missed."""
        if self._missed is None and self._count + count <= self.max_pending:
            if not self.due:
                self._wake()
            self._pending.append(joined)
            self._count += count
            return
        self.miss(first_id, last_id, count)

    def miss(self, first_id: int, last_id: int, count: int) -> None:
        if not self.due:
            self._wake()
        if self._missed is None:
            self._missed = [first_id, last_id, count]
        else:
            self._missed[1] = last_id
            self._missed[2] += count
        self.missed_total += count

    def take_frames(self) -> list[str]:
        """The frames to send now: the waiting events, then the missed notice (if any)."""
        frames = []
        if self._pending:
            frames.append(f'{{"stream":{self.id},"events":[{",".join(self._pending)}]}}')
            self.sent += self._count
            self._pending, self._count = [], 0
        if self._missed is not None:
            first, last, count = self._missed
            frames.append(
                f'{{"stream":{self.id},"missed":{{"first_id":{first},"last_id":{last},"count":{count}}}}}'
            )
            self._missed = None
        return frames


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

    def __init__(self, repo: Repository, *, max_buffer: int = 20_000) -> None:
        self.repo = repo
        self.max_buffer = max_buffer
        self.index = EventIndex()
        self.rate = Rate()
        self.streams: set[EventStream] = set()
        self._job_end: dict[str, trio.Event] = {}
        self.missed_by_hub = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Subscribe, learn the index, and fan out until cancelled or the repository closes."""
        async with self.repo.subscribe(max_buffer=self.max_buffer) as subscription:
            await self.repo.read(self.index.seed)
            task_status.started()
            while True:
                items = await subscription.receive_batch(1000)
                if not items:
                    return
                self.publish(items)

    def publish(self, items: Sequence[Event | Missed]) -> None:
        """Hand one batch to the streams (synchronously: nothing here waits)."""
        events: list[Event] = []
        for item in items:
            if isinstance(item, Missed):  # the hub itself fell behind: every stream missed these
                self._flush(events)
                events = []
                count = item.last_id - item.first_id + 1
                self.missed_by_hub += count
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
        everything: str | None = None
        first, last = events[0].id, events[-1].id
        for stream in self.streams:
            if stream.filter.everything:
                if everything is None:
                    everything = ",".join(texts)
                stream.offer(first, last, len(texts), everything)
                continue
            picked = [
                i
                for i, (e, (req, ns)) in enumerate(zip(events, learned, strict=True))
                if stream.filter.matches(e, req, ns)
            ]
            if picked:
                stream.offer(
                    events[picked[0]].id,
                    events[picked[-1]].id,
                    len(picked),
                    ",".join(texts[i] for i in picked),
                )

    def job_ended(self, job_id: str) -> trio.Event:
        """An event set when ``job_id``'s terminal state is committed from now on."""
        return self._job_end.setdefault(job_id, trio.Event())

    def statistics(self, now: float) -> dict[str, Any]:
        return {
            "events_total": self.rate.total,
            "events_per_second": self.rate.per_second(now),
            "streams": len(self.streams),
            "missed_by_hub": self.missed_by_hub,
        }
