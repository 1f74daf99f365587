"""How attempts, agents and late reports end: pure decisions of state, event and time.

Theory of operation
-------------------
The controller turns what happens into facts and asks this module what they mean; it then
writes what was decided and acts on the commit. Nothing here awaits, reads a clock or does
I/O: time is the ``now`` argument, so every rule is tested synchronously
(``tests/engine/dispatch/test_policy.py``).

* ``decide_end``: an attempt reached a terminal ``AttemptState``. A success is the job's
  outcome; a cancel is the job's (``Failed`` when the engine itself cancelled, with its
  reason: an overall timeout, a dispatch that cannot be built); a loss is re-dispatched at
  once while the job has lost at most ``max_redispatch`` attempts; a failure or timeout is
  retried after ``backoff * 2 ** (failures - 1)`` seconds while ``failures < max_attempts``.
  Otherwise the job fails with a reason naming what happened. A retry after an
  out-of-memory end or a timeout runs with the requirements its stage's ``on_retry`` rules
  make (``RetryAt.requirements``; engine/definitions/on_retry.py): ``memory = "x2"``
  doubles the memory each such time; ``max_inputs = "/2"`` keeps the first half of a job's
  inputs (``RetryAt.inputs``, rounded up; a job of one input keeps it), the others going
  back to its stage (engine/requests/split.py). An attempt ran out of memory when the agent's runner
  says so in its detail (``OUT_OF_MEMORY``: a failed allocation under its memory limit) or
  when it failed killed by SIGKILL, which only the kernel's OOM killer sends to a failed
  attempt (the agent's own kills end it as timed out, cancelled or lost).
* ``check_heartbeat``: when an agent's silence makes it lost (docs/decisions.md #41). The
  engine's own deafness (a transport down, reading held back) never counts against it.
* ``check_fence``: when a lost agent's attempts are dead for sure (``fence_at``): only then
  do they end as lost and run again.
* ``judge_late``: a report for an attempt the engine no longer tracks: a duplicate is only
  acknowledged; a report for an attempt ended as lost is recorded, and a success becomes
  the job's outcome while the job still waits to run again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from wfe.engine.definitions.on_retry import apply_rules, inputs_kept
from wfe.protocols.attempt import RETRYABLE_STATES, AttemptState, should_retry

#: Seconds added to an agent's lease before its attempts count as fenced: the keeper's
#: SIGTERM-to-SIGKILL grace and the moment it takes to see the lease run out, with room.
FENCE_MARGIN = 5.0
#: How the agent's runner begins the detail of an attempt that ran out of memory.
OUT_OF_MEMORY = "out of memory"
_SIGKILL = 9  # the signal the kernel's OOM killer sends


# --- the end of an attempt ---------------------------------------------------------------


@attrs.frozen(kw_only=True)
class AttemptEnd:
    """The facts about an attempt that has just ended, and its job's history before it."""

    attempt: int  # its number, from 1
    state: AttemptState  # terminal: where the attempt machine ended
    failures: int = 0  # the job's failed or timed-out attempts before this one
    lost: int = 0  # the job's lost attempts before this one
    max_attempts: int = 1  # 1 + retries, for attempts that fail or time out
    max_redispatch: int = 0  # losses re-dispatched before the job fails
    backoff: float = 0.0  # seconds before the first retry, doubled each time
    timeout: float = 0.0  # the attempt's limit, for the reason of a timeout
    exit_code: int | None = None
    signal: int | None = None
    detail: str = ""
    fail_reason: str | None = None  # why the engine (not an operator) cancelled it
    requirements: Mapping[str, Any] = attrs.field(factory=dict)  # what the attempt ran with
    inputs: int = 0  # how many inputs the attempt ran with (a request stage's job)
    on_retry: Mapping[str, str] = attrs.field(factory=dict)  # its stage's rules
    now: float = 0.0

    def __attrs_post_init__(self) -> None:
        if self.state not in _ENDED:
            raise ValueError(f"attempt state {self.state.name} is not final: nothing to decide")


@attrs.frozen(kw_only=True)
class Succeeded:
    """The attempt succeeded: its result is the job's."""


