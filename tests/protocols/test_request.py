"""The request lifecycle, input allocation and request ids (protocols/request.py)."""

from __future__ import annotations

import subprocess
import sys
from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from wfe.protocols.errors import IllegalTransition
from wfe.protocols.request import (
    ACTORS,
    ALLOCATION_TRANSITIONS,
    ENGINE_VERBS,
    OPERATOR_VERBS,
    TERMINAL_STATES,
    TRANSITIONS,
    Actor,
    BadIdentifier,
    InputAllocation,
    InputState,
    NotPermitted,
    RequestLifecycle,
    RequestState,
    RequestVerb,
    Transition,
    dispatch_allowed,
    next_state,
    parse_request_id,
    request_id,
    take_inputs,
)

S = RequestState
V = RequestVerb
RID = "demo-alice-0001"


def permitted_actor(verb: RequestVerb) -> Actor:
    """An actor that may always issue ``verb`` (an operator approves)."""
    return Actor.OPERATOR if Actor.OPERATOR in ACTORS[verb] else min(ACTORS[verb], key=str)


def test_states_are_exactly_the_documented_ones() -> None:
    """The ten states of the design, and no others."""
    assert [s.name for s in RequestState] == [
        "DRAFT",
        "SUBMITTED",
        "APPROVED",
        "RUNNING",
        "PAUSED",
        "CHECKING",
        "COMPLETED",
        "ARCHIVED",
        "FAILED",
        "CANCELLED",
    ]


def outcome(state: RequestState, verb: RequestVerb, actor: Actor) -> RequestState | type[Exception]:
    """What the tables say ``actor`` issuing ``verb`` in ``state`` does: permission first
    (``ACTORS``), then the lifecycle (``TRANSITIONS``)."""
    if actor not in ACTORS[verb]:
        return NotPermitted
    return TRANSITIONS[state].get(verb, IllegalTransition)


@given(st.sampled_from(RequestState), st.sampled_from(RequestVerb), st.sampled_from(Actor))
def test_the_machine_does_what_its_tables_say(
    state: RequestState, verb: RequestVerb, actor: Actor
) -> None:
    """For any state, verb and actor: an actor outside ``ACTORS`` is refused whatever the state
    (NotPermitted names actor and verb); a verb outside the state's row of ``TRANSITIONS`` is
    refused naming request, verb and state; otherwise the request moves to the table's state
    and the transition is returned as a record. A refusal changes nothing."""
    machine = RequestLifecycle(RID, approval_required=False, state=state)
    expected = outcome(state, verb, actor)
    if expected is NotPermitted:
        with pytest.raises(NotPermitted) as refused:
            machine.handle(verb, actor=actor)
        assert str(refused.value).startswith(
            f"request {RID}: {actor.value} can't {verb.value} (only "
        )
        assert machine.state is state
    elif expected is IllegalTransition:
        with pytest.raises(IllegalTransition) as illegal:
            machine.handle(verb, actor=actor)
        assert str(illegal.value) == f"request {RID}: can't {verb.value} in state {state.name}"
        assert machine.state is state
    else:
        assert isinstance(expected, RequestState)
        transition = machine.handle(verb, actor=actor)
        assert transition == Transition(
            request_id=RID, verb=verb, actor=actor, before=state, after=expected
        )
        assert machine.state is expected


def test_the_lifecycle_table_has_the_designs_shape() -> None:
    """Properties of the table rather than a copy of it: every state has a row; only ARCHIVED
    is final; a terminal state can only be archived; every live state can be cancelled and
    failed (but a draft or a submitted request, which never ran, fails by cancelling); every
    transition goes to a different state."""
    assert set(TRANSITIONS) == set(RequestState)
    assert [s for s, row in TRANSITIONS.items() if not row] == [S.ARCHIVED]
    for state in TERMINAL_STATES:
        assert TRANSITIONS[state] == {V.ARCHIVE: S.ARCHIVED}
    live = set(RequestState) - TERMINAL_STATES - {S.ARCHIVED}
    assert all(TRANSITIONS[s][V.CANCEL] is S.CANCELLED for s in live)
    assert {s for s in live if V.FAIL in TRANSITIONS[s]} == live - {S.DRAFT, S.SUBMITTED}
    assert all(after is not before for before, row in TRANSITIONS.items() for after in row.values())


