"""The life of a request, and of each input a request's stage processes. Sans-IO.

Theory of operation
-------------------
Everything that decides whether a request may change state lives here, in the manner of
h11's ``_state.py``. The engine (CLI, console, scheduler) turns what someone wants into a
*verb* (``submit``, ``approve``, ``start``...) issued by an *actor* (the submitting user,
an operator, or the engine itself) and feeds it to ``RequestLifecycle.handle``, which
either moves the request to the state the ``TRANSITIONS`` table names and returns a
``Transition`` record (what the repository writes as an event), or raises and changes
nothing. No I/O, no clock: the caller stamps the record with the time.

The lifecycle::

    draft --submit--> submitted --approve--> approved --start--> running --check--> checking
                                                                 |    ^                 |
                                                             pause|    |resume      complete
                                                                 v    |                 v
                                                                 paused             completed

    failed    <--fail--   approved, running, paused, checking
    cancelled <--cancel-- draft, submitted, approved, running, paused, checking
    archived  <--archive-- completed, failed, cancelled

Decisions worth knowing:

* **Approval by policy.** ``submit`` always leads to ``SUBMITTED``, so every request's
  history shows a submission and an approval. When the definition (or the namespace's
  policy) does not require a person, the engine issues ``approve`` itself right after
  (``policy_verb()`` says so); the ``Transition`` then has ``actor=ENGINE``. When approval
  is required, the engine may not approve: only an operator can.
* **Who may do what** is data (``ACTORS``): operators ``approve``, ``pause``, ``resume``,
  ``cancel`` and ``archive``; only the engine ``start``s, ``check``s, ``complete``s and
  ``fail``s; a user ``submit``s (operators may too) and may ``cancel``.
* **Pause** stops new dispatches and lets running jobs finish (``dispatch_allowed``); a
  job that fails while paused can still ``fail`` the request. ``checking`` may still be
  cancelled or failed, but not paused.
* **Terminal states** (``COMPLETED``, ``FAILED``, ``CANCELLED``) accept only ``archive``;
  ``ARCHIVED`` accepts nothing.

Inputs: each input of a stage is ``UNALLOCATED -> ALLOCATED -> PROCESSED | FAILED``
(``InputAllocation``). A lost or failed job *releases* its inputs back to
``UNALLOCATED``, unless an input has been allocated ``max_allocations`` times already,
in which case it is ``FAILED`` (a poison input is not handed out forever).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable

import attrs

from wfe.protocols.errors import IllegalTransition, ProtocolError


class NotPermitted(ProtocolError, PermissionError):
    """The actor may not issue that verb (an operator can't ``start``...)."""


class BadIdentifier(ProtocolError, ValueError):
    """A workflow name, user name or request id that can't be part of a request id."""


class RequestState(enum.Enum):
    """Where a request is in its life."""

    DRAFT = "draft"  # created, not yet submitted
    SUBMITTED = "submitted"  # waiting for approval (by an operator, or by policy)
    APPROVED = "approved"  # may start; the finder resolves its inputs
    RUNNING = "running"  # jobs are being dispatched
    PAUSED = "paused"  # no new dispatches; running jobs finish
    CHECKING = "checking"  # all stages done; inputs and products being verified
    COMPLETED = "completed"  # checked and done (terminal)
    ARCHIVED = "archived"  # kept for the record; nothing more happens (final)
    FAILED = "failed"  # a stage or the check failed (terminal)
    CANCELLED = "cancelled"  # stopped by a person (terminal)


class RequestVerb(enum.Enum):
    """Something an actor asks of a request."""

    SUBMIT = "submit"
    APPROVE = "approve"
    START = "start"
    PAUSE = "pause"
    RESUME = "resume"
    CHECK = "check"
    COMPLETE = "complete"
    FAIL = "fail"
    CANCEL = "cancel"
    ARCHIVE = "archive"


class Actor(enum.Enum):
    """Who issues a verb."""

    USER = "user"  # the person submitting (CLI ``wfe submit``)
    OPERATOR = "operator"  # a person with the operator role
    ENGINE = "engine"  # the engine itself, including approval by policy


_S = RequestState
_V = RequestVerb

#: ``{state: {verb: next state}}``. A pair that is missing is an illegal transition.
TRANSITIONS: dict[RequestState, dict[RequestVerb, RequestState]] = {
    _S.DRAFT: {_V.SUBMIT: _S.SUBMITTED, _V.CANCEL: _S.CANCELLED},
    _S.SUBMITTED: {_V.APPROVE: _S.APPROVED, _V.CANCEL: _S.CANCELLED},
    _S.APPROVED: {_V.START: _S.RUNNING, _V.FAIL: _S.FAILED, _V.CANCEL: _S.CANCELLED},
    _S.RUNNING: {
        _V.PAUSE: _S.PAUSED,
        _V.CHECK: _S.CHECKING,
        _V.FAIL: _S.FAILED,
        _V.CANCEL: _S.CANCELLED,
    },
    _S.PAUSED: {_V.RESUME: _S.RUNNING, _V.FAIL: _S.FAILED, _V.CANCEL: _S.CANCELLED},
    _S.CHECKING: {_V.COMPLETE: _S.COMPLETED, _V.FAIL: _S.FAILED, _V.CANCEL: _S.CANCELLED},
    _S.COMPLETED: {_V.ARCHIVE: _S.ARCHIVED},
    _S.FAILED: {_V.ARCHIVE: _S.ARCHIVED},
    _S.CANCELLED: {_V.ARCHIVE: _S.ARCHIVED},
    _S.ARCHIVED: {},
}

#: Which actors may issue each verb. The engine's ``approve`` is further limited to
#: requests whose approval is not required.
ACTORS: dict[RequestVerb, frozenset[Actor]] = {
    _V.SUBMIT: frozenset({Actor.USER, Actor.OPERATOR}),
    _V.APPROVE: frozenset({Actor.OPERATOR, Actor.ENGINE}),
    _V.START: frozenset({Actor.ENGINE}),
    _V.PAUSE: frozenset({Actor.OPERATOR}),
    _V.RESUME: frozenset({Actor.OPERATOR}),
    _V.CHECK: frozenset({Actor.ENGINE}),
    _V.COMPLETE: frozenset({Actor.ENGINE}),
    _V.FAIL: frozenset({Actor.ENGINE}),
    _V.CANCEL: frozenset({Actor.USER, Actor.OPERATOR}),
    _V.ARCHIVE: frozenset({Actor.OPERATOR}),
}

OPERATOR_VERBS = frozenset(v for v, who in ACTORS.items() if Actor.OPERATOR in who)
ENGINE_VERBS = frozenset(v for v, who in ACTORS.items() if Actor.ENGINE in who)

#: States from which nothing but ``archive`` is possible.
TERMINAL_STATES = frozenset({_S.COMPLETED, _S.FAILED, _S.CANCELLED})

#: States in which the scheduler may dispatch new jobs of the request.
DISPATCH_STATES = frozenset({_S.RUNNING})

#: States in which jobs of the request may still be running on agents.
ACTIVE_STATES = frozenset({_S.RUNNING, _S.PAUSED, _S.CHECKING})


def dispatch_allowed(state: RequestState) -> bool:
    """True when new jobs of a request in ``state`` may be dispatched."""
    return state in DISPATCH_STATES


@attrs.frozen(kw_only=True)
class Transition:
    """One accepted change of state; what the repository records as an event."""

    request_id: str
    verb: RequestVerb
    actor: Actor
    before: RequestState
    after: RequestState


def next_state(
    request_id: str,
    state: RequestState,
    verb: RequestVerb,
    *,
    actor: Actor,
    approval_required: bool,
) -> RequestState:
    """The state ``verb`` by ``actor`` leads to from ``state``. Pure.

    Raises ``NotPermitted`` if the actor may not issue the verb (checked first, as it
    does not depend on the state), then ``IllegalTransition`` if the state does not
    accept it: ``request demo-alice-0001: can't pause in state COMPLETED``.
    """
    if actor not in ACTORS[verb]:
        who = " or ".join(sorted(a.value for a in ACTORS[verb]))
        raise NotPermitted(f"request {request_id}: {actor.value} can't {verb.value} (only {who})")
    if verb is _V.APPROVE and actor is Actor.ENGINE and approval_required:
        raise NotPermitted(f"request {request_id}: approval is required: an operator must approve")
    target = TRANSITIONS[state].get(verb)
    if target is None:
        raise IllegalTransition(f"request {request_id}: can't {verb.value} in state {state.name}")
    return target


class RequestLifecycle:
    """The state of one request; ``handle`` moves it.

    ``approval_required`` comes from the definition's policy (or the namespace's); a
    machine rebuilt after a restart is given the stored state.
    """

    def __init__(
        self,
        request_id: str,
        *,
        approval_required: bool,
        state: RequestState = RequestState.DRAFT,
    ) -> None:
        self.request_id = request_id
        self.approval_required = approval_required
        self.state = state

    def __repr__(self) -> str:
        return f"<RequestLifecycle {self.request_id} {self.state.name}>"

    def handle(self, verb: RequestVerb, *, actor: Actor) -> Transition:
        """Apply ``verb``; return the record of the change. On error nothing changes."""
        after = next_state(
            self.request_id,
            self.state,
            verb,
            actor=actor,
            approval_required=self.approval_required,
        )
        transition = Transition(
            request_id=self.request_id, verb=verb, actor=actor, before=self.state, after=after
        )
        self.state = after
        return transition

    def allowed(self, actor: Actor) -> tuple[RequestVerb, ...]:
        """The verbs ``actor`` may issue now, in table order (for help and consoles)."""
        verbs = []
        for verb in TRANSITIONS[self.state]:
            try:
                next_state(
                    self.request_id,
                    self.state,
                    verb,
                    actor=actor,
                    approval_required=self.approval_required,
                )
            except (NotPermitted, IllegalTransition):
                continue
            verbs.append(verb)
        return tuple(verbs)

    def policy_verb(self) -> RequestVerb | None:
        """The verb the engine must issue now by policy, if any (``approve`` when a
        submitted request needs no person's approval)."""
        if self.state is _S.SUBMITTED and not self.approval_required:
            return _V.APPROVE
        return None


# --- inputs --------------------------------------------------------------------------------


class InputState(enum.Enum):
    """Where one input of one stage is."""

    UNALLOCATED = "unallocated"  # in the pool, waiting for a job
    ALLOCATED = "allocated"  # held by one job
    PROCESSED = "processed"  # a job finished it (terminal)
    FAILED = "failed"  # reported bad, or allocated too often (terminal)


class InputEvent(enum.Enum):
    """What can happen to an input."""

    ALLOCATE = "allocate"  # a job takes it
    PROCESS = "process"  # its job succeeded with it
    FAIL = "fail"  # its job reports this input as bad
    RELEASE = "release"  # its job was lost or failed: back to the pool (or failed)


_I = InputState
_E = InputEvent

#: ``{state: {event: next state}}``; ``RELEASE`` becomes ``FAILED`` once an input has
#: been allocated ``max_allocations`` times.
ALLOCATION_TRANSITIONS: dict[InputState, dict[InputEvent, InputState]] = {
    _I.UNALLOCATED: {_E.ALLOCATE: _I.ALLOCATED},
    _I.ALLOCATED: {_E.PROCESS: _I.PROCESSED, _E.FAIL: _I.FAILED, _E.RELEASE: _I.UNALLOCATED},
    _I.PROCESSED: {},
    _I.FAILED: {},
}


@attrs.frozen(kw_only=True)
class InputAllocation:
    """One input of one stage; every method returns a new value and leaves this one."""

    input_id: str
    state: InputState = InputState.UNALLOCATED
    allocations: int = 0  # how many times a job has taken it
    job_id: str | None = None  # the job holding it, while ALLOCATED
    reason: str = ""  # why it FAILED

    def allocate(self, job_id: str) -> InputAllocation:
        """A job takes this input."""
        self._expect(_E.ALLOCATE)
        return attrs.evolve(
            self, state=_I.ALLOCATED, allocations=self.allocations + 1, job_id=job_id
        )

    def process(self, job_id: str) -> InputAllocation:
        """The holding job succeeded with this input."""
        self._expect(_E.PROCESS, job_id)
        return attrs.evolve(self, state=_I.PROCESSED, job_id=None)

    def fail(self, job_id: str, reason: str) -> InputAllocation:
        """The holding job reports this input as bad; it is not handed out again."""
        self._expect(_E.FAIL, job_id)
        return attrs.evolve(self, state=_I.FAILED, job_id=None, reason=reason)

    def release(self, job_id: str, *, max_allocations: int) -> InputAllocation:
        """The holding job was lost or failed: back to the pool, or FAILED when exhausted."""
        if max_allocations < 1:
            raise ValueError(f"max_allocations must be at least 1, not {max_allocations}")
        self._expect(_E.RELEASE, job_id)
        if self.allocations >= max_allocations:
            reason = f"allocated {self.allocations} times (limit {max_allocations})"
            return attrs.evolve(self, state=_I.FAILED, job_id=None, reason=reason)
        return attrs.evolve(self, state=_I.UNALLOCATED, job_id=None)

    def _expect(self, event: InputEvent, job_id: str | None = None) -> None:
        if event not in ALLOCATION_TRANSITIONS[self.state]:
            raise IllegalTransition(
                f"input {self.input_id}: can't {event.value} in state {self.state.name}"
            )
        if job_id is not None and job_id != self.job_id:
            raise IllegalTransition(
                f"input {self.input_id}: job {job_id} can't {event.value} it "
                f"(held by job {self.job_id})"
            )


def take_inputs(inputs: Iterable[InputAllocation], max_inputs: int | None) -> list[InputAllocation]:
    """The unallocated inputs one job should take, in the given order: at most
    ``max_inputs`` of them, or all when it is None."""
    pool = [i for i in inputs if i.state is _I.UNALLOCATED]
    return pool if max_inputs is None else pool[:max_inputs]


# --- request ids ---------------------------------------------------------------------------

_WORKFLOW_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.]{0,63}")
_USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def check_workflow_name(name: str) -> str:
    """Return ``name`` if it can start a request id, else raise ``BadIdentifier``.

    Letters, digits, ``_`` and ``.``, starting with a letter or digit, at most 64; no
    ``-``, which separates the parts of a request id.
    """
    if not isinstance(name, str) or not _WORKFLOW_NAME.fullmatch(name):
        raise BadIdentifier(
            f"workflow name {name!r} is not id-safe: use letters, digits, '_' and '.' "
            "(no '-': it separates the parts of a request id)"
        )
    return name


