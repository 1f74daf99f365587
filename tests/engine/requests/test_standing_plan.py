"""Pure decisions of standing requests: cooldown rounds, the gap, new matches, sub-groups,
regrouping and stage versions."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from wfe.engine.requests import plan
from wfe.engine.requests.model import StageInput
from wfe.engine.requests.standing import (
    gap,
    idle,
    new_matches,
    next_round,
    regroup,
    stage_version,
    sub_groups,
)
from wfe.protocols.request import InputAllocation, InputState


def item(seq: int, state: InputState = InputState.UNALLOCATED, **meta: Any) -> StageInput:
    key = f"catalog:/d/{seq}"
    allocation = InputAllocation(input_id=key, state=state)
    return StageInput(key=key, seq=seq, path=f"/d/{seq}", metadata=meta, allocation=allocation)


times = st.floats(min_value=0, max_value=1e6, allow_nan=False)


@given(gap_size=st.integers(0, 5), last=st.none() | times, cooldown=times, now=times)
def test_a_round_starts_only_with_a_gap_outside_the_window(
    gap_size: int, last: float | None, cooldown: float, now: float
) -> None:
    """A round starts iff there is a gap and the window since the last round is over;
    a gap inside the window waits exactly until the window's end."""
    decision = next_round(gap=gap_size, last_round=last, cooldown=cooldown, now=now)
    over = last is None or now >= last + cooldown
    assert decision.start == (gap_size > 0 and over)
    if gap_size > 0 and not over:
        assert last is not None and decision.wake_at == last + cooldown
    else:
        assert decision.wake_at is None


@given(
    st.lists(
        st.tuples(
            st.integers(0, 1000),
            st.sampled_from(list(InputState)),
            st.sampled_from(["a", "b", "c"]),
        ),
        unique_by=lambda t: t[0],
        max_size=20,
    )
)
def test_groups_partition_the_gap(rows: list[tuple[int, InputState, str]]) -> None:
    """Sub-groups of the gap hold every gap input once, each group one source value, in
    input order; the gap is exactly the unallocated inputs."""
    inputs = [item(seq, state, source=src) for seq, state, src in rows]
    waiting = gap(inputs)
    assert [i.seq for i in waiting] == sorted(
        seq for seq, state, _ in rows if state is InputState.UNALLOCATED
    )
    groups = plan.batches_to_make(inputs, None, ("source",))
    assert sorted(i.seq for g in groups for i in g) == [i.seq for i in waiting]
    for group in groups:
        assert len({i.metadata["source"] for i in group}) == 1
        assert [i.seq for i in group] == sorted(i.seq for i in group)
    assert len(groups) == len({i.metadata["source"] for i in waiting})


def test_sub_groups_by_two_fields() -> None:
    """group_by ["source", "obs_date"]: one group per distinct combination; a missing
    field is a value of its own."""
    inputs = [
        item(0, source="m31", obs_date="d1"),
        item(1, source="m31", obs_date="d2"),
        item(2, source="m31", obs_date="d1"),
        item(3, source="ngc253"),
    ]
    groups = sub_groups(inputs, ["source", "obs_date"])
    assert [[i.seq for i in g] for g in groups] == [[0, 2], [1], [3]]


def test_a_grown_group_runs_again_whole() -> None:
    """A processed input is run again when a new input joins its sub-group, not otherwise."""
    inputs = [
        item(0, InputState.PROCESSED, source="m31"),
        item(1, InputState.PROCESSED, source="ngc253"),
        item(2, InputState.UNALLOCATED, source="m31"),
        item(3, InputState.FAILED, source="m31"),
    ]
    assert regroup(inputs, ["source"]) == ["catalog:/d/0"]


def test_new_matches_keep_the_finders_order() -> None:
    """Only keys a stage lacks are new, in the order the finder gave them."""
    found = [("catalog:/a", "/a", {}), ("catalog:/b", "/b", {}), ("catalog:/c", "/c", {})]
    assert [m[0] for m in new_matches(["catalog:/b"], found)] == ["catalog:/a", "catalog:/c"]


def test_a_stage_version_changes_with_script_or_params() -> None:
    """The version is the same for the same script and parameters (in any key order) and
    differs when either changes."""
    v = stage_version("sha-1", {"gain": 0.5, "offset": 1})
    assert v == stage_version("sha-1", {"offset": 1, "gain": 0.5})
    assert v != stage_version("sha-2", {"gain": 0.5, "offset": 1})
    assert v != stage_version("sha-1", {"gain": 0.6, "offset": 1})


def test_a_busy_sub_group_waits_for_its_job() -> None:
    """A sub-group a job holds inputs of is neither regrouped nor batched until it ends."""
    inputs = [
        item(0, InputState.PROCESSED, source="m31"),
        item(1, InputState.ALLOCATED, source="m31"),
        item(2, InputState.UNALLOCATED, source="m31"),
        item(3, InputState.UNALLOCATED, source="ngc253"),
    ]
    assert regroup(inputs, ["source"]) == []
    assert [i.seq for i in idle(inputs, ["source"])] == [3]
