"""``wfe.engine.dispatch.policy``: how attempts, agents and late reports end (no trio here)."""

from __future__ import annotations

import math

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from wfe.engine.dispatch.policy import (
    FENCE_MARGIN,
    AgentFacts,
    AttemptEnd,
    Cancelled,
    CheckAgain,
    DeclareLost,
    Duplicate,
    Failed,
    FenceNow,
    RecordLate,
    Redispatch,
    RetryAt,
    Succeeded,
    check_fence,
    check_heartbeat,
    deadline_applies,
    decide_end,
    fence_at,
    judge_late,
)
from wfe.protocols.attempt import AttemptState

END = AttemptEnd(
    attempt=1,
    state=AttemptState.FAILED,
    max_attempts=3,
    max_redispatch=2,
    backoff=2.0,
    timeout=60.0,
    exit_code=1,
    now=100.0,
)


def test_a_success_ends_the_job() -> None:
    """A succeeded attempt is the job's outcome, whatever came before it."""
    assert decide_end(attrs.evolve(END, state=AttemptState.SUCCEEDED, failures=2)) == Succeeded()


def test_an_operator_cancel_cancels_the_job() -> None:
    """A cancelled attempt with no engine reason cancels the job."""
    assert decide_end(attrs.evolve(END, state=AttemptState.CANCELLED)) == Cancelled()


def test_a_cancel_the_engine_made_fails_the_job_with_its_reason() -> None:
    """The engine's own cancel (an overall timeout) fails the job, saying why."""
    end = attrs.evolve(END, state=AttemptState.CANCELLED, fail_reason="overall timeout of 5 s")
    assert decide_end(end) == Failed(reason="overall timeout of 5 s")


def test_a_failure_is_retried_after_a_doubling_backoff() -> None:
    """The n-th failure is retried backoff * 2**(n-1) seconds after the end."""
    assert decide_end(END) == RetryAt(
        at=102.0, delay=2.0, failures=1, reason="attempt 1 exited with code 1"
    )
    second = decide_end(attrs.evolve(END, attempt=2, failures=1))
    assert second == RetryAt(at=104.0, delay=4.0, failures=2, reason="attempt 2 exited with code 1")


def test_the_last_failure_fails_the_job_saying_how() -> None:
    """With its attempts used up, a failure ends the job with the attempt's story."""
    end = attrs.evolve(END, attempt=3, failures=2, detail="bad input")
    assert decide_end(end) == Failed(reason="attempt 3 exited with code 1 (bad input)")


@pytest.mark.parametrize(
    ("end", "reason"),
    [
        (attrs.evolve(END, state=AttemptState.TIMED_OUT), "attempt 1 timed out after 60 s"),
        (attrs.evolve(END, signal=9), "attempt 1 killed by signal 9"),
        (
            attrs.evolve(END, exit_code=None, detail="no such interpreter"),
            "attempt 1 failed: no such interpreter",
        ),
        (attrs.evolve(END, exit_code=None), "attempt 1 failed: no detail"),
    ],
)
def test_a_failure_reason_names_what_happened(end: AttemptEnd, reason: str) -> None:
    """Timeouts, signals and failures to start each get their own reason."""
    assert decide_end(attrs.evolve(end, max_attempts=1)) == Failed(reason=reason)


def test_a_loss_is_redispatched_at_once_without_counting_as_a_failure() -> None:
    """A lost attempt runs again at once while losses stay within max_redispatch."""
    end = attrs.evolve(END, state=AttemptState.LOST, failures=2, detail="agent a lost")
    assert decide_end(end) == Redispatch(lost=1, reason="agent a lost")


def test_too_many_losses_fail_the_job() -> None:
    """One loss more than max_redispatch fails the job, saying so."""
    end = attrs.evolve(END, state=AttemptState.LOST, lost=2)
    assert decide_end(end) == Failed(reason="lost its agent 3 times (max_redispatch 2)")


def test_an_unfinished_attempt_has_no_end_to_decide() -> None:
    """Asking about a running attempt is an error that names its state."""
    with pytest.raises(ValueError, match="RUNNING is not final"):
        attrs.evolve(END, state=AttemptState.RUNNING)


ENDINGS = st.sampled_from(
    [
        AttemptState.SUCCEEDED,
        AttemptState.FAILED,
        AttemptState.TIMED_OUT,
        AttemptState.LOST,
        AttemptState.CANCELLED,
    ]
)


@given(
    endings=st.lists(ENDINGS, max_size=30),
    max_attempts=st.integers(1, 5),
    max_redispatch=st.integers(0, 4),
    backoff=st.floats(0, 100, allow_nan=False),
)
def test_a_job_runs_a_bounded_number_of_attempts_and_ends_once(
    endings: list[AttemptState], max_attempts: int, max_redispatch: int, backoff: float
) -> None:
    """Over any sequence of attempt ends: a job never runs past its attempts (failures
    within max_attempts, losses within max_redispatch + 1); a success, a cancel and a
    failure end it; a loss is never counted as a failure and is re-dispatched at once;
    retries wait the doubling backoff, never going back in time."""
    failures = lost = 0
    now = 0.0
    ended = False
    for n, state in enumerate(endings, start=1):
        if ended:
            break
        end = AttemptEnd(
            attempt=n,
            state=state,
            failures=failures,
            lost=lost,
            max_attempts=max_attempts,
            max_redispatch=max_redispatch,
            backoff=backoff,
            exit_code=1,
            now=now,
        )
        outcome = decide_end(end)
        match outcome:
            case Succeeded():
                assert state is AttemptState.SUCCEEDED
                ended = True
            case Cancelled():
                assert state is AttemptState.CANCELLED
                ended = True
            case Failed():
                assert state is not AttemptState.SUCCEEDED
                if state is AttemptState.LOST:
                    assert lost + 1 > max_redispatch
                elif state is not AttemptState.CANCELLED:
                    assert failures + 1 == max_attempts
                ended = True
            case RetryAt(at=at, delay=delay, failures=counted):
                assert state in (AttemptState.FAILED, AttemptState.TIMED_OUT)
                assert counted == failures + 1 < max_attempts
                assert delay == backoff * 2**failures and at == now + delay >= now
                failures, now = counted, at
            case Redispatch(lost=counted):
                assert state is AttemptState.LOST
                assert counted == lost + 1 <= max_redispatch
                lost = counted
        assert failures < max_attempts and lost <= max_redispatch
        assert n <= max_attempts + max_redispatch


