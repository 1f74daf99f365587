"""The agent controller: the only component that talks to agents.

It owns every unfinished RScript job and the state machine of its current attempt
(``wfe.protocols.attempt``). Transports (local socket, XMPP) hand it what agents say through
``agent_connected`` / ``agent_message`` / ``agent_disconnected`` and give it an
``AgentLink`` per agent to send on; it never does I/O itself except through the repository.

Order of things, always: decide in memory, commit to the repository, then act on the
commit (send the dispatch, acknowledge the result, wake the tasklet waiting). So a crash
at any point leaves the repository saying what was promised, and ``recover`` picks up from
there: attempts that were out on agents wait for those agents to report back
(``reconcile_grace``) and are recorded, reattached, or declared lost and retried.

Leases and fencing (docs/decisions.md #41): every hello and
status an agent sends is answered with ``Lease(seq, ttl=[agents] lease)``; the agent side
kills its scripts once a lease runs out unrenewed. An agent that goes silent is declared
lost at its heartbeat deadline (fast, so no new work goes to it), but its attempts are
ended and dispatched again only once they are *fenced*: the agent came back and said they
are dead, or ``lease`` plus a kill grace has passed since the last message we granted a
lease for (``fence_at``). Time during which a transport was down (the engine offline from
the XMPP server) never counts against that transport's agents.

Timeouts: waiting for an agent (job), per attempt (the agent kills at the timeout, the
machine gives up a grace later), overall (job), and the heartbeat (agent). All deadlines
use ``trio.current_time()`` and live in one timer heap.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import outcome
import trio

from wfe.engine.config import AgentsSection, JobsSection
from wfe.engine.dispatch import attempts as ops
from wfe.engine.dispatch.output_fill import OutputFill
from wfe.engine.dispatch.scheduler import Offer, Ready, assign, fits
from wfe.engine.errors import UnknownJob
from wfe.engine.runtime import metrics
from wfe.engine.runtime.jobs import Completions, JobOutcome, JobRow, JobState, NewJob, create_job
from wfe.protocols.attempt import (
    AgentLost,
    AttemptMachine,
    AttemptState,
    CancelRequested,
    DeadlinePassed,
    Dispatched,
    Finished,
    Started,
    event_from_message,
    finished_state,
    should_retry,
)
from wfe.protocols.errors import IllegalTransition
from wfe.protocols.messages import (
    Ack,
    AgentHello,
    AgentStatus,
    AttemptRef,
    Cancel,
    Capabilities,
    Dispatch,
    JobAccepted,
    JobFinished,
    JobRefused,
    Lease,
    Limits,
    Message,
    OutputChunk,
    Resume,
    StatusRequest,
)

if TYPE_CHECKING:
    from wfe.engine.repository import Repository
    from wfe.rscripts.loader import ScriptLibrary

log = logging.getLogger("wfe.controller")

#: Seconds added to an agent's lease before its attempts count as fenced: the keeper's
#: SIGTERM-to-SIGKILL grace and the moment it takes to see the lease run out, with room.
FENCE_MARGIN = 5.0


class AgentLink(Protocol):
    """How the controller sends to one connected agent (messages keep their order)."""

    def send_nowait(self, message: Message) -> None: ...


@attrs.define(eq=False)
class AgentEntry:
    """What the controller knows of one agent."""

    name: str
    capabilities: Capabilities
    transport: str
    link: AgentLink | None = None
    last_heard: float = 0.0
    held_back: bool = False  # not read while the repository catches up: its silence is ours
    lost: bool = False
    lease_heard: float = -math.inf  # when we received the last message we granted a lease for
    attempts: dict[tuple[str, int], LiveJob] = attrs.Factory(dict)
    reserved: int = 0  # slots held for new jobs whose dispatch is being committed with them

    @property
    def busy_slots(self) -> int:
        taken = sum(int(j.requirements.get("cpus", 1)) for j in self.attempts.values())
        return taken + self.reserved

    @property
    def free_slots(self) -> int:
        return max(0, self.capabilities.slots - self.busy_slots)


@attrs.define(eq=False)
class LiveJob:
    """An unfinished RScript job."""

    job_id: str
    script_name: str
    params: dict[str, Any]
    priority: int
    requirements: dict[str, Any]
    on: str | None
    max_attempts: int  # 1 + retries, for attempts that fail or time out
    timeout: float  # per attempt
    seq: int
    parent_id: str | None
    request_id: str | None = None  # the request it works for; a held request keeps it back
    backoff: float = 1.0  # seconds before the first retry, doubled each time
    wait_agent: float = 0.0  # seconds a queued job waits for an agent (0: forever)
    overall: float = 0.0  # seconds from submission to the end (0: no limit)
    attempts_made: int = 0
    failures: int = 0
    lost: int = 0
    machine: AttemptMachine | None = None
    sent: bool = False
    queued_token: int = 0
    fail_reason: str | None = None  # set when the engine (not an operator) cancels the attempt
    last_finished: JobFinished | None = None

    @property
    def active(self) -> bool:
        return self.machine is not None and not self.machine.terminal


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
        self.agents: dict[str, AgentEntry] = {}
        self.jobs: dict[str, LiveJob] = {}
        self._ending: dict[str, LiveJob] = {}  # no longer live, their end not yet committed
        self._ready: list[tuple[int, int, str, int]] = []  # (-priority, seq, job_id, token)
        self._held: dict[str, set[str]] = {}  # held request id -> its jobs kept out of _ready
        self._seq = itertools.count()
        self._timers: list[tuple[float, int, str, Any]] = []
        self._work = trio.Event()
        self._timer_changed = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._output_watchers: dict[str, set[trio.MemorySendChannel[OutputChunk]]] = {}
        self.output_fill = OutputFill(repo)  # makes output whole before a result is committed
        # (job, attempt) whose result arrived and whose end is not committed yet: a result
        # resent meanwhile gets no Ack (the Ack after the commit answers it)
        self._unacked: set[tuple[str, int]] = set()
        self._offline: set[str] = set()  # transports that are down: their agents' silence is ours
        # (job, attempt) an agent's hello says it holds a result for, of a job that waits to
        # run again: kept out of the queue until that result is read (it may be the outcome)
        self._late_expected: dict[tuple[str, int], tuple[str, LiveJob]] = {}
        self.started_at = trio.current_time()
        self.dispatched_total = 0

    # --- life ------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the dispatcher and the timers until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._dispatch_loop, name="controller dispatch")
            nursery.start_soon(self._timer_loop, name="controller timers")
            task_status.started()

    def _spawn(self, fn: Callable[..., Any], *args: Any) -> None:
        assert self._nursery is not None, "controller is not running"
        self._nursery.start_soon(fn, *args)

    def statistics(self) -> dict[str, int]:
        running = sum(1 for j in self.jobs.values() if j.active)
        return {
            "queued": len(self.jobs) - running,
            "running": running,
            "agents": sum(1 for a in self.agents.values() if a.link is not None and not a.lost),
            "dispatched_total": self.dispatched_total,
            "unplaceable": len(self.unplaceable()),
        }

    def unplaceable(self) -> list[str]:
        """Queued jobs that no connected agent could ever take (none offers what they need,
        however busy it is); with no agent connected at all, every queued job. Agents alike
        are looked at once: the cost is in distinct offers, not agents."""
        live = {a.name: a for a in self.agents.values() if a.link is not None and not a.lost}
        distinct = {a.capabilities for a in live.values()}
        stuck = []
        for job in self.jobs.values():
            if job.active:
                continue
            ready = Ready(
                job_id=job.job_id,
                priority=job.priority,
                seq=job.seq,
                requirements=job.requirements,
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

        script = self.scripts.get(name)
        params = validate_params(script.header, params)
        header_req = script.header.requires
        requirements: dict[str, Any] = {
            k: v
            for k, v in {
                "cpus": header_req.cpus,
                "memory": header_req.memory,
                "tags": list(header_req.tags),
                "site": header_req.site,
            }.items()
            if v not in (None, [], ())
        }
        requirements.update(requires or {})
        if on is not None:
            requirements["on"] = on
        retries = self.defaults.retries if retries is None else retries
        new = NewJob(
            kind="rscript",
            name=name,
            params=params,
            parent_id=parent.id if parent else None,
            root_id=parent.root_id if parent else None,
            call_seq=call_seq,
            state=JobState.QUEUED,
            priority=self.defaults.priority if priority is None else priority,
            requirements={
                **requirements,
                # the caller's, else the script header's own, else [jobs] timeout
                "timeout": timeout or script.header.declared_timeout or self.defaults.timeout,
                **{
                    k: v
                    for k, v in (
                        ("backoff", backoff),
                        ("wait_agent", wait_agent),
                        ("overall", overall),
                    )
                    if v is not None
                },
            },
            max_attempts=1 + retries,
            request_id=request_id,
            by=by,
        )
        held = request_id is not None and request_id in self._held
        entry = None if held else self._idle_agent(requirements)
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
        elif job.id not in self.jobs and job.id not in self._ending:
            # Unfinished but not live here (a replayed call whose job this controller has not
            # taken on): queue it, counting the attempts it has had.
            live = self._adopt(job)
            live.attempts_made = job.attempts
            self._enqueue(live)
        # else: live, or its end is being committed (a replayed call then waits for that)

    def _idle_agent(self, requirements: dict[str, Any]) -> AgentEntry | None:
        """The agent a new job may go to at once: none while any job waits in the queue (it
        would overtake it), else the scheduler's choice among agents with a free slot."""
        if self._ready or self._nursery is None:
            return None
        offers = [
            Offer(name=a.name, free_slots=a.free_slots, capabilities=a.capabilities)
            for a in self.agents.values()
            if a.link is not None and not a.lost and a.free_slots > 0
        ]
        if not offers:
            return None
        scheduling = {k: v for k, v in requirements.items() if k != "on"}
        ready = Ready(
            job_id="", priority=0, seq=0, requirements=scheduling, on=requirements.get("on")
        )
        pairs = assign([ready], offers)
        return self.agents[pairs[0][1]] if pairs else None

    async def _submit_dispatched(self, new: NewJob, entry: AgentEntry, cpus: int) -> str:
        """Record ``new`` and its first attempt on ``entry`` in one commit, then send it."""
        entry.reserved += cpus  # no dispatch round gives the slot away meanwhile
        try:
            job, created = await self.repo.write(ops.job_created_and_dispatched(new, entry.name))
        except BaseException:
            entry.reserved -= cpus
            self._work.set()  # the slot is free again for what may have queued meanwhile
            raise
        entry.reserved -= cpus
        if not created:  # a replayed call: the job exists already
            self._work.set()
            self._recorded(job)
            return job.id
        live = self._adopt(job)
        live.attempts_made = 1
        live.machine = AttemptMachine(
            job_id=job.id, attempt=1, timeout=live.timeout, grace=self._grace
        )
        live.machine.handle(Dispatched(agent=entry.name, at=trio.current_time()))
        entry.attempts[(job.id, 1)] = live
        self._send_dispatches([(live, entry)])
        return job.id

    def _adopt(self, job: JobRow) -> LiveJob:
        req = dict(job.requirements)
        timeout = float(req.pop("timeout", self.defaults.timeout))
        on = req.pop("on", None)
        live = LiveJob(
            backoff=float(req.pop("backoff", self.defaults.backoff)),
            wait_agent=float(req.pop("wait_agent", self.defaults.wait_agent_timeout)),
            overall=float(req.pop("overall", self.defaults.overall_timeout)),
            job_id=job.id,
            script_name=job.name,
            params=job.params,
            priority=job.priority,
            requirements=req,
            on=on,
            max_attempts=job.max_attempts,
            timeout=timeout,
            seq=next(self._seq),
            parent_id=job.parent_id,
            request_id=job.request_id,
        )
        self.jobs[job.id] = live
        if live.overall > 0:
            self._schedule(trio.current_time() + live.overall, "overall", job.id)
        return live

    def _enqueue(self, job: LiveJob) -> None:
        job.queued_token += 1
        if self._keep_back(job):
            return
        heapq.heappush(self._ready, (-job.priority, job.seq, job.job_id, job.queued_token))
        if job.wait_agent > 0:
            self._schedule(
                trio.current_time() + job.wait_agent,
                "wait",
                (job.job_id, job.queued_token),
            )
        self._work.set()

    def hold_request(self, request_id: str) -> None:
        """Dispatch no job of ``request_id`` until ``release_request``: a job of it that is
        queued (new, or requeued for a retry, with or without a delay) is kept out of the
        queue, still live, so a cancel ends it as an unattempted one would. Attempts out on
        agents run on. Idempotent."""
        self._held.setdefault(request_id, set())

    def release_request(self, request_id: str) -> None:
        """End ``hold_request``: queue the request's jobs kept back meanwhile. Idempotent."""
        for job_id in sorted(self._held.pop(request_id, ())):
            job = self.jobs.get(job_id)
            if job is not None and not job.active:
                self._enqueue(job)

    def held_requests(self) -> dict[str, int]:
        """Each held request's id and how many of its jobs are kept back."""
        return {rid: sum(j in self.jobs for j in kept) for rid, kept in self._held.items()}

    def _keep_back(self, job: LiveJob) -> bool:
        """Keep ``job`` out of the queue if its request is held (its queue entries and
        wait-for-agent timer go stale); return whether it was."""
        kept = None if job.request_id is None else self._held.get(job.request_id)
        if kept is None:
            return False
        job.queued_token += 1
        kept.add(job.job_id)
        return True

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
        if job.id in self.jobs or job.id in self._ending:
            return
        live = self._adopt(job)
        live.attempts_made, live.failures, live.lost = job.attempts, failures, lost
        self._enqueue(live)

    def _cancel(self, job: LiveJob, reason: str) -> None:
        if job.machine is None or job.machine.terminal:
            job.queued_token += 1  # drops it from the ready heap
            self.jobs.pop(job.job_id, None)
            self._spawn(self._end_unattempted, job, "cancelled", reason)
            return
        machine = job.machine
        machine.handle(CancelRequested(at=trio.current_time()))
        self._schedule_attempt(job)
        entry = self.agents.get(machine.agent or "")
        if entry is not None and entry.link is not None and job.sent:
            entry.link.send_nowait(
                Cancel(job_id=job.job_id, attempt=machine.attempt, reason=reason)
            )

    async def _end_unattempted(self, job: LiveJob, state: str, error: str) -> None:
        await self.repo.write(ops.job_ended_without_attempt(job.job_id, state, error))
        self.completions.resolve(
            JobOutcome(job_id=job.job_id, state=state, error=error), keep=job.parent_id is not None
        )

    async def last_attempt(self, job_id: str) -> dict[str, Any] | None:
        return await self.repo.read(ops.last_attempt(job_id))

    # --- dispatching -----------------------------------------------------------------------

    async def _dispatch_loop(self) -> None:
        while True:
            await self._work.wait()
            self._work = trio.Event()
            await self._dispatch_round()

    def _pop_ready(self, popped: list[tuple[int, int, str, int]]) -> Iterator[Ready]:
        while self._ready:
            item = heapq.heappop(self._ready)
            _, seq, job_id, token = item
            job = self.jobs.get(job_id)
            if job is None or job.queued_token != token or job.active:
                continue  # stale entry
            if self._keep_back(job):  # queued before its request was held
                continue
            popped.append(item)
            yield Ready(
                job_id=job_id,
                priority=job.priority,
                seq=seq,
                requirements=job.requirements,
                on=job.on,
            )

    async def _dispatch_round(self) -> None:
        offers = [
            Offer(name=a.name, free_slots=a.free_slots, capabilities=a.capabilities)
            for a in self.agents.values()
            if a.link is not None and not a.lost and a.free_slots > 0
        ]
        if not offers or not self._ready:
            return
        popped: list[tuple[int, int, str, int]] = []
        pairs = assign(self._pop_ready(popped), offers)
        chosen = {ready.job_id for ready, _ in pairs}
        for item in popped:
            if item[2] not in chosen:
                heapq.heappush(self._ready, item)
        if not pairs:  # nothing that waits fits a free slot: wait for a change
            return
        now = trio.current_time()
        machines: list[tuple[LiveJob, AgentEntry]] = []
        for ready, agent_name in pairs:
            job = self.jobs[ready.job_id]
            entry = self.agents[agent_name]
            job.attempts_made += 1
            job.machine = AttemptMachine(
                job_id=job.job_id, attempt=job.attempts_made, timeout=job.timeout, grace=self._grace
            )
            job.machine.handle(Dispatched(agent=agent_name, at=now))
            job.sent = False
            entry.attempts[(job.job_id, job.attempts_made)] = job
            machines.append((job, entry))
        # Write ahead: the dispatch is committed before any agent hears of it.
        await self.repo.write(ops.attempts_dispatched([job.machine for job, _ in machines]))  # type: ignore[misc]
        self._send_dispatches(machines)
        if self._ready and any(
            a.free_slots for a in self.agents.values() if a.link is not None and not a.lost
        ):
            self._work.set()  # more may fit: another round

    def _send_dispatches(self, machines: list[tuple[LiveJob, AgentEntry]]) -> None:
        """Send the dispatches just committed, unless their attempt ended meanwhile."""
        for job, entry in machines:
            machine = job.machine
            assert machine is not None
            if machine.state is AttemptState.CANCELLING:  # cancelled while we committed
                self._attempt_over(job, DeadlinePassed(at=trio.current_time()), None)
                continue
            if machine.terminal:
                continue
            if entry.link is None or entry.lost:
                self._attempt_over(job, AgentLost(at=trio.current_time()), None)
                continue
            try:
                dispatch = self._dispatch_message(job)
            except Exception as exc:  # the script vanished or changed badly since submission
                job.fail_reason = f"cannot dispatch: {exc}"
                self._attempt_over(job, CancelRequested(at=trio.current_time()), None)
                continue
            entry.link.send_nowait(dispatch)
            job.sent = True
            self.dispatched_total += 1
            self._schedule_attempt(job)

    def _dispatch_message(self, job: LiveJob) -> Dispatch:
        assert job.machine is not None
        script = self.scripts.get(job.script_name)
        memory = job.requirements.get("memory")
        return self._sign(
            Dispatch(
                job_id=job.job_id,
                attempt=job.machine.attempt,
                script_name=script.header.name,
                script=script.text,
                sha256=script.sha256,
                params=job.params,
                limits=Limits(timeout=job.timeout, memory=int(memory) if memory else None),
            )
        )

    # --- what agents say -------------------------------------------------------------------

    def agent_connected(self, hello: AgentHello, link: AgentLink, *, transport: str) -> None:
        """An agent (re)connected: register it and reconcile what it holds with what we think."""
        now = trio.current_time()
        entry = self.agents.get(hello.name)
        if entry is None:
            entry = self.agents[hello.name] = AgentEntry(
                name=hello.name, capabilities=hello.capabilities, transport=transport
            )
        entry.capabilities = hello.capabilities
        entry.transport = transport
        entry.link = link
        entry.last_heard = now
        entry.lost = False
        self._grant(entry, hello.seq, now)
        running = {(r.job_id, r.attempt) for r in hello.running}
        held = {(r.job_id, r.attempt) for r in hello.held}
        for key, job in list(entry.attempts.items()):
            machine = job.machine
            assert machine is not None
            if key in running:
                if machine.state is AttemptState.DISPATCHED:
                    machine.handle(Started(at=now))
                    self.repo.write_nowait(ops.attempt_started(machine))
                job.sent = True
                self._schedule_attempt(job)
                self._spawn(self._resume_output, entry, job.job_id, machine.attempt)
            elif key not in held:  # the agent never got it, or lost it with a restart: it says
                self._attempt_over(job, AgentLost(at=now), None)  # so, which fences it
        for ref in hello.held:
            waiting = self.jobs.get(ref.job_id)
            key = (ref.job_id, ref.attempt)
            if waiting is not None and not waiting.active and key not in entry.attempts:
                waiting.queued_token += 1  # out of the ready heap until the result is read
                self._late_expected[key] = (hello.name, waiting)
        caps = attrs.asdict(hello.capabilities)
        self.repo.write_nowait(ops.agent_seen(hello.name, transport, caps, "connected"))
        self._schedule(now + self.settings.heartbeat_deadline, "agent", hello.name)
        log.info(
            "agent %s connected (%s, %d slots)", hello.name, transport, hello.capabilities.slots
        )
        self._work.set()

    async def _resume_output(self, entry: AgentEntry, job_id: str, attempt: int) -> None:
        next_seq = await self.repo.read(ops.output_count(job_id, attempt))
        if entry.link is not None:
            entry.link.send_nowait(Resume(job_id=job_id, attempt=attempt, next_seq=next_seq))

    def _grant(self, entry: AgentEntry, seq: int, now: float) -> None:
        """Answer an agent's numbered message with a lease, and remember when we heard it."""
        if entry.link is None:
            return
        entry.lease_heard = now
        entry.link.send_nowait(Lease(seq=seq, ttl=self.settings.lease))

    def fence_at(self, name: str) -> float:
        """When the attempts of agent ``name`` are dead for sure if it never comes back: its
        last lease, counted from when we heard the message it answered, plus a margin. An
        agent we never granted a lease (known from the books after a restart) counts from
        the engine's start, since any lease it had was granted before that."""
        entry = self.agents.get(name)
        heard = entry.lease_heard if entry is not None else -math.inf
        return max(heard, self.started_at) + self.settings.lease + FENCE_MARGIN

    @property
    def transports_down(self) -> frozenset[str]:
        """The transports whose connection the engine has lost (``xmpp`` while offline)."""
        return frozenset(self._offline)

    def transport_down(self, transport: str) -> None:
        """The engine lost its own connection for ``transport`` (e.g. the XMPP server went
        away): its agents' silence from now on is not theirs."""
        self._offline.add(transport)

    def transport_up(self, transport: str) -> None:
        """``transport`` is up again: its agents' heartbeat clocks start afresh from now."""
        self._offline.discard(transport)
        now = trio.current_time()
        for entry in self.agents.values():
            if entry.transport == transport and not entry.lost:
                entry.last_heard = max(entry.last_heard, now)
                self._schedule(now + self.settings.heartbeat_deadline, "agent", entry.name)

    def agent_disconnected(self, name: str, link: AgentLink) -> None:
        """The agent's connection closed; it has until the heartbeat deadline to come back."""
        entry = self.agents.get(name)
        if entry is None or entry.link is not link:
            return
        entry.link = None
        self._schedule(trio.current_time() + self.settings.heartbeat_deadline, "agent", name)
        for key, (agent, waiting) in list(self._late_expected.items()):
            if agent == name:  # the result it announced will not come on this link
                del self._late_expected[key]
                self._requeue_if_live(waiting)
        self.repo.write_nowait(ops.agent_state(name, "disconnected"))
        log.info("agent %s disconnected", name)

    async def read_room(self, name: str) -> None:
        """Return when the repository can take more of agent ``name``'s messages (at once,
        unless an output flood has it behind: ``Repository.room``). While a transport waits
        here it does not read the agent, so that silence does not count against its
        heartbeat deadline; the agent is heard again when reading resumes."""
        entry = self.agents.get(name)
        if entry is None:
            await self.repo.room()
            return
        entry.held_back = True
        try:
            await self.repo.room()
        finally:
            entry.held_back = False
        entry.last_heard = trio.current_time()

    def agent_message(self, name: str, message: Message) -> None:
        """Handle one message from a connected agent. Never blocks."""
        entry = self.agents.get(name)
        if entry is None:
            log.warning("message from unknown agent %s ignored", name)
            return
        entry.last_heard = trio.current_time()
        match message:
            case OutputChunk():
                self._output(message)
            case JobFinished():
                self._finished(entry, message)
            case JobAccepted() | JobRefused():
                self._report(entry, message)
            case AgentStatus():
                self._status(entry, message)
            case AgentHello():
                log.warning("agent %s sent a second hello on one connection; ignored", name)
            case _:
                log.warning(
                    "agent %s sent %s, which only the engine sends; ignored",
                    name,
                    type(message).__name__,
                )

    def _current(self, entry: AgentEntry, job_id: str, attempt: int) -> LiveJob | None:
        job = entry.attempts.get((job_id, attempt))
        if job is None or job.machine is None or job.machine.terminal:
            return None
        return job

    def _report(self, entry: AgentEntry, message: JobAccepted | JobRefused) -> None:
        job = self._current(entry, message.job_id, message.attempt)
        if job is None:
            return
        event = event_from_message(message, at=trio.current_time())
        if isinstance(message, JobRefused):
            log.warning(
                "agent %s refused %s#%d: %s",
                entry.name,
                message.job_id,
                message.attempt,
                message.reason,
            )
            self._attempt_over(job, event, None)
            return
        assert job.machine is not None
        state = job.machine.handle(event)
        if state is AttemptState.RUNNING:
            self.repo.write_nowait(ops.attempt_started(job.machine))
            self._schedule_attempt(job)

    def _finished(self, entry: AgentEntry, message: JobFinished) -> None:
        job = self._current(entry, message.job_id, message.attempt)
        if job is None and (message.job_id, message.attempt) in self._unacked:
            # Resent while its end is being written (or its output filled): no Ack yet, or the
            # agent would drop a result that is not committed. Ask again for missing output.
            self.output_fill.relink(message.job_id, message.attempt, entry.link)
            return
        if job is None:
            # A report for an attempt already settled: a duplicate, or one we had given up on
            # as lost (its agent was cut off past its lease). Never thrown away: recorded on
            # the attempt, and the job's outcome if it can still be (docs/decisions.md).
            key = (message.job_id, message.attempt)
            self._unacked.add(key)
            self._spawn(self._late, entry.name, message)
            return
        self._attempt_over(job, event_from_message(message, at=trio.current_time()), message)

    async def _late(self, agent: str, message: JobFinished) -> None:
        """Record a report for an attempt no longer current, then acknowledge it. A success
        ends its job when the job is still waiting to run again (not dispatched anew, nor
        ended); anything else is kept on the attempt only."""
        key = (message.job_id, message.attempt)
        try:
            known = await self.repo.read(ops.attempt_state(message.job_id, message.attempt))
            if known != "lost":
                log.info("duplicate result for %s#%d from %s acknowledged", *key, agent)
                return
            state = finished_state(
                Finished(
                    reason=message.reason,
                    at=trio.current_time(),
                    exit_code=message.exit_code,
                    signal=message.signal,
                )
            )
            job = self.jobs.get(message.job_id)
            adopt = (
                state is AttemptState.SUCCEEDED
                and job is not None
                and not job.active
                and job.job_id not in self._ending
            )
            if adopt:
                assert job is not None
                job.queued_token += 1  # out of the ready heap
                self.jobs.pop(job.job_id, None)
                self._ending[job.job_id] = job
            if message.chunks:
                await self.output_fill.complete(message, lambda: self._link(agent))
            log.warning(
                "late result for %s#%d from %s: %s%s",
                *key,
                agent,
                state.value,
                " (the job's outcome)" if adopt else " (recorded on the attempt)",
            )
            await self.repo.write(
                ops.late_result(message, state.value, job_state="succeeded" if adopt else None)
            )
            if adopt:
                assert job is not None
                self._ending.pop(job.job_id, None)
                self.completions.resolve(
                    JobOutcome(job_id=job.job_id, state="succeeded", result=message.result),
                    keep=job.parent_id is not None,
                )
        finally:
            self._unacked.discard(key)
            expected = self._late_expected.pop(key, None)
            if expected is not None:
                self._requeue_if_live(expected[1])
            link = self._link(agent)
            if link is not None:
                link.send_nowait(Ack(job_id=message.job_id, attempt=message.attempt))

    def _requeue_if_live(self, job: LiveJob) -> None:
        """Queue ``job`` again if it still waits to run (not ended, not dispatched)."""
        if self.jobs.get(job.job_id) is job and not job.active:
            self._enqueue(job)

    def _status(self, entry: AgentEntry, status: AgentStatus) -> None:
        known = {(r.job_id, r.attempt) for r in (*status.running, *status.held)}
        now = trio.current_time()
        self._grant(entry, status.seq, now)
        for key, job in list(entry.attempts.items()):
            # Messages on a link keep their order, so an attempt the agent accepted and that is
            # in neither list has vanished from it (e.g. the agent restarted).
            if (
                job.machine is not None
                and job.machine.state is AttemptState.RUNNING
                and key not in known
            ):
                self._attempt_over(job, AgentLost(at=now), None)

    def _output(self, chunk: OutputChunk) -> None:
        # a big chunk's commit goes to the writer's thread, not the loop (one weight per 4 KiB)
        self.repo.write_nowait(ops.output_stored(chunk), weight=1 + len(chunk.data) // 4096)
        self.output_fill.seen(chunk)
        for channel in list(self._output_watchers.get(chunk.job_id, ())):
            try:
                channel.send_nowait(chunk)
            except trio.WouldBlock:
                pass  # a slow watcher misses chunks live; the full output is in the repository
            except trio.BrokenResourceError:
                self._output_watchers[chunk.job_id].discard(channel)

    def watch_output(
        self, job_id: str, channel: trio.MemorySendChannel[OutputChunk]
    ) -> Callable[[], None]:
        """Receive ``job_id``'s output chunks live on ``channel``; call the result to stop."""
        self._output_watchers.setdefault(job_id, set()).add(channel)

        def stop() -> None:
            watchers = self._output_watchers.get(job_id)
            if watchers is not None:
                watchers.discard(channel)
                if not watchers:
                    del self._output_watchers[job_id]

        return stop

    # --- ends of attempts ------------------------------------------------------------------

    def _attempt_over(self, job: LiveJob, event: Any, finished: JobFinished | None) -> None:
        """Feed the final event of an attempt and decide: done, retry, or fail."""
        machine = job.machine
        assert machine is not None
        try:
            state = machine.handle(event)
        except IllegalTransition:
            log.exception("controller bug")
            raise
        if state is AttemptState.CANCELLING:  # a cancel that needs the agent's confirmation
            return
        entry = self.agents.get(machine.agent or "")
        if entry is not None:
            entry.attempts.pop((job.job_id, machine.attempt), None)
        self._work.set()
        job_state: str | None
        error: str | None = None
        retry_delay = 0.0
        if state is AttemptState.SUCCEEDED:
            job_state = "succeeded"
        elif state is AttemptState.CANCELLED:
            job_state, error = (
                ("failed", job.fail_reason) if job.fail_reason else ("cancelled", "cancelled")
            )
        else:
            if state is AttemptState.LOST:
                job.lost += 1
                retry = job.lost <= self.settings.max_redispatch
                why = f"lost its agent {job.lost} times (max_redispatch {self.settings.max_redispatch})"
            else:
                job.failures += 1
                retry = should_retry(state, job.failures, job.max_attempts)
                retry_delay = job.backoff * 2 ** (job.failures - 1)
                why = _failure(machine, job)
            if retry:
                job_state = None
            else:
                job_state, error = "failed", why
        if job_state is not None:
            # Final: no longer live from this moment, so a cancel that arrives while the end is
            # being written cannot turn it into "cancelled" or resolve it twice; and a call
            # replayed meanwhile must not take it on again (see _recorded).
            self.jobs.pop(job.job_id, None)
            self._ending[job.job_id] = job
        end = (job, machine, finished, job_state, error, retry_delay)
        if finished is not None:
            self._unacked.add((job.job_id, machine.attempt))
        if finished is not None and finished.chunks:
            self._spawn(self._settle, *end)  # its output may have holes to fill first
        else:
            self.output_fill.forget(job.job_id, machine.attempt)
            self._write_end(*end)

    async def _settle(
        self,
        job: LiveJob,
        machine: AttemptMachine,
        finished: JobFinished,
        job_state: str | None,
        error: str | None,
        retry_delay: float,
    ) -> None:
        """Wait until the output is whole (or given up on): it is, before the end is committed
        and acknowledged. Then write the end."""
        await self.output_fill.complete(finished, lambda: self._link(machine.agent))
        self._write_end(job, machine, finished, job_state, error, retry_delay)

    def _write_end(
        self,
        job: LiveJob,
        machine: AttemptMachine,
        finished: JobFinished | None,
        job_state: str | None,
        error: str | None,
        retry_delay: float,
    ) -> None:
        """Queue the commit of an attempt's end (and of its job's, when ``job_state`` is final);
        once it is committed, requeue the job or resolve it, then acknowledge the result."""

        def committed(written: outcome.Outcome[None]) -> None:
            self._unacked.discard((job.job_id, machine.attempt))
            if job_state is not None:
                self._ending.pop(job.job_id, None)
            if isinstance(written, outcome.Error):
                self._fail(written.error)
                return
            if job_state is None and self.jobs.get(job.job_id) is not job:
                pass  # cancelled (or ended) since the retry was decided: its end is written
            elif job_state is None:
                self.repo.write_nowait(ops.job_requeued(job.job_id, machine.attempt, retry_delay))
                if retry_delay > 0:
                    self._schedule(
                        trio.current_time() + retry_delay, "ready", (job.job_id, machine.attempt)
                    )
                else:
                    self._enqueue(job)
            else:
                result = finished.result if finished else None
                self.completions.resolve(
                    JobOutcome(job_id=job.job_id, state=job_state, result=result, error=error),
                    keep=job.parent_id is not None,
                )
            if finished is not None:
                entry = self.agents.get(machine.agent or "")
                if entry is not None and entry.link is not None:
                    entry.link.send_nowait(Ack(job_id=job.job_id, attempt=machine.attempt))

        metrics.attempt_ended(self, machine)  # /metrics: dispatch→result latency
        op = ops.attempt_ended(machine, finished, job_state=job_state, job_error=error)
        self.repo.write_nowait(op, then=committed)

    def _fail(self, error: BaseException) -> None:
        """Stop the controller with ``error`` (a write it depends on failed), as an awaited
        write raising in one of its tasks would."""
        try:
            self._spawn(_reraise, error)
        except RuntimeError:  # the controller has stopped already
            log.error("controller stopped; a write failed after it: %s", error)

    def _link(self, agent: str | None) -> AgentLink | None:
        entry = self.agents.get(agent or "")
        return entry.link if entry is not None else None

    # --- timers ----------------------------------------------------------------------------

    def _schedule(self, at: float, kind: str, key: Any) -> None:
        earliest = self._timers[0][0] if self._timers else math.inf
        heapq.heappush(self._timers, (at, next(self._seq), kind, key))
        if at < earliest:
            self._timer_changed.set()

    def _schedule_attempt(self, job: LiveJob) -> None:
        assert job.machine is not None
        deadline = job.machine.next_deadline()
        if deadline is not None:
            self._schedule(deadline, "attempt", (job.job_id, job.machine.attempt))

    async def _timer_loop(self) -> None:
        while True:
            now = trio.current_time()
            while self._timers and self._timers[0][0] <= now:
                _, _, kind, key = heapq.heappop(self._timers)
                self._fire(kind, key, now)
            with trio.move_on_at(self._timers[0][0] if self._timers else math.inf):
                await self._timer_changed.wait()
            self._timer_changed = trio.Event()

    def _fire(self, kind: str, key: Any, now: float) -> None:
        if kind == "agent":
            self._check_agent(key, now)
        elif kind == "fence":
            self._fence(key, now)
        elif kind == "attempt":
            job_id, attempt = key
            job = self.jobs.get(job_id)
            if job is not None and job.machine is not None and job.machine.attempt == attempt:
                owner = self.agents.get(job.machine.agent or "")
                if (
                    owner is not None
                    and owner.lost
                    and job.machine.state is not AttemptState.CANCELLING
                ):
                    return  # its agent is silent: the fence ends it, not a deadline
                event = job.machine.on_deadline(now)
                if event is not None:
                    entry = self.agents.get(job.machine.agent or "")
                    if entry is not None and entry.link is not None:
                        entry.link.send_nowait(
                            Cancel(job_id=job_id, attempt=attempt, reason="deadline passed")
                        )
                    self._attempt_over(job, event, None)
        elif kind == "ready":
            job_id, attempt = key
            job = self.jobs.get(job_id)
            if job is not None and job.attempts_made == attempt and not job.active:
                self._enqueue(job)
        elif kind == "wait":
            job_id, token = key
            job = self.jobs.get(job_id)
            if job is not None and job.queued_token == token and not job.active:
                job.queued_token += 1
                self.jobs.pop(job_id, None)
                wait = job.wait_agent
                self._spawn(
                    self._end_unattempted, job, "failed", f"no agent took it within {wait:g} s"
                )
        elif kind == "overall":
            job = self.jobs.get(key)
            if job is not None:
                job.fail_reason = f"overall timeout of {job.overall:g} s exceeded"
                if job.active:
                    self._cancel(job, job.fail_reason)
                else:
                    job.queued_token += 1
                    self.jobs.pop(key, None)
                    self._spawn(self._end_unattempted, job, "failed", job.fail_reason)

    def _check_agent(self, name: str, now: float) -> None:
        entry = self.agents.get(name)
        if entry is None or entry.lost:
            return
        if entry.held_back or entry.transport in self._offline:
            # we are not reading it, or cannot hear anyone on its transport: not its fault
            self._schedule(now + self.settings.heartbeat_deadline, "agent", name)
            return
        deadline = entry.last_heard + self.settings.heartbeat_deadline
        if now < deadline:
            self._schedule(deadline, "agent", name)
            return
        entry.lost = True
        why = "disconnected" if entry.link is None else "missed its heartbeat deadline"
        fence = self.fence_at(name)
        if entry.attempts:
            why += f"; its {len(entry.attempts)} attempt(s) are run again once fenced,"
            why += f" in {max(0.0, fence - now):.0f} s unless it comes back first"
        log.warning("agent %s lost: %s", name, why)
        self.repo.write_nowait(ops.agent_state(name, "lost", why))
        if entry.attempts:
            self._schedule(fence, "fence", name)
        if entry.link is not None:
            entry.link.send_nowait(StatusRequest())

    def _fence(self, name: str, now: float) -> None:
        """The lease of a lost agent has run out: whatever it still holds is dead by now (its
        keeper killed it), so those attempts end as lost and their jobs may run again."""
        entry = self.agents.get(name)
        if entry is None or not entry.lost:
            return  # it came back and reported what it holds
        fence = self.fence_at(name)
        if now < fence:  # a lease granted since: wait for that one
            self._schedule(fence, "fence", name)
            return
        for job in list(entry.attempts.values()):
            if job.machine is not None and not job.machine.terminal:
                log.info(
                    "attempt %s#%d fenced: agent %s's lease ran out",
                    job.job_id,
                    job.machine.attempt,
                    name,
                )
                self._attempt_over(job, AgentLost(at=now), None)

    # --- after a restart -------------------------------------------------------------------

    async def recover(self) -> dict[str, int]:
        """Load every unfinished RScript job from the repository (call before transports start).

        Attempts that were out on agents wait ``reconcile_grace`` for their agent to report;
        the rest are queued again. Returns counts for the log.
        """
        from wfe.engine.dispatch.recovery import agent_transports, load_unfinished

        jobs, agents = await self.repo.read(load_unfinished)
        transports = await self.repo.read(agent_transports)
        now = trio.current_time()
        counts = {"queued": 0, "awaiting_agent": 0, "failed": 0}
        for name, caps in agents.items():
            self.agents.setdefault(
                name,
                AgentEntry(
                    name=name,
                    capabilities=caps,
                    transport=transports.get(name, "unknown"),
                    last_heard=now,
                ),
            )
        for row, attempt in jobs:
            try:
                self.scripts.get(row.name)
            except LookupError as exc:
                await self.repo.write(
                    ops.job_ended_without_attempt(row.id, "failed", f"after restart: {exc}")
                )
                counts["failed"] += 1
                continue
            job = self._adopt(row)
            job.attempts_made = attempt["attempt"] if attempt else 0
            job.failures = attempt["failures"] if attempt else 0
            job.lost = attempt["lost"] if attempt else 0
            if attempt and attempt["state"] in ("dispatched", "running", "cancelling"):
                machine = AttemptMachine(
                    job_id=row.id,
                    attempt=attempt["attempt"],
                    timeout=job.timeout,
                    grace=self._grace,
                )
                machine.handle(Dispatched(agent=attempt["agent"], at=now))
                if attempt["state"] != "dispatched":
                    machine.handle(Started(at=now))
                job.machine = machine
                job.sent = True
                entry = self.agents.setdefault(
                    attempt["agent"],
                    AgentEntry(
                        name=attempt["agent"],
                        capabilities=Capabilities(slots=1),
                        transport=transports.get(attempt["agent"], "unknown"),
                    ),
                )
                entry.last_heard = (
                    now - self.settings.heartbeat_deadline + self.settings.reconcile_grace
                )
                entry.attempts[(row.id, machine.attempt)] = job
                self._schedule_attempt(job)
                counts["awaiting_agent"] += 1
            else:
                self._enqueue(job)
                counts["queued"] += 1
        for entry in self.agents.values():
            self._schedule(entry.last_heard + self.settings.heartbeat_deadline, "agent", entry.name)
        return counts

    def held_by(self, name: str) -> list[AttemptRef]:
        entry = self.agents.get(name)
        return [] if entry is None else [AttemptRef(job_id=j, attempt=a) for j, a in entry.attempts]


async def _reraise(error: BaseException) -> None:
    raise error


def _failure(machine: AttemptMachine, job: LiveJob) -> str:
    n = f"attempt {machine.attempt}"
    if machine.state is AttemptState.TIMED_OUT:
        return f"{n} timed out after {job.timeout:g} s"
    if machine.signal is not None:
        return f"{n} killed by signal {machine.signal}"
    if machine.exit_code is not None:
        detail = f" ({machine.detail})" if machine.detail else ""
        return f"{n} exited with code {machine.exit_code}{detail}"
    return f"{n} failed: {machine.detail or 'no detail'}"