@attrs.frozen(kw_only=True)
class Cancelled:
    """An operator cancelled the job."""

    reason: str = "cancelled"


@attrs.frozen(kw_only=True)
class Failed:
    """The job fails with ``reason``; no attempt follows."""

    reason: str


@attrs.frozen(kw_only=True)
class RetryAt:
    """The attempt failed or timed out; the job runs again from ``at`` (``delay`` after the
    end), having failed ``failures`` times."""

    at: float
    delay: float
    failures: int
    reason: str
    requirements: Mapping[str, Any] | None = None  # changed by on_retry; None: unchanged
    inputs: int | None = None  # the inputs the retry keeps (on_retry max_inputs); None: all


@attrs.frozen(kw_only=True)
class Redispatch:
    """The attempt was lost (its agent vanished, refused it, or was fenced); the job runs
    again at once, having lost ``lost`` attempts."""

    lost: int
    reason: str


Outcome = Succeeded | Cancelled | Failed | RetryAt | Redispatch
#: Outcomes after which the job has ended.
Final = Succeeded | Cancelled | Failed
_ENDED = frozenset({AttemptState.CANCELLED, AttemptState.SUCCEEDED} | RETRYABLE_STATES)


def decide_end(end: AttemptEnd) -> Outcome:
    """What follows the end of an attempt: the job's end, or its next attempt."""
    if end.state is AttemptState.SUCCEEDED:
        return Succeeded()
    if end.state is AttemptState.CANCELLED:
        return Failed(reason=end.fail_reason) if end.fail_reason else Cancelled()
    if end.state is AttemptState.LOST:
        lost = end.lost + 1
        if lost <= end.max_redispatch:
            return Redispatch(lost=lost, reason=end.detail or "lost")
        return Failed(reason=f"lost its agent {lost} times (max_redispatch {end.max_redispatch})")
    failures = end.failures + 1
    reason = describe_failure(end)
    if should_retry(end.state, failures, end.max_attempts):
        delay = end.backoff * 2 ** (failures - 1)
        changed = adapt(end)
        if changed is not None:
            reason += f"; memory {end.requirements.get('memory')} -> {changed.get('memory')}"
        kept = split(end)
        if kept is not None:
            reason += f"; inputs {end.inputs} -> {kept}"
        return RetryAt(
            at=end.now + delay,
            delay=delay,
            failures=failures,
            reason=reason,
            requirements=changed,
            inputs=kept,
        )
    return Failed(reason=reason)


def out_of_memory(end: AttemptEnd) -> bool:
    """Whether a failed attempt ran out of memory (see the module's docstring)."""
    if end.state is not AttemptState.FAILED:
        return False
    return end.detail.startswith(OUT_OF_MEMORY) or end.signal == _SIGKILL


def adapt(end: AttemptEnd) -> dict[str, Any] | None:
    """The requirements the next attempt runs with after ``end``, when its ``on_retry``
    rules change them: only after an out-of-memory end or a timeout. None: unchanged."""
    if not adapts(end):
        return None
    changed = apply_rules(end.on_retry, end.requirements)
    return changed if changed != dict(end.requirements) else None


def split(end: AttemptEnd) -> int | None:
    """How many of its inputs the next attempt keeps after ``end`` (the first ones), when
    its ``on_retry`` rules split them: only after an out-of-memory end or a timeout, and
    only a job of more than one input. None: it keeps them all."""
    return inputs_kept(end.on_retry, end.inputs) if adapts(end) else None


def adapts(end: AttemptEnd) -> bool:
    """Whether ``on_retry`` rules apply after ``end``: it has some, and the attempt ran out
    of memory or timed out."""
    if not end.on_retry:
        return False
    return end.state is AttemptState.TIMED_OUT or out_of_memory(end)


