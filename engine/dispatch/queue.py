"""The controller's job queue: the live jobs, the ready heap, held requests, ending jobs.

Every unfinished RScript job the controller owns is in ``jobs`` (``LiveJob``) until its end
is decided; from then until that end is committed it is in ``ending`` instead, so that a
cancel or a replayed call meanwhile neither ends it twice nor takes it on again.

A job waiting for an agent has one entry in the ready heap of its share (namespace and user:
``wfe.engine.dispatch.fairshare``), ordered by priority then age; the shares take turns as
their usage per weight says.
Entries are never removed: each carries the job's ``queued_token`` at the time, and an
entry whose token is no longer the job's is stale and skipped (the job was dispatched,
cancelled, queued again, or kept back). Tokens come from one counter, never from the job's
own: a job id taken on again (a retry after a cancel) must not match its old entries. A job of a *held* request is kept out of the heap
until the request is released; its attempts out on agents run on.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterable, Iterator

from wfe.engine.dispatch.fairshare import FairShare, Share
from wfe.engine.dispatch.live import AgentEntry, LiveJob
from wfe.engine.dispatch.scheduler import Offer, Ready, fits
from wfe.engine.dispatch.timers import Timers, WaitExpired

Entry = tuple[int, int, str, int]  # (-priority, seq, job_id, token): heap order


class JobQueue:
    """The live jobs and which of them wait for an agent."""

    def __init__(
        self,
        timers: Timers,
        wake: Callable[[], None],
        now: Callable[[], float],
        fair: FairShare | None = None,
    ) -> None:
        self.jobs: dict[str, LiveJob] = {}
        self.ending: dict[str, LiveJob] = {}  # no longer live, their end not yet committed
        self._timers = timers
        self._wake = wake  # a dispatch round may have something to do
        self._now = now
        self.fair = fair if fair is not None else FairShare()
        self._ready: dict[Share, list[Entry]] = {}  # by share; a share without entries is removed
        self._held: dict[str, set[str]] = {}  # held request id -> its jobs kept out
        self._seq = itertools.count()
        self._tokens = itertools.count(1)
        # (job, attempt) an agent's hello says it holds a result for, of a job that waits to
        # run again: kept out of the queue until that result is read (it may be the outcome)
        self._late: dict[tuple[str, int], tuple[str, LiveJob]] = {}

    def next_seq(self) -> int:
        """The arrival number of a job taken on now (older jobs go first)."""
        return next(self._seq)

    def _restamp(self, job: LiveJob) -> None:
        """Make every ready-heap entry and wait timer of ``job`` stale."""
        job.queued_token = next(self._tokens)

    def known(self, job_id: str) -> bool:
        """Live here, or its end being committed."""
        return job_id in self.jobs or job_id in self.ending

    def waiting(self, job: LiveJob) -> bool:
        """``job`` is live here and not on an agent: queued, held, or between attempts."""
        return self.jobs.get(job.job_id) is job and not job.active

    @property
    def has_ready(self) -> bool:
        """Something may wait in the ready heap (entries may be stale)."""
        return any(self._ready.values())

    # --- in and out ---------------------------------------------------------------------------

    def enqueue(self, job: LiveJob) -> None:
        """Put ``job`` in line for an agent (kept back instead if its request is held)."""
        self._restamp(job)
        if self._keep_back(job):
            return
        entry = (-job.priority, job.seq, job.job_id, job.queued_token)
        heapq.heappush(self._ready.setdefault(job.share, []), entry)
        if job.wait_agent > 0:
            at = self._now() + job.wait_agent
            self._timers.schedule(at, WaitExpired(job.job_id, job.queued_token))
        self._wake()

    def requeue_if_waiting(self, job: LiveJob) -> None:
        """Queue ``job`` again if it still waits to run (not ended, not dispatched)."""
        if self.waiting(job):
            self.enqueue(job)

    def drop(self, job: LiveJob) -> None:
        """Take ``job`` out of line and out of the live jobs (it ends without an attempt)."""
        self._restamp(job)
        self.jobs.pop(job.job_id, None)

    def begin_end(self, job: LiveJob) -> None:
        """``job``'s end is decided: no longer live, in ``ending`` until it is committed."""
        self._restamp(job)
        self.jobs.pop(job.job_id, None)
        self.ending[job.job_id] = job

    def end_committed(self, job_id: str) -> None:
        self.ending.pop(job_id, None)

    # --- dispatch rounds ------------------------------------------------------------------------

    def pop_ready(self, popped: list[Entry]) -> Iterator[Ready]:
        """The jobs in line as the scheduler takes them: the shares in turn (fair share), each
        share's best first; each one taken is appended to ``popped`` (give those not
        dispatched back with ``put_back``)."""
        turns = self.fair.turns([s for s, heap in self._ready.items() if heap], self._now())
        while turns:
            share = turns.next()
            found = self._pop_live(share)
            if found is None:
                turns.drop(share)
                continue
            item, job = found
            _, seq, job_id, _ = item
            popped.append(item)
            turns.took(share, job.cpus)
            yield Ready(
                job_id=job_id,
                priority=job.priority,
                seq=seq,
                requirements=job.requirements,
                on=job.on,
            )

    def _pop_live(self, share: Share) -> tuple[Entry, LiveJob] | None:
        """The best entry of ``share`` whose job still waits, taken off its heap."""
        heap = self._ready.get(share)
        while heap:
            item = heapq.heappop(heap)
            _, _, job_id, token = item
            job = self.jobs.get(job_id)
            if job is None or job.queued_token != token or job.active:
                continue  # stale entry
            if self._keep_back(job):  # queued before its request was held
                continue
            return item, job
        self._ready.pop(share, None)
        return None

    def put_back(self, popped: Iterable[Entry], chosen: set[str]) -> None:
        """Return the popped entries whose job was not dispatched."""
        for item in popped:
            job = self.jobs.get(item[2])
            if item[2] not in chosen and job is not None:
                heapq.heappush(self._ready.setdefault(job.share, []), item)

    # --- held requests ----------------------------------------------------------------------------

    def hold(self, request_id: str) -> None:
        self._held.setdefault(request_id, set())

    def is_held(self, request_id: str | None) -> bool:
        return request_id is not None and request_id in self._held

    def release(self, request_id: str) -> None:
        for job_id in sorted(self._held.pop(request_id, ())):
            job = self.jobs.get(job_id)
            if job is not None and not job.active:
                self.enqueue(job)

    def held(self) -> dict[str, int]:
        return {rid: sum(j in self.jobs for j in kept) for rid, kept in self._held.items()}

    def _keep_back(self, job: LiveJob) -> bool:
        """Keep ``job`` out of line if its request is held (its heap entries and wait timer
        go stale); return whether it was."""
        kept = None if job.request_id is None else self._held.get(job.request_id)
        if kept is None:
            return False
        self._restamp(job)
        kept.add(job.job_id)
        return True

    # --- results announced in a hello ---------------------------------------------------------------

    def expect_late(self, key: tuple[str, int], agent: str) -> None:
        """Agent ``agent`` holds a result for ``key``, an attempt of a job that waits to run
        again: keep the job out of line until that result is read."""
        job = self.jobs.get(key[0])
        if job is not None and not job.active:
            self._restamp(job)
            self._late[key] = (agent, job)

    def late_read(self, key: tuple[str, int]) -> None:
        """The result announced for ``key`` was handled: its job may run again if it waits."""
        expected = self._late.pop(key, None)
        if expected is not None:
            self.requeue_if_waiting(expected[1])

    def agent_gone(self, agent: str) -> None:
        """``agent``'s link closed: the results it announced will not come on it."""
        for key, (name, _) in list(self._late.items()):
            if name == agent:
                self.late_read(key)

    # --- what the operator sees --------------------------------------------------------------------

    def unplaceable(self, agents: Iterable[AgentEntry]) -> list[str]:
        """Queued jobs that none of ``agents`` could ever take (none offers what they need,
        however busy it is); with no agent at all, every queued job. Agents alike are looked
        at once: the cost is in distinct offers, not agents."""
        live = {a.name: a for a in agents}
        distinct = {a.capabilities for a in live.values()}
        stuck = []
        for job in self.jobs.values():
            if job.active:
                continue
            ready = Ready(
                job_id=job.job_id, priority=job.priority, seq=job.seq, requirements=job.requirements
            )
            if job.on is not None:
                pinned = live.get(job.on)
                candidates = [pinned.capabilities] if pinned is not None else []
            else:
                candidates = list(distinct)
            if not any(
                fits(ready, Offer(name="", free_slots=caps.slots, capabilities=caps))
                for caps in candidates
            ):
                stuck.append(job.job_id)
        return stuck
