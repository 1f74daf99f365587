"""The state machine of one action run (a job of kind "action").

Theory of operation
-------------------
An action run executes an action's tasklets inside the engine; it is the in-process
sibling of ``wfe.protocols.attempt``. The engine feeds it events as the run's task starts
and ends, and ``ActionRunMachine.handle`` moves it along the ``TRANSITIONS`` table or
raises ``IllegalTransition`` and changes nothing. No I/O, no clock: each event carries
``at``.

A pending run can be cancelled before it starts. A running one is cancelled through its
trio cancel scope, which takes effect at once, so there is no "cancelling" state here:
the engine reports ``RunCancelled`` when the task has unwound. Timeouts belong to the
engine's ``fail_after`` around the run and arrive as ``RunFailed`` with an error saying
so. Every terminal state absorbs: any further event raises.
"""

from __future__ import annotations

import enum
from typing import Any

import attrs

from wfe.protocols.errors import IllegalTransition


class ActionRunState(enum.Enum):
    """Where one action run is in its life."""

    PENDING = "pending"  # created, waiting for the scheduler to start it
    RUNNING = "running"  # its tasklets are executing
    SUCCEEDED = "succeeded"  # every matching tasklet returned (terminal)
    FAILED = "failed"  # a tasklet raised, or the run timed out (terminal)
    CANCELLED = "cancelled"  # cancelled before or while running (terminal)


TERMINAL_STATES = frozenset(
    {ActionRunState.SUCCEEDED, ActionRunState.FAILED, ActionRunState.CANCELLED}
)


@attrs.frozen(kw_only=True)
class RunStarted:
    """The engine started the run's tasklets."""

    at: float


@attrs.frozen(kw_only=True)
class RunSucceeded:
    """Every tasklet of the run returned."""

    at: float


@attrs.frozen(kw_only=True)
class RunFailed:
    """A tasklet raised (or the run timed out); ``error`` says what, in one line."""

    error: str
    at: float


@attrs.frozen(kw_only=True)
class RunCancelled:
    """The run was cancelled; if it was running, its task has unwound."""

    at: float
    reason: str = ""


Event = RunStarted | RunSucceeded | RunFailed | RunCancelled

#: ``{state: {event class: next state}}``; a missing pair is an illegal transition.
TRANSITIONS: dict[ActionRunState, dict[type[Any], ActionRunState]] = {
    ActionRunState.PENDING: {
        RunStarted: ActionRunState.RUNNING,
        RunCancelled: ActionRunState.CANCELLED,
    },
    ActionRunState.RUNNING: {
        RunSucceeded: ActionRunState.SUCCEEDED,
        RunFailed: ActionRunState.FAILED,
        RunCancelled: ActionRunState.CANCELLED,
    },
    ActionRunState.SUCCEEDED: {},
    ActionRunState.FAILED: {},
    ActionRunState.CANCELLED: {},
}


@attrs.define(kw_only=True)
class ActionRunMachine:
    """The state of one run ``run_id`` of ``action``; feed it events with ``handle``.

    Fields other than ``run_id`` and ``action`` are written by ``handle``; read only.
    """

    run_id: str
    action: str
    state: ActionRunState = attrs.field(default=ActionRunState.PENDING, init=False)
    started_at: float | None = attrs.field(default=None, init=False)
    ended_at: float | None = attrs.field(default=None, init=False)
    detail: str = attrs.field(default="", init=False)  # the error, or why it was cancelled

    @property
    def terminal(self) -> bool:
        """True once the run has ended; every further event raises."""
        return self.state in TERMINAL_STATES

    def handle(self, event: Event) -> ActionRunState:
        """Apply ``event`` and return the new state.

        Raises ``IllegalTransition`` naming the run, the event and the state if the table
        has no such transition; the machine is then unchanged.
        """
        new_state = TRANSITIONS[self.state].get(type(event))
        if new_state is None:
            raise IllegalTransition(
                f"action run {self.run_id} ({self.action}): can't handle"
                f" {type(event).__name__} in state {self.state.name}"
            )
        match event:
            case RunStarted(at=at):
                self.started_at = at
            case RunFailed(error=error):
                self.detail = error
            case RunCancelled(reason=reason):
                self.detail = reason
        if new_state in TERMINAL_STATES:
            self.ended_at = event.at
        self.state = new_state
        return new_state