def test_every_state_is_reachable_and_every_live_state_can_end() -> None:
    """From DRAFT every state is reachable by the table's transitions, and from every state
    ARCHIVED is reachable: no request can be stuck."""

    def reachable(start: RequestState) -> set[RequestState]:
        seen, todo = {start}, deque([start])
        while todo:
            for after in TRANSITIONS[todo.popleft()].values():
                if after not in seen:
                    seen.add(after)
                    todo.append(after)
        return seen

    assert reachable(S.DRAFT) == set(RequestState)
    assert all(S.ARCHIVED in reachable(state) for state in RequestState)


def test_the_documented_example_message() -> None:
    """Pausing a completed request reads exactly as documented."""
    with pytest.raises(
        IllegalTransition, match=r"^request demo-alice-0001: can't pause in state COMPLETED$"
    ):
        next_state(RID, S.COMPLETED, V.PAUSE, actor=Actor.OPERATOR, approval_required=True)


def test_who_may_issue_what() -> None:
    """Operators approve, pause, resume, cancel and archive; only the engine starts,
    checks, completes and fails; users submit and cancel."""
    assert OPERATOR_VERBS == {V.APPROVE, V.PAUSE, V.RESUME, V.CANCEL, V.ARCHIVE, V.SUBMIT}
    people = {v for v, who in ACTORS.items() if who & {Actor.USER, Actor.OPERATOR}}
    assert ENGINE_VERBS - people == {V.START, V.CHECK, V.COMPLETE, V.FAIL}
    assert {v for v, who in ACTORS.items() if Actor.USER in who} == {V.SUBMIT, V.CANCEL}


def test_approval_required_path() -> None:
    """With approval required the request waits in SUBMITTED for an operator; the engine
    may not approve it."""
    machine = RequestLifecycle(RID, approval_required=True)
    machine.handle(V.SUBMIT, actor=Actor.USER)
    assert machine.state is S.SUBMITTED and machine.policy_verb() is None
    with pytest.raises(NotPermitted, match="approval is required: an operator must approve"):
        machine.handle(V.APPROVE, actor=Actor.ENGINE)
    assert machine.allowed(Actor.ENGINE) == ()
    assert machine.allowed(Actor.OPERATOR) == (V.APPROVE, V.CANCEL)
    record = machine.handle(V.APPROVE, actor=Actor.OPERATOR)
    assert (record.actor, machine.state) == (Actor.OPERATOR, S.APPROVED)


def test_approval_by_policy_path() -> None:
    """Without required approval the engine approves right after submission, and the
    record shows it was the engine."""
    machine = RequestLifecycle(RID, approval_required=False)
    assert machine.policy_verb() is None
    machine.handle(V.SUBMIT, actor=Actor.USER)
    assert machine.policy_verb() is V.APPROVE
    record = machine.handle(machine.policy_verb(), actor=Actor.ENGINE)
    assert record == Transition(
        request_id=RID, verb=V.APPROVE, actor=Actor.ENGINE, before=S.SUBMITTED, after=S.APPROVED
    )
    assert machine.policy_verb() is None


def test_only_running_dispatches() -> None:
    """New jobs are dispatched only while running: not paused, not checking."""
    assert [s for s in RequestState if dispatch_allowed(s)] == [S.RUNNING]


@pytest.mark.parametrize("approval_required", [True, False])
def test_every_state_is_reachable_through_the_machine(approval_required: bool) -> None:
    """A search over the table, issuing only verbs some actor may issue under the given
    policy, reaches every state from DRAFT."""
    seen = {S.DRAFT}
    todo = deque([S.DRAFT])
    while todo:
        state = todo.popleft()
        for actor in Actor:
            for verb in RequestLifecycle(
                RID, approval_required=approval_required, state=state
            ).allowed(actor):
                after = next_state(
                    RID, state, verb, actor=actor, approval_required=approval_required
                )
                if after not in seen:
                    seen.add(after)
                    todo.append(after)
    assert seen == set(RequestState)


def test_terminal_states_only_archive_and_archived_is_final() -> None:
    """Completed, failed and cancelled accept archive alone; archived accepts nothing."""
    for state in TERMINAL_STATES:
        assert set(TRANSITIONS[state]) == {V.ARCHIVE}
    assert TRANSITIONS[S.ARCHIVED] == {}
    assert {s for s, verbs in TRANSITIONS.items() if V.ARCHIVE in verbs} == TERMINAL_STATES