AGENT = AgentFacts(
    lost=False,
    listening=True,
    connected=True,
    last_heard=10.0,
    attempts=0,
    heartbeat_deadline=5.0,
    fence_at=40.0,
    now=12.0,
)


def test_an_agent_heard_recently_is_checked_again_at_its_deadline() -> None:
    """Before its heartbeat deadline an agent is fine until then."""
    assert check_heartbeat(AGENT) == CheckAgain(at=15.0)


def test_an_agent_the_engine_cannot_hear_is_never_declared_lost() -> None:
    """While its transport is down (or reading held back), silence is not the agent's."""
    assert check_heartbeat(attrs.evolve(AGENT, listening=False, now=100.0)) == CheckAgain(at=105.0)


def test_a_silent_agent_is_lost_at_its_deadline_and_its_attempts_wait_for_the_fence() -> None:
    """Past the deadline the agent is lost; what it holds ends only at the fence."""
    verdict = check_heartbeat(attrs.evolve(AGENT, attempts=2, now=15.0))
    assert verdict == DeclareLost(
        reason="missed its heartbeat deadline; its 2 attempt(s) are run again once fenced,"
        " in 25 s unless it comes back first",
        fence_at=40.0,
    )
    idle = check_heartbeat(attrs.evolve(AGENT, connected=False, now=15.0))
    assert idle == DeclareLost(reason="disconnected", fence_at=None)


def test_a_lost_agent_is_not_lost_again() -> None:
    """The check of an agent already lost does nothing."""
    assert check_heartbeat(attrs.evolve(AGENT, lost=True, now=99.0)) is None


def test_the_fence_is_the_last_lease_plus_a_margin_never_before_the_start() -> None:
    """A lease counts from when it was heard, or from the engine's start if earlier."""
    assert fence_at(20.0, 0.0, 10.0) == 30.0 + FENCE_MARGIN
    assert fence_at(-math.inf, 50.0, 10.0) == 60.0 + FENCE_MARGIN


def test_attempts_are_fenced_only_once_the_lease_ran_out_and_the_agent_is_still_lost() -> None:
    """Fence now, wait for a newer lease, or nothing for an agent that came back."""
    assert check_fence(lost=True, fence_at=40.0, now=40.0) == FenceNow()
    assert check_fence(lost=True, fence_at=45.0, now=40.0) == CheckAgain(at=45.0)
    assert check_fence(lost=False, fence_at=40.0, now=50.0) is None


def test_a_deadline_does_not_end_a_lost_agents_attempt_unless_it_is_being_cancelled() -> None:
    """A silent agent's attempt ends at the fence, a cancel's at its deadline."""
    assert deadline_applies(agent_lost=False, state=AttemptState.RUNNING)
    assert not deadline_applies(agent_lost=True, state=AttemptState.RUNNING)
    assert deadline_applies(agent_lost=True, state=AttemptState.CANCELLING)


@given(
    lost=st.booleans(),
    fence=st.floats(0, 1e6, allow_nan=False),
    now=st.floats(0, 1e6, allow_nan=False),
)
def test_a_fence_never_comes_early(lost: bool, fence: float, now: float) -> None:
    """Attempts are never fenced before fence_at, nor for an agent that is not lost."""
    verdict = check_fence(lost=lost, fence_at=fence, now=now)
    if isinstance(verdict, FenceNow):
        assert lost and now >= fence
    elif isinstance(verdict, CheckAgain):
        assert lost and verdict.at == fence > now
    else:
        assert not lost


def test_a_late_report_of_an_attempt_not_lost_is_a_duplicate() -> None:
    """A resent report for a recorded end is only acknowledged."""
    verdict = judge_late(recorded="succeeded", reported=AttemptState.SUCCEEDED, job_waiting=True)
    assert verdict == Duplicate()


def test_a_late_success_is_the_outcome_of_a_job_that_still_waits() -> None:
    """A lost attempt that in fact succeeded ends its job, if the job has not run again."""
    assert judge_late(
        recorded="lost", reported=AttemptState.SUCCEEDED, job_waiting=True
    ) == RecordLate(state=AttemptState.SUCCEEDED, outcome=True)
    assert judge_late(
        recorded="lost", reported=AttemptState.SUCCEEDED, job_waiting=False
    ) == RecordLate(state=AttemptState.SUCCEEDED, outcome=False)
    assert judge_late(
        recorded="lost", reported=AttemptState.FAILED, job_waiting=True
    ) == RecordLate(state=AttemptState.FAILED, outcome=False)
