"""The state machine of one job attempt, as the engine's agent controller sees it.

Theory of operation
-------------------
Everything that affects the life of one attempt ``(job_id, attempt)`` lives here, in the
manner of h11's ``_state.py``. The controller turns what happens (a dispatch it sent, a
message from the agent, a missed heartbeat, a passed deadline, an operator's cancel) into
small *events* and feeds them to ``AttemptMachine.handle``, which either moves the attempt
to the state the ``TRANSITIONS`` table names or raises ``IllegalTransition`` and changes
nothing. The machine performs no I/O and reads no clock: every event carries its time
``at``, and the controller asks ``next_deadline()`` when to wake and ``on_deadline(now)``
what that wake-up means (the aioquic ``get_timer`` / ``handle_timer`` pattern).

Decisions worth knowing:

* **Refusal.** An agent that refuses an attempt (bad signature, no slot...) ends that
  attempt as ``LOST``, not ``FAILED``: nothing ran, so the job has not failed, and
  ``should_retry`` lets the scheduler dispatch attempt *n + 1*, elsewhere if it likes.
  It still counts as an attempt, so an engine whose signing key every agent rejects ends
  the job after ``max_attempts`` instead of redelivering it forever. ``detail`` keeps the
  agent's reason.
* **Cancellation.** A queued attempt is cancelled at once. One that an agent holds moves
  to ``CANCELLING`` until the agent confirms (``Finished``); its deadline shrinks to
  ``grace`` seconds from the request. If the agent is lost, refuses, or misses that
  deadline, or reports any ending but success, the attempt is ``CANCELLED``: an attempt
  the operator cancelled is never retried. If the script succeeded by itself before the
  kill landed, that success is kept (``SUCCEEDED``, with its result).
* **Deadlines.** From ``Dispatched`` on, an attempt must end within its timeout plus
  ``grace`` (the agent itself kills at the timeout and reports; the grace covers the
  report's trip). ``Started`` restarts that clock. Waiting in the queue has no deadline
  here: that is a job-level timeout the scheduler enforces.
* **Terminal states absorb.** Any event in ``SUCCEEDED``, ``FAILED``, ``TIMED_OUT``,
  ``LOST`` or ``CANCELLED`` raises; a late report for a finished attempt is the
  controller's to record (and ``Ack``), not a transition.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

import attrs

from wfe.protocols.errors import IllegalTransition
from wfe.protocols.messages import FinishReason, JobAccepted, JobFinished, JobRefused

#: Seconds allowed beyond an attempt's timeout for the agent's report to arrive, and for
#: an agent to confirm a cancel.
DEFAULT_GRACE = 30.0


class AttemptState(enum.Enum):
    """Where one attempt is in its life."""

    QUEUED = "queued"  # waiting for the scheduler to pick an agent
    DISPATCHED = "dispatched"  # Dispatch sent to an agent, no JobAccepted yet
    RUNNING = "running"  # the agent started the script
    CANCELLING = "cancelling"  # Cancel sent to the agent, waiting for it to confirm
    SUCCEEDED = "succeeded"  # exited by itself with status 0 (terminal)
    FAILED = "failed"  # non-zero exit, killed by a signal, or could not start (terminal)
    TIMED_OUT = "timed_out"  # ran past its timeout, killed by the agent or given up (terminal)
    LOST = "lost"  # its agent vanished or refused it; nothing known ran to the end (terminal)
    CANCELLED = "cancelled"  # an operator cancelled it (terminal)


TERMINAL_STATES = frozenset(
    {
        AttemptState.SUCCEEDED,
        AttemptState.FAILED,
        AttemptState.TIMED_OUT,
        AttemptState.LOST,
        AttemptState.CANCELLED,
    }
)

#: Terminal states after which the job may run another attempt.
RETRYABLE_STATES = frozenset({AttemptState.FAILED, AttemptState.TIMED_OUT, AttemptState.LOST})


# --- events ------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Dispatched:
    """The controller sent the attempt to ``agent``."""

    agent: str
    at: float


@attrs.frozen(kw_only=True)
class Started:
    """The agent reported that the script started (``JobAccepted``)."""

    at: float
    pid: int | None = None


@attrs.frozen(kw_only=True)
class Finished:
    """The agent reported that the attempt ended (``JobFinished``)."""

    reason: FinishReason
    at: float
    exit_code: int | None = None
    signal: int | None = None
    detail: str = ""


@attrs.frozen(kw_only=True)
class Refused:
    """The agent will not run the attempt (``JobRefused``)."""

    reason: str
    at: float


@attrs.frozen(kw_only=True)
class AgentLost:
    """The agent holding the attempt missed its heartbeat deadline or disconnected for good."""

    at: float


@attrs.frozen(kw_only=True)
class DeadlinePassed:
    """The attempt's deadline passed without a report from the agent."""

    at: float