class RequestLifecycleMachine(RuleBasedStateMachine):
    """Random verbs by random actors: the machine never breaks the lifecycle's promises."""

    @initialize(approval_required=st.booleans())
    def start(self, approval_required: bool) -> None:
        self.machine = RequestLifecycle(RID, approval_required=approval_required)
        self.records: list[Transition] = []
        self.visited = [S.DRAFT]

    @rule(verb=st.sampled_from(RequestVerb), actor=st.sampled_from(Actor))
    def issue(self, verb: RequestVerb, actor: Actor) -> None:
        before = self.machine.state
        expected = TRANSITIONS[before].get(verb)
        allowed = actor in ACTORS[verb] and not (
            verb is V.APPROVE and actor is Actor.ENGINE and self.machine.approval_required
        )
        try:
            record = self.machine.handle(verb, actor=actor)
        except (IllegalTransition, NotPermitted):
            assert expected is None or not allowed
            assert self.machine.state is before
            return
        assert allowed and record.after is expected is self.machine.state
        self.records.append(record)
        self.visited.append(record.after)

    @rule(data=st.data())
    def advance(self, data: st.DataObject) -> None:
        """Issue a legal verb other than cancel or fail, so runs get deep into the cycle."""
        choices = [
            (verb, actor)
            for actor in Actor
            for verb in self.machine.allowed(actor)
            if verb not in (V.CANCEL, V.FAIL)
        ]
        if not choices:
            return
        verb, actor = data.draw(st.sampled_from(choices))
        record = self.machine.handle(verb, actor=actor)
        assert record.after is TRANSITIONS[record.before][verb]
        self.records.append(record)
        self.visited.append(record.after)

    @precondition(lambda self: self.machine.policy_verb() is not None)
    @rule()
    def policy(self) -> None:
        verb = self.machine.policy_verb()
        assert verb is not None
        self.records.append(self.machine.handle(verb, actor=Actor.ENGINE))
        self.visited.append(self.machine.state)

    @invariant()
    def records_chain(self) -> None:
        state = S.DRAFT
        for record in self.records:
            assert record.before is state
            state = record.after
        assert state is self.machine.state

    @invariant()
    def archived_only_after_a_terminal_state(self) -> None:
        for record in self.records:
            if record.after is S.ARCHIVED:
                assert record.before in TERMINAL_STATES

    @invariant()
    def nothing_leaves_an_end(self) -> None:
        for record in self.records:
            if record.before in TERMINAL_STATES:
                assert record.after is S.ARCHIVED
            assert record.before is not S.ARCHIVED

    @invariant()
    def runs_only_after_approval_and_completes_only_after_checking(self) -> None:
        for i, state in enumerate(self.visited):
            if state in (S.RUNNING, S.PAUSED, S.CHECKING, S.COMPLETED):
                assert S.APPROVED in self.visited[:i]
            if state is S.COMPLETED:
                assert self.visited[i - 1] is S.CHECKING

    @invariant()
    def approval_by_the_engine_only_when_policy_allows(self) -> None:
        for record in self.records:
            if record.verb is V.APPROVE and record.actor is Actor.ENGINE:
                assert not self.machine.approval_required


TestRequestLifecycle = RequestLifecycleMachine.TestCase
TestRequestLifecycle.settings = settings(max_examples=100, stateful_step_count=25, deadline=None)


# --- input allocation ---------------------------------------------------------------------


def test_allocation_table() -> None:
    """Unallocated -> allocated -> processed | failed; release goes back to the pool."""
    table = {
        (s, e.value): t for s, events in ALLOCATION_TRANSITIONS.items() for e, t in events.items()
    }
    assert table == {
        (InputState.UNALLOCATED, "allocate"): InputState.ALLOCATED,
        (InputState.ALLOCATED, "process"): InputState.PROCESSED,
        (InputState.ALLOCATED, "fail"): InputState.FAILED,
        (InputState.ALLOCATED, "release"): InputState.UNALLOCATED,
    }


def test_allocate_process() -> None:
    """A job takes an input and finishes it; the original value is unchanged."""
    fresh = InputAllocation(input_id="f1")
    taken = fresh.allocate("j1")
    assert (taken.state, taken.allocations, taken.job_id) == (InputState.ALLOCATED, 1, "j1")
    done = taken.process("j1")
    assert (done.state, done.job_id) == (InputState.PROCESSED, None)
    assert fresh.state is InputState.UNALLOCATED