def check_user_name(name: str) -> str:
    """Return ``name`` if it can be part of a request id, else raise ``BadIdentifier``.

    Letters, digits, ``_``, ``.`` and ``-``, starting with a letter or digit, at most 64.
    """
    if not isinstance(name, str) or not _USER_NAME.fullmatch(name):
        raise BadIdentifier(
            f"user name {name!r} is not id-safe: use letters, digits, '_', '.' and '-', "
            "starting with a letter or digit"
        )
    return name


def request_id(workflow: str, user: str, number: int) -> str:
    """``<workflow>-<user>-<NNNN>``: the number zero-padded to 4 digits, more past 9999.

    The id is unambiguous because a workflow name has no ``-`` and the number is last.
    Raises ``BadIdentifier``.
    """
    check_workflow_name(workflow)
    check_user_name(user)
    if isinstance(number, bool) or not isinstance(number, int) or number < 1:
        raise BadIdentifier(f"request number must be a positive integer, not {number!r}")
    return f"{workflow}-{user}-{number:04d}"


def parse_request_id(rid: str) -> tuple[str, str, int]:
    """Split a request id into ``(workflow, user, number)``. Raises ``BadIdentifier``."""
    workflow, _, rest = rid.partition("-")
    user, _, digits = rest.rpartition("-")
    if not digits.isdigit() or not digits.isascii() or not user:
        raise BadIdentifier(f"{rid!r} is not a request id (expected <workflow>-<user>-<NNNN>)")
    number = int(digits)
    if number < 1 or f"{number:04d}" != digits:
        raise BadIdentifier(f"{rid!r} is not a request id (the number must read like 0001)")
    check_workflow_name(workflow)
    check_user_name(user)
    return workflow, user, number
