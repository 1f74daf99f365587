"""The agent registry: which agents the controller knows, how to reach them, when they
are lost, and when what they held is fenced.

Leases and fencing (docs/decisions.md #41): every hello and status an agent sends is
answered with ``Lease(seq, ttl=[agents] lease)``; the agent side kills its scripts once a
lease runs out unrenewed. An agent that goes silent is declared lost at its heartbeat
deadline (fast, so no new work goes to it), but its attempts end only once they are
*fenced*: it came back and said they are dead, or its lease plus a margin has passed since
the last message we granted a lease for (``fence_at``). Time during which a transport was
down (the engine offline from the XMPP server) never counts against that transport's
agents. The decisions are ``wfe.engine.dispatch.policy``'s; this module keeps the facts and
writes what is decided.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

import trio

from wfe.engine.config import AgentsSection
from wfe.engine.dispatch import policy
from wfe.engine.dispatch.fairshare import FairShare
from wfe.engine.dispatch.live import AgentEntry, AgentLink, LiveJob
from wfe.engine.dispatch.scheduler import Offer
from wfe.engine.dispatch.timers import AgentCheck, FenceCheck, Timers
from wfe.engine.repository import attempts as rows
from wfe.engine.repository.attempts import AgentState
from wfe.protocols.attempt import AttemptMachine
from wfe.protocols.messages import AgentHello, AttemptRef, Capabilities, Lease, StatusRequest

if TYPE_CHECKING:
    from wfe.engine.repository import Repository

log = logging.getLogger("wfe.controller")


class AgentRegistry:
    """The agents the controller knows, by name."""

    def __init__(
        self,
        *,
        settings: AgentsSection,
        repo: Repository,
        timers: Timers,
        started_at: float,
        fair: FairShare | None = None,
    ) -> None:
        self.agents: dict[str, AgentEntry] = {}
        self.fair = fair if fair is not None else FairShare()  # slots held, by share
        self.settings = settings
        self.started_at = started_at
        self._repo = repo
        self._timers = timers
        self._offline: set[str] = set()  # transports that are down: their agents' silence is ours

    def usable(self) -> Iterator[AgentEntry]:
        """The agents new work may go to (connected, not lost)."""
        return (a for a in self.agents.values() if a.usable)

    def offers(self) -> list[Offer]:
        """The free capacity of usable agents, for the scheduler."""
        return [
            Offer(name=a.name, free_slots=a.free_slots, capabilities=a.capabilities)
            for a in self.usable()
            if a.free_slots > 0
        ]

    def link(self, name: str | None) -> AgentLink | None:
        entry = self.agents.get(name or "")
        return entry.link if entry is not None else None

    def held_by(self, name: str) -> list[AttemptRef]:
        entry = self.agents.get(name)
        return [] if entry is None else [AttemptRef(job_id=j, attempt=a) for j, a in entry.attempts]

    def take(self, entry: AgentEntry, job: LiveJob, attempt: int, now: float) -> None:
        """Attempt ``attempt`` of ``job`` holds slots of ``entry`` from ``now``."""
        entry.attempts[(job.job_id, attempt)] = job
        self.fair.started(job.share, job.cpus, now)

    def release(self, machine: AttemptMachine, now: float) -> None:
        """The attempt of ``machine`` has ended at ``now``: its agent's slots are free."""
        entry = self.agents.get(machine.agent or "")
        if entry is not None:
            job = entry.attempts.pop((machine.job_id, machine.attempt), None)
            if job is not None:
                self.fair.ended(job.share, job.cpus, now)

    def known(self, name: str, capabilities: Capabilities, transport: str) -> AgentEntry:
        """The entry of ``name``, made (never heard from) if it is not known yet."""
        return self.agents.setdefault(
            name, AgentEntry(name=name, capabilities=capabilities, transport=transport)
        )

    # --- connections -------------------------------------------------------------------------

    def connect(self, hello: AgentHello, link: AgentLink, transport: str, now: float) -> AgentEntry:
        """Register an agent that said hello on ``link`` and grant it a lease."""
        entry = self.known(hello.name, hello.capabilities, transport)
        entry.capabilities = hello.capabilities
        entry.transport = transport
        entry.link = link
        entry.last_heard = now
        entry.lost = False
        self.grant(entry, hello.seq, now)
        return entry

    def announce(self, entry: AgentEntry, now: float) -> None:
        """Record a connected agent and start watching its heartbeat."""
        self._repo.write_nowait(
            rows.agent_seen(entry.name, entry.transport, entry.capabilities, AgentState.CONNECTED)
        )
        self._timers.schedule(now + self.settings.heartbeat_deadline, AgentCheck(entry.name))
        log.info(
            "agent %s connected (%s, %d slots)",
            entry.name,
            entry.transport,
            entry.capabilities.slots,
        )

    def disconnect(self, name: str, link: AgentLink, now: float) -> bool:
        """``name``'s connection ``link`` closed; return False if that was not its link."""
        entry = self.agents.get(name)
        if entry is None or entry.link is not link:
            return False
        entry.link = None
        self._timers.schedule(now + self.settings.heartbeat_deadline, AgentCheck(name))
        self._repo.write_nowait(rows.agent_state(name, AgentState.DISCONNECTED))
        log.info("agent %s disconnected", name)
        return True

    def grant(self, entry: AgentEntry, seq: int, now: float) -> None:
        """Answer an agent's numbered message with a lease, and remember when we heard it."""
        if entry.link is None:
            return
        entry.lease_heard = now
        entry.link.send_nowait(Lease(seq=seq, ttl=self.settings.lease))

    async def read_room(self, name: str) -> None:
        """Wait until the repository can take more of ``name``'s messages; its silence
        meanwhile is not counted against it (see ``AgentController.read_room``)."""
        entry = self.agents.get(name)
        if entry is None:
            await self._repo.room()
            return
        entry.held_back = True
        try:
            await self._repo.room()
        finally:
            entry.held_back = False
        entry.last_heard = trio.current_time()

    # --- transports -----------------------------------------------------------------------------

    @property
    def transports_down(self) -> frozenset[str]:
        return frozenset(self._offline)

    def transport_down(self, transport: str) -> None:
        self._offline.add(transport)

    def transport_up(self, transport: str, now: float) -> None:
        self._offline.discard(transport)
        for entry in self.agents.values():
            if entry.transport == transport and not entry.lost:
                entry.last_heard = max(entry.last_heard, now)
                self._timers.schedule(
                    now + self.settings.heartbeat_deadline, AgentCheck(entry.name)
                )

    # --- loss and fencing ----------------------------------------------------------------------

    def fence_at(self, name: str) -> float:
        """When the attempts of agent ``name`` are dead for sure if it never comes back."""
        entry = self.agents.get(name)
        heard = entry.lease_heard if entry is not None else -math.inf
        return policy.fence_at(heard, self.started_at, self.settings.lease)

    def check(self, name: str, now: float) -> None:
        """An ``AgentCheck`` is due: declare ``name`` lost if its silence says so."""
        entry = self.agents.get(name)
        if entry is None:
            return
        facts = policy.AgentFacts(
            lost=entry.lost,
            listening=not entry.held_back and entry.transport not in self._offline,
            connected=entry.link is not None,
            last_heard=entry.last_heard,
            attempts=len(entry.attempts),
            heartbeat_deadline=self.settings.heartbeat_deadline,
            fence_at=self.fence_at(name),
            now=now,
        )
        match policy.check_heartbeat(facts):
            case policy.CheckAgain(at=at):
                self._timers.schedule(at, AgentCheck(name))
            case policy.DeclareLost(reason=reason, fence_at=fence):
                entry.lost = True
                log.warning("agent %s lost: %s", name, reason)
                self._repo.write_nowait(rows.agent_state(name, AgentState.LOST, reason))
                if fence is not None:
                    self._timers.schedule(fence, FenceCheck(name))
                if entry.link is not None:
                    entry.link.send_nowait(StatusRequest())

    def fenced(self, name: str, now: float) -> list[LiveJob]:
        """A ``FenceCheck`` is due: the unfinished attempts of ``name`` that are dead by now
        (its lease ran out, so its keeper killed them); none if it came back."""
        entry = self.agents.get(name)
        if entry is None:
            return []
        match policy.check_fence(lost=entry.lost, fence_at=self.fence_at(name), now=now):
            case policy.CheckAgain(at=at):  # a lease granted since: wait for that one
                self._timers.schedule(at, FenceCheck(name))
            case policy.FenceNow():
                return [
                    job
                    for job in entry.attempts.values()
                    if job.machine is not None and not job.machine.terminal
                ]
        return []
