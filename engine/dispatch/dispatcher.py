"""Dispatch rounds: match the jobs in line to free agent slots, commit, then send.

A round runs whenever something may have changed (``wake``: a job queued, a slot freed, an
agent connected). The scheduler (``scheduler.assign``) picks which job goes where; every
attempt of the round is committed in one transaction before any agent hears of it (write
ahead), and an attempt that ended while that commit was on its way (cancelled, its agent
lost) is not sent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from wfe.engine.dispatch import locality
from wfe.engine.dispatch.ends import AttemptEnds
from wfe.engine.dispatch.jobspec import dispatch_message
from wfe.engine.dispatch.live import AgentEntry, LiveJob
from wfe.engine.dispatch.queue import Entry, JobQueue
from wfe.engine.dispatch.registry import AgentRegistry
from wfe.engine.dispatch.scheduler import Ready, assign
from wfe.engine.dispatch.timers import Timers
from wfe.engine.repository import attempts as rows
from wfe.protocols import attempt as am
from wfe.protocols.messages import Dispatch

if TYPE_CHECKING:
    from wfe.engine.repository import Repository
    from wfe.rscripts.loader import ScriptLibrary


class Dispatcher:
    """Sends queued jobs to agents with a free slot."""

    def __init__(
        self,
        *,
        repo: Repository,
        scripts: ScriptLibrary,
        queue: JobQueue,
        registry: AgentRegistry,
        timers: Timers,
        ends: AttemptEnds,
        sign: Callable[[Dispatch], Dispatch],
        grace: float,
    ) -> None:
        self._repo = repo
        self._scripts = scripts
        self._queue = queue
        self._registry = registry
        self._timers = timers
        self._ends = ends
        self._sign = sign
        self._grace = grace
        self._work = trio.Event()
        self.running = False  # set by the controller once it runs: submit may dispatch at once
        self.dispatched_total = 0

    def wake(self) -> None:
        """Something changed: run a round soon."""
        self._work.set()

    async def run(self) -> None:
        """Run a round each time ``wake`` was called, forever."""
        while True:
            await self._work.wait()
            self._work = trio.Event()
            await self._round()

    async def _round(self) -> None:
        offers = self._registry.offers()
        if not offers or not self._queue.has_ready:
            return
        popped: list[Entry] = []
        pairs = assign(self._queue.pop_ready(popped), offers)
        self._queue.put_back(popped, {ready.job_id for ready, _ in pairs})
        if not pairs:  # nothing that waits fits a free slot: wait for a change
            return
        now = trio.current_time()
        machines = [(self._queue.jobs[r.job_id], self._registry.agents[a]) for r, a in pairs]
        out = [self.new_attempt(job, entry, now) for job, entry in machines]
        used = {  # the replicas each attempt reads, recorded with it
            (job.job_id, job.attempts_made): locality.used(placed, entry.capabilities.site)
            for job, entry in machines
            if (placed := job.requirements.get("locality")) is not None
        }
        await self._repo.write(rows.attempts_dispatched(out, used))  # write ahead
        self.send(machines)
        if self._queue.has_ready and any(a.free_slots for a in self._registry.usable()):
            self.wake()  # more may fit: another round

    def idle_agent(self, requirements: dict[str, Any]) -> AgentEntry | None:
        """The agent a new job may go to at once: none while any job waits in the queue (it
        would overtake it), else the scheduler's choice among agents with a free slot."""
        if self._queue.has_ready or not self.running:
            return None  # checked first: in a burst the queue is rarely empty
        if "locality" in requirements:
            return None  # its replicas are recorded with the attempt in a round
        offers = self._registry.offers()
        if not offers:
            return None
        ready = Ready(
            job_id="",
            priority=0,
            seq=0,
            requirements={k: v for k, v in requirements.items() if k != "on"},
            on=requirements.get("on"),
        )
        pairs = assign([ready], offers)
        return self._registry.agents[pairs[0][1]] if pairs else None

    def new_attempt(self, job: LiveJob, entry: AgentEntry, now: float) -> am.AttemptMachine:
        """Start ``job``'s next attempt on ``entry`` in memory (dispatched, not yet sent)."""
        job.attempts_made += 1
        machine = job.machine = am.AttemptMachine(
            job_id=job.job_id, attempt=job.attempts_made, timeout=job.timeout, grace=self._grace
        )
        machine.handle(am.Dispatched(agent=entry.name, at=now))
        job.sent = False
        self._registry.take(entry, job, job.attempts_made, now)
        return machine

    def send(self, machines: list[tuple[LiveJob, AgentEntry]]) -> None:
        """Send the dispatches just committed, unless their attempt ended meanwhile."""
        for job, entry in machines:
            machine = job.machine
            assert machine is not None
            now = trio.current_time()
            if machine.state is am.AttemptState.CANCELLING:  # cancelled while we committed
                self._ends.over(job, am.DeadlinePassed(at=now), None)
                continue
            if machine.terminal:
                continue
            if entry.link is None or entry.lost:
                self._ends.over(job, am.AgentLost(at=now), None)
                continue
            try:
                script = self._scripts.get(job.script_name)
                dispatch = dispatch_message(job, script, self._sign, entry.capabilities.site)
            except Exception as exc:  # the script vanished or changed badly since submission
                job.fail_reason = f"cannot dispatch: {exc}"
                machine.handle(am.CancelRequested(at=now))  # the agent never heard of it, so
                self._ends.over(job, am.DeadlinePassed(at=now), None)  # there is no wait
                continue
            entry.link.send_nowait(dispatch)
            job.sent = True
            self.dispatched_total += 1
            self._timers.schedule_deadline(machine)
