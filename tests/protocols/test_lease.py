"""The agent's lease tracker (sans-IO): a lease counts from when its message was sent."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from wfe.protocols.lease import MAX_UNANSWERED, LeaseTracker
from wfe.protocols.messages import Lease


def test_a_lease_counts_from_when_its_message_was_sent() -> None:
    """Sent at 10, answered whenever: the attempts may run until 10 + ttl."""
    tracker = LeaseTracker()
    seq = tracker.sent(10.0)
    assert seq == 1
    assert tracker.granted(Lease(seq=seq, ttl=60.0)) == 70.0
    assert tracker.until == 70.0


def test_an_unknown_repeated_or_older_answer_extends_nothing() -> None:
    """A seq never sent, one answered already, or an answer to an older message than the one
    that set the lease changes nothing."""
    tracker = LeaseTracker()
    first, second = tracker.sent(1.0), tracker.sent(2.0)
    assert tracker.granted(Lease(seq=99, ttl=60.0)) is None
    assert tracker.granted(Lease(seq=second, ttl=60.0)) == 62.0
    assert tracker.granted(Lease(seq=second, ttl=60.0)) is None
    assert tracker.granted(Lease(seq=first, ttl=60.0)) is None  # forgotten with the newer one
    assert tracker.until == 62.0


def test_an_engine_that_never_answers_costs_bounded_memory() -> None:
    """Unanswered send times are kept up to a bound; the oldest go first."""
    tracker = LeaseTracker()
    for n in range(3 * MAX_UNANSWERED):
        tracker.sent(float(n))
    assert tracker.granted(Lease(seq=1, ttl=5.0)) is None
    assert tracker.granted(Lease(seq=tracker.seq, ttl=5.0)) == tracker.seq - 1 + 5.0
    assert tracker.until < math.inf


@given(
    st.lists(st.floats(min_value=0, max_value=1e6, allow_nan=False), min_size=1, max_size=50),
    st.lists(st.integers(min_value=1, max_value=60), max_size=60),
    st.floats(min_value=1, max_value=600, allow_nan=False),
)
def test_the_lease_never_outlasts_its_newest_answered_send_plus_ttl(
    gaps: list[float], answers: list[int], ttl: float
) -> None:
    """Whatever is answered, in whatever order, the lease's end never goes back, and never
    passes the send time of an answered message plus ttl."""
    tracker = LeaseTracker()
    now, sent_at = 0.0, {}
    for gap in gaps:
        now += gap
        sent_at[tracker.sent(now)] = now
    answered: list[float] = []
    previous = -math.inf
    for seq in answers:
        tracker.granted(Lease(seq=seq, ttl=ttl))
        if seq in sent_at:
            answered.append(sent_at[seq])
        assert tracker.until >= previous
        previous = tracker.until
        if answered:
            assert tracker.until <= max(answered) + ttl
        else:
            assert tracker.until == -math.inf
