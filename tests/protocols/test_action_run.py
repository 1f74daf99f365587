"""The state machine of one action run."""

from __future__ import annotations

import itertools
from typing import Any

import attrs
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from wfe.protocols.action_run import (
    TERMINAL_STATES,
    TRANSITIONS,
    ActionRunMachine,
    ActionRunState,
    Event,
    RunCancelled,
    RunFailed,
    RunStarted,
    RunSucceeded,
)
from wfe.protocols.errors import IllegalTransition

S = ActionRunState

SAMPLES: dict[type[Any], Event] = {
    RunStarted: RunStarted(at=10.0),
    RunSucceeded: RunSucceeded(at=10.0),
    RunFailed: RunFailed(error="KeyError: 'dataset'", at=10.0),
    RunCancelled: RunCancelled(reason="operator", at=10.0),
}

#: Written out by hand from the brief; a missing pair must raise.
EXPECTED: dict[tuple[ActionRunState, type[Any]], ActionRunState] = {
    (S.PENDING, RunStarted): S.RUNNING,
    (S.PENDING, RunCancelled): S.CANCELLED,
    (S.RUNNING, RunSucceeded): S.SUCCEEDED,
    (S.RUNNING, RunFailed): S.FAILED,
    (S.RUNNING, RunCancelled): S.CANCELLED,
}

PATHS: dict[ActionRunState, list[Event]] = {
    S.PENDING: [],
    S.RUNNING: [RunStarted(at=1.0)],
    S.SUCCEEDED: [RunStarted(at=1.0), RunSucceeded(at=2.0)],
    S.FAILED: [RunStarted(at=1.0), RunFailed(error="boom", at=2.0)],
    S.CANCELLED: [RunCancelled(at=1.0)],
}


def run_in(state: ActionRunState) -> ActionRunMachine:
    machine = ActionRunMachine(run_id="r7", action="dataset.ingest")
    for event in PATHS[state]:
        machine.handle(event)
    assert machine.state is state
    return machine


def test_table_covers_every_state_and_every_state_is_reachable() -> None:
    """TRANSITIONS has a row per state, terminal rows are empty, and every state is reached."""
    assert set(TRANSITIONS) == set(ActionRunState)
    assert all(TRANSITIONS[state] == {} for state in TERMINAL_STATES)
    assert {S.PENDING, *EXPECTED.values()} == set(ActionRunState)


@pytest.mark.parametrize(
    ("state", "event_class"),
    list(itertools.product(ActionRunState, SAMPLES)),
    ids=lambda v: getattr(v, "name", None) or v.__name__,
)
def test_every_pair_of_state_and_event(state: ActionRunState, event_class: type[Any]) -> None:
    """Each legal event leads where the table says; every other raises and changes nothing."""
    machine = run_in(state)
    expected = EXPECTED.get((state, event_class))
    if expected is None:
        before = attrs.asdict(machine)
        with pytest.raises(IllegalTransition) as info:
            machine.handle(SAMPLES[event_class])
        assert str(info.value) == (
            f"action run r7 (dataset.ingest): can't handle {event_class.__name__}"
            f" in state {state.name}"
        )
        assert attrs.asdict(machine) == before
    else:
        assert machine.handle(SAMPLES[event_class]) is expected
        assert machine.state is expected


def test_records_times_and_detail() -> None:
    """Start and end times are recorded, and a failure keeps its error line."""
    machine = run_in(S.RUNNING)
    machine.handle(RunFailed(error="ValueError: bad input", at=4.5))
    assert (machine.started_at, machine.ended_at, machine.detail) == (
        1.0,
        4.5,
        "ValueError: bad input",
    )
    assert machine.terminal


def test_cancelled_before_start_has_no_start_time() -> None:
    """A pending run cancelled before it started ends without a start time."""
    machine = run_in(S.PENDING)
    machine.handle(RunCancelled(reason="request cancelled", at=3.0))
    assert (machine.state, machine.started_at, machine.ended_at) == (S.CANCELLED, None, 3.0)
    assert machine.detail == "request cancelled"


class ActionRunRules(RuleBasedStateMachine):
    """Random event sequences against the hand-written table; invariants after every step."""

    machine: ActionRunMachine
    now: float

    @initialize(run_id=st.text(min_size=1, max_size=8), action=st.sampled_from(["a.b", "x.y"]))
    def start(self, run_id: str, action: str) -> None:
        self.machine = ActionRunMachine(run_id=run_id, action=action)
        self.now = 0.0

    @rule(dt=st.floats(0.0, 10.0), event_class=st.sampled_from(list(SAMPLES)))
    def event(self, dt: float, event_class: type[Any]) -> None:
        self.now += dt
        event = attrs.evolve(SAMPLES[event_class], at=self.now)
        machine = self.machine
        state = machine.state
        expected = EXPECTED.get((state, event_class))
        if expected is None:
            before = attrs.asdict(machine)
            with pytest.raises(IllegalTransition) as info:
                machine.handle(event)
            assert f"action run {machine.run_id} ({machine.action}):" in str(info.value)
            assert f"{event_class.__name__} in state {state.name}" in str(info.value)
            assert attrs.asdict(machine) == before
        else:
            assert machine.handle(event) is expected

    @rule()
    def new_run(self) -> None:
        """Start over with a fresh run, so that long sequences visit every state."""
        if self.machine.terminal:
            self.machine = ActionRunMachine(run_id=self.machine.run_id, action=self.machine.action)

    @invariant()
    def ended_exactly_when_terminal(self) -> None:
        machine = self.machine
        assert machine.terminal is (machine.state in TERMINAL_STATES)
        assert (machine.ended_at is not None) is machine.terminal

    @invariant()
    def started_exactly_when_it_ran(self) -> None:
        machine = self.machine
        ran = machine.state in (S.RUNNING, S.SUCCEEDED, S.FAILED)
        if ran:
            assert machine.started_at is not None
        if machine.state is S.PENDING:
            assert machine.started_at is None
        if machine.started_at is not None and machine.ended_at is not None:
            assert machine.started_at <= machine.ended_at

    @invariant()
    def terminal_states_absorb(self) -> None:
        if self.machine.terminal:
            for event in SAMPLES.values():
                with pytest.raises(IllegalTransition):
                    self.machine.handle(event)


TestActionRunMachine = ActionRunRules.TestCase
TestActionRunMachine.settings = settings(max_examples=100, stateful_step_count=30, deadline=None)
