"""What agents say: hellos, reports about attempts, statuses and output, turned into events
for the attempts' machines and into records.

An agent's hello is reconciled with what the controller thinks it holds: an attempt it
runs is resumed (its output from the first chunk not stored), one it holds a result for
waits for that result, and one it knows nothing of has been lost by it (which fences it).
A status answers a lease, and ends as lost any running attempt it no longer lists. Reports
that end an attempt go to ``AttemptEnds``; output chunks are stored, tracked for holes and
given to live watchers. Nothing here blocks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from wfe.engine.dispatch.ends import AttemptEnds
from wfe.engine.dispatch.live import AgentEntry, AgentLink, LiveJob
from wfe.engine.dispatch.queue import JobQueue
from wfe.engine.dispatch.registry import AgentRegistry
from wfe.engine.dispatch.timers import Timers
from wfe.engine.dispatch.watchers import OutputWatchers
from wfe.engine.repository import attempts as rows
from wfe.engine.repository import broadcasts
from wfe.protocols import attempt as am
from wfe.protocols.messages import (
    AgentHello,
    AgentStatus,
    JobAccepted,
    JobFinished,
    JobRefused,
    Message,
    OutputChunk,
    Reacted,
    Resume,
)

if TYPE_CHECKING:
    from wfe.engine.repository import Repository

log = logging.getLogger("wfe.controller")


class AgentInbox:
    """Handles every message from agents, and their comings and goings."""

    def __init__(
        self,
        *,
        repo: Repository,
        queue: JobQueue,
        registry: AgentRegistry,
        timers: Timers,
        ends: AttemptEnds,
        spawn: Callable[..., None],
        wake: Callable[[], None],
    ) -> None:
        self._repo = repo
        self._queue = queue
        self._registry = registry
        self._timers = timers
        self._ends = ends
        self._spawn = spawn
        self._wake = wake
        self.watchers = OutputWatchers()

    def connected(self, hello: AgentHello, link: AgentLink, transport: str) -> None:
        """Register an agent that said hello and reconcile what it holds with the books."""
        now = trio.current_time()
        entry = self._registry.connect(hello, link, transport, now)
        running = {(r.job_id, r.attempt) for r in hello.running}
        held = {(r.job_id, r.attempt) for r in hello.held}
        for key, job in list(entry.attempts.items()):
            machine = job.machine
            assert machine is not None
            if key in running:
                if machine.state is am.AttemptState.DISPATCHED:
                    machine.handle(am.Started(at=now))
                    self._repo.write_nowait(rows.attempt_started(machine))
                job.sent = True
                self._timers.schedule_deadline(machine)
                self._spawn(self._resume_output, entry, *key)
            elif key not in held:  # the agent never got it, or lost it with a restart: it says
                self._ends.over(job, am.AgentLost(at=now), None)  # so, which fences it
        for ref in hello.held:
            key = (ref.job_id, ref.attempt)
            if key not in entry.attempts:
                self._queue.expect_late(key, hello.name)
        self._registry.announce(entry, now)
        self._wake()

    async def _resume_output(self, entry: AgentEntry, job_id: str, attempt: int) -> None:
        next_seq = await self._repo.read(rows.output_count(job_id, attempt))
        if entry.link is not None:
            entry.link.send_nowait(Resume(job_id=job_id, attempt=attempt, next_seq=next_seq))

    def disconnected(self, name: str, link: AgentLink) -> None:
        """``name``'s connection ``link`` closed (it may come back within its deadline)."""
        if self._registry.disconnect(name, link, trio.current_time()):
            self._queue.agent_gone(name)

    def message(self, name: str, message: Message) -> None:
        """Handle one message from a connected agent."""
        entry = self._registry.agents.get(name)
        if entry is None:
            log.warning("message from unknown agent %s ignored", name)
            return
        now = entry.last_heard = trio.current_time()
        match message:
            case OutputChunk():
                # a big chunk's commit goes to the writer's thread (one weight per 4 KiB)
                weight = 1 + len(message.data) // 4096
                self._repo.write_nowait(rows.output_stored(message), weight=weight)
                self._ends.output_fill.seen(message)
                self.watchers.send(message)
            case JobFinished():
                job = _current(entry, message.job_id, message.attempt)
                if job is None:
                    self._ends.stale(name, message, entry.link)
                else:
                    self._ends.over(job, am.event_from_message(message, at=now), message)
            case JobAccepted() | JobRefused():
                self._report(entry, message, now)
            case AgentStatus():
                self._status(entry, message, now)
            case Reacted():
                namespace = entry.capabilities.namespace
                self._repo.write_nowait(broadcasts.reacted(name, namespace, message))
            case AgentHello():
                log.warning("agent %s sent a second hello on one connection; ignored", name)
            case _:
                kind = type(message).__name__
                log.warning("agent %s sent %s, which only the engine sends; ignored", name, kind)

    def _report(self, entry: AgentEntry, message: JobAccepted | JobRefused, now: float) -> None:
        job = _current(entry, message.job_id, message.attempt)
        if job is None or job.machine is None:
            return
        event = am.event_from_message(message, at=now)
        if isinstance(message, JobRefused):
            ref = f"{message.job_id}#{message.attempt}"
            log.warning("agent %s refused %s: %s", entry.name, ref, message.reason)
            self._ends.over(job, event, None)
        elif job.machine.handle(event) is am.AttemptState.RUNNING:
            self._repo.write_nowait(rows.attempt_started(job.machine))
            self._timers.schedule_deadline(job.machine)

    def _status(self, entry: AgentEntry, status: AgentStatus, now: float) -> None:
        known = {(r.job_id, r.attempt) for r in (*status.running, *status.held)}
        self._registry.grant(entry, status.seq, now)
        for key, job in list(entry.attempts.items()):
            # Messages on a link keep their order, so an attempt the agent accepted and that is
            # in neither list has vanished from it (e.g. the agent restarted).
            running = job.machine is not None and job.machine.state is am.AttemptState.RUNNING
            if running and key not in known:
                self._ends.over(job, am.AgentLost(at=now), None)


def _current(entry: AgentEntry, job_id: str, attempt: int) -> LiveJob | None:
    """The live job whose attempt ``job_id#attempt`` is out on ``entry``, if any."""
    job = entry.attempts.get((job_id, attempt))
    return job if job is not None and job.active else None
