"""The agent controller: the only component that talks to agents.

It owns every unfinished RScript job and the state machine of its current attempt
(``wfe.protocols.attempt``). Transports (local socket, XMPP) hand it what agents say through
``agent_connected`` / ``agent_message`` / ``agent_disconnected`` and give it an
``AgentLink`` per agent to send on; it never does I/O itself except through the repository.

It is the facade the engine uses, coordinating parts that each do one thing: the job
queue (``queue``), the agent registry with leases and fences (``registry``), the timers
(``timers``), dispatch rounds (``dispatcher``), what agents say (``inbox``) and the ends of
attempts (``ends``), decided by ``policy``'s pure functions. Always: decide, commit, then
act on the commit (send, acknowledge, wake the waiter); so after a crash the repository
says what was promised, and ``recover`` picks up from there.

Timeouts: waiting for an agent (job), per attempt (the agent kills at the timeout, the
machine gives up a grace later), overall (job), and the heartbeat (agent), all on
``trio.current_time()`` in one timer heap.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
import trio

from wfe.engine.config import AgentsSection, FairShareSection, JobsSection
from wfe.engine.dispatch import policy
from wfe.engine.dispatch import timers as tm
from wfe.engine.dispatch.dispatcher import Dispatcher
from wfe.engine.dispatch.ends import AttemptEnds
from wfe.engine.dispatch.fairshare import FairShare
from wfe.engine.dispatch.inbox import AgentInbox
from wfe.engine.dispatch.jobspec import ShareLookup, Submission, live_job, new_job, scheduling
from wfe.engine.dispatch.live import AgentEntry, AgentLink, LiveJob
from wfe.engine.dispatch.queue import JobQueue
from wfe.engine.dispatch.registry import AgentRegistry
from wfe.engine.errors import UnknownJob
from wfe.engine.repository import attempts as rows
from wfe.engine.runtime.jobs import Completions, JobOutcome, JobRow, JobState, NewJob, create_job
from wfe.protocols import attempt as am
from wfe.protocols.broadcasts import hears
from wfe.protocols.messages import (
    AgentHello,
    AttemptRef,
    Broadcast,
    Cancel,
    Dispatch,
    Message,
    OutputChunk,
)

if TYPE_CHECKING:
    from wfe.engine.repository import Repository
    from wfe.rscripts.loader import ScriptLibrary

__all__ = ["AgentController", "AgentEntry", "AgentLink", "LiveJob"]
log = logging.getLogger("wfe.controller")


class AgentController:
    """Dispatches RScript jobs to agents and records everything they report."""

    def __init__(
        self,
        *,
        repo: Repository,
        scripts: ScriptLibrary,
        completions: Completions,
        agents: AgentsSection,
        jobs: JobsSection,
        fair_share: FairShareSection | None = None,
        sign: Callable[[Dispatch], Dispatch] = lambda d: d,
        grace: float = 5.0,
    ) -> None:
        self.repo = repo
        self.scripts = scripts
        self.completions = completions
        self.settings = agents
        self.defaults = jobs
        self._grace = grace
        self._nursery: trio.Nursery | None = None
        self.started_at = trio.current_time()
        self.timers = tm.Timers()
        shares = fair_share or FairShareSection()
        fair = FairShare(window=shares.window, namespaces=shares.namespaces, users=shares.users)
        self.queue = JobQueue(self.timers, self._wake, trio.current_time, fair)
        self.registry = AgentRegistry(
            settings=agents, repo=repo, timers=self.timers, started_at=self.started_at, fair=fair
        )
        self._share_of = ShareLookup(repo)
        self.ends = AttemptEnds(
            repo=repo,
            queue=self.queue,
            registry=self.registry,
            timers=self.timers,
            completions=completions,
            settings=agents,
            spawn=self._spawn,
            wake=self._wake,
            owner=self,
        )
        self.dispatcher = Dispatcher(
            repo=repo,
            queue=self.queue,
            registry=self.registry,
            scripts=scripts,
            timers=self.timers,
            ends=self.ends,
            sign=sign,
            grace=grace,
        )
        self.inbox = AgentInbox(
            repo=repo,
            queue=self.queue,
            registry=self.registry,
            timers=self.timers,
            ends=self.ends,
            spawn=self._spawn,
            wake=self._wake,
        )
        self.jobs = self.queue.jobs  # the live jobs, by id
        self.agents = self.registry.agents  # the agents known, by name
        self.output_fill = self.ends.output_fill  # makes output whole before results commit
        self.broadcasts_sent = 0  # broadcasts sent to agents, one per agent that heard one

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the dispatcher and the timers until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.dispatcher.running = True
            nursery.start_soon(self.dispatcher.run, name="controller dispatch")
            nursery.start_soon(self.timers.run, self._fire, name="controller timers")
            task_status.started()

    def _spawn(self, fn: Callable[..., Any], *args: Any) -> None:
        assert self._nursery is not None, "controller is not running"
        self._nursery.start_soon(fn, *args)

    def _wake(self) -> None:
        self.dispatcher.wake()

    def statistics(self) -> dict[str, int]:
        running = sum(1 for j in self.jobs.values() if j.active)
        return {
            "queued": len(self.jobs) - running,
            "running": running,
            "agents": sum(1 for _ in self.registry.usable()),
            "dispatched_total": self.dispatched_total,
            "unplaceable": len(self.unplaceable()),
            "broadcasts_sent": self.broadcasts_sent,
        }

    @property
    def dispatched_total(self) -> int:
        """Dispatches sent since the engine started."""
        return self.dispatcher.dispatched_total

    def unplaceable(self) -> list[str]:
        """Queued jobs that no connected agent could ever take; with none, every one."""
        return self.queue.unplaceable(self.registry.usable())

    # --- jobs ------------------------------------------------------------------------------

    async def submit(
        self,
        name: str,
        params: dict[str, Any],
        *,
        parent: JobRow | None = None,
        call_seq: int | None = None,
        on: str | None = None,
        priority: int | None = None,
        requires: dict[str, Any] | None = None,
        retries: int | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the attempt's limit, not this call's
        backoff: float | None = None,
        wait_agent: float | None = None,
        overall: float | None = None,
        request_id: str | None = None,
        by: str | None = None,
    ) -> str:
        """Record an RScript job and queue it; return its id (``by``: who asked, for the event).

        ``timeout`` (per attempt) defaults to the script header's ``# timeout:`` when it has
        one, else to ``[jobs]``; ``backoff`` (before the first retry, doubling),
        ``wait_agent`` and ``overall`` (seconds; 0 for none) default to ``[jobs]``.

        When nothing waits in the queue and a connected agent has a free slot the job fits,
        the job and its first attempt's dispatch are committed together (one transaction, still
        before the agent hears of it) and the dispatch is sent before this returns.

        Raises ``UnknownRScript`` / ``ParamError`` before anything is recorded.
        """
        from wfe.rscripts.header import validate_params

        sub = Submission(
            parent=parent,
            call_seq=call_seq,
            on=on,
            priority=priority,
            requires=requires,
            retries=retries,
            timeout=timeout,
            backoff=backoff,
            wait_agent=wait_agent,
            overall=overall,
            request_id=request_id,
            by=by,
            share=await self._share_of(request_id, by),
        )
        script = self.scripts.get(name)
        new = new_job(name, script, validate_params(script.header, params), sub, self.defaults)
        requirements = scheduling(script, sub)
        held = self.queue.is_held(request_id)
        entry = None if held else self.dispatcher.idle_agent(requirements)
        if entry is not None:
            return await self._submit_dispatched(new, entry, int(requirements.get("cpus", 1)))
        job = await self.repo.write(create_job(new))
        self._recorded(job)
        return job.id

    def _recorded(self, job: JobRow) -> None:
        """Take on a job just recorded, or found recorded by an earlier run of its parent."""
        if job.finished:
            self.completions.resolve(
                JobOutcome(job_id=job.id, state=job.state, result=job.result, error=job.error)
            )
        elif not self.queue.known(job.id):  # a replayed call's job, not taken on here yet
            live = self._take_on(job)
            live.attempts_made = job.attempts
            self.queue.enqueue(live)
        # else: live, or its end is being committed (a replayed call then waits for that)

    async def _submit_dispatched(self, new: NewJob, entry: AgentEntry, cpus: int) -> str:
        """Record ``new`` and its first attempt on ``entry`` in one commit, then send it."""
        entry.reserved += cpus  # no dispatch round gives the slot away meanwhile
        try:
            job, created = await self.repo.write(rows.job_created_and_dispatched(new, entry.name))
        except BaseException:
            entry.reserved -= cpus
            self._wake()  # the slot is free again for what may have queued meanwhile
            raise
        entry.reserved -= cpus
        if not created:  # a replayed call: the job exists already
            self._wake()
            self._recorded(job)
            return job.id
        live = self._take_on(job)
        self.dispatcher.new_attempt(live, entry, trio.current_time())
        self.dispatcher.send([(live, entry)])
        return job.id

    def _take_on(self, job: JobRow) -> LiveJob:
        live = self.jobs[job.id] = live_job(job, self.defaults, self.queue.next_seq())
        if live.overall > 0:
            self.timers.schedule(trio.current_time() + live.overall, tm.OverallExpired(job.id))
        return live

    def hold_request(self, request_id: str) -> None:
        """Dispatch no job of ``request_id`` until ``release_request``: a job of it that is
        queued (new, or requeued for a retry, with or without a delay) is kept out of the
        queue, still live, so a cancel ends it as an unattempted one would. Attempts out on
        agents run on. Idempotent."""
        self.queue.hold(request_id)

    def release_request(self, request_id: str) -> None:
        """End ``hold_request``: queue the request's jobs kept back meanwhile. Idempotent."""
        self.queue.release(request_id)

    def held_requests(self) -> dict[str, int]:
        """Each held request's id and how many of its jobs are kept back."""
        return self.queue.held()

    async def cancel(self, job_id: str, *, reason: str = "cancelled by operator") -> None:
        """Cancel an RScript job: at once if queued, else by killing it on its agent."""
        job = self.jobs.get(job_id)
        if job is None:
            raise UnknownJob(f"job {job_id} is not running")
        self._cancel(job, reason)

    def retry(self, job: JobRow, *, failures: int, lost: int) -> None:
        """Queue again an RScript job just reset to ``queued`` (``wfe.engine.runtime.retry``) with
        the failed and lost attempts it has had (as ``recover`` counts them); a job live
        here already is left as it is."""
        if self.queue.known(job.id):
            return
        live = self._take_on(job)
        live.attempts_made, live.failures, live.lost = job.attempts, failures, lost
        self.queue.enqueue(live)

    def _cancel(self, job: LiveJob, reason: str, state: JobState = JobState.CANCELLED) -> None:
        """End ``job`` in ``state`` at once if no agent has it, else ask its agent to kill it
        (the attempt's machine then waits a grace for the confirmation)."""
        if not job.active:
            self.queue.drop(job)
            self._spawn(self._end_unattempted, job, state, reason)
            return
        machine = job.machine
        assert machine is not None
        machine.handle(am.CancelRequested(at=trio.current_time()))
        self.timers.schedule_deadline(machine)
        link = self.registry.link(machine.agent)
        if link is not None and job.sent:
            link.send_nowait(Cancel(job_id=job.job_id, attempt=machine.attempt, reason=reason))

    async def _end_unattempted(self, job: LiveJob, state: JobState, error: str) -> None:
        await self.repo.write(rows.job_ended_without_attempt(job.job_id, state, error))
        self.completions.resolve(
            JobOutcome(job_id=job.job_id, state=state, error=error), keep=job.parent_id is not None
        )

    async def last_attempt(self, job_id: str) -> dict[str, Any] | None:
        """The latest attempt of ``job_id`` as recorded (None: it had none)."""
        record = await self.repo.read(rows.last_attempt(job_id))
        return None if record is None else attrs.asdict(record)

    # --- agents ----------------------------------------------------------------------------

    def agent_connected(self, hello: AgentHello, link: AgentLink, *, transport: str) -> None:
        """An agent (re)connected: register it and reconcile what it holds with what we think."""
        self.inbox.connected(hello, link, transport)

    def agent_message(self, name: str, message: Message) -> None:
        """Handle one message from a connected agent. Never blocks."""
        self.inbox.message(name, message)

    def broadcast(self, broadcast: Broadcast) -> int:
        """Send a committed broadcast to every connected agent that hears it (its namespace,
        a reactor for its topic); return how many. Never blocks."""
        sent = 0
        for entry in self.registry.agents.values():
            if entry.link is not None and not entry.lost and hears(entry.capabilities, broadcast):
                entry.link.send_nowait(broadcast)
                sent += 1
        self.broadcasts_sent += sent
        return sent

    def agent_disconnected(self, name: str, link: AgentLink) -> None:
        """The agent's connection closed; it has until the heartbeat deadline to come back."""
        self.inbox.disconnected(name, link)

    async def read_room(self, name: str) -> None:
        """Return when the repository can take more of agent ``name``'s messages (at once,
        unless an output flood has it behind: ``Repository.room``). While a transport waits
        here it does not read the agent, so that silence does not count against its
        heartbeat deadline; the agent is heard again when reading resumes."""
        await self.registry.read_room(name)

    def watch_output(
        self, job_id: str, channel: trio.MemorySendChannel[OutputChunk]
    ) -> Callable[[], None]:
        """Receive ``job_id``'s output chunks live on ``channel``; call the result to stop."""
        return self.inbox.watchers.watch(job_id, channel)

    def fence_at(self, name: str) -> float:
        """When the attempts of agent ``name`` are dead for sure if it never comes back: its
        last lease, counted from when we heard the message it answered (or the engine's
        start, if earlier), plus ``policy.FENCE_MARGIN``."""
        return self.registry.fence_at(name)

    def held_by(self, name: str) -> list[AttemptRef]:
        """The attempts the controller thinks agent ``name`` holds."""
        return self.registry.held_by(name)

    @property
    def transports_down(self) -> frozenset[str]:
        """The transports whose connection the engine has lost (``xmpp`` while offline)."""
        return self.registry.transports_down

    def transport_down(self, transport: str) -> None:
        """The engine lost its own connection for ``transport`` (e.g. the XMPP server went
        away): its agents' silence from now on is not theirs."""
        self.registry.transport_down(transport)

    def transport_up(self, transport: str) -> None:
        """``transport`` is up again: its agents' heartbeat clocks start afresh from now."""
        self.registry.transport_up(transport, trio.current_time())

    # --- timers ----------------------------------------------------------------------------

    def _fire(self, timer: tm.Timer, now: float) -> None:
        """A timer is due: act on it if it still applies."""
        match timer:
            case tm.AgentCheck(name=name):
                self.registry.check(name, now)
            case tm.FenceCheck(name=name):
                for fenced in self.registry.fenced(name, now):
                    ref = f"{fenced.job_id}#{fenced.attempts_made}"
                    log.info("attempt %s fenced: agent %s's lease ran out", ref, name)
                    self.ends.over(fenced, am.AgentLost(at=now), None)
            case tm.AttemptDeadline(job_id=job_id, attempt=attempt):
                self._deadline(self.jobs.get(job_id), attempt, now)
            case tm.ReadyAgain(job_id=job_id, attempt=attempt):
                job = self.jobs.get(job_id)
                if job is not None and job.attempts_made == attempt and not job.active:
                    self.queue.enqueue(job)
            case tm.WaitExpired(job_id=job_id, token=token):
                job = self.jobs.get(job_id)
                if job is not None and job.queued_token == token and not job.active:
                    why = f"no agent took it within {job.wait_agent:g} s"
                    self._cancel(job, why, JobState.FAILED)
            case tm.OverallExpired(job_id=job_id):
                job = self.jobs.get(job_id)
                if job is not None:
                    job.fail_reason = f"overall timeout of {job.overall:g} s exceeded"
                    self._cancel(job, job.fail_reason, JobState.FAILED)

    def _deadline(self, job: LiveJob | None, attempt: int, now: float) -> None:
        """End ``job``'s attempt ``attempt`` if it is still out and past its deadline."""
        machine = job.machine if job is not None else None
        if job is None or machine is None or machine.attempt != attempt:
            return
        owner = self.agents.get(machine.agent or "")
        event = machine.on_deadline(now)
        lost = owner is not None and owner.lost
        if event is None or not policy.deadline_applies(agent_lost=lost, state=machine.state):
            return
        link = self.registry.link(machine.agent)
        if link is not None:
            link.send_nowait(Cancel(job_id=job.job_id, attempt=attempt, reason="deadline passed"))
        self.ends.over(job, event, None)

    # --- after a restart -------------------------------------------------------------------

    async def recover(self) -> dict[str, int]:
        """Load every unfinished RScript job from the repository (call before transports start).

        Attempts that were out on agents wait ``reconcile_grace`` for their agent to report;
        the rest are queued again. Returns counts for the log.
        """
        from wfe.engine.dispatch.recovery import recover

        return await recover(
            repo=self.repo,
            scripts=self.scripts,
            registry=self.registry,
            queue=self.queue,
            timers=self.timers,
            settings=self.settings,
            grace=self._grace,
            take_on=self._take_on,
        )
