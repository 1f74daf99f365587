"""Which ready job goes to which agent: a pure decision, tested without awaiting anything.

Jobs are taken by priority (higher first), then age (older first). A job goes to the first
agent, among those that can take it, that has a free slot: an agent pinned by ``on`` if it
names one; else the agents whose storage holds the job's data first (locality), then the one
with the most free slots. A job whose inputs have replicas (``locality``, from
``wfe.engine.dispatch.locality``) goes to the agent whose site is nearest them, and only to
an agent whose site has each within the stage's ``max_distance``. Requirements: ``cpus``
(slots taken, default 1), ``memory`` (bytes, at most the agent's), ``tags`` (all present on
the agent), ``site`` (equal).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import attrs

from wfe.engine.dispatch import locality
from wfe.protocols.messages import Capabilities


@attrs.frozen(kw_only=True)
class Ready:
    """A job waiting for a slot."""

    job_id: str
    priority: int
    seq: int  # order of arrival: lower is older
    requirements: dict[str, Any] = attrs.Factory(dict)
    on: str | None = None

    @property
    def order(self) -> tuple[int, int]:
        return (-self.priority, self.seq)


@attrs.define(kw_only=True)
class Offer:
    """An agent's free capacity as the scheduler sees it (mutated while assigning)."""

    name: str
    free_slots: int
    capabilities: Capabilities


def fits(job: Ready, agent: Offer) -> bool:
    """Whether ``agent`` could ever run ``job`` (ignoring how busy it is)."""
    req = job.requirements
    caps = agent.capabilities
    if job.on is not None and job.on != agent.name:
        return False
    if int(req.get("cpus", 1)) > caps.slots:
        return False
    memory = req.get("memory")
    if memory is not None and caps.memory is not None and int(memory) > caps.memory:
        return False
    if not set(req.get("tags", ())) <= set(caps.tags):
        return False
    site = req.get("site")
    if site is not None and site != caps.site:
        return False
    placed = req.get("locality")  # inputs with replicas: one within reach of the agent's site
    return placed is None or locality.reach(placed, caps.site) is not None


def _locality(job: Ready, agent: Offer) -> int:
    wanted = job.requirements.get("storage") or ()
    return sum(1 for s in wanted if s in agent.capabilities.storage)


def _distance(placed: dict[str, Any], agent: Offer) -> int:
    where = locality.reach(placed, agent.capabilities.site)
    return locality.FAR + 1 if where is None else int(where["distance"])


def assign(ready: Iterable[Ready], agents: Sequence[Offer]) -> list[tuple[Ready, str]]:
    """Return ``(job, agent name)`` pairs to dispatch now, in priority order.

    ``ready`` must already be in ``Ready.order``. Stops early once no agent has a free slot.
    """
    pairs: list[tuple[Ready, str]] = []
    for job in ready:
        if not any(a.free_slots > 0 for a in agents):
            break
        cpus = int(job.requirements.get("cpus", 1))
        candidates = [a for a in agents if a.free_slots >= cpus and fits(job, a)]
        if not candidates:
            continue
        placed = job.requirements.get("locality")
        if placed is None:
            best = max(
                candidates, key=lambda a: (_locality(job, a), a.free_slots, -agents.index(a))
            )
        else:  # the agent whose site is nearest the job's inputs
            best = min(
                candidates, key=lambda a: (_distance(placed, a), -a.free_slots, agents.index(a))
            )
        best.free_slots -= cpus
        pairs.append((job, best.name))
    return pairs


def never_fits(job: Ready, agents: Sequence[Offer]) -> bool:
    """True when no connected agent could ever take ``job`` (worth telling the operator)."""
    return bool(agents) and not any(fits(job, a) for a in agents)
