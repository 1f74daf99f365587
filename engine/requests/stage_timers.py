"""Stage timeouts of the requests service: ``timeouts.wait_agent`` (no agent took the
job in time) and ``timeouts.overall``, armed when a batch's job starts and fired by the
service's loop, which stops the batch.

Timers live in memory only: an engine restart re-arms them from the restart (the elapsed
part before it is not kept). A job between attempts is stopped only once its requeue is
committed: until then the timer is *deferred* and fires again on the requeue event.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import trio

from wfe.engine.repository import requests as store
from wfe.engine.requests.model import Batch

if TYPE_CHECKING:
    from wfe.engine.definitions import Definition
    from wfe.engine.dispatch.controller import AgentController
    from wfe.engine.repository import Repository
    from wfe.engine.requests.batches import BatchRunner


class StageTimers:
    """Armed stage timeouts, earliest first."""

    def __init__(
        self,
        *,
        repo: Repository,
        controller: AgentController,
        batches: BatchRunner,
        jobs: Callable[[], Mapping[str, str]],
        wake: Callable[[], None],
    ) -> None:
        self.repo = repo
        self.controller = controller
        self.batches = batches
        self._jobs = jobs  # job id -> request id, for the jobs of open batches
        self._wake = wake
        self._timers: list[tuple[float, int, str, str, float]] = []  # (at, seq, job, kind, s)
        self._armed: set[str] = set()
        self._deferred: dict[str, tuple[str, float]] = {}  # job -> timer to fire on requeue
        self._seq = itertools.count()

    def next_at(self) -> float:
        """When the earliest timer fires (``inf`` when none is armed)."""
        return self._timers[0][0] if self._timers else math.inf

    def arm(self, definition: Definition, batch: Batch) -> None:
        """Arm the stage's timeouts for the batch's job (once per job)."""
        if batch.job is None or batch.job in self._armed:
            return
        self._armed.add(batch.job)
        timeouts = definition.stage(batch.stage).timeouts
        now = trio.current_time()
        for kind, seconds in (("wait_agent", timeouts.wait_agent), ("overall", timeouts.overall)):
            if seconds is not None:
                heapq.heappush(
                    self._timers, (now + seconds, next(self._seq), batch.job, kind, seconds)
                )
                self._wake()

    def settled(self, job_id: str) -> None:
        """The job's batch has settled: it is no longer armed."""
        self._armed.discard(job_id)

    def requeued(self, job_id: str) -> None:
        """The job ended or was requeued: fire a timer deferred until then, now."""
        deferred = self._deferred.pop(job_id, None)
        if deferred is not None:
            heapq.heappush(self._timers, (trio.current_time(), next(self._seq), job_id, *deferred))
            self._wake()

    async def fire(self) -> None:
        """Stop the batches whose timer is due."""
        now = trio.current_time()
        while self._timers and self._timers[0][0] <= now:
            _, _, job_id, kind, seconds = heapq.heappop(self._timers)
            rid = self._jobs().get(job_id)
            if rid is None:
                continue
            live = self.controller.jobs.get(job_id)
            if kind == "wait_agent":
                if live is None or live.machine is not None:
                    continue  # ended, or an agent has had it
                reason = f"no agent took it within {seconds:g} s (stage timeouts.wait_agent)"
            else:
                reason = f"overall timeout of {seconds:g} s exceeded (stage timeouts.overall)"
            snap = await self.repo.read(store.read_snapshot(rid))
            for batch in snap.batches:
                if batch.job == job_id:
                    # A job between attempts is stopped only once its requeue is committed:
                    # until the stop is done, its requeue event fires this timer again.
                    self._deferred[job_id] = (kind, seconds)
                    stopped = await self.batches.stop(batch, reason)
                    live = self.controller.jobs.get(job_id)
                    between = (
                        live is not None and live.machine is not None and live.machine.terminal
                    )
                    if stopped or not between:
                        self._deferred.pop(job_id, None)
