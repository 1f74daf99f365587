"""The state machine of one job attempt."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from wfe.protocols.attempt import (
    TERMINAL_STATES,
    TRANSITIONS,
    AgentLost,
    AttemptMachine,
    AttemptState,
    CancelRequested,
    DeadlinePassed,
    Dispatched,
    Event,
    Finished,
    Refused,
    Started,
    event_from_message,
    should_retry,
)
from wfe.protocols.errors import IllegalTransition
from wfe.protocols.messages import FinishReason, JobAccepted, JobFinished, JobRefused

S = AttemptState
TIMEOUT = 100.0
GRACE = 10.0

#: One example of every event, at t=1000.
SAMPLES: dict[type[Any], Event] = {
    Dispatched: Dispatched(agent="a2", at=1000.0),
    Started: Started(at=1000.0, pid=42),
    Finished: Finished(reason=FinishReason.EXITED, exit_code=0, at=1000.0),
    Refused: Refused(reason="no free slot", at=1000.0),
    AgentLost: AgentLost(at=1000.0),
    DeadlinePassed: DeadlinePassed(at=1000.0),
    CancelRequested: CancelRequested(at=1000.0),
}

#: The design's statement of what each event does in each state, written independently of
#: the module: the model of the stateful test below (which checks the table against it).
#: A pair that is missing must raise IllegalTransition.
EXPECTED: dict[tuple[AttemptState, type[Any]], AttemptState] = {
    (S.QUEUED, Dispatched): S.DISPATCHED,
    (S.QUEUED, CancelRequested): S.CANCELLED,
    (S.DISPATCHED, Started): S.RUNNING,
    (S.DISPATCHED, Finished): S.SUCCEEDED,
    (S.DISPATCHED, Refused): S.LOST,
    (S.DISPATCHED, AgentLost): S.LOST,
    (S.DISPATCHED, DeadlinePassed): S.TIMED_OUT,
    (S.DISPATCHED, CancelRequested): S.CANCELLING,
    (S.RUNNING, Finished): S.SUCCEEDED,
    (S.RUNNING, AgentLost): S.LOST,
    (S.RUNNING, DeadlinePassed): S.TIMED_OUT,
    (S.RUNNING, CancelRequested): S.CANCELLING,
    (S.CANCELLING, Started): S.CANCELLING,
    (S.CANCELLING, Finished): S.SUCCEEDED,
    (S.CANCELLING, Refused): S.CANCELLED,
    (S.CANCELLING, AgentLost): S.CANCELLED,
    (S.CANCELLING, DeadlinePassed): S.CANCELLED,
    (S.CANCELLING, CancelRequested): S.CANCELLING,
}

#: How a report (reason, exit code, signal) ends an attempt, before and after a cancel.
FINISHES = [
    (FinishReason.EXITED, 0, None, S.SUCCEEDED, S.SUCCEEDED),
    (FinishReason.EXITED, 1, None, S.FAILED, S.CANCELLED),
    (FinishReason.EXITED, None, 9, S.FAILED, S.CANCELLED),
    (FinishReason.EXITED, 0, 15, S.FAILED, S.CANCELLED),
    (FinishReason.TIMED_OUT, None, 9, S.TIMED_OUT, S.CANCELLED),
    (FinishReason.CANCELLED, None, 9, S.CANCELLED, S.CANCELLED),
    (FinishReason.ERROR, None, None, S.FAILED, S.CANCELLED),
    (FinishReason.FENCED, None, 15, S.LOST, S.CANCELLED),
]

#: A way to reach every state from QUEUED, starting at t=0.
PATHS: dict[AttemptState, list[Event]] = {
    S.QUEUED: [],
    S.DISPATCHED: [Dispatched(agent="a1", at=0.0)],
    S.RUNNING: [Dispatched(agent="a1", at=0.0), Started(at=1.0)],
    S.CANCELLING: [Dispatched(agent="a1", at=0.0), Started(at=1.0), CancelRequested(at=2.0)],
    S.SUCCEEDED: [
        Dispatched(agent="a1", at=0.0),
        Started(at=1.0),
        Finished(reason=FinishReason.EXITED, exit_code=0, at=2.0),
    ],
    S.FAILED: [
        Dispatched(agent="a1", at=0.0),
        Started(at=1.0),
        Finished(reason=FinishReason.EXITED, exit_code=3, at=2.0),
    ],
    S.TIMED_OUT: [Dispatched(agent="a1", at=0.0), Started(at=1.0), DeadlinePassed(at=111.0)],
    S.LOST: [Dispatched(agent="a1", at=0.0), AgentLost(at=5.0)],
    S.CANCELLED: [CancelRequested(at=0.0)],
}


def machine_in(state: AttemptState) -> AttemptMachine:
    machine = AttemptMachine(job_id="j1", attempt=2, timeout=TIMEOUT, grace=GRACE)
    for event in PATHS[state]:
        machine.handle(event)
    assert machine.state is state
    return machine


def test_table_covers_every_state() -> None:
    """TRANSITIONS has a row for every state, and terminal rows are empty."""
    assert set(TRANSITIONS) == set(AttemptState)
    for state in TERMINAL_STATES:
        assert TRANSITIONS[state] == {}


def test_every_state_is_reachable_from_queued() -> None:
    """Following the table (and every report's outcome for callable targets), every state is
    reached from QUEUED."""
    reached, todo = {S.QUEUED}, [S.QUEUED]
    while todo:
        for target in TRANSITIONS[todo.pop()].values():
            if isinstance(target, AttemptState):
                targets = {target}
            else:
                targets = {
                    target(Finished(reason=reason, exit_code=code, signal=signal, at=0.0))
                    for reason, code, signal, *_ in FINISHES
                }
            for after in targets - reached:
                reached.add(after)
                todo.append(after)
    assert reached == set(AttemptState)


@given(st.sampled_from(AttemptState), st.sampled_from(list(SAMPLES)))
def test_the_machine_does_what_its_table_says(state: AttemptState, event_class: type[Any]) -> None:
    """For any state and event: an event in the state's row of ``TRANSITIONS`` leads to the
    row's target (a callable target computed from the event); any other raises
    IllegalTransition naming attempt, event and state, and changes nothing."""
    machine = machine_in(state)
    event = SAMPLES[event_class]
    target = TRANSITIONS[state].get(event_class)
    if target is None:
        before = attrs.asdict(machine)
        with pytest.raises(IllegalTransition) as info:
            machine.handle(event)
        assert str(info.value) == (
            f"attempt j1#2: can't handle {event_class.__name__} in state {state.name}"
        )
        assert attrs.asdict(machine) == before
    else:
        expected = target if isinstance(target, AttemptState) else target(event)
        assert machine.handle(event) is expected
        assert machine.state is expected


def test_the_table_has_the_designs_shape() -> None:
    """Properties of the table rather than a copy of it: a cancel can be asked in every live
    state; once dispatched, losing the agent and passing the deadline end every live state;
    only a dispatched attempt can be refused; nothing but a dispatch or a cancel moves a
    queued attempt."""
    live = set(AttemptState) - TERMINAL_STATES
    assert all(CancelRequested in TRANSITIONS[s] for s in live)
    for state in live - {S.QUEUED}:
        assert {AgentLost, DeadlinePassed} <= set(TRANSITIONS[state])
    assert {s for s in live if Refused in TRANSITIONS[s]} == {S.DISPATCHED, S.CANCELLING}
    assert set(TRANSITIONS[S.QUEUED]) == {Dispatched, CancelRequested}


@pytest.mark.parametrize(("reason", "exit_code", "signal", "plain", "after_cancel"), FINISHES)
@pytest.mark.parametrize("state", [S.DISPATCHED, S.RUNNING, S.CANCELLING])
def test_finished_maps_reason_and_exit_status(
    state: AttemptState,
    reason: FinishReason,
    exit_code: int | None,
    signal: int | None,
    plain: AttemptState,
    after_cancel: AttemptState,
) -> None:
    """Exit 0 succeeds, any other ending fails by its reason; after a cancel only success survives."""
    machine = machine_in(state)
    event = Finished(reason=reason, exit_code=exit_code, signal=signal, detail="d", at=50.0)
    expected = after_cancel if state is S.CANCELLING else plain
    assert machine.handle(event) is expected
    assert (machine.exit_code, machine.signal, machine.detail) == (exit_code, signal, "d")
    assert machine.ended_at == 50.0
    assert machine.next_deadline() is None


def test_deadlines_follow_dispatch_start_and_cancel() -> None:
    """The deadline is timeout + grace from dispatch, then from start; a cancel shrinks it."""
    machine = AttemptMachine(job_id="j1", attempt=1, timeout=TIMEOUT, grace=GRACE)
    assert machine.next_deadline() is None
    assert machine.on_deadline(1e9) is None
    machine.handle(Dispatched(agent="a1", at=5.0))
    assert machine.next_deadline() == 5.0 + TIMEOUT + GRACE
    machine.handle(Started(at=8.0))
    assert machine.next_deadline() == 8.0 + TIMEOUT + GRACE
    assert machine.on_deadline(8.0 + TIMEOUT + GRACE - 0.5) is None
    machine.handle(CancelRequested(at=20.0))
    assert machine.next_deadline() == 20.0 + GRACE
    event = machine.on_deadline(30.0)
    assert event == DeadlinePassed(at=30.0)
    assert machine.state is S.CANCELLING  # on_deadline only tells; handle applies
    assert machine.handle(event) is S.CANCELLED
    assert machine.next_deadline() is None


def test_a_cancel_never_extends_the_deadline() -> None:
    """A cancel requested just before the deadline keeps the earlier deadline."""
    machine = machine_in(S.RUNNING)
    deadline = machine.next_deadline()
    assert deadline is not None
    machine.handle(CancelRequested(at=deadline - 1.0))
    assert machine.next_deadline() == deadline


def test_a_passed_deadline_times_the_attempt_out() -> None:
    """With no report by timeout + grace after start, the attempt is TIMED_OUT."""
    machine = machine_in(S.RUNNING)
    event = machine.on_deadline(1.0 + TIMEOUT + GRACE)
    assert event is not None
    assert machine.handle(event) is S.TIMED_OUT
    assert machine.ended_at == 1.0 + TIMEOUT + GRACE


def test_refusal_is_lost_and_retryable() -> None:
    """A refusal does not fail the job: the attempt is LOST, its reason kept, and retried."""
    machine = machine_in(S.DISPATCHED)
    assert machine.handle(Refused(reason="untrusted sender", at=3.0)) is S.LOST
    assert machine.detail == "refused by a1: untrusted sender"
    assert should_retry(machine.state, attempts_made=1, max_attempts=3)
    assert not should_retry(machine.state, attempts_made=3, max_attempts=3)


def test_records_agent_and_times() -> None:
    """The machine records the agent, pid and the times of dispatch, start and end."""
    machine = machine_in(S.RUNNING)
    machine.handle(Finished(reason=FinishReason.EXITED, exit_code=0, at=9.0))
    assert (machine.agent, machine.dispatched_at, machine.started_at, machine.ended_at) == (
        "a1",
        0.0,
        1.0,
        9.0,
    )


@pytest.mark.parametrize(
    ("state", "retryable"),
    [
        (S.FAILED, True),
        (S.TIMED_OUT, True),
        (S.LOST, True),
        (S.SUCCEEDED, False),
        (S.CANCELLED, False),
    ],
)
def test_should_retry(state: AttemptState, retryable: bool) -> None:
    """FAILED, TIMED_OUT and LOST retry while attempts remain; SUCCEEDED and CANCELLED never."""
    assert should_retry(state, attempts_made=1, max_attempts=2) is retryable
    assert should_retry(state, attempts_made=2, max_attempts=2) is False


@pytest.mark.parametrize("state", [S.QUEUED, S.DISPATCHED, S.RUNNING, S.CANCELLING])
def test_should_retry_refuses_unfinished_states(state: AttemptState) -> None:
    """Asking whether to retry an attempt that has not ended is a bug, and raises."""
    with pytest.raises(ValueError, match=f"{state.name} is not final"):
        should_retry(state, attempts_made=0, max_attempts=5)


def test_event_from_message() -> None:
    """Agent reports translate to the matching events, carrying the time given."""
    assert event_from_message(JobAccepted(job_id="j", attempt=1, pid=7), at=2.0) == Started(
        at=2.0, pid=7
    )
    assert event_from_message(JobRefused(job_id="j", attempt=1, reason="r"), at=2.0) == Refused(
        reason="r", at=2.0
    )
    finished = JobFinished(
        job_id="j", attempt=1, reason=FinishReason.TIMED_OUT, signal=9, detail="killed"
    )
    assert event_from_message(finished, at=3.0) == Finished(
        reason=FinishReason.TIMED_OUT, signal=9, detail="killed", at=3.0
    )


# --- the machine against a model ---------------------------------------------------------

finishes = st.builds(
    Finished,
    reason=st.sampled_from(FinishReason),
    exit_code=st.none() | st.integers(-1, 3),
    signal=st.none() | st.sampled_from([9, 15]),
    at=st.just(0.0),
)
steps = st.floats(min_value=0.0, max_value=200.0)


def model_next(state: AttemptState, event: Event) -> AttemptState | None:
    """The model: EXPECTED, with the report's own outcome for Finished."""
    target = EXPECTED.get((state, type(event)))
    if target is None or not isinstance(event, Finished):
        return target
    success = event.reason is FinishReason.EXITED and event.exit_code == 0 and event.signal is None
    if state is S.CANCELLING:
        return S.SUCCEEDED if success else S.CANCELLED
    if event.reason is FinishReason.EXITED:
        return S.SUCCEEDED if success else S.FAILED
    return {
        FinishReason.TIMED_OUT: S.TIMED_OUT,
        FinishReason.CANCELLED: S.CANCELLED,
        FinishReason.FENCED: S.LOST,
    }.get(event.reason, S.FAILED)


class AttemptMachineRules(RuleBasedStateMachine):
    """Random event sequences against the model; invariants hold after every step."""

    machine: AttemptMachine
    now: float
    cancelled: bool

    @initialize(
        job_id=st.text(min_size=1, max_size=8),
        attempt=st.integers(1, 5),
        timeout=st.floats(1.0, 1000.0),
        grace=st.floats(0.0, 60.0),
    )
    def start(self, job_id: str, attempt: int, timeout: float, grace: float) -> None:
        self.machine = AttemptMachine(job_id=job_id, attempt=attempt, timeout=timeout, grace=grace)
        self.now = 0.0
        self.reset_model()

    def reset_model(self) -> None:
        self.cancelled = False
        self.times: dict[str, float | None] = dict.fromkeys(
            ("dispatched_at", "started_at", "ended_at", "deadline")
        )

    def legal(self, event_class: type[Any]) -> bool:
        """Most steps are legal events, so that runs go deep; ``any_event`` tries the rest."""
        return (self.machine.state, event_class) in EXPECTED

    def feed(self, event: Event) -> None:
        machine = self.machine
        before_state = machine.state
        expected = model_next(before_state, event)
        if expected is None:
            before = attrs.asdict(machine)
            with pytest.raises(IllegalTransition) as info:
                machine.handle(event)
            message = str(info.value)
            assert f"attempt {machine.job_id}#{machine.attempt}:" in message
            assert f"can't handle {type(event).__name__} in state {before_state.name}" in message
            assert attrs.asdict(machine) == before
        else:
            assert machine.handle(event) is expected
            self.update_model(event, expected)

    def update_model(self, event: Event, new_state: AttemptState) -> None:
        """What the machine should have recorded: times, and a deadline that never grows on cancel."""
        times, timeout, grace = self.times, self.machine.timeout, self.machine.grace
        if isinstance(event, Dispatched):
            times["dispatched_at"] = event.at
            times["deadline"] = event.at + timeout + grace
        elif isinstance(event, Started):
            if times["started_at"] is None:  # a repeated JobAccepted keeps the first time
                times["started_at"] = event.at
            if not self.cancelled:
                times["deadline"] = event.at + timeout + grace
        elif isinstance(event, CancelRequested):
            self.cancelled = True
            if times["deadline"] is not None:
                times["deadline"] = min(times["deadline"], event.at + grace)
        if new_state in TERMINAL_STATES:
            times["ended_at"] = event.at
            times["deadline"] = None

    @precondition(lambda self: self.legal(Dispatched))
    @rule(dt=steps, agent=st.sampled_from(["a1", "a2"]))
    def dispatched(self, dt: float, agent: str) -> None:
        self.now += dt
        self.feed(Dispatched(agent=agent, at=self.now))

    @precondition(lambda self: self.legal(Started))
    @rule(dt=steps, pid=st.none() | st.integers(1, 99))
    def started(self, dt: float, pid: int | None) -> None:
        self.now += dt
        self.feed(Started(at=self.now, pid=pid))

    @precondition(lambda self: self.legal(Finished))
    @rule(dt=steps, finished=finishes)
    def finished(self, dt: float, finished: Finished) -> None:
        self.now += dt
        self.feed(attrs.evolve(finished, at=self.now))

    @precondition(lambda self: self.legal(Refused))
    @rule(dt=steps, reason=st.text(max_size=5))
    def refused(self, dt: float, reason: str) -> None:
        self.now += dt
        self.feed(Refused(reason=reason, at=self.now))

    @precondition(lambda self: self.legal(AgentLost))
    @rule(dt=steps)
    def agent_lost(self, dt: float) -> None:
        self.now += dt
        self.feed(AgentLost(at=self.now))

    @precondition(lambda self: self.legal(CancelRequested))
    @rule(dt=steps)
    def cancel_requested(self, dt: float) -> None:
        self.now += dt
        self.feed(CancelRequested(at=self.now))

    @precondition(lambda self: self.legal(DeadlinePassed))
    @rule(dt=steps)
    def deadline_passed_event(self, dt: float) -> None:
        """DeadlinePassed fed directly, as if the controller's timer fired early."""
        self.now += dt
        self.feed(DeadlinePassed(at=self.now))

    @precondition(lambda self: self.machine.next_deadline() is not None)
    @rule()
    def clock_reaches_deadline(self) -> None:
        deadline = self.machine.next_deadline()
        assert deadline is not None
        self.now = max(self.now, deadline)
        event = self.machine.on_deadline(self.now)
        assert event == DeadlinePassed(at=self.now)
        self.feed(event)

    @rule(dt=steps, event_class=st.sampled_from(list(SAMPLES)))
    def any_event(self, dt: float, event_class: type[Any]) -> None:
        """Any event at all, legal or not, in the current state."""
        self.now += dt
        self.feed(attrs.evolve(SAMPLES[event_class], at=self.now))

    @precondition(lambda self: self.machine.terminal)
    @rule()
    def next_attempt(self) -> None:
        """The engine retries (or the test just moves on): a fresh machine for attempt n+1."""
        old = self.machine
        self.machine = AttemptMachine(
            job_id=old.job_id, attempt=old.attempt + 1, timeout=old.timeout, grace=old.grace
        )
        self.reset_model()

    @invariant()
    def times_and_deadline_match_the_model(self) -> None:
        machine = self.machine
        recorded = {
            "dispatched_at": machine.dispatched_at,
            "started_at": machine.started_at,
            "ended_at": machine.ended_at,
            "deadline": machine.next_deadline(),
        }
        assert recorded == self.times

    @invariant()
    def ended_exactly_when_terminal(self) -> None:
        machine = self.machine
        assert machine.terminal is (machine.state in TERMINAL_STATES)
        assert (machine.ended_at is not None) is machine.terminal
        if machine.ended_at is not None:
            assert machine.ended_at <= self.now

    @invariant()
    def a_deadline_exactly_while_an_agent_holds_it(self) -> None:
        machine = self.machine
        held = machine.state in (S.DISPATCHED, S.RUNNING, S.CANCELLING)
        assert (machine.next_deadline() is not None) is held
        deadline = machine.next_deadline()
        if deadline is not None:
            assert machine.on_deadline(deadline - 1.0) is None
            assert machine.on_deadline(deadline) == DeadlinePassed(at=deadline)

    @invariant()
    def agent_known_once_dispatched(self) -> None:
        machine = self.machine
        assert (machine.agent is None) is (machine.dispatched_at is None)
        if machine.started_at is not None:
            assert machine.dispatched_at is not None
            assert machine.dispatched_at <= machine.started_at

    @invariant()
    def a_cancelled_attempt_is_never_retried(self) -> None:
        if self.cancelled:
            assert self.machine.state in (S.CANCELLING, S.SUCCEEDED, S.CANCELLED)

    @invariant()
    def terminal_states_absorb(self) -> None:
        machine = self.machine
        if machine.terminal:
            for event in SAMPLES.values():
                with pytest.raises(IllegalTransition):
                    machine.handle(event)


TestAttemptMachine = AttemptMachineRules.TestCase
TestAttemptMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
