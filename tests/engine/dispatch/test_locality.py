"""Choosing replicas by distance (pure): the nearest within ``max_distance``, never beyond it,
and the scheduler sending a job only to an agent whose site reaches every input."""

from __future__ import annotations

from typing import Any

import attrs
from hypothesis import given
from hypothesis import strategies as st

from wfe.engine.dispatch import locality
from wfe.engine.dispatch.scheduler import Offer, Ready, assign, fits
from wfe.protocols.messages import Capabilities

RSES = ["CERN_EOS", "FNAL_DCACHE", "RAL_ECHO", "NIKHEF", "PIC"]
SITES = ["cern", "fnal", "ral"]

distances = st.dictionaries(st.sampled_from(RSES), st.integers(0, 100))
replica_lists = st.lists(
    st.tuples(st.sampled_from(RSES), st.text(min_size=1, max_size=8)),
    unique_by=lambda r: r[0],
    max_size=4,
)
limits = st.none() | st.integers(0, 100)
site_tables = st.dictionaries(st.sampled_from(SITES), distances)


@given(replicas=replica_lists, table=distances, limit=limits)
def test_the_chosen_replica_is_the_nearest_within_the_limit(
    replicas: list[tuple[str, str]], table: dict[str, int], limit: int | None
) -> None:
    """``nearest`` picks a replica no farther than any other within the limit, never one
    beyond it, and picks none only when every replica is beyond it."""
    found = locality.nearest(replicas, table, limit)
    within = [r for r in replicas if limit is None or locality.distance(table, r[0]) <= limit]
    if not within:
        assert found is None
        return
    assert found is not None
    replica, d = found
    assert replica in replicas
    assert d == locality.distance(table, replica[0])
    assert limit is None or d <= limit
    assert d == min(locality.distance(table, r[0]) for r in within)


@given(
    inputs=st.lists(replica_lists, min_size=1, max_size=4),
    sites=site_tables,
    limit=limits,
    site=st.sampled_from([*SITES, "elsewhere"]),
)
def test_a_placement_reaches_a_site_only_within_the_limit(
    inputs: list[list[tuple[str, str]]],
    sites: dict[str, dict[str, int]],
    limit: int | None,
    site: str,
) -> None:
    """From a site, a job is as far as its farthest input's nearest replica; it is out of
    reach exactly when some input with replicas has none within the limit from there; each
    pick is that input's nearest replica from the site."""
    placed = locality.placement(inputs, sites, limit)
    if not any(inputs):
        assert placed is None
        return
    assert placed is not None
    table = sites.get(site, {})
    cap = None if limit is None or limit >= locality.FAR else limit
    nearest = [locality.nearest(r, table, cap) for r in inputs]
    where = locality.reach(placed, site)
    if any(r and n is None for r, n in zip(inputs, nearest, strict=True)):
        assert where is None
        return
    assert where is not None
    assert where["distance"] == max((n[1] for n in nearest if n is not None), default=0)
    assert cap is None or where["distance"] <= cap
    for pick, n in zip(where["pick"], nearest, strict=True):
        assert pick == (None if n is None else list(n[0]))


def test_an_unlisted_storage_element_is_far() -> None:
    """A storage element a site does not list is at distance 100: out of reach of any
    ``max_distance`` under 100, in reach without one."""
    inputs = [[("TAPE", "/tape/a")]]
    sites = {"fnal": {"FNAL_DCACHE": 0}}
    assert locality.reach(locality.placement(inputs, sites, 99) or {}, "fnal") is None
    far = locality.reach(locality.placement(inputs, sites, None) or {}, "fnal")
    assert far is not None and far["distance"] == locality.UNKNOWN


def test_the_job_receives_the_chosen_replicas_location() -> None:
    """The dispatch's inputs carry the chosen replica's rse and location; ``path`` stays."""
    inputs = [[("CERN_EOS", "root://eos/a"), ("FNAL_DCACHE", "/pnfs/a")], []]
    placed = locality.placement(inputs, {"fnal": {"FNAL_DCACHE": 0, "CERN_EOS": 60}}, None)
    assert placed is not None
    params = {"inputs": [{"path": "/cat/a", "metadata": {}}, {"path": "/cat/b", "metadata": {}}]}
    given = locality.with_replicas(params, placed, "fnal")
    assert given["inputs"] == [
        {"path": "/cat/a", "metadata": {}, "rse": "FNAL_DCACHE", "location": "/pnfs/a"},
        {"path": "/cat/b", "metadata": {}},
    ]
    assert locality.used(placed, "fnal") == [["FNAL_DCACHE", "/pnfs/a"], None]


def _offer(name: str, site: str, free: int = 1) -> Offer:
    return Offer(name=name, free_slots=free, capabilities=Capabilities(slots=4, site=site))


