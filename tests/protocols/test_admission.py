"""The agent's rules for accepting a dispatch (wfe.protocols.admission), both ends run by ``Pair``."""

from __future__ import annotations

import attrs
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.protocols.pair import ENGINE, Pair
from wfe.protocols.admission import Ignore, Refuse, Resend, Run
from wfe.protocols.messages import AttemptRef, JobFinished, JobRefused
from wfe.protocols.signing import sign


def refusal(answer: list[object]) -> str:
    """The reason of the one JobRefused in ``answer``."""
    (message,) = answer
    assert isinstance(message, JobRefused)
    return message.reason


def test_a_dispatch_signed_by_the_trusted_key_runs() -> None:
    """A fresh, signed dispatch from the controller it has a session with runs, and nothing is
    sent back at once (JobAccepted comes from the attempt)."""
    pair = Pair.make()
    assert pair.send(pair.dispatch("j1")) == []
    assert pair.agent.started == [AttemptRef(job_id="j1", attempt=1)]


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda d, pair: attrs.evolve(d, signature=None), "j1#1 is unsigned"),
        (lambda d, pair: attrs.evolve(d, script="rm -rf /\n"), "script sha256 does not match"),
        (lambda d, pair: attrs.evolve(d, params={"x": 1}), "signature does not verify"),
        (lambda d, pair: attrs.evolve(d, signature="not base64!"), "not valid base64"),
        (lambda d, pair: sign(d, Ed25519PrivateKey.generate()), "signature does not verify"),
    ],
    ids=["unsigned", "script-changed", "params-changed", "garbled", "other-key"],
)
def test_a_dispatch_that_is_not_the_engines_is_refused(change, problem) -> None:
    """Unsigned, altered after signing, or signed by another key: refused with a one-line
    reason naming the attempt, and nothing starts."""
    pair = Pair.make()
    answer = pair.send(change(pair.dispatch("j1"), pair))
    assert problem in refusal(answer)
    assert pair.agent.started == []


def test_without_a_trusted_key_the_script_must_match_its_sha256() -> None:
    """With no trusted key, an unsigned dispatch runs if its script matches its sha256, and is
    refused if not."""
    pair = Pair.make(trusted=False)
    unsigned = attrs.evolve(pair.dispatch("j1"), signature=None)
    assert pair.send(unsigned) == []
    altered = attrs.evolve(pair.dispatch("j2"), script="other\n", signature=None)
    assert "sha256 does not match" in refusal(pair.send(altered))
    assert pair.agent.started == [AttemptRef(job_id="j1", attempt=1)]


def test_only_the_controller_with_a_session_is_obeyed() -> None:
    """Another account is refused as not a controller; another resource of the controller's
    account (a second engine instance) is refused until it has a session; the bare JID is
    compared without case."""
    pair = Pair.make()
    d = pair.dispatch("j1")
    assert "mallory@wfe.localhost is not a controller" in refusal(
        pair.send(d, sender="mallory@wfe.localhost/x")
    )
    assert "no session" in refusal(pair.send(d, sender="engine@wfe.localhost/other"))
    pair.agent.session_peer = None
    assert "no session" in refusal(pair.send(d))
    pair.agent.session_peer = ENGINE.replace("engine", "ENGINE", 1)
    assert pair.send(d, sender=ENGINE.replace("engine", "ENGINE", 1)) == []
    assert pair.agent.started == [AttemptRef(job_id="j1", attempt=1)]


@pytest.mark.parametrize(
    ("issued_offset", "problem"),
    [
        (-301.0, "issued 301 s ago, outside max_dispatch_age 300 s: a replay"),
        (+400.0, "issued 400 s in the future"),
        (None, "no issue time"),
    ],
)
def test_a_dispatch_signed_outside_max_age_is_a_replay(
    issued_offset: float | None, problem: str
) -> None:
    """A captured dispatch sent again later (or one from a host whose clock is far off) is
    refused; at the edge of the window it still runs."""
    pair = Pair.make(max_age=300.0)
    old = pair.engine.dispatch(
        "j1",
        issued=None if issued_offset is None else pair.now + issued_offset,
    )
    assert problem in refusal(pair.send(old))
    at_edge = pair.engine.dispatch("j2", issued=pair.now - 300.0)
    assert pair.send(at_edge) == []


def test_no_age_check_without_max_age() -> None:
    """``max_age=None`` accepts any issue time (the local transport's default)."""
    pair = Pair.make(max_age=None)
    assert pair.send(pair.engine.dispatch("j1", issued=0.0)) == []


def test_a_duplicate_of_a_running_attempt_is_ignored_and_a_redelivery_gets_the_stored_result() -> (
    None
):
    """The same dispatch twice while it runs: the second is ignored (no answer, no second run).
    Once it ended, the dispatch again gets the spooled JobFinished, and it still ran once."""
    pair = Pair.make()
    d = pair.dispatch("j1")
    assert pair.send(d) == []
    assert pair.send(d) == []
    assert isinstance(pair.agent.verdicts[-1], Ignore)
    finished = pair.agent.finish(AttemptRef(job_id="j1", attempt=1))
    assert pair.send(d) == [finished]
    assert isinstance(pair.agent.verdicts[-1], Resend)
    assert pair.agent.started == [AttemptRef(job_id="j1", attempt=1)]


def test_a_new_attempt_of_the_same_job_is_a_new_run() -> None:
    """Attempt 2 of a job is not a duplicate of attempt 1."""
    pair = Pair.make()
    pair.send(pair.dispatch("j1", 1))
    pair.agent.finish(AttemptRef(job_id="j1", attempt=1), exit_code=1)
    assert pair.send(pair.dispatch("j1", 2)) == []
    assert pair.agent.started == [AttemptRef(job_id="j1", attempt=n) for n in (1, 2)]


def test_a_full_agent_refuses_and_the_signature_comes_first() -> None:
    """With every slot busy a dispatch is refused for capacity; a bad signature is refused
    for its signature even then (the first failing rule names the refusal)."""
    pair = Pair.make(slots=1)
    pair.send(pair.dispatch("j1"))
    assert refusal(pair.send(pair.dispatch("j2"))) == "no free slot: all 1 busy"
    unsigned = attrs.evolve(pair.dispatch("j3"), signature=None)
    assert "unsigned" in refusal(pair.send(unsigned))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["deliver", "finish"]),
            st.sampled_from(["j1", "j2", "j3"]),
            st.integers(1, 2),
        ),
        max_size=40,
    )
)
def test_any_sequence_of_deliveries_runs_each_attempt_at_most_once(steps) -> None:
    """Whatever the order of deliveries, duplicates, redeliveries and ends: each attempt
    starts at most once, every delivery gets at most one answer, a delivery of an ended
    attempt is answered with its own stored result, and never more attempts run than slots."""
    pair = Pair.make(slots=2)
    for action, job, attempt in steps:
        ref = AttemptRef(job_id=job, attempt=attempt)
        if action == "finish":
            if ref in pair.agent.running:
                pair.agent.finish(ref)
            continue
        was_spooled = ref in pair.agent.spooled
        answer = pair.send(pair.dispatch(job, attempt))
        assert len(answer) <= 1
        if was_spooled:
            assert answer == [pair.agent.spooled[ref]]
            assert isinstance(answer[0], JobFinished)
        assert len(pair.agent.running) <= 2
        assert isinstance(pair.agent.verdicts[-1], Run | Ignore | Resend | Refuse)
    assert len(pair.agent.started) == len(set(pair.agent.started))
