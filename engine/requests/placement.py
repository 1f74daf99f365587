"""Where a stage's jobs may run, as the requests service sees it: the replicas of a batch's
inputs, placed for every site before its job is submitted, and why a job with replicas
still waits (for ``wfe request``). The choice itself is ``wfe.engine.dispatch.locality``."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from wfe.engine.dispatch import locality
from wfe.engine.repository.replicas import replicas_of

if TYPE_CHECKING:
    from wfe.engine.dispatch.controller import AgentController
    from wfe.engine.repository import Repository


async def place_inputs(
    repo: Repository, paths: Sequence[str], sites: locality.Sites, max_distance: int | None
) -> dict[str, Any] | None:
    """The ``locality`` requirement of a job of the inputs at ``paths`` (None when none of
    them has a replica: the job runs anywhere, reading the catalog paths)."""
    found = await repo.read(replicas_of(paths))
    if not found:
        return None
    return locality.placement([found.get(p, []) for p in paths], sites, max_distance, paths)


def why_waiting(
    controller: AgentController, jobs: Iterable[str], sites: locality.Sites
) -> list[str]:
    """One line for each of ``jobs`` that waits because no connected agent's site has a
    replica of each of its inputs within reach."""
    agent_sites = {a.capabilities.site for a in controller.registry.usable()}
    lines = []
    for job_id in sorted(jobs):
        live = controller.jobs.get(job_id)
        if live is None or live.active:
            continue
        placed = live.requirements.get("locality")
        if placed is None or any(locality.reach(placed, s) is not None for s in agent_sites):
            continue
        lines.append(f"job {job_id} waits: {locality.explain(placed, agent_sites, sites)}")
    return lines