def _ready(job_id: str, placed: dict[str, Any] | None, seq: int = 0) -> Ready:
    requirements = {} if placed is None else {"locality": placed}
    return Ready(job_id=job_id, priority=0, seq=seq, requirements=requirements)


SITE_TABLE = {
    "cern": {"CERN_EOS": 0, "FNAL_DCACHE": 70},
    "fnal": {"FNAL_DCACHE": 0, "CERN_EOS": 70},
}


def test_the_scheduler_prefers_the_agent_nearest_the_inputs() -> None:
    """With free slots at both sites, each job goes to the site that holds its replica,
    whatever the order of the agents."""
    at_cern = locality.placement([[("CERN_EOS", "x")]], SITE_TABLE, None)
    at_fnal = locality.placement([[("FNAL_DCACHE", "y")]], SITE_TABLE, None)
    for agents in (
        [_offer("f", "fnal"), _offer("c", "cern")],
        [_offer("c", "cern"), _offer("f", "fnal")],
    ):
        pairs = assign([_ready("jc", at_cern, 0), _ready("jf", at_fnal, 1)], agents)
        assert {j.job_id: a for j, a in pairs} == {"jc": "c", "jf": "f"}


def test_a_job_beyond_max_distance_of_every_agent_waits() -> None:
    """A job whose only replica is farther than max_distance from every agent's site fits
    none of them, so it is not assigned; within the limit, the far agent takes it."""
    placed = locality.placement([[("CERN_EOS", "x")]], SITE_TABLE, 50)
    agents = [_offer("f", "fnal", free=4)]
    assert not fits(_ready("j", placed), agents[0])
    assert assign([_ready("j", placed)], agents) == []
    loose = locality.placement([[("CERN_EOS", "x")]], SITE_TABLE, 80)
    assert [a for _, a in assign([_ready("j", loose)], agents)] == ["f"]


@given(
    jobs=st.lists(st.lists(replica_lists, min_size=1, max_size=3), min_size=1, max_size=6),
    limit=limits,
    free=st.lists(st.integers(0, 2), min_size=3, max_size=3),
)
def test_assign_never_sends_a_job_beyond_its_limit(
    jobs: list[list[list[tuple[str, str]]]], limit: int | None, free: list[int]
) -> None:
    """Whatever the replicas and free slots, every assigned job's inputs are within
    ``max_distance`` of its agent's site; no agent left with a free slot reaches an assigned
    job nearer than the agent it went to; and no job left waiting is nearer an agent than
    the job that agent took (free agents take the nearest inputs first)."""
    tables = {"cern": {"CERN_EOS": 0, "PIC": 30}, "fnal": {"FNAL_DCACHE": 0}, "ral": {}}
    agents = [_offer(s, s, f) for s, f in zip(["cern", "fnal", "ral"], free, strict=True)]
    ready = [
        _ready(f"j{i}", locality.placement(inp, tables, limit), i) for i, inp in enumerate(jobs)
    ]
    pairs = assign(ready, agents)
    left = {a.name: a.free_slots for a in agents}  # after assign: what is still free
    taken = {job.job_id for job, _ in pairs}

    def distance(job: Ready, site: str) -> int | None:
        where = locality.reach(job.requirements["locality"], site)
        return None if where is None else int(where["distance"])

    for job, name in pairs:
        if job.requirements.get("locality") is None:
            continue
        d = distance(job, name)
        assert d is not None
        assert limit is None or d <= limit
        for other in agents:
            near = distance(job, other.name)
            assert not (near is not None and left[other.name] > 0 and near < d)
        if all(r.requirements.get("locality") is not None for r in ready):  # one run
            for waiting in ready:
                near = distance(waiting, name)
                assert waiting.job_id in taken or near is None or near >= d


def test_a_free_agent_takes_the_nearest_waiting_inputs_before_older_far_ones() -> None:
    """One free slot at cern; of two waiting jobs of one priority, the older one's replica
    is at PIC (30 away), the younger one's at CERN_EOS (local): cern takes the younger."""
    far = locality.placement([[("PIC", "p")]], SITE_TABLE, None)
    near = locality.placement([[("CERN_EOS", "c")]], SITE_TABLE, None)
    pairs = assign([_ready("old", far, 0), _ready("new", near, 1)], [_offer("c", "cern", 1)])
    assert [(j.job_id, a) for j, a in pairs] == [("new", "c")]


def test_priority_comes_before_distance() -> None:
    """A higher-priority job whose replica is farther still goes first."""
    far = attrs.evolve(
        _ready("urgent", locality.placement([[("PIC", "p")]], SITE_TABLE, None), 0), priority=5
    )
    near = _ready("near", locality.placement([[("CERN_EOS", "c")]], SITE_TABLE, None), 1)
    pairs = assign([far, near], [_offer("c", "cern", 1)])
    assert [(j.job_id, a) for j, a in pairs] == [("urgent", "c")]
