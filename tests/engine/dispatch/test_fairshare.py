"""Fair share (engine/dispatch/fairshare.py): weights, usage over the window, and turns.

No trio: time is an argument."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wfe.engine.dispatch.fairshare import FairShare

A, B, C = ("survey", "alice"), ("calib", "bob"), ("", "")


def test_a_weight_is_the_namespaces_times_the_users() -> None:
    """Named namespaces and users weigh what wfe.toml says, others 1; the two multiply."""
    fair = FairShare(namespaces={"survey": 3.0}, users={"alice": 0.5})
    assert fair.weight(A) == 1.5
    assert fair.weight(B) == 1.0
    assert fair.weight(("survey", "bob")) == 3.0


def test_usage_is_the_slots_held_now_plus_their_moving_average() -> None:
    """Slots held for a long time count twice (now and on average); once given back, the
    average decays with the window as its time constant."""
    fair = FairShare(window=100.0)
    fair.started(A, 4, now=0.0)
    assert fair.usage(A, now=0.0) == 4.0  # nothing held before: the average is 0
    assert fair.usage(A, now=1000.0) == pytest.approx(8.0, abs=1e-3)  # 4 now, 4 on average
    fair.ended(A, 4, now=1000.0)
    assert fair.usage(A, now=1100.0) == pytest.approx(4 * math.exp(-1), abs=1e-3)
    assert fair.running(A) == 0


def test_turns_alternate_between_equal_shares_and_follow_weights() -> None:
    """Equal weights and no usage: turns alternate. Weights 3:1: three turns for one."""
    fair = FairShare()
    turns = fair.turns([A, B], now=0.0)
    taken = []
    for _ in range(6):
        share = turns.next()
        taken.append(share)
        turns.took(share, 1)
    assert taken.count(A) == taken.count(B) == 3
    weighted = FairShare(namespaces={"survey": 3.0})
    turns = weighted.turns([A, B], now=0.0)
    counts = {A: 0, B: 0}
    for _ in range(400):
        share = turns.next()
        counts[share] += 1
        turns.took(share, 1)
    assert counts == {A: 300, B: 100}


def test_a_share_that_had_the_slots_lately_waits_its_turn() -> None:
    """A share that held every slot until now comes after one that held none."""
    fair = FairShare(window=600.0)
    fair.started(A, 8, now=0.0)
    fair.ended(A, 8, now=600.0)
    turns = fair.turns([A, B], now=600.0)
    assert turns.next() == B


def test_a_share_with_nothing_left_is_dropped() -> None:
    """Dropping a share leaves the others; with none left the turns are over."""
    turns = FairShare().turns([A, B], now=0.0)
    turns.drop(turns.next())
    assert turns
    turns.drop(turns.next())
    assert not turns


@given(
    weights=st.lists(st.floats(0.1, 10.0), min_size=1, max_size=4),
    rounds=st.integers(1, 300),
)
def test_turns_give_every_share_its_weights_portion(weights: list[float], rounds: int) -> None:
    """Whatever the weights, after any number of one-slot turns from no usage, each share has
    had its portion of them to within one turn with two shares, two with up to four."""
    shares = [(f"ns{i}", "") for i in range(len(weights))]
    fair = FairShare(namespaces={s[0]: w for s, w in zip(shares, weights, strict=True)})
    turns = fair.turns(shares, now=0.0)
    counts = dict.fromkeys(shares, 0)
    for _ in range(rounds):
        share = turns.next()
        counts[share] += 1
        turns.took(share, 1)
    total = sum(weights)
    for share, weight in zip(shares, weights, strict=True):
        bound = 1 if len(shares) <= 2 else 2
        assert abs(counts[share] - rounds * weight / total) <= bound, (counts, weights)
