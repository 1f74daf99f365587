"""The pilot factory's policy (engine/pilots/factory.py) and the shape of a pilot
(engine/pilots/model.py): pure, checked with hypothesis."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wfe.engine.pilots.factory import Waiting, needed, plan
from wfe.engine.pilots.model import Limits, Need, PilotError, shape_for

GIB = 1024**3

needs = st.builds(
    Need,
    cpus=st.integers(1, 8),
    memory=st.none() | st.sampled_from([GIB // 2, GIB, 4 * GIB, 128 * GIB]),
    site=st.none() | st.sampled_from(["hpc", "elsewhere"]),
    tags=st.sampled_from([(), ("gpu",), ("big", "gpu")]),
)
limits = st.builds(
    Limits,
    max_pilots=st.integers(0, 20),
    site=st.just("hpc"),
    tags=st.sampled_from([(), ("gpu",)]),
    cpus=st.integers(1, 4),
    max_cpus=st.just(8),
)
demands = st.dictionaries(needs, st.integers(0, 40), max_size=5)
waitings = st.dictionaries(
    needs, st.builds(Waiting, queued=st.integers(0, 5), starting=st.integers(0, 5)), max_size=5
)


@given(demands, waitings, limits, st.integers(0, 25))
def test_the_plan_never_passes_the_maximum_and_serves_only_what_it_can(
    demand: dict[Need, int], waiting: dict[Need, Waiting], limit: Limits, others: int
) -> None:
    """Live pilots plus those submitted stay within max_pilots (none submitted when already
    at or over it); pilots are submitted only for needs with demand that the factory's site,
    tags and sizes can serve, and each such need gets a pilot shape that fits it."""
    live = others + sum(w.total for w in waiting.values())
    decided = plan(demand, waiting, live=live, limits=limit)
    assert decided.submitted <= max(0, limit.max_pilots - live)
    for need, count in decided.submit.items():
        assert count > 0 and demand.get(need, 0) > 0
        shape = decided.shapes[need]
        assert shape.cpus >= need.cpus and shape.jobs(need) >= 1
        assert need.site in (None, limit.site) and set(need.tags) <= set(limit.tags)
        assert shape.memory == (limit.memory if need.memory is None else need.memory)
    for need, why in decided.refused.items():
        assert isinstance(shape_for(need, limit), str) and why
        assert need not in decided.submit


@given(demands, waitings, limits)
def test_with_room_the_pilots_on_the_way_match_the_demand(
    demand: dict[Need, int], waiting: dict[Need, Waiting], limit: Limits
) -> None:
    """With room enough, each served need ends the round with exactly the pilots its demand
    needs on the way (ceil(jobs / jobs per pilot)), unless more were already on the way: then
    the surplus still queued in the batch system is cancelled, never a started one."""
    roomy = Limits(max_pilots=10_000, site=limit.site, tags=limit.tags, cpus=limit.cpus, max_cpus=8)
    decided = plan(demand, waiting, live=0, limits=roomy)
    for need, shape in decided.shapes.items():
        on_the_way = waiting.get(need, Waiting())
        want = needed(demand.get(need, 0), shape, need)
        submitted = decided.submit.get(need, 0)
        cancelled = decided.cancel.get(need, 0)
        assert not (submitted and cancelled)
        assert cancelled <= on_the_way.queued
        if want >= on_the_way.total:
            assert on_the_way.total + submitted == want and not cancelled
        else:
            assert cancelled == min(on_the_way.queued, on_the_way.total - want)
        assert want == (math.ceil(demand.get(need, 0) / shape.jobs(need)))


@given(demands, limits)
def test_short_room_is_used_whole_and_shared_by_turns(
    demand: dict[Need, int], limit: Limits
) -> None:
    """When the needs want more pilots than there is room for, the room is used whole, and
    no need gets two more pilots than another need left short."""
    decided = plan(demand, {}, live=0, limits=limit)
    wants = {n: needed(demand.get(n, 0), s, n) for n, s in decided.shapes.items()}
    if sum(wants.values()) <= limit.max_pilots:
        assert decided.submit == {n: w for n, w in wants.items() if w}
        return
    assert decided.submitted == limit.max_pilots
    short = [n for n, w in wants.items() if decided.submit.get(n, 0) < w]
    for need in short:
        assert max(decided.submit.values(), default=0) <= decided.submit.get(need, 0) + 1


def test_jobs_bigger_than_a_pilot_are_refused_with_the_reason() -> None:
    """A need for another site, a tag not offered, or more than a pilot has is not served,
    and the reason says which."""
    limit = Limits(site="hpc", tags=("gpu",), max_cpus=8, max_memory=8 * GIB)
    cases = {
        Need(site="cern"): "site 'cern' is not this factory's ('hpc')",
        Need(tags=("fpga",)): "tag 'fpga' is not offered by this factory's pilots",
        Need(cpus=16): "16 cpus is more than a pilot has (8)",
        Need(memory=16 * GIB): f"{16 * GIB} bytes of memory is more than a pilot's slot has"
        f" ({8 * GIB})",
    }
    decided = plan(dict.fromkeys(cases, 3), {}, live=0, limits=limit)
    assert decided.refused == cases and decided.submit == {}


def test_a_pilot_has_whole_jobs_of_slots_and_memory_for_each() -> None:
    """A 3-cpu need on pilots of at least 4 cpus gets a 3-cpu pilot (no idle slot); its batch
    memory is every slot's."""
    shape = shape_for(Need(cpus=3, memory=GIB), Limits(site="hpc", cpus=4))
    assert not isinstance(shape, str)
    assert (shape.cpus, shape.jobs(Need(cpus=3)), shape.memory_mb) == (3, 1, 3 * 1024)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "requirements: expected an object"),
        ({"cpus": 0}, "requirements.cpus: expected a positive integer, got 0"),
        ({"memory": "1G"}, "requirements.memory: expected a positive number of bytes, got '1G'"),
        ({"gpus": 1}, "requirements.gpus: unknown (known: cpus, memory, site, tags)"),
    ],
)
def test_bad_requirements_are_refused_in_one_line(data: object, message: str) -> None:
    """A need from bad data is refused naming the field."""
    with pytest.raises(PilotError) as info:
        Need.from_data(data)
    assert str(info.value) == message


@given(needs)
def test_a_need_survives_its_data(need: Need) -> None:
    """A need turned into data and back is the same need."""
    assert Need.from_data(need.as_data()) == need


def test_bad_limits_are_refused_in_one_line() -> None:
    """A factory's limits that make no pilot possible are refused naming the setting."""
    with pytest.raises(PilotError, match="walltime must be at least 120 seconds, not 60"):
        Limits(walltime=60)
    with pytest.raises(PilotError, match="idle exit must be above 0 and below the walltime"):
        Limits(walltime=600, idle_exit=600)
    with pytest.raises(PilotError, match="cpus must be 1..64, not 0"):
        Limits(cpus=0)