def describe_failure(end: AttemptEnd) -> str:
    """One line saying how a failed or timed-out attempt ended."""
    n = f"attempt {end.attempt}"
    if end.state is AttemptState.TIMED_OUT:
        return f"{n} timed out after {end.timeout:g} s"
    if end.detail.startswith(OUT_OF_MEMORY):
        return f"{n} ran {end.detail}"
    if end.signal is not None:
        return f"{n} killed by signal {end.signal}"
    if end.exit_code is not None:
        detail = f" ({end.detail})" if end.detail else ""
        return f"{n} exited with code {end.exit_code}{detail}"
    return f"{n} failed: {end.detail or 'no detail'}"


# --- agents: heartbeats and fences -------------------------------------------------------


def fence_at(lease_heard: float, started_at: float, lease: float) -> float:
    """When an agent's attempts are dead for sure if it never comes back: its last lease,
    counted from when we heard the message it answered, plus ``FENCE_MARGIN``. A lease
    heard before the engine started (``-inf`` for none) counts from the start."""
    return max(lease_heard, started_at) + lease + FENCE_MARGIN


@attrs.frozen(kw_only=True)
class AgentFacts:
    """What the heartbeat check knows of one agent."""

    lost: bool  # declared lost already
    listening: bool  # the engine reads it (not held back, its transport up)
    connected: bool
    last_heard: float
    attempts: int  # attempts it holds
    heartbeat_deadline: float
    fence_at: float
    now: float


@attrs.frozen(kw_only=True)
class CheckAgain:
    """Nothing to do yet: look again at ``at``."""

    at: float


@attrs.frozen(kw_only=True)
class DeclareLost:
    """The agent is lost for ``reason``; with ``fence_at``, its attempts end then unless it
    comes back first."""

    reason: str
    fence_at: float | None


HeartbeatVerdict = CheckAgain | DeclareLost | None


def check_heartbeat(agent: AgentFacts) -> HeartbeatVerdict:
    """Whether an agent's silence makes it lost now (None: it is lost already)."""
    if agent.lost:
        return None
    if not agent.listening:  # its silence is ours, not its
        return CheckAgain(at=agent.now + agent.heartbeat_deadline)
    deadline = agent.last_heard + agent.heartbeat_deadline
    if agent.now < deadline:
        return CheckAgain(at=deadline)
    why = "missed its heartbeat deadline" if agent.connected else "disconnected"
    if not agent.attempts:
        return DeclareLost(reason=why, fence_at=None)
    why += f"; its {agent.attempts} attempt(s) are run again once fenced,"
    why += f" in {max(0.0, agent.fence_at - agent.now):.0f} s unless it comes back first"
    return DeclareLost(reason=why, fence_at=agent.fence_at)


@attrs.frozen(kw_only=True)
class FenceNow:
    """The lost agent's lease has run out: its unfinished attempts end as lost."""


FenceVerdict = FenceNow | CheckAgain | None


def check_fence(*, lost: bool, fence_at: float, now: float) -> FenceVerdict:
    """At a fence timer: end the attempts now, wait for a lease granted since, or nothing
    (None: the agent came back and reported what it holds)."""
    if not lost:
        return None
    if now < fence_at:
        return CheckAgain(at=fence_at)
    return FenceNow()


def deadline_applies(*, agent_lost: bool, state: AttemptState) -> bool:
    """Whether an attempt's deadline ends it: not while its agent is lost (the fence ends
    it, so a silent agent's work is never run twice), unless a cancel waits for it."""
    return not agent_lost or state is AttemptState.CANCELLING


# --- late reports --------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Duplicate:
    """A report already recorded: acknowledge it, nothing more."""


@attrs.frozen(kw_only=True)
class RecordLate:
    """A report for an attempt given up as lost: record what really happened on it
    (``state``); with ``outcome``, it is also the job's outcome (a success of a job that
    still waits to run again)."""

    state: AttemptState
    outcome: bool


LateVerdict = Duplicate | RecordLate


def judge_late(*, recorded: str | None, reported: AttemptState, job_waiting: bool) -> LateVerdict:
    """What a report for an attempt that is no longer current means. ``recorded`` is the
    attempt's state in the repository; ``job_waiting`` whether its job is live, not on an
    agent and not ending."""
    if recorded != AttemptState.LOST.value:
        return Duplicate()
    return RecordLate(state=reported, outcome=reported is AttemptState.SUCCEEDED and job_waiting)
