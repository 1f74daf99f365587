"""``policy.decide_end`` with a stage's ``on_retry``: how a retry changes the job (no trio)."""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from wfe.engine.dispatch.policy import AttemptEnd, Failed, RetryAt, decide_end, out_of_memory
from wfe.protocols.attempt import AttemptState

OOM = "out of memory: an allocation failed under its limit of 104857600 bytes"
END = AttemptEnd(
    attempt=1,
    state=AttemptState.FAILED,
    max_attempts=3,
    backoff=2.0,
    timeout=60.0,
    exit_code=1,
    detail=OOM,
    requirements={"memory": 100 << 20, "cpus": 1},
    on_retry={"memory": "x2"},
    now=10.0,
)


def test_an_out_of_memory_end_doubles_memory_for_the_retry() -> None:
    """The retry's requirements have twice the memory, the rest unchanged; the reason says so."""
    decided = decide_end(END)
    assert isinstance(decided, RetryAt)
    assert decided.requirements == {"memory": 200 << 20, "cpus": 1}
    assert (decided.at, decided.failures) == (12.0, 1)
    assert decided.reason == f"attempt 1 ran {OOM}; memory {100 << 20} -> {200 << 20}"


def test_a_timeout_and_a_kernel_kill_change_memory_too() -> None:
    """A timed-out attempt, and one killed by SIGKILL (the OOM killer's signal), count."""
    timed_out = attrs.evolve(END, state=AttemptState.TIMED_OUT, detail="", exit_code=None)
    killed = attrs.evolve(END, detail="", exit_code=None, signal=9)
    for end in (timed_out, killed):
        decided = decide_end(end)
        assert isinstance(decided, RetryAt)
        assert decided.requirements == {"memory": 200 << 20, "cpus": 1}


@pytest.mark.parametrize(
    "end",
    [
        attrs.evolve(END, detail="result.json missing"),  # an ordinary failure
        attrs.evolve(END, detail="", exit_code=None, signal=15),  # SIGTERM is not the OOM killer
        attrs.evolve(END, on_retry={}),  # no rules
        attrs.evolve(END, requirements={"cpus": 1}),  # no memory to grow
    ],
)
def test_other_ends_retry_unchanged(end: AttemptEnd) -> None:
    """Only an out-of-memory end or a timeout, with a rule and memory to change, changes it."""
    decided = decide_end(end)
    assert isinstance(decided, RetryAt)
    assert decided.requirements is None
    assert "->" not in decided.reason  # no change named


def test_a_lost_attempt_is_not_out_of_memory() -> None:
    """A lost attempt killed by SIGKILL (the agent's fence) is not an out-of-memory end."""
    assert not out_of_memory(attrs.evolve(END, state=AttemptState.LOST, signal=9, detail=""))
    assert out_of_memory(END)


def test_the_last_attempt_fails_with_the_reason() -> None:
    """With no attempt left, the job fails saying it ran out of memory: nothing is changed."""
    decided = decide_end(attrs.evolve(END, failures=2))
    assert decided == Failed(reason=f"attempt 1 ran {OOM}")


@given(
    memory=st.integers(min_value=1, max_value=1 << 40),
    retries=st.integers(min_value=1, max_value=6),
)
def test_each_out_of_memory_retry_doubles_again(memory: int, retries: int) -> None:
    """Fed back, each retry's requirements double the memory once more: 2**n times after n."""
    requirements: dict[str, int] = {"memory": memory}
    for failures in range(retries):
        decided = decide_end(
            attrs.evolve(
                END, failures=failures, max_attempts=retries + 1, requirements=requirements
            )
        )
        assert isinstance(decided, RetryAt) and decided.requirements is not None
        requirements = dict(decided.requirements)
    assert requirements == {"memory": memory * 2**retries}
