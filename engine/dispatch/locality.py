"""Which replica of each input a job reads, given the site of the agent that runs it: pure.

A site's distance to a storage element (RSE) comes from ``[sites]`` in wfe.toml, 0 (local)
to 100 (far); a storage element a site does not list is at ``UNKNOWN`` (100: far). A stage
may set ``max_distance``: a replica farther than that from an agent's site is out of reach.
For each input the *nearest* replica within reach is chosen (ties: the first by RSE name);
a job is as far from a site as its farthest input's nearest replica, and it fits an agent
only when every input that has replicas has one within reach of the agent's site.

When a request's batch opens, ``placement`` works this out once for every site wfe.toml
names (and for any other site: every RSE at ``UNKNOWN``) and the result travels with the
job as ``requirements["locality"]`` (JSON). A dispatch round then costs one dict lookup per
candidate agent (``reach``): the scheduler prefers the nearest agent among those with a free
slot, the dispatch gives the job its chosen replicas (``with_replicas``), and the attempt
records them. So the agent is bound to the job late, when it has a free slot, as justIN's
``justin-get-file`` binds a file to a worker; inputs are still grouped into jobs when their
batch opens.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from wfe.engine.repository.rowtypes import JsonValue

UNKNOWN = 100  # distance of a storage element a site does not list: far
FAR = 100  # the largest distance; ``max_distance`` at or above it reaches every replica
ELSEWHERE = "*"  # the key of sites wfe.toml does not name, in a placement

Replica = tuple[str, str]  # (rse, location)
Sites = Mapping[str, Mapping[str, int]]  # site -> rse -> distance


def distance(distances: Mapping[str, int], rse: str) -> int:
    """How far storage element ``rse`` is, by one site's table."""
    return distances.get(rse, UNKNOWN)


def nearest(
    replicas: Sequence[Replica], distances: Mapping[str, int], max_distance: int | None
) -> tuple[Replica, int] | None:
    """The replica nearest a site (by its ``distances``) within ``max_distance`` (None: no
    limit), and its distance; None when every replica is beyond the limit (or none given).
    Ties go to the first RSE by name."""
    best: tuple[Replica, int] | None = None
    for replica in sorted(replicas):
        d = distance(distances, replica[0])
        if max_distance is not None and d > max_distance:
            continue
        if best is None or d < best[1]:
            best = (replica, d)
    return best


def place(
    inputs: Sequence[Sequence[Replica]], distances: Mapping[str, int], max_distance: int | None
) -> dict[str, Any] | None:
    """For one site: ``{"distance": d, "pick": [[rse, location] or None per input]}``, d
    being the farthest input's nearest replica (0 when no input has replicas); None when
    some input's replicas are all out of reach."""
    farthest = 0
    pick: list[list[str] | None] = []
    for replicas in inputs:
        if not replicas:
            pick.append(None)  # no replica recorded: the job reads the catalog path
            continue
        found = nearest(replicas, distances, max_distance)
        if found is None:
            return None
        pick.append(list(found[0]))
        farthest = max(farthest, found[1])
    return {"distance": farthest, "pick": pick}


def placement(
    inputs: Sequence[Sequence[Replica]],
    sites: Sites,
    max_distance: int | None,
    names: Sequence[str] = (),
) -> dict[str, Any] | None:
    """``requirements["locality"]`` of a job of ``inputs`` (each input's replicas), or None
    when no input has a replica (the job goes anywhere, as before). ``names`` (the inputs'
    paths, in order) are kept for ``explain``."""
    if not any(inputs):
        return None
    if max_distance is not None and max_distance >= FAR:
        max_distance = None
    reachable = {}
    for site in sorted(sites):
        where = place(inputs, sites[site], max_distance)
        if where is not None:
            reachable[site] = where
    elsewhere = place(inputs, {}, max_distance)
    if elsewhere is not None:
        reachable[ELSEWHERE] = elsewhere
    return {
        "max_distance": max_distance,
        "sites": reachable,
        "known": sorted(sites),
        "replicas": [[list(r) for r in replicas] for replicas in inputs],
        "names": list(names),
    }


def reach(locality: Mapping[str, Any], site: str) -> Mapping[str, Any] | None:
    """Where a job stands from ``site``: its distance and picks, or None if out of reach."""
    sites: Mapping[str, Any] = locality["sites"]
    found = sites.get(site)
    if found is None and site not in locality["known"]:
        found = sites.get(ELSEWHERE)
    return found


def with_replicas(
    params: Mapping[str, Any], locality: Mapping[str, Any], site: str, key: str = "inputs"
) -> dict[str, Any]:
    """The job's parameters as an agent at ``site`` receives them: each input given its
    chosen replica's ``rse`` and ``location`` (``path`` stays the catalog path)."""
    where = reach(locality, site)
    given = params.get(key)
    if where is None or not isinstance(given, list):
        return dict(params)
    inputs = []
    for item, pick in zip(given, where["pick"], strict=False):
        if pick is not None and isinstance(item, dict):
            item = {**item, "rse": pick[0], "location": pick[1]}
        inputs.append(item)
    return {**params, key: inputs + given[len(inputs) :]}


def used(locality: Mapping[str, Any], site: str) -> JsonValue:
    """The replicas a job dispatched to ``site`` reads (``[rse, location]`` or null per
    input), as the attempt records them."""
    where = reach(locality, site)
    return None if where is None else list(where["pick"])


def explain(locality: Mapping[str, Any], agent_sites: Collection[str], sites: Sites) -> str:
    """Why a job waits: the first input none of ``agent_sites`` reaches, with its nearest
    replica from them (one line)."""
    limit = locality["max_distance"]
    names: Sequence[str] = locality.get("names") or ()
    if not agent_sites:
        return "no agent is connected"
    for i, replicas in enumerate(locality["replicas"]):
        if not replicas:
            continue
        options = [
            (distance(sites.get(s, {}), rse), rse, s)
            for s in sorted(agent_sites)
            for rse, _ in replicas
        ]
        d, rse, site = min(options)
        if limit is None or d <= limit:
            continue  # this input is within reach of some agent's site
        name = names[i] if i < len(names) else f"input {i + 1}"
        return (
            f"{name}: no replica within max_distance {limit} of an agent's site"
            f" (nearest: {rse} at distance {d} from site {site})"
        )
    return "no one agent's site reaches every input"
