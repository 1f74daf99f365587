"""The controller's timers: one heap of typed deadlines on trio's clock, and the loop that
fires them.

A timer is a small frozen record naming what to look at when it is due; firing it only
means "look again now": the controller checks whether it still applies (a job dispatched
since, an agent heard from since), so timers are never cancelled, only outlived.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable

import attrs
import trio

from wfe.protocols.attempt import AttemptMachine


@attrs.frozen
class AgentCheck:
    """Has agent ``name`` missed its heartbeat deadline?"""

    name: str


@attrs.frozen
class FenceCheck:
    """Has lost agent ``name``'s lease run out, so what it held is dead?"""

    name: str


@attrs.frozen
class AttemptDeadline:
    """Has attempt ``job_id#attempt`` passed its deadline?"""

    job_id: str
    attempt: int


@attrs.frozen
class ReadyAgain:
    """Job ``job_id``, whose attempt ``attempt`` failed, may run again (its backoff passed)."""

    job_id: str
    attempt: int


@attrs.frozen
class WaitExpired:
    """Job ``job_id``, queued with ``token``, waited its longest for an agent."""

    job_id: str
    token: int


@attrs.frozen
class OverallExpired:
    """Job ``job_id`` ran out of its overall time."""

    job_id: str


Timer = AgentCheck | FenceCheck | AttemptDeadline | ReadyAgain | WaitExpired | OverallExpired


class Timers:
    """A heap of ``(when, timer)``; ``run`` fires each when its time comes."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._changed = trio.Event()

    def __len__(self) -> int:
        return len(self._heap)

    def schedule(self, at: float, timer: Timer) -> None:
        """Fire ``timer`` at ``at`` (trio time); at once if that has passed."""
        earliest = self._heap[0][0] if self._heap else math.inf
        heapq.heappush(self._heap, (at, next(self._seq), timer))
        if at < earliest:
            self._changed.set()

    def schedule_deadline(self, machine: AttemptMachine) -> None:
        """Fire an ``AttemptDeadline`` at the attempt's next deadline, if it has one."""
        deadline = machine.next_deadline()
        if deadline is not None:
            self.schedule(deadline, AttemptDeadline(machine.job_id, machine.attempt))

    def next_at(self) -> float:
        """When the next timer is due (``inf`` for none)."""
        return self._heap[0][0] if self._heap else math.inf

    async def run(self, fire: Callable[[Timer, float], None]) -> None:
        """Call ``fire(timer, now)`` for every timer as it comes due, in time order, forever."""
        while True:
            now = trio.current_time()
            while self._heap and self._heap[0][0] <= now:
                _, _, timer = heapq.heappop(self._heap)
                fire(timer, now)
            with trio.move_on_at(self.next_at()):
                await self._changed.wait()
            self._changed = trio.Event()
