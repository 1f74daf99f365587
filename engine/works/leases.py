"""The leases of running works: the engine task that puts a work back when its worker is gone.

Theory of operation. A withdrawn work is held under a lease of its ``timeout`` seconds, in
trio time. Each heartbeat of its worker (``renew``) starts the lease again; the work's update
to success or failure ends it (``release``). When a lease runs out, ``run`` commits
``expire_work`` for that (work, attempt): the work goes back to queued with ``attempt + 1``,
or to failure once its retries are spent. The attempt fences everything: an expiry or an
update for an attempt that is over changes nothing.

Leases live in memory only. A starting engine gives every running work a fresh, full lease
(``recover``): time during which the engine was down never counts against a worker, and a
worker that survived the restart keeps its work by its next heartbeat.
"""

from __future__ import annotations

import heapq
import math

import attrs
import trio

from wfe.engine.repository import Repository
from wfe.engine.repository import works as work_rows
from wfe.engine.works.model import Work, WorkError


@attrs.frozen(kw_only=True)
class Lease:
    """One running work's lease."""

    work_id: str
    attempt: int
    period: float  # seconds each renewal grants (the work's timeout)
    deadline: float  # trio time at which it runs out


def due(leases: dict[str, Lease], now: float) -> list[Lease]:
    """The leases that have run out at ``now``, soonest first (a pure decision)."""
    return sorted((x for x in leases.values() if x.deadline <= now), key=lambda x: x.deadline)


class Leases:
    """Holds the leases of running works and expires them; one per engine."""

    def __init__(self, repo: Repository) -> None:
        self._repo = repo
        self._held: dict[str, Lease] = {}
        self._heap: list[tuple[float, str]] = []
        self._changed = trio.Event()
        self.expired = 0  # leases that ran out and were committed as such

    def hold(self, work: Work) -> Lease:
        """Start the lease of ``work``, just withdrawn (running, with its id and attempt)."""
        assert work.id is not None
        return self._set(work.id, work.attempt, float(work.timeout))

    def _set(self, work_id: str, attempt: int, period: float) -> Lease:
        lease = Lease(
            work_id=work_id,
            attempt=attempt,
            period=period,
            deadline=trio.current_time() + period,
        )
        self._held[work_id] = lease
        heapq.heappush(self._heap, (lease.deadline, work_id))
        if self._heap[0][1] == work_id:
            self._changed.set()
        return lease

    def renew(self, work_id: str, attempt: int) -> Lease:
        """A heartbeat: start the lease of ``work_id``'s ``attempt`` again; return it.

        Raises ``WorkError`` when that attempt holds no lease (it ran out, or the work ended):
        the worker must stop, its result would be refused."""
        lease = self._held.get(work_id)
        if lease is None or lease.attempt != attempt:
            raise WorkError(
                f"work {work_id}: attempt {attempt} holds no lease (it ran out, or the work"
                " has ended): stop working on it"
            )
        return self._set(work_id, attempt, lease.period)

    def release(self, work_id: str) -> None:
        """The work ended or went back to its bucket: forget its lease."""
        self._held.pop(work_id, None)

    def held(self) -> dict[str, Lease]:
        """The leases held now, by work id."""
        return dict(self._held)

    async def recover(self) -> int:
        """Give every running work in the repository a full lease; return how many."""
        running = await self._repo.read(work_rows.running_works)
        for work_id, attempt, timeout in running:
            self._set(work_id, attempt, float(timeout))
        return len(running)

    def _next_deadline(self) -> float:
        heap = self._heap
        while heap:
            deadline, work_id = heap[0]
            lease = self._held.get(work_id)
            if lease is not None and lease.deadline == deadline:
                return deadline
            heapq.heappop(heap)  # renewed or released since: a stale entry
        return math.inf

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Expire leases as they run out, until cancelled."""
        task_status.started()
        while True:
            for lease in due(self._held, trio.current_time()):
                if self._held.get(lease.work_id) != lease:
                    continue  # renewed or released while an earlier expiry committed
                del self._held[lease.work_id]
                reason = (
                    f"lease of {lease.period:g} s ran out on attempt {lease.attempt}"
                    " (the worker stopped sending heartbeats)"
                )
                done = await self._repo.write(
                    work_rows.expire_work(lease.work_id, lease.attempt, reason)
                )
                if done is not None:
                    self.expired += 1
            self._changed = trio.Event()
            with trio.move_on_at(self._next_deadline()):
                await self._changed.wait()


__all__ = ["Lease", "Leases", "due"]
