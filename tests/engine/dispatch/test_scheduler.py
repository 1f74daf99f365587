"""The scheduler's pure decision: which ready job goes to which agent."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from wfe.engine.dispatch.scheduler import Offer, Ready, assign, fits, never_fits
from wfe.protocols.messages import Capabilities


def offer(name: str, free: int, **caps: object) -> Offer:
    slots = int(caps.pop("slots", max(free, 1)))  # type: ignore[call-overload]
    return Offer(name=name, free_slots=free, capabilities=Capabilities(slots=slots, **caps))  # type: ignore[arg-type]


def ready(job_id: str, priority: int = 0, seq: int = 0, **req: object) -> Ready:
    on = req.pop("on", None)
    return Ready(job_id=job_id, priority=priority, seq=seq, requirements=dict(req), on=on)  # type: ignore[arg-type]


def ordered(jobs: list[Ready]) -> list[Ready]:
    return sorted(jobs, key=lambda r: r.order)


def test_priority_then_age() -> None:
    """Higher priority goes first; among equals, the older job."""
    jobs = ordered([ready("old-low", 0, 1), ready("new-high", 5, 3), ready("old-high", 5, 2)])
    pairs = assign(jobs, [offer("a", 2)])
    assert [job.job_id for job, _ in pairs] == ["old-high", "new-high"]


def test_free_slots_are_never_exceeded() -> None:
    """An agent gets at most as many jobs as it has free slots."""
    jobs = ordered([ready(f"j{i}", seq=i) for i in range(10)])
    pairs = assign(jobs, [offer("a", 3), offer("b", 1)])
    per_agent = {name: sum(1 for _, n in pairs if n == name) for name in ("a", "b")}
    assert per_agent == {"a": 3, "b": 1}


def test_requirements_are_matched() -> None:
    """Memory, tags, site and pinning each restrict where a job may go."""
    agents = [
        offer("small", 1, memory=1000, tags=("linux",), site="north"),
        offer("big", 1, memory=10_000, tags=("linux", "gpu"), site="south"),
    ]
    jobs = ordered(
        [
            ready("needs-mem", seq=0, memory=5000),
            ready("needs-north", seq=1, site="north"),
        ]
    )
    assert {(j.job_id, n) for j, n in assign(jobs, agents)} == {
        ("needs-mem", "big"),
        ("needs-north", "small"),
    }
    assert assign([ready("gpu", tags=["gpu"])], [offer("small", 1, tags=("linux",))]) == []
    assert [n for _, n in assign([ready("pinned", on="b")], [offer("a", 5), offer("b", 1)])] == [
        "b"
    ]


def test_a_job_that_cannot_be_placed_does_not_block_others() -> None:
    """A high-priority job nobody can run is skipped, lower ones still go."""
    jobs = ordered([ready("impossible", 9, 0, tags=["none"]), ready("easy", 0, 1)])
    assert [j.job_id for j, _ in assign(jobs, [offer("a", 1)])] == ["easy"]
    assert never_fits(jobs[0], [offer("a", 1)])
    assert not never_fits(jobs[1], [offer("a", 1)])


def test_locality_prefers_the_agent_with_the_data() -> None:
    """A job whose inputs live in some storage goes to an agent that can read it."""
    agents = [offer("far", 4), offer("near", 1, storage=("/data/run7",))]
    [(_, name)] = assign([ready("j", storage=["/data/run7"])], agents)
    assert name == "near"


def test_cpus_take_several_slots() -> None:
    """A job asking for 2 cpus takes 2 slots."""
    pairs = assign(
        ordered([ready("wide", seq=0, cpus=2), ready("narrow", seq=1)]), [offer("a", 2, slots=2)]
    )
    assert [j.job_id for j, _ in pairs] == ["wide"]


@given(
    st.lists(st.tuples(st.integers(-3, 3), st.integers(1, 2)), max_size=30),
    st.lists(st.integers(0, 4), min_size=1, max_size=4),
)
def test_assignment_invariants(jobs: list[tuple[int, int]], free: list[int]) -> None:
    """Never over-commits an agent, never assigns a job twice, and respects priority:
    a job is left out only if every higher-or-equal one that fits was placed or none fit."""
    queue = ordered([ready(f"j{i}", p, i, cpus=c) for i, (p, c) in enumerate(jobs)])
    agents = [offer(f"a{i}", f, slots=4) for i, f in enumerate(free)]
    pairs = assign(
        queue,
        [Offer(name=a.name, free_slots=a.free_slots, capabilities=a.capabilities) for a in agents],
    )
    assert len({j.job_id for j, _ in pairs}) == len(pairs)
    for a in agents:
        used = sum(int(j.requirements.get("cpus", 1)) for j, n in pairs if n == a.name)
        assert used <= a.free_slots
    placed = {j.job_id for j, _ in pairs}
    if len(placed) < len(queue) and sum(free) > 0:
        # a single-cpu job is left out only if no slot at all was free at its turn
        for job in queue:
            if job.job_id in placed or job.requirements["cpus"] != 1:
                continue
            before = [j for j in queue if j.order < job.order]
            assert sum(j.requirements["cpus"] for j in before if j.job_id in placed) == sum(free)


def _assign_by_scanning(queue: list[Ready], agents: list[Offer]) -> list[tuple[str, str]]:
    """The rule stated plainly: each job in order to the fitting agent with the most free
    slots (the earliest on ties), scanning every agent for every job."""
    free = {a.name: a.free_slots for a in agents}
    pairs = []
    for job in queue:
        cpus = int(job.requirements.get("cpus", 1))
        candidates = [a for a in agents if free[a.name] >= cpus and fits(job, a)]
        if candidates:
            best = max(candidates, key=lambda a: (free[a.name], -agents.index(a)))
            free[best.name] -= cpus
            pairs.append((job.job_id, best.name))
    return pairs


@given(
    st.lists(
        st.tuples(
            st.integers(-2, 2),
            st.integers(1, 3),
            st.sampled_from([(), (), ("gpu",)]),
            st.sampled_from([None, None, "north"]),
            st.sampled_from([None, None, None, "a0"]),
        ),
        max_size=40,
    ),
    st.lists(
        st.tuples(
            st.integers(0, 4),
            st.sampled_from([(), ("gpu",)]),
            st.sampled_from(["north", "south"]),
        ),
        min_size=1,
        max_size=6,
    ),
)
@settings(max_examples=400)
def test_assign_places_as_scanning_every_agent_would(
    jobs: list[tuple[int, int, tuple[str, ...], str | None, str | None]],
    agents: list[tuple[int, tuple[str, ...], str]],
) -> None:
    """Whatever the mix of requirements (cpus, tags, site, pinning), ``assign`` (a heap of
    fitting agents per set of requirements) gives exactly the pairs of the plain rule."""
    queue = ordered(
        [
            ready(f"j{i}", p, i, cpus=c, tags=list(t), **({"site": s} if s else {}), on=on)
            for i, (p, c, t, s, on) in enumerate(jobs)
        ]
    )
    offers = [offer(f"a{i}", f, slots=4, tags=t, site=s) for i, (f, t, s) in enumerate(agents)]
    expected = _assign_by_scanning(queue, offers)
    copies = [
        Offer(name=a.name, free_slots=a.free_slots, capabilities=a.capabilities) for a in offers
    ]
    assert [(j.job_id, n) for j, n in assign(queue, copies)] == expected