def test_release_returns_to_the_pool_until_the_limit_then_fails() -> None:
    """A lost or failed job returns its inputs; the max_allocations-th release fails it."""
    item = InputAllocation(input_id="f1")
    for attempt in (1, 2):
        item = item.allocate(f"j{attempt}").release(f"j{attempt}", max_allocations=3)
        assert (item.state, item.allocations, item.job_id) == (
            InputState.UNALLOCATED,
            attempt,
            None,
        )
    item = item.allocate("j3").release("j3", max_allocations=3)
    assert item.state is InputState.FAILED
    assert item.reason == "allocated 3 times (limit 3)"
    with pytest.raises(IllegalTransition, match="input f1: can't allocate in state FAILED"):
        item.allocate("j4")


def test_a_job_reports_an_input_bad() -> None:
    """A bad input fails at once, with the reason given."""
    item = InputAllocation(input_id="f1").allocate("j1").fail("j1", "corrupt header")
    assert (item.state, item.reason) == (InputState.FAILED, "corrupt header")


def test_only_the_holding_job_may_finish_or_release() -> None:
    """A stale report from an older job is refused, naming both jobs."""
    item = (
        InputAllocation(input_id="f1")
        .allocate("j1")
        .release("j1", max_allocations=3)
        .allocate("j2")
    )
    with pytest.raises(
        IllegalTransition, match=r"^input f1: job j1 can't process it \(held by job j2\)$"
    ):
        item.process("j1")
    with pytest.raises(IllegalTransition, match="can't release in state UNALLOCATED"):
        InputAllocation(input_id="f1").release("j1", max_allocations=3)
    with pytest.raises(IllegalTransition, match="can't process in state PROCESSED"):
        item.process("j2").process("j2")
    with pytest.raises(ValueError, match="max_allocations must be at least 1"):
        item.release("j2", max_allocations=0)


def test_take_inputs() -> None:
    """A job takes unallocated inputs in order, at most max_inputs (None: all)."""
    items = [InputAllocation(input_id=f"f{i}") for i in range(5)]
    items[1] = items[1].allocate("j0")
    assert [i.input_id for i in take_inputs(items, 2)] == ["f0", "f2"]
    assert [i.input_id for i in take_inputs(items, None)] == ["f0", "f2", "f3", "f4"]


class AllocationMachine(RuleBasedStateMachine):
    """Jobs take, finish, lose and reject inputs at random; the books always balance."""

    @initialize(count=st.integers(1, 6), max_allocations=st.integers(1, 3))
    def setup(self, count: int, max_allocations: int) -> None:
        self.max_allocations = max_allocations
        self.inputs = {f"f{i}": InputAllocation(input_id=f"f{i}") for i in range(count)}
        self.jobs: dict[str, list[str]] = {}
        self.next_job = 0
        self.finished: set[str] = set()

    @rule(max_inputs=st.none() | st.integers(1, 3))
    def dispatch(self, max_inputs: int | None) -> None:
        batch = take_inputs(self.inputs.values(), max_inputs)
        if not batch:
            return
        job = f"j{self.next_job}"
        self.next_job += 1
        for item in batch:
            self.inputs[item.input_id] = item.allocate(job)
        self.jobs[job] = [item.input_id for item in batch]

    @precondition(lambda self: self.jobs)
    @rule(data=st.data())
    def succeed(self, data: st.DataObject) -> None:
        job = data.draw(st.sampled_from(sorted(self.jobs)))
        for name in self.jobs.pop(job):
            self.inputs[name] = self.inputs[name].process(job)
            self.finished.add(name)

    @precondition(lambda self: self.jobs)
    @rule(data=st.data())
    def lose(self, data: st.DataObject) -> None:
        job = data.draw(st.sampled_from(sorted(self.jobs)))
        for name in self.jobs.pop(job):
            self.inputs[name] = self.inputs[name].release(job, max_allocations=self.max_allocations)

    @precondition(lambda self: self.jobs)
    @rule(data=st.data())
    def reject_one(self, data: st.DataObject) -> None:
        job = data.draw(st.sampled_from(sorted(self.jobs)))
        name = data.draw(st.sampled_from(self.jobs[job]))
        self.jobs[job].remove(name)
        self.inputs[name] = self.inputs[name].fail(job, "bad input")
        if not self.jobs[job]:
            del self.jobs[job]

    @precondition(lambda self: self.jobs)
    @rule(data=st.data())
    def stale_report_is_refused(self, data: st.DataObject) -> None:
        job = data.draw(st.sampled_from(sorted(self.jobs)))
        name = self.jobs[job][0]
        with pytest.raises(IllegalTransition):
            self.inputs[name].process(f"{job}-stale")

    @invariant()
    def held_inputs_match_jobs(self) -> None:
        held = {name: job for job, names in self.jobs.items() for name in names}
        for name, item in self.inputs.items():
            assert (item.state is InputState.ALLOCATED) == (name in held)
            assert item.job_id == held.get(name)

    @invariant()
    def allocations_are_bounded_and_exhaustion_fails(self) -> None:
        for item in self.inputs.values():
            assert 0 <= item.allocations <= self.max_allocations
            if item.state is InputState.UNALLOCATED:
                assert item.allocations < self.max_allocations
            if item.reason.startswith("allocated"):
                assert item.allocations == self.max_allocations
            assert (item.state is InputState.PROCESSED) == (item.input_id in self.finished)


