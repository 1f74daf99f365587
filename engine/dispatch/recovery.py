"""After an engine restart: take on every unfinished RScript job the repository holds.

Attempts that were out on agents are put back on their agents as the books say, and those
agents get ``reconcile_grace`` to report (hello or status) what they still run or hold;
the rest of the jobs are queued again. A job whose script is no longer in the library
fails at once, saying so.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from wfe.engine.config import AgentsSection
from wfe.engine.dispatch.live import LiveJob
from wfe.engine.dispatch.queue import JobQueue
from wfe.engine.dispatch.registry import AgentRegistry
from wfe.engine.dispatch.timers import AgentCheck, Timers
from wfe.engine.repository import attempts as rows
from wfe.engine.runtime.jobs import JobRow, JobState
from wfe.protocols.attempt import AttemptMachine, AttemptState, Dispatched, Started
from wfe.protocols.messages import Capabilities

if TYPE_CHECKING:
    from wfe.engine.repository import Repository
    from wfe.rscripts.loader import ScriptLibrary

_OUT = (AttemptState.DISPATCHED, AttemptState.RUNNING, AttemptState.CANCELLING)


async def recover(
    *,
    repo: Repository,
    scripts: ScriptLibrary,
    registry: AgentRegistry,
    queue: JobQueue,
    timers: Timers,
    settings: AgentsSection,
    grace: float,
    take_on: Callable[[JobRow], LiveJob],
) -> dict[str, int]:
    """Load the unfinished jobs and known agents (call before transports start); return
    counts for the log: ``queued``, ``awaiting_agent``, ``failed``."""
    unfinished = await repo.read(rows.load_unfinished)
    known = await repo.read(rows.known_agents)
    now = trio.current_time()
    transports = {agent.name: agent.transport for agent in known}
    counts = {"queued": 0, "awaiting_agent": 0, "failed": 0}
    for agent in known:
        if not agent.lost and agent.capabilities is not None and agent.name not in registry.agents:
            registry.known(agent.name, agent.capabilities, agent.transport).last_heard = now
    for item in unfinished:
        row, last = item.job, item.last
        try:
            scripts.get(row.name)
        except LookupError as exc:
            error = f"after restart: {exc}"
            await repo.write(rows.job_ended_without_attempt(row.id, JobState.FAILED, error))
            counts["failed"] += 1
            continue
        job = take_on(row)
        if last is None:
            queue.enqueue(job)
            counts["queued"] += 1
            continue
        job.attempts_made, job.failures, job.lost = last.attempt, last.failures, last.lost
        if last.state not in _OUT:
            queue.enqueue(job)
            counts["queued"] += 1
            continue
        agent_name = last.agent or ""
        machine = AttemptMachine(
            job_id=row.id, attempt=last.attempt, timeout=job.timeout, grace=grace
        )
        machine.handle(Dispatched(agent=agent_name, at=now))
        if last.state is not AttemptState.DISPATCHED:
            machine.handle(Started(at=now))
        job.machine = machine
        job.sent = True
        transport = transports.get(agent_name, "unknown")
        entry = registry.known(agent_name, Capabilities(slots=1), transport)
        entry.last_heard = now - settings.heartbeat_deadline + settings.reconcile_grace
        registry.take(entry, job, machine.attempt, now)
        timers.schedule_deadline(machine)
        counts["awaiting_agent"] += 1
    for entry in registry.agents.values():
        timers.schedule(entry.last_heard + settings.heartbeat_deadline, AgentCheck(entry.name))
    return counts
