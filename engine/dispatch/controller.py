"""The agent controller: the only component that talks to agents.

It owns every unfinished RScript job and the state machine of its current attempt
(``wfe.protocols.attempt``). Transports (local socket, XMPP) hand it what agents say through
``agent_connected`` / ``agent_message`` / ``agent_disconnected`` and give it an
``AgentLink`` per agent to send on; it never does I/O itself except through the repository.

It coordinates: the job queue (``queue``), the agent registry with its leases and fences
(``registry``), the timers (``timers``), output made whole (``output_fill``), and the pure
decisions of ``policy``. Order of things, always: decide (``policy``), commit the decision
to the repository, then act on the commit (send the dispatch, acknowledge the result, wake
the tasklet waiting, schedule the retry); a commit callback only applies what was decided.
So a crash at any point leaves the repository saying what was promised, and ``recover``
picks up from there.

Timeouts: waiting for an agent (job), per attempt (the agent kills at the timeout, the
machine gives up a grace later), overall (job), and the heartbeat (agent), all on
``trio.current_time()`` in one timer heap.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
import outcome
import trio

from wfe.engine.config import AgentsSection, JobsSection
from wfe.engine.dispatch import policy
from wfe.engine.dispatch.jobspec import Submission, dispatch_message, live_job, new_job, scheduling
from wfe.engine.dispatch.live import AgentEntry, AgentLink, LiveJob
from wfe.engine.dispatch.output_fill import OutputFill
from wfe.engine.dispatch.queue import Entry, JobQueue
from wfe.engine.dispatch.registry import AgentRegistry
from wfe.engine.dispatch.scheduler import Ready, assign
from wfe.engine.dispatch.timers import (
    AgentCheck,
    AttemptDeadline,
    FenceCheck,
    OverallExpired,
    ReadyAgain,
    Timer,
    Timers,
    WaitExpired,
)
from wfe.engine.dispatch.watchers import OutputWatchers
from wfe.engine.errors import UnknownJob
from wfe.engine.repository import attempts as rows
from wfe.engine.runtime import metrics
from wfe.engine.runtime.jobs import Completions, JobOutcome, JobRow, JobState, NewJob, create_job
from wfe.protocols import attempt as am
from wfe.protocols.attempt import AttemptMachine, AttemptState, event_from_message
from wfe.protocols.messages import (
    Ack,
    AgentHello,
    AgentStatus,
    AttemptRef,
    Cancel,
    Dispatch,
    JobAccepted,
    JobFinished,
    JobRefused,
    Message,
    OutputChunk,
    Resume,
)

if TYPE_CHECKING:
    from wfe.engine.repository import Repository
    from wfe.rscripts.loader import ScriptLibrary

__all__ = ["AgentController", "AgentEntry", "AgentLink", "LiveJob"]
log = logging.getLogger("wfe.controller")


@attrs.frozen(kw_only=True)
class AttemptOver:
    """An attempt's end as decided, on its way to the repository."""

    job: LiveJob
    machine: AttemptMachine
    finished: JobFinished | None  # the agent's report, when it made one
    outcome: policy.Outcome


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
        sign: Callable[[Dispatch], Dispatch] = lambda d: d,
        grace: float = 5.0,
    ) -> None:
        self.repo = repo
        self.scripts = scripts
        self.completions = completions
        self.settings = agents
        self.defaults = jobs
        self._sign = sign
        self._grace = grace
        self._work = trio.Event()
        self._nursery: trio.Nursery | None = None
        self.started_at = trio.current_time()
        self.timers = Timers()
        self.queue = JobQueue(self.timers, self._wake, trio.current_time)
        self.registry = AgentRegistry(
            settings=agents, repo=repo, timers=self.timers, started_at=self.started_at
        )
        self.jobs = self.queue.jobs  # the live jobs, by id
        self.agents = self.registry.agents  # the agents known, by name
        self.output_fill = OutputFill(repo)  # makes output whole before a result is committed
        self.watchers = OutputWatchers()
        # (job, attempt) whose result arrived and whose end is not committed yet: a result
        # resent meanwhile gets no Ack (the Ack after the commit answers it)
        self._unacked: set[tuple[str, int]] = set()
        self.dispatched_total = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the dispatcher and the timers until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._dispatch_loop, name="controller dispatch")
            nursery.start_soon(self.timers.run, self._fire, name="controller timers")
            task_status.started()

    def _spawn(self, fn: Callable[..., Any], *args: Any) -> None:
        assert self._nursery is not None, "controller is not running"
        self._nursery.start_soon(fn, *args)

    def _wake(self) -> None:
        self._work.set()

    def statistics(self) -> dict[str, int]:
        running = sum(1 for j in self.jobs.values() if j.active)
        return {
            "queued": len(self.jobs) - running,
            "running": running,
            "agents": sum(1 for _ in self.registry.usable()),
            "dispatched_total": self.dispatched_total,
            "unplaceable": len(self.unplaceable()),
        }

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
        )
        script = self.scripts.get(name)
        new = new_job(name, script, validate_params(script.header, params), sub, self.defaults)
        requirements = scheduling(script, sub)
        entry = None if self.queue.is_held(sub.request_id) else self._idle_agent(requirements)
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

    def _idle_agent(self, requirements: dict[str, Any]) -> AgentEntry | None:
        """The agent a new job may go to at once: none while any job waits in the queue (it
        would overtake it), else the scheduler's choice among agents with a free slot."""
        offers = self.registry.offers()
        if self.queue.has_ready or self._nursery is None or not offers:
            return None
        ready = Ready(
            job_id="",
            priority=0,
            seq=0,
            requirements={k: v for k, v in requirements.items() if k != "on"},
            on=requirements.get("on"),
        )
        pairs = assign([ready], offers)
        return self.agents[pairs[0][1]] if pairs else None

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
        self._new_attempt(live, entry, trio.current_time())
        self._send_dispatches([(live, entry)])
        return job.id

    def _take_on(self, job: JobRow) -> LiveJob:
        live = self.jobs[job.id] = live_job(job, self.defaults, self.queue.next_seq())
        if live.overall > 0:
            self.timers.schedule(trio.current_time() + live.overall, OverallExpired(job.id))
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
        """Queue again an RScript job just reset to ``queued`` (``wfe.engine.runtime.retry``) with the
        failed and lost attempts it has had (as ``recover`` counts them); a job live here
        already is left as it is."""
        if self.queue.known(job.id):
            return
        live = self._take_on(job)
        live.attempts_made, live.failures, live.lost = job.attempts, failures, lost
        self.queue.enqueue(live)

    def _cancel(self, job: LiveJob, reason: str, state: JobState = JobState.CANCELLED) -> None:
        if not job.active:
            self.queue.drop(job)
            self._spawn(self._end_unattempted, job, state, reason)
            return
        machine = job.machine
        assert machine is not None
        machine.handle(am.CancelRequested(at=trio.current_time()))
        self._watch_deadline(job)
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

    # --- dispatching -----------------------------------------------------------------------

    async def _dispatch_loop(self) -> None:
        while True:
            await self._work.wait()
            self._work = trio.Event()
            offers = self.registry.offers()
            if not offers or not self.queue.has_ready:
                continue
            popped: list[Entry] = []
            pairs = assign(self.queue.pop_ready(popped), offers)
            self.queue.put_back(popped, {ready.job_id for ready, _ in pairs})
            if not pairs:  # nothing that waits fits a free slot: wait for a change
                continue
            now = trio.current_time()
            machines = [(self.jobs[r.job_id], self.agents[name]) for r, name in pairs]
            for job, entry in machines:
                self._new_attempt(job, entry, now)
            # Write ahead: the dispatch is committed before any agent hears of it.
            out = [job.machine for job, _ in machines if job.machine is not None]
            await self.repo.write(rows.attempts_dispatched(out))
            self._send_dispatches(machines)
            if self.queue.has_ready and any(a.free_slots for a in self.registry.usable()):
                self._wake()  # more may fit: another round

    def _new_attempt(self, job: LiveJob, entry: AgentEntry, now: float) -> None:
        job.attempts_made += 1
        job.machine = AttemptMachine(
            job_id=job.job_id, attempt=job.attempts_made, timeout=job.timeout, grace=self._grace
        )
        job.machine.handle(am.Dispatched(agent=entry.name, at=now))
        job.sent = False
        entry.attempts[(job.job_id, job.attempts_made)] = job

    def _send_dispatches(self, machines: list[tuple[LiveJob, AgentEntry]]) -> None:
        """Send the dispatches just committed, unless their attempt ended meanwhile."""
        for job, entry in machines:
            machine = job.machine
            assert machine is not None
            now = trio.current_time()
            if machine.state is AttemptState.CANCELLING:  # cancelled while we committed
                self._attempt_over(job, am.DeadlinePassed(at=now), None)
            elif machine.terminal:
                continue
            elif not entry.usable or entry.link is None:
                self._attempt_over(job, am.AgentLost(at=now), None)
            else:
                try:
                    dispatch = dispatch_message(job, self.scripts.get(job.script_name), self._sign)
                except Exception as exc:  # the script vanished or changed badly since submission
                    job.fail_reason = f"cannot dispatch: {exc}"
                    machine.handle(am.CancelRequested(at=now))  # the agent never heard of it:
                    self._attempt_over(job, am.DeadlinePassed(at=now), None)  # nothing to wait for
                    continue
                entry.link.send_nowait(dispatch)
                job.sent = True
                self.dispatched_total += 1
                self._watch_deadline(job)

    def _watch_deadline(self, job: LiveJob) -> None:
        assert job.machine is not None
        deadline = job.machine.next_deadline()
        if deadline is not None:
            self.timers.schedule(deadline, AttemptDeadline(job.job_id, job.machine.attempt))

    # --- what agents say -------------------------------------------------------------------

    def agent_connected(self, hello: AgentHello, link: AgentLink, *, transport: str) -> None:
        """An agent (re)connected: register it and reconcile what it holds with what we think."""
        now = trio.current_time()
        entry = self.registry.connect(hello, link, transport, now)
        running = {(r.job_id, r.attempt) for r in hello.running}
        held = {(r.job_id, r.attempt) for r in hello.held}
        for key, job in list(entry.attempts.items()):
            machine = job.machine
            assert machine is not None
            if key in running:
                if machine.state is AttemptState.DISPATCHED:
                    machine.handle(am.Started(at=now))
                    self.repo.write_nowait(rows.attempt_started(machine))
                job.sent = True
                self._watch_deadline(job)
                self._spawn(self._resume_output, entry, job.job_id, machine.attempt)
            elif key not in held:  # the agent never got it, or lost it with a restart: it says
                self._attempt_over(job, am.AgentLost(at=now), None)  # so, which fences it
        for key in held - entry.attempts.keys():
            self.queue.expect_late(key, hello.name)
        self.registry.announce(entry, now)
        self._wake()

    async def _resume_output(self, entry: AgentEntry, job_id: str, attempt: int) -> None:
        next_seq = await self.repo.read(rows.output_count(job_id, attempt))
        if entry.link is not None:
            entry.link.send_nowait(Resume(job_id=job_id, attempt=attempt, next_seq=next_seq))

    def fence_at(self, name: str) -> float:
        """When the attempts of agent ``name`` are dead for sure if it never comes back: its
        last lease, counted from when we heard the message it answered (or the engine's
        start, if earlier), plus ``policy.FENCE_MARGIN``."""
        return self.registry.fence_at(name)

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

    def agent_disconnected(self, name: str, link: AgentLink) -> None:
        """The agent's connection closed; it has until the heartbeat deadline to come back."""
        if self.registry.disconnect(name, link, trio.current_time()):
            self.queue.agent_gone(name)

    async def read_room(self, name: str) -> None:
        """Return when the repository can take more of agent ``name``'s messages (at once,
        unless an output flood has it behind: ``Repository.room``). While a transport waits
        here it does not read the agent, so that silence does not count against its
        heartbeat deadline; the agent is heard again when reading resumes."""
        await self.registry.read_room(name)

    def held_by(self, name: str) -> list[AttemptRef]:
        """The attempts the controller thinks agent ``name`` holds."""
        return self.registry.held_by(name)

    def watch_output(
        self, job_id: str, channel: trio.MemorySendChannel[OutputChunk]
    ) -> Callable[[], None]:
        """Receive ``job_id``'s output chunks live on ``channel``; call the result to stop."""
        return self.watchers.watch(job_id, channel)

    def agent_message(self, name: str, message: Message) -> None:
        """Handle one message from a connected agent. Never blocks."""
        entry = self.agents.get(name)
        if entry is None:
            log.warning("message from unknown agent %s ignored", name)
            return
        now = entry.last_heard = trio.current_time()
        match message:
            case OutputChunk():
                # a big chunk's commit goes to the writer's thread (one weight per 4 KiB)
                weight = 1 + len(message.data) // 4096
                self.repo.write_nowait(rows.output_stored(message), weight=weight)
                self.output_fill.seen(message)
                self.watchers.send(message)
            case JobFinished():
                self._finished(entry, message, now)
            case JobAccepted() | JobRefused():
                self._report(entry, message, now)
            case AgentStatus():
                self._status(entry, message, now)
            case AgentHello():
                log.warning("agent %s sent a second hello on one connection; ignored", name)
            case _:
                kind = type(message).__name__
                log.warning("agent %s sent %s, which only the engine sends; ignored", name, kind)

    def _current(self, entry: AgentEntry, job_id: str, attempt: int) -> LiveJob | None:
        job = entry.attempts.get((job_id, attempt))
        return job if job is not None and job.active else None

    def _report(self, entry: AgentEntry, message: JobAccepted | JobRefused, now: float) -> None:
        job = self._current(entry, message.job_id, message.attempt)
        if job is None or job.machine is None:
            return
        event = event_from_message(message, at=now)
        if isinstance(message, JobRefused):
            ref = f"{message.job_id}#{message.attempt}"
            log.warning("agent %s refused %s: %s", entry.name, ref, message.reason)
            self._attempt_over(job, event, None)
        elif job.machine.handle(event) is AttemptState.RUNNING:
            self.repo.write_nowait(rows.attempt_started(job.machine))
            self._watch_deadline(job)

    def _finished(self, entry: AgentEntry, message: JobFinished, now: float) -> None:
        key = (message.job_id, message.attempt)
        job = self._current(entry, *key)
        if job is None and key in self._unacked:
            # Resent while its end is being written (or its output filled): no Ack yet, or the
            # agent would drop a result that is not committed. Ask again for missing output.
            self.output_fill.relink(*key, entry.link)
        elif job is None:
            # A report for an attempt already settled: a duplicate, or one we had given up on
            # as lost (its agent was cut off past its lease). Never thrown away: recorded on
            # the attempt, and the job's outcome if it can still be (docs/decisions.md).
            self._unacked.add(key)
            self._spawn(self._late, entry.name, message)
        else:
            self._attempt_over(job, event_from_message(message, at=now), message)

    async def _late(self, agent: str, message: JobFinished) -> None:
        """Record a report for an attempt no longer current (``policy.judge_late``), then
        acknowledge it."""
        key = (message.job_id, message.attempt)
        try:
            recorded = await self.repo.read(rows.attempt_state(*key))
            reported = am.finished_state(
                am.Finished(
                    reason=message.reason,
                    at=trio.current_time(),
                    exit_code=message.exit_code,
                    signal=message.signal,
                )
            )
            job = self.jobs.get(message.job_id)
            waiting = job is not None and self.queue.waiting(job)
            verdict = policy.judge_late(recorded=recorded, reported=reported, job_waiting=waiting)
            if not isinstance(verdict, policy.RecordLate):
                log.info("duplicate result for %s#%d from %s acknowledged", *key, agent)
                return
            if verdict.outcome and job is not None:
                self.queue.begin_end(job)
            if message.chunks:
                await self.output_fill.complete(message, lambda: self.registry.link(agent))
            told = " (the job's outcome)" if verdict.outcome else " (recorded on the attempt)"
            log.warning(
                "late result for %s#%d from %s: %s%s", *key, agent, verdict.state.value, told
            )
            end = JobState.SUCCEEDED if verdict.outcome else None
            await self.repo.write(rows.late_result(message, verdict.state, job_state=end))
            if verdict.outcome and job is not None:
                self.queue.end_committed(job.job_id)
                self.completions.resolve(
                    JobOutcome(job_id=job.job_id, state=JobState.SUCCEEDED, result=message.result),
                    keep=job.parent_id is not None,
                )
        finally:
            self._unacked.discard(key)
            self.queue.late_read(key)
            link = self.registry.link(agent)
            if link is not None:
                link.send_nowait(Ack(job_id=message.job_id, attempt=message.attempt))

    def _status(self, entry: AgentEntry, status: AgentStatus, now: float) -> None:
        known = {(r.job_id, r.attempt) for r in (*status.running, *status.held)}
        self.registry.grant(entry, status.seq, now)
        for key, job in list(entry.attempts.items()):
            # Messages on a link keep their order, so an attempt the agent accepted and that is
            # in neither list has vanished from it (e.g. the agent restarted).
            running = job.machine is not None and job.machine.state is AttemptState.RUNNING
            if running and key not in known:
                self._attempt_over(job, am.AgentLost(at=now), None)

    # --- ends of attempts ------------------------------------------------------------------

    def _attempt_over(self, job: LiveJob, event: am.Event, finished: JobFinished | None) -> None:
        """Feed the final event of an attempt, decide what follows (``policy.decide_end``),
        and write the decision."""
        machine = job.machine
        assert machine is not None
        if machine.handle(event) is AttemptState.CANCELLING:  # the agent must confirm it
            return
        entry = self.agents.get(machine.agent or "")
        if entry is not None:
            entry.attempts.pop((job.job_id, machine.attempt), None)
        self._wake()
        decided = policy.decide_end(
            policy.AttemptEnd(
                attempt=machine.attempt,
                state=machine.state,
                failures=job.failures,
                lost=job.lost,
                max_attempts=job.max_attempts,
                max_redispatch=self.settings.max_redispatch,
                backoff=job.backoff,
                timeout=job.timeout,
                exit_code=machine.exit_code,
                signal=machine.signal,
                detail=machine.detail,
                fail_reason=job.fail_reason,
                now=trio.current_time(),
            )
        )
        match decided:
            case policy.RetryAt(failures=failures):
                job.failures = failures
            case policy.Redispatch(lost=lost):
                job.lost = lost
            case _:
                # Final: no longer live from this moment, so a cancel that arrives while the
                # end is being written cannot turn it into "cancelled" or resolve it twice;
                # and a call replayed meanwhile must not take it on again (see _recorded).
                self.queue.begin_end(job)
        over = AttemptOver(job=job, machine=machine, finished=finished, outcome=decided)
        if finished is not None:
            self._unacked.add((job.job_id, machine.attempt))
        if finished is not None and finished.chunks:
            self._spawn(self._settle, over)  # its output may have holes to fill first
        else:
            self.output_fill.forget(job.job_id, machine.attempt)
            self._write_end(over)

    async def _settle(self, over: AttemptOver) -> None:
        """Wait until the output is whole (or given up on) before the end is committed and
        acknowledged; then write the end."""
        assert over.finished is not None
        await self.output_fill.complete(
            over.finished, lambda: self.registry.link(over.machine.agent)
        )
        self._write_end(over)

    def _write_end(self, over: AttemptOver) -> None:
        """Queue the commit of an attempt's end with what follows it (its job's end, or the
        job queued again); ``_end_committed`` acts on it once it is committed."""
        metrics.attempt_ended(self, over.machine)  # /metrics: dispatch→result latency
        then: rows.JobEnded | rows.JobRequeued
        match over.outcome:
            case policy.Succeeded():
                then = rows.JobEnded(state=JobState.SUCCEEDED)
            case policy.Cancelled(reason=reason):
                then = rows.JobEnded(state=JobState.CANCELLED, error=reason)
            case policy.Failed(reason=reason):
                then = rows.JobEnded(state=JobState.FAILED, error=reason)
            case policy.RetryAt(delay=delay):
                then = rows.JobRequeued(delay=delay)
            case policy.Redispatch():
                then = rows.JobRequeued(delay=0.0)
        op = rows.attempt_ended(over.machine, over.finished, then)
        self.repo.write_nowait(op, then=functools.partial(self._end_committed, over, then))

    def _end_committed(
        self,
        over: AttemptOver,
        then: rows.JobEnded | rows.JobRequeued,
        written: outcome.Outcome[None],
    ) -> None:
        """Act on an attempt's end once committed: queue the job again or resolve it, then
        acknowledge the agent's report."""
        job, machine = over.job, over.machine
        self._unacked.discard((job.job_id, machine.attempt))
        if isinstance(then, rows.JobEnded):
            self.queue.end_committed(job.job_id)
        if isinstance(written, outcome.Error):
            self._fail(written.error)
            return
        if isinstance(then, rows.JobEnded):
            result = over.finished.result if over.finished else None
            self.completions.resolve(
                JobOutcome(job_id=job.job_id, state=then.state, result=result, error=then.error),
                keep=job.parent_id is not None,
            )
        elif self.jobs.get(job.job_id) is job:  # else cancelled (or ended) since: written
            at = over.outcome.at if isinstance(over.outcome, policy.RetryAt) else 0.0
            if at > trio.current_time():
                self.timers.schedule(at, ReadyAgain(job.job_id, machine.attempt))
            else:
                self.queue.enqueue(job)
        link = self.registry.link(machine.agent) if over.finished is not None else None
        if link is not None:
            link.send_nowait(Ack(job_id=job.job_id, attempt=machine.attempt))

    def _fail(self, error: BaseException) -> None:
        """Stop the controller with ``error`` (a write it depends on failed), as an awaited
        write raising in one of its tasks would."""
        try:
            self._spawn(_reraise, error)
        except RuntimeError:  # the controller has stopped already
            log.error("controller stopped; a write failed after it: %s", error)

    # --- timers ----------------------------------------------------------------------------

    def _fire(self, timer: Timer, now: float) -> None:
        """A timer is due: act on it if it still applies."""
        job: LiveJob | None
        match timer:
            case AgentCheck(name=name):
                self.registry.check(name, now)
            case FenceCheck(name=name):
                for job in self.registry.fenced(name, now):
                    assert job.machine is not None
                    ref = f"{job.job_id}#{job.machine.attempt}"
                    log.info("attempt %s fenced: agent %s's lease ran out", ref, name)
                    self._attempt_over(job, am.AgentLost(at=now), None)
            case AttemptDeadline(job_id=job_id, attempt=attempt):
                job = self.jobs.get(job_id)
                machine = job.machine if job is not None else None
                if job is None or machine is None or machine.attempt != attempt:
                    return
                owner = self.agents.get(machine.agent or "")
                lost = owner is not None and owner.lost
                event = machine.on_deadline(now)
                if event is None or not policy.deadline_applies(
                    agent_lost=lost, state=machine.state
                ):
                    return
                link = self.registry.link(machine.agent)
                if link is not None:
                    link.send_nowait(
                        Cancel(job_id=job_id, attempt=attempt, reason="deadline passed")
                    )
                self._attempt_over(job, event, None)
            case ReadyAgain(job_id=job_id, attempt=attempt):
                job = self.jobs.get(job_id)
                if job is not None and job.attempts_made == attempt and not job.active:
                    self.queue.enqueue(job)
            case WaitExpired(job_id=job_id, token=token):
                job = self.jobs.get(job_id)
                if job is not None and job.queued_token == token and not job.active:
                    self._cancel(
                        job, f"no agent took it within {job.wait_agent:g} s", JobState.FAILED
                    )
            case OverallExpired(job_id=job_id):
                job = self.jobs.get(job_id)
                if job is not None:
                    job.fail_reason = f"overall timeout of {job.overall:g} s exceeded"
                    self._cancel(job, job.fail_reason, JobState.FAILED)

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


async def _reraise(error: BaseException) -> None:
    raise error