@attrs.frozen(kw_only=True)
class CancelRequested:
    """An operator (or the job's overall timeout) asked for the attempt to be cancelled."""

    at: float


Event = Dispatched | Started | Finished | Refused | AgentLost | DeadlinePassed | CancelRequested


def finished_state(event: Finished) -> AttemptState:
    """The terminal state an agent's report leads to."""
    if event.reason is FinishReason.EXITED:
        if event.exit_code == 0 and event.signal is None:
            return AttemptState.SUCCEEDED
        return AttemptState.FAILED
    if event.reason is FinishReason.TIMED_OUT:
        return AttemptState.TIMED_OUT
    if event.reason is FinishReason.CANCELLED:
        return AttemptState.CANCELLED
    if event.reason is FinishReason.FENCED:
        return AttemptState.LOST  # killed for want of a lease: not the job's fault
    return AttemptState.FAILED  # FinishReason.ERROR: the agent could not start it


def cancelled_finished_state(event: Finished) -> AttemptState:
    """Where a report lands once a cancel was requested: a real success stays one, and
    every other ending is CANCELLED, so an attempt the operator cancelled is never retried."""
    if finished_state(event) is AttemptState.SUCCEEDED:
        return AttemptState.SUCCEEDED
    return AttemptState.CANCELLED


Target = AttemptState | Callable[[Any], AttemptState]

#: ``{state: {event class: next state}}``; a callable target computes the state from the
#: event. A pair that is missing is an illegal transition.
TRANSITIONS: dict[AttemptState, dict[type[Any], Target]] = {
    AttemptState.QUEUED: {
        Dispatched: AttemptState.DISPATCHED,
        CancelRequested: AttemptState.CANCELLED,
    },
    AttemptState.DISPATCHED: {
        Started: AttemptState.RUNNING,
        # A fast script's result can overtake (or replace, after a reconnect) its JobAccepted.
        Finished: finished_state,
        Refused: AttemptState.LOST,
        AgentLost: AttemptState.LOST,
        DeadlinePassed: AttemptState.TIMED_OUT,
        CancelRequested: AttemptState.CANCELLING,
    },
    AttemptState.RUNNING: {
        Finished: finished_state,
        AgentLost: AttemptState.LOST,
        DeadlinePassed: AttemptState.TIMED_OUT,
        CancelRequested: AttemptState.CANCELLING,
    },
    AttemptState.CANCELLING: {
        Started: AttemptState.CANCELLING,  # the JobAccepted crossed our Cancel on the wire
        Finished: cancelled_finished_state,
        Refused: AttemptState.CANCELLED,
        AgentLost: AttemptState.CANCELLED,
        DeadlinePassed: AttemptState.CANCELLED,
        CancelRequested: AttemptState.CANCELLING,  # asking twice is harmless
    },
    AttemptState.SUCCEEDED: {},
    AttemptState.FAILED: {},
    AttemptState.TIMED_OUT: {},
    AttemptState.LOST: {},
    AttemptState.CANCELLED: {},
}


