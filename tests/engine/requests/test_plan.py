"""The pure decisions of a running request (wfe.engine.requests.plan, checking), without an
engine: stage ordering, batching, settling inputs, and what the request does next."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from wfe.engine.definitions import build_definition
from wfe.engine.requests import checking, plan
from wfe.engine.requests.model import BatchOutcome, StageInput, StageRecord, StageState
from wfe.protocols.errors import IllegalTransition
from wfe.protocols.request import InputAllocation, InputState, RequestVerb

W, R, D, F, S = (
    StageState.WAITING,
    StageState.RUNNING,
    StageState.DONE,
    StageState.FAILED,
    StageState.SKIPPED,
)


def definition(policy: str = "fail") -> Any:
    """a -> b -> d and a -> c -> d (a diamond), plus e after nothing."""
    stage = lambda name, **more: {"name": name, "rscript": "noop", **more}  # noqa: E731
    return build_definition(
        {
            "workflow": {"name": "p", "namespace": "n"},
            "policy": {"on_stage_failure": policy},
            "stages": [
                stage("a"),
                stage("b", after=["a"]),
                stage("c", after=["a"]),
                stage("d", after=["b", "c"]),
                stage("e"),
            ],
        }
    )


def inputs(n: int, **states: InputAllocation) -> list[StageInput]:
    result = []
    for i in range(n):
        key = f"i{i}"
        allocation = states.get(key, InputAllocation(input_id=key))
        result.append(StageInput(key=key, seq=i, path=f"/d/{key}", allocation=allocation))
    return result


def test_stages_start_when_upstream_is_done_and_skip_after_a_failure() -> None:
    """A stage starts when every upstream stage is done; a failure skips all downstream."""
    d = definition()
    assert plan.stage_changes(d, dict(a=W, b=W, c=W, d=W, e=W)) == {"a": R, "e": R}
    assert plan.stage_changes(d, dict(a=D, b=D, c=R, d=W, e=D)) == {}
    assert plan.stage_changes(d, dict(a=D, b=D, c=D, d=W, e=D)) == {"d": R}
    assert plan.stage_changes(d, dict(a=F, b=W, c=W, d=W, e=R)) == {"b": S, "c": S, "d": S}
    assert plan.stage_changes(d, dict(a=D, b=F, c=W, d=W, e=R)) == {"c": R, "d": S}


def test_a_stage_ends_when_its_inputs_do() -> None:
    """Done when all processed and nothing open; a failed input fails it at once under
    "fail", or when nothing is left under "complete"."""
    held = InputAllocation(input_id="i0").allocate("b1")
    done = held.process("b1")
    failed = held.fail("b1", "bad")
    assert plan.stage_end(inputs(1, i0=held), 1, fail_fast=True) is None
    assert plan.stage_end(inputs(1, i0=done), 0, fail_fast=True) == (D, "")
    assert plan.stage_end(inputs(0), 0, fail_fast=True) == (D, "")
    assert plan.stage_end(inputs(2, i0=failed), 0, fail_fast=True) == (F, "input i0 failed: bad")
    assert plan.stage_end(inputs(2, i0=failed), 0, fail_fast=False) is None  # i1 still to do
    both = inputs(2, i0=failed, i1=InputAllocation(input_id="i1").allocate("b").fail("b", "worse"))
    assert plan.stage_end(both, 0, fail_fast=False) == (F, "input i0 failed: bad (and 1 more)")


def test_batches_take_at_most_max_inputs_in_input_order() -> None:
    """Unallocated inputs are cut into batches of max_inputs; None makes one batch."""
    pool = inputs(5, i1=InputAllocation(input_id="i1").allocate("b0"))
    keys = lambda batches: [[i.key for i in b] for b in batches]  # noqa: E731
    assert keys(plan.batches_to_make(reversed(pool), 2)) == [["i0", "i2"], ["i3", "i4"]]
    assert keys(plan.batches_to_make(pool, None)) == [["i0", "i2", "i3", "i4"]]
    assert plan.batches_to_make(inputs(0), 3) == []


def test_settling_processes_releases_or_withdraws() -> None:
    """Released inputs count against max_allocations (and name the last error when they
    fail); withdrawn ones do not count; inputs the batch no longer holds are left alone."""
    fresh = InputAllocation(input_id="x").allocate("b1")
    [processed] = plan.settle([fresh], "b1", BatchOutcome.PROCESSED, max_allocations=2)
    assert processed.state is InputState.PROCESSED
    [back] = plan.settle([fresh], "b1", BatchOutcome.RELEASED, max_allocations=2, reason="boom")
    assert (back.state, back.allocations) == (InputState.UNALLOCATED, 1)
    [out] = plan.settle(
        [back.allocate("b2")], "b2", BatchOutcome.RELEASED, max_allocations=2, reason="boom"
    )
    assert (out.state, out.reason) == (InputState.FAILED, "allocated 2 times (limit 2); last: boom")
    [withdrawn] = plan.settle([fresh], "b1", BatchOutcome.WITHDRAWN, max_allocations=1)
    assert (withdrawn.state, withdrawn.allocations, withdrawn.job_id) == (
        InputState.UNALLOCATED,
        0,
        None,
    )
    assert plan.settle([processed], "b1", BatchOutcome.RELEASED, max_allocations=1) == [processed]
    assert plan.settle([fresh], "b9", BatchOutcome.PROCESSED, max_allocations=1) == [fresh]
    with pytest.raises(IllegalTransition, match="held by job b1"):
        plan.withdraw(fresh, "b9")


def test_what_a_request_does_next() -> None:
    """Fail on a failed stage under "fail"; check when every stage has ended; the
    failures a completed request lists."""
    errors = {"b": "input i0 failed: bad"}
    ended = dict(a=D, b=F, c=D, d=S, e=D)
    assert plan.request_next(definition(), ended, errors) == (
        RequestVerb.FAIL,
        "stage 'b' failed: input i0 failed: bad",
    )
    assert plan.request_next(definition("complete"), ended, errors) == (RequestVerb.CHECK, "")
    assert plan.request_next(definition(), dict(ended, b=D, d=R), {}) is None
    assert plan.stage_failures(
        definition("complete"), ended, {**errors, "d": "upstream stage 'b' failed"}
    ) == [
        "stage 'b' failed: input i0 failed: bad",
        "stage 'd' skipped: upstream stage 'b' failed",
    ]


def test_checking_lists_every_problem() -> None:
    """Inputs not processed (beyond what the policy tolerates) and products missing or
    changed are each one line."""
    stages = {
        "a": StageRecord(name="a", position=0, state=F),
        "b": StageRecord(name="b", position=1, state=R),
    }
    failed = InputAllocation(input_id="i0").allocate("b1").fail("b1", "bad")
    got = {"a": inputs(1, i0=failed), "b": inputs(1)}
    assert checking.input_problems(definition("complete"), stages, got) == [
        "stage 'b' has not ended (state running)",
        "stage 'b': input i0 is still unallocated",
    ]
    assert (
        checking.input_problems(definition("fail"), stages, got)[0]
        == "stage 'a': input i0 failed: bad"
    )
    products = [
        {"id": "p1", "path": "/x", "size": 3, "sha256": "a" * 64},
        {"id": "p2", "path": "/y", "size": 3, "sha256": "b" * 64},
        {"id": "p3", "path": "/z", "size": 3, "sha256": "c" * 64},
        {"id": "p4", "path": "/w", "size": 3, "sha256": "d" * 64},
    ]
    found: dict[str, Any] = {
        "p1": (3, "a" * 64),
        "p2": "missing",
        "p3": (3, "f" * 64),
        "p4": (4, "d" * 64),
    }
    assert checking.product_problems(products, found) == [
        "product p2 (/y): missing",
        f"product p3 (/z): sha256 {'f' * 12}… differs from the recorded {'c' * 12}…",
        "product p4 (/w): size 4 differs from the recorded 3",
    ]


class StageRun(RuleBasedStateMachine):
    """One stage's inputs, batched and settled in any order: no input is ever held by two
    batches, allocations stay within the limit, and the stage ends only when its inputs do."""

    @initialize(
        n=st.integers(0, 6),
        max_inputs=st.none() | st.integers(1, 3),
        max_allocations=st.integers(1, 3),
    )
    def setup(self, n: int, max_inputs: int | None, max_allocations: int) -> None:
        self.inputs = {i.key: i for i in inputs(n)}
        self.max_inputs = max_inputs
        self.max_allocations = max_allocations
        self.open: dict[str, list[str]] = {}
        self.made = 0

    def _set(self, allocations: list[InputAllocation]) -> None:
        for a in allocations:
            old = self.inputs[a.input_id]
            self.inputs[a.input_id] = StageInput(
                key=old.key, seq=old.seq, path=old.path, allocation=a
            )

    @rule()
    def make_batches(self) -> None:
        for chunk in plan.batches_to_make(self.inputs.values(), self.max_inputs):
            self.made += 1
            batch = f"b{self.made}"
            self._set([i.allocation.allocate(batch) for i in chunk])
            self.open[batch] = [i.key for i in chunk]

    @precondition(lambda self: bool(self.open))
    @rule(data=st.data(), outcome=st.sampled_from(BatchOutcome))
    def end_a_batch(self, data: st.DataObject, outcome: BatchOutcome) -> None:
        batch = data.draw(st.sampled_from(sorted(self.open)))
        keys = self.open.pop(batch)
        held = [self.inputs[k].allocation for k in keys]
        self._set(
            plan.settle(held, batch, outcome, max_allocations=self.max_allocations, reason="r")
        )

    @invariant()
    def held_by_exactly_one_open_batch(self) -> None:
        for key, item in self.inputs.items():
            holders = [b for b, keys in self.open.items() if key in keys]
            if item.allocation.state is InputState.ALLOCATED:
                assert holders == [item.allocation.job_id]
            else:
                assert holders == []

    @invariant()
    def within_limits(self) -> None:
        for item in self.inputs.values():
            assert 0 <= item.allocation.allocations <= self.max_allocations
            if item.allocation.state is InputState.FAILED:
                assert item.allocation.allocations == self.max_allocations
        for keys in self.open.values():
            assert self.max_inputs is None or len(keys) <= self.max_inputs

    @invariant()
    def ends_only_with_its_inputs(self) -> None:
        states = {i.allocation.state for i in self.inputs.values()}
        ended = plan.stage_end(list(self.inputs.values()), len(self.open), fail_fast=False)
        if ended is None:
            assert self.open or states & {InputState.UNALLOCATED, InputState.ALLOCATED}
        elif ended[0] is D:
            assert states <= {InputState.PROCESSED} and not self.open
        else:
            assert InputState.FAILED in states and not self.open


TestStageRun = StageRun.TestCase
TestStageRun.settings = settings(max_examples=60, stateful_step_count=20, deadline=None)
