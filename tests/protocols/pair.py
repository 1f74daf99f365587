"""Both ends of a dispatch, with no I/O: an engine that signs and an agent that admits.

Like h11's ``ConnectionPair``: a test drives the engine side to make a dispatch and hands it
to the agent side, which applies ``wfe.protocols.admission`` and keeps the bookkeeping the
rules read (attempts running, results spooled, slots). What the agent would send back is
returned, so a test reads a whole exchange without a socket, a spool or a clock.
"""

from __future__ import annotations

import attrs
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from wfe.protocols.admission import Admission, DispatchFacts, Ignore, Refuse, Resend, Run, Verdict
from wfe.protocols.messages import (
    AttemptRef,
    Dispatch,
    FinishReason,
    JobFinished,
    JobRefused,
    Limits,
    Message,
)
from wfe.protocols.signing import script_sha256, sign

ENGINE = "engine@wfe.localhost/wfe-engine"
START = 1_800_000_000.0  # the wall time both sides start at


@attrs.define
class EngineSide:
    """Makes dispatches as the engine does: the script's sha256, an issue time, a signature."""

    key: Ed25519PrivateKey = attrs.Factory(Ed25519PrivateKey.generate)
    jid: str = ENGINE

    def dispatch(
        self, job_id: str, attempt: int = 1, *, issued: float, script: str = "echo hi\n"
    ) -> Dispatch:
        unsigned = Dispatch(
            job_id=job_id,
            attempt=attempt,
            script_name="echo.sh",
            script=script,
            sha256=script_sha256(script),
            params={},
            limits=Limits(timeout=60.0),
            issued=issued,
        )
        return sign(unsigned, self.key)


@attrs.define
class AgentSide:
    """The agent's bookkeeping the rules read, and what it sends for each verdict."""

    admission: Admission
    slots: int = 2
    session_peer: str | None = ENGINE
    running: set[AttemptRef] = attrs.Factory(set)
    spooled: dict[AttemptRef, JobFinished] = attrs.Factory(dict)
    started: list[AttemptRef] = attrs.Factory(list)  # every attempt ever started, in order
    verdicts: list[Verdict] = attrs.Factory(list)

    def receive(self, sender: str, d: Dispatch, *, now: float) -> list[Message]:
        """Apply the rules to ``d`` from ``sender`` at wall time ``now``; return the answer."""
        problem = self.admission.sender_problem(
            sender, self.session_peer
        ) or self.admission.age_problem(d, now=now)
        ref = AttemptRef(job_id=d.job_id, attempt=d.attempt)
        if problem:
            verdict: Verdict = Refuse(reason=problem)
        else:
            facts = DispatchFacts(
                running=ref in self.running,
                stored=ref in self.spooled,
                capacity=""
                if len(self.running) < self.slots
                else f"no free slot: all {self.slots} busy",
            )
            verdict = self.admission.admit(d, facts)
        self.verdicts.append(verdict)
        match verdict:
            case Run():
                self.running.add(ref)
                self.started.append(ref)
                return []
            case Ignore():
                return []
            case Resend():
                return [self.spooled[ref]]
            case Refuse(reason=reason):
                return [JobRefused(job_id=d.job_id, attempt=d.attempt, reason=reason)]

    def finish(self, ref: AttemptRef, exit_code: int = 0) -> JobFinished:
        """A running attempt ends: its result is spooled (and sent)."""
        self.running.remove(ref)
        finished = JobFinished(
            job_id=ref.job_id, attempt=ref.attempt, reason=FinishReason.EXITED, exit_code=exit_code
        )
        self.spooled[ref] = finished
        return finished


@attrs.define
class Pair:
    """An engine and an agent that trusts it, on a wall clock the test moves."""

    engine: EngineSide
    agent: AgentSide
    now: float = START

    @classmethod
    def make(cls, *, max_age: float | None = 300.0, slots: int = 2, trusted: bool = True) -> Pair:
        engine = EngineSide()
        admission = Admission(
            trusted_key=engine.key.public_key() if trusted else None,
            controllers=frozenset({engine.jid}),
            max_age=max_age,
        )
        return cls(engine=engine, agent=AgentSide(admission=admission, slots=slots))

    def send(self, d: Dispatch, *, sender: str | None = None) -> list[Message]:
        """Deliver ``d`` (from the engine's JID unless ``sender``); the agent's answer."""
        return self.agent.receive(self.engine.jid if sender is None else sender, d, now=self.now)

    def dispatch(self, job_id: str, attempt: int = 1, **kwargs: str) -> Dispatch:
        return self.engine.dispatch(job_id, attempt, issued=self.now, **kwargs)