@attrs.define(kw_only=True)
class AttemptMachine:
    """The state of one attempt ``job_id#attempt``; feed it events with ``handle``.

    ``timeout`` is the attempt's ``Limits.timeout`` in seconds; ``grace`` is added to it
    for the deadline (see the module docstring). Every other field is written by
    ``handle`` and is for reading only.
    """

    job_id: str
    attempt: int
    timeout: float
    grace: float = DEFAULT_GRACE
    state: AttemptState = attrs.field(default=AttemptState.QUEUED, init=False)
    agent: str | None = attrs.field(default=None, init=False)
    dispatched_at: float | None = attrs.field(default=None, init=False)
    started_at: float | None = attrs.field(default=None, init=False)
    cancel_requested_at: float | None = attrs.field(default=None, init=False)
    ended_at: float | None = attrs.field(default=None, init=False)
    deadline: float | None = attrs.field(default=None, init=False)
    pid: int | None = attrs.field(default=None, init=False)
    exit_code: int | None = attrs.field(default=None, init=False)
    signal: int | None = attrs.field(default=None, init=False)
    detail: str = attrs.field(default="", init=False)

    @property
    def terminal(self) -> bool:
        """True once the attempt has ended; every further event raises."""
        return self.state in TERMINAL_STATES

    def handle(self, event: Event) -> AttemptState:
        """Apply ``event`` and return the new state.

        Raises ``IllegalTransition`` naming the attempt, the event and the state if the
        table has no such transition; the machine is then unchanged.
        """
        target = TRANSITIONS[self.state].get(type(event))
        if target is None:
            raise IllegalTransition(
                f"attempt {self.job_id}#{self.attempt}: can't handle {type(event).__name__}"
                f" in state {self.state.name}"
            )
        new_state = target if isinstance(target, AttemptState) else target(event)
        self._record(event, new_state)
        self.state = new_state
        return new_state

    def next_deadline(self) -> float | None:
        """The time at which ``on_deadline`` will have an event, or None if there is none."""
        return None if self.terminal else self.deadline

    def on_deadline(self, now: float) -> DeadlinePassed | None:
        """Return the event for a deadline that has passed at ``now``, or None.

        Does not apply it: feed the event to ``handle`` (after recording it, if you like).
        """
        deadline = self.next_deadline()
        if deadline is not None and now >= deadline:
            return DeadlinePassed(at=now)
        return None

    def _record(self, event: Event, new_state: AttemptState) -> None:
        match event:
            case Dispatched(agent=agent, at=at):
                self.agent = agent
                self.dispatched_at = at
                self.deadline = at + self.timeout + self.grace
            case Started(at=at, pid=pid):
                self.pid = pid
                if self.started_at is None:
                    self.started_at = at
                if new_state is AttemptState.RUNNING:
                    self.deadline = at + self.timeout + self.grace
            case Finished(exit_code=exit_code, signal=signal, detail=detail):
                self.exit_code = exit_code
                self.signal = signal
                self.detail = detail
            case Refused(reason=reason):
                self.detail = f"refused by {self.agent}: {reason}"
            case AgentLost():
                self.detail = f"agent {self.agent} lost"
            case DeadlinePassed():
                self.detail = "no report from the agent by the deadline"
            case CancelRequested(at=at):
                if self.cancel_requested_at is None:
                    self.cancel_requested_at = at
                if self.deadline is not None:
                    self.deadline = min(self.deadline, at + self.grace)
        if new_state in TERMINAL_STATES:
            self.ended_at = event.at
            self.deadline = None


def event_from_message(message: JobAccepted | JobRefused | JobFinished, *, at: float) -> Event:
    """Translate an agent's report about an attempt into the event for its machine."""
    match message:
        case JobAccepted(pid=pid):
            return Started(at=at, pid=pid)
        case JobRefused(reason=reason):
            return Refused(reason=reason, at=at)
        case JobFinished():
            return Finished(
                reason=message.reason,
                at=at,
                exit_code=message.exit_code,
                signal=message.signal,
                detail=message.detail,
            )
    raise TypeError(f"{type(message).__name__} is not a report about an attempt")


def should_retry(state: AttemptState, attempts_made: int, max_attempts: int) -> bool:
    """Whether a job whose latest attempt ended in ``state`` gets another attempt.

    FAILED, TIMED_OUT and LOST are retried while ``attempts_made < max_attempts``;
    SUCCEEDED and CANCELLED never are. Raises ``ValueError`` for a state that is not final.
    """
    if state not in TERMINAL_STATES:
        raise ValueError(f"attempt state {state.name} is not final: only an ended attempt retries")
    return state in RETRYABLE_STATES and attempts_made < max_attempts
