"""Retries that halve a job's inputs (``on_retry = { max_inputs = "/2" }``).

Pure parts first (no trio): the split of a batch (hypothesis: no input lost or doubled, the
sizes ``ceil(n / N)`` and the rest) and the controller's policy deciding it. Then the whole
thing for real (test_split_retry_engine.py).
"""

from __future__ import annotations

import math

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from wfe.engine.definitions.on_retry import inputs_kept
from wfe.engine.dispatch.policy import AttemptEnd, Failed, RetryAt, decide_end
from wfe.engine.requests.split import inputs_of, kept_params, split_batch
from wfe.protocols.attempt import AttemptState

END = AttemptEnd(
    attempt=1,
    state=AttemptState.FAILED,
    max_attempts=3,
    backoff=1.0,
    timeout=30.0,
    exit_code=1,
    detail="out of memory: an allocation failed under its limit of 1024 bytes",
    requirements={"memory": 1024},
    on_retry={"max_inputs": "/2"},
    inputs=8,
    now=10.0,
)


@given(
    st.lists(st.text(min_size=1, max_size=4), min_size=2, max_size=64, unique=True),
    st.integers(min_value=2, max_value=9),
)
def test_a_split_loses_and_doubles_no_input(keys: list[str], divisor: int) -> None:
    """Cut by the rule's arithmetic, the job keeps the first ceil(n / N) inputs in order and
    the others are released: together exactly the batch, none in both; its params keep the
    same first inputs."""
    keep = inputs_kept({"max_inputs": f"/{divisor}"}, len(keys))
    assert keep == math.ceil(len(keys) / divisor)
    cut = split_batch(keys, keep)
    assert list(cut.kept) + list(cut.released) == keys
    assert not set(cut.kept) & set(cut.released)
    assert len(cut.kept) == keep and len(cut.released) == len(keys) - keep
    params = {"x": 1, "inputs": [{"path": k} for k in keys]}
    kept = kept_params(params, keep)
    assert [i["path"] for i in kept["inputs"]] == list(cut.kept)
    assert kept["x"] == 1 and inputs_of(kept) == keep
    assert inputs_of(params) == len(keys)  # not changed in place


@pytest.mark.parametrize("keep", [0, 3, 4])
def test_a_split_that_keeps_nothing_or_everything_is_refused(keep: int) -> None:
    """Keeping no input, or all of them, is no split: refused in one line."""
    with pytest.raises(ValueError, match=f"cannot keep {keep} of 3 inputs: nothing to split"):
        split_batch(["a", "b", "c"], keep)


def test_params_without_inputs_cannot_be_cut() -> None:
    """A job that is no stage's (no inputs list) is refused in one line."""
    with pytest.raises(ValueError, match="the job's params have no inputs list to split"):
        kept_params({"x": 1}, 1)
    assert inputs_of({"x": 1}) == 0


def test_an_out_of_memory_end_halves_the_inputs() -> None:
    """After an out-of-memory end with retries left, the retry keeps 4 of 8 inputs (rounded
    up: 3 of 5, 1 of 2), and the reason says so."""
    decided = decide_end(END)
    assert isinstance(decided, RetryAt)
    assert decided.inputs == 4 and decided.requirements is None
    assert decided.reason.endswith("; inputs 8 -> 4")
    assert decide_end(attrs.evolve(END, inputs=5)).inputs == 3  # type: ignore[union-attr]
    assert decide_end(attrs.evolve(END, inputs=2)).inputs == 1  # type: ignore[union-attr]


def test_a_timeout_splits_too_and_memory_grows_with_it() -> None:
    """A timed-out attempt splits as well; with a memory rule too, both change."""
    end = attrs.evolve(
        END,
        state=AttemptState.TIMED_OUT,
        exit_code=None,
        detail="",
        on_retry={"memory": "x2", "max_inputs": "/3"},
        inputs=7,
    )
    decided = decide_end(end)
    assert isinstance(decided, RetryAt)
    assert decided.inputs == 3
    assert decided.requirements == {"memory": 2048}
    assert decided.reason == "attempt 1 timed out after 30 s; memory 1024 -> 2048; inputs 7 -> 3"


def test_a_job_of_one_input_or_an_ordinary_failure_is_not_split() -> None:
    """One input is retried unchanged; a failure that is neither out of memory nor a timeout
    is retried unchanged; with no retries left the job fails, nothing split."""
    assert decide_end(attrs.evolve(END, inputs=1)).inputs is None  # type: ignore[union-attr]
    plain = decide_end(attrs.evolve(END, detail="boom"))
    assert isinstance(plain, RetryAt) and plain.inputs is None
    assert decide_end(attrs.evolve(END, failures=2)) == Failed(
        reason="attempt 1 ran out of memory: an allocation failed under its limit of 1024 bytes"
    )


@given(st.integers(min_value=1, max_value=200), st.integers(min_value=2, max_value=5))
def test_halving_again_and_again_ends_with_jobs_of_one_input(n: int, divisor: int) -> None:
    """Splitting a batch and every part again while each keeps running out of memory
    partitions the inputs into jobs of one input, each input in exactly one of them."""
    pending = [list(range(n))]
    done: list[list[int]] = []
    while pending:
        batch = pending.pop()
        keep = inputs_kept({"max_inputs": f"/{divisor}"}, len(batch))
        if keep is None:
            done.append(batch)
            continue
        cut = split_batch([str(i) for i in batch], keep)
        pending += [[int(k) for k in cut.kept], [int(k) for k in cut.released]]
    assert sorted(i for b in done for i in b) == list(range(n))
    assert all(len(b) == 1 for b in done)
