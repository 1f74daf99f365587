"""Which ready job goes to which agent: a pure decision, tested without awaiting anything.

Jobs are taken by priority (higher first), then age (older first). A job goes to the first
agent, among those that can take it, that has a free slot: an agent pinned by ``on`` if it
names one; else the agents whose storage holds the job's data first (locality), then the one
with the most free slots. Jobs whose inputs have replicas (``locality``, from
``wfe.engine.dispatch.locality``) go only to agents whose site has each input within the
stage's ``max_distance``, and are matched with free agents by distance: of a run of such jobs
of one priority (up to ``WINDOW``), the nearest pairs of job and free agent are made first
(older job first on a tie), so that a free agent at a site takes the waiting inputs nearest
it, as justIN's allocator gives a worker its nearest files. Requirements: ``cpus``
(slots taken, default 1), ``memory`` (bytes, at most the agent's), ``tags`` (all present on
the agent), ``site`` (equal).
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import attrs

from wfe.engine.dispatch import locality
from wfe.protocols.messages import Capabilities

#: How many waiting jobs with replicas, of one priority, are matched with free agents at once.
WINDOW = 64


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
    A job without storage or replicas (the usual case) is placed through a heap of the agents
    that fit its requirements, kept per set of requirements for the call: a round of J jobs
    over A agents costs O((J + A) log A), not O(J * A) (a thousand agents took seconds).
    Jobs with replicas are matched by distance a run at a time (``_nearest_pairs``).
    """
    pairs: list[tuple[Ready, str]] = []
    position = {id(a): i for i, a in enumerate(agents)}
    free = sum(a.free_slots for a in agents if a.free_slots > 0)
    heaps: dict[tuple[Any, ...], list[tuple[int, int, Offer]]] = {}
    jobs = _Lookahead(iter(ready))
    while free > 0 and (job := jobs.next()) is not None:
        cpus = int(job.requirements.get("cpus", 1))
        if job.requirements.get("locality") is not None:
            run = [job, *jobs.run_of(job, WINDOW - 1)]
            for taken, agent in _nearest_pairs(run, agents, position):
                pairs.append((taken, agent.name))
                free -= int(taken.requirements.get("cpus", 1))
            continue
        key = _plain_key(job, cpus)
        if key is not None:
            best = _most_free(heaps, key, job, cpus, agents, position)
        else:
            candidates = [a for a in agents if a.free_slots >= cpus and fits(job, a)]
            if not candidates:
                continue
            best = max(
                candidates, key=lambda a: (_locality(job, a), a.free_slots, -position[id(a)])
            )
        if best is None:
            continue
        best.free_slots -= cpus
        free -= cpus
        pairs.append((job, best.name))
    return pairs


class _Lookahead:
    """The ready jobs, with a look at the run of replica jobs that follows one."""

    def __init__(self, jobs: Iterator[Ready]) -> None:
        self._jobs = jobs
        self._back: deque[Ready] = deque()

    def next(self) -> Ready | None:
        return self._back.popleft() if self._back else next(self._jobs, None)

    def run_of(self, first: Ready, most: int) -> list[Ready]:
        """Up to ``most`` jobs that follow ``first`` with replicas and its priority."""
        run: list[Ready] = []
        while len(run) < most and (job := self.next()) is not None:
            if job.requirements.get("locality") is None or job.priority != first.priority:
                self._back.appendleft(job)
                break
            run.append(job)
        return run


def _nearest_pairs(
    run: Sequence[Ready], agents: Sequence[Offer], position: dict[int, int]
) -> list[tuple[Ready, Offer]]:
    """Match jobs with replicas (one priority, oldest first) to agents with free slots,
    nearest pairs first: (distance, the older job, the agent with more free slots, the
    earlier agent). A job is left only when no agent that reaches it has room left."""
    candidates = []
    for index, job in enumerate(run):
        cpus = int(job.requirements.get("cpus", 1))
        placed = job.requirements["locality"]
        for agent in agents:
            if agent.free_slots >= cpus and fits(job, agent):
                order = (_distance(placed, agent), index, -agent.free_slots, position[id(agent)])
                candidates.append((order, index, agent))
    heapq.heapify(candidates)
    taken: set[int] = set()
    matched: list[tuple[Ready, Offer]] = []
    while candidates and len(taken) < len(run):
        _, index, agent = heapq.heappop(candidates)
        job = run[index]
        cpus = int(job.requirements.get("cpus", 1))
        if index in taken or agent.free_slots < cpus:
            continue
        agent.free_slots -= cpus
        taken.add(index)
        matched.append((job, agent))
    return sorted(matched, key=lambda pair: pair[0].order)


def _plain_key(job: Ready, cpus: int) -> tuple[Any, ...] | None:
    """What ``fits`` reads of a job with neither storage nor replicas; None for other jobs
    (placed by locality) and for requirements that cannot be a key."""
    req = job.requirements
    if req.get("locality") is not None or req.get("storage"):
        return None
    key = (job.on, cpus, req.get("memory"), frozenset(req.get("tags", ())), req.get("site"))
    try:
        hash(key)
    except TypeError:
        return None
    return key


def _most_free(
    heaps: dict[tuple[Any, ...], list[tuple[int, int, Offer]]],
    key: tuple[Any, ...],
    job: Ready,
    cpus: int,
    agents: Sequence[Offer],
    position: dict[int, int],
) -> Offer | None:
    """Among the agents that fit ``job`` (whose requirements are ``key``), the one with the
    most free slots, the earliest on ties, if it has ``cpus`` free; else None.

    The heap holds (-free slots, position, offer) as last seen: an entry whose agent has
    fewer free slots by now (taken by a job of another key) is put back with the right count.
    """
    heap = heaps.get(key)
    if heap is None:
        heap = [
            (-a.free_slots, position[id(a)], a) for a in agents if a.free_slots > 0 and fits(job, a)
        ]
        heapq.heapify(heap)
        heaps[key] = heap
    while heap:
        seen, index, agent = heap[0]
        if -seen != agent.free_slots:  # stale
            if agent.free_slots > 0:
                heapq.heapreplace(heap, (-agent.free_slots, index, agent))
            else:
                heapq.heappop(heap)
            continue
        if agent.free_slots < cpus:
            return None  # the agent with the most free slots has too few
        heapq.heapreplace(heap, (-(agent.free_slots - cpus), index, agent))
        return agent
    return None


def never_fits(job: Ready, agents: Sequence[Offer]) -> bool:
    """True when no connected agent could ever take ``job`` (worth telling the operator)."""
    return bool(agents) and not any(fits(job, a) for a in agents)