TestAllocation = AllocationMachine.TestCase
TestAllocation.settings = settings(max_examples=100, stateful_step_count=25, deadline=None)


# --- request ids ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("workflow", "user", "number", "expected"),
    [
        ("demo", "alice", 1, "demo-alice-0001"),
        ("demo", "alice", 42, "demo-alice-0042"),
        ("demo", "alice", 9999, "demo-alice-9999"),
        ("demo", "alice", 10000, "demo-alice-10000"),
        ("stf_datataking.v2", "jean-luc", 7, "stf_datataking.v2-jean-luc-0007"),
    ],
)
def test_request_id(workflow: str, user: str, number: int, expected: str) -> None:
    """``<workflow>-<user>-<NNNN>``, zero-padded to four digits, longer past 9999."""
    assert request_id(workflow, user, number) == expected
    assert parse_request_id(expected) == (workflow, user, number)


@pytest.mark.parametrize(
    ("workflow", "user", "number", "message"),
    [
        ("my-flow", "alice", 1, "workflow name 'my-flow' is not id-safe"),
        ("", "alice", 1, "workflow name '' is not id-safe"),
        ("_x", "alice", 1, "workflow name '_x' is not id-safe"),
        ("demo", "a b", 1, "user name 'a b' is not id-safe"),
        ("demo", "-a", 1, "user name '-a' is not id-safe"),
        ("demo", "a/b", 1, "user name 'a/b' is not id-safe"),
        ("demo", "x" * 65, 1, "user name"),
        ("demo", "alice", 0, "request number must be a positive integer, not 0"),
        ("demo", "alice", True, "request number must be a positive integer, not True"),
    ],
)
def test_request_id_refuses_unsafe_parts(
    workflow: str, user: str, number: int, message: str
) -> None:
    """Names that could break or confuse an id are refused."""
    with pytest.raises(BadIdentifier, match=message.replace("(", r"\(")):
        request_id(workflow, user, number)


@pytest.mark.parametrize(
    "bad",
    [
        "demo",
        "demo-alice",
        "demo-alice-1",
        "demo-alice-00001",
        "demo-alice-0000",
        "demo--0001",
        "de mo-a-0001",
    ],
)
def test_parse_request_id_refuses_malformed_ids(bad: str) -> None:
    """Only canonical ids parse."""
    with pytest.raises(BadIdentifier):
        parse_request_id(bad)


workflows = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.]{0,10}", fullmatch=True)
users = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,10}", fullmatch=True)
numbers = st.integers(min_value=1, max_value=10**7)


@given(workflows, users, numbers, workflows, users, numbers)
def test_request_ids_are_unambiguous(w1: str, u1: str, n1: int, w2: str, u2: str, n2: int) -> None:
    """Different (workflow, user, number) never share an id, and every id parses back."""
    assert parse_request_id(request_id(w1, u1, n1)) == (w1, u1, n1)
    if (w1, u1, n1) != (w2, u2, n2):
        assert request_id(w1, u1, n1) != request_id(w2, u2, n2)


def test_protocols_request_stays_sans_io() -> None:
    """Importing the module in a fresh interpreter loads no I/O or engine modules."""
    code = (
        "import sys, wfe.protocols.request\n"
        "bad = [m for m in ('trio', 'asyncio', 'socket', 'sqlite3', 'subprocess', 'slixmpp',"
        " 'trio_asyncio', 'engine') if m in sys.modules]\n"
        "print(','.join(bad))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == ""
