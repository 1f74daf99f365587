"""The engine's side of pilot demand: which queued jobs no connected agent has room for.

Read from the agent controller in memory (nothing is written): the jobs waiting to run that
are neither held (their request paused) nor pinned to one agent (``on``: a pilot cannot be
that agent), less those the agents connected now would take in the next dispatch round
(``scheduler.assign`` over their free slots, exactly as the round will). What is left is
grouped by ``Need``; of it, ``unplaceable`` counts the jobs no connected agent could ever
take, however idle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from wfe.engine.dispatch.scheduler import Offer, Ready, assign, fits
from wfe.engine.pilots.model import Need

if TYPE_CHECKING:
    from wfe.engine.dispatch.controller import AgentController


@attrs.frozen(kw_only=True)
class NeedCount:
    """Queued jobs of one need that no connected agent has a slot for now."""

    need: Need
    queued: int
    unplaceable: int  # of them, those no connected agent could ever take

    def as_data(self) -> dict[str, Any]:
        return {
            "requirements": self.need.as_data(),
            "queued": self.queued,
            "unplaceable": self.unplaceable,
        }


def queued_demand(controller: AgentController) -> list[NeedCount]:
    """The demand pilots could serve, by need (largest first)."""
    queue, registry = controller.queue, controller.registry
    waiting = [
        job
        for job in queue.jobs.values()
        if not job.active and job.on is None and not queue.is_held(job.request_id)
    ]
    ready = sorted(
        (
            Ready(job_id=j.job_id, priority=j.priority, seq=j.seq, requirements=j.requirements)
            for j in waiting
        ),
        key=lambda r: r.order,
    )
    taken = {job.job_id for job, _ in assign(ready, registry.offers())}
    offers = [
        Offer(name=a.name, free_slots=a.capabilities.slots, capabilities=a.capabilities)
        for a in registry.usable()
    ]
    counts: dict[Need, list[int]] = {}
    for job in ready:
        if job.job_id in taken:
            continue
        count = counts.setdefault(Need.of(job.requirements), [0, 0])
        count[0] += 1
        count[1] += not any(fits(job, offer) for offer in offers)
    found = [NeedCount(need=n, queued=q, unplaceable=u) for n, (q, u) in counts.items()]
    return sorted(found, key=lambda c: (-c.queued, c.need.sort_key))


def connected_agents(controller: AgentController) -> list[str]:
    """The names of the agents connected now (a pilot's agent is named by its JID)."""
    return sorted(a.name for a in controller.registry.usable())


def agents_holding_work(controller: AgentController) -> list[str]:
    """The names of the agents, connected or not, that attempts are still out on: an account
    whose last pilot was killed stays out of use until its attempts are fenced, since an agent
    saying hello under that name would end them at once (as a restarted agent)."""
    return sorted(a.name for a in controller.registry.agents.values() if a.attempts)
