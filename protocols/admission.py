"""The agent's rules for accepting a dispatch, sans-IO.

Everything that decides whether an agent runs a ``Dispatch`` lives here, in the order it is
applied; the agent's transports and core feed it what they know and act on the verdict:

1. **sender** (XMPP only): a message must come from a controller JID the agent obeys (bare
   JID compare), and from the controller it has a session with (``sender_problem``);
2. **age**: a dispatch whose ``issued`` lies outside ``max_age`` of the agent's clock is a
   replay of a captured one, or the hosts' clocks differ (``age_problem``);
3. **signature**: signed by the trusted key, or without one, a script that matches its
   ``sha256`` (``Admission.admit``);
4. **duplicate**: an attempt already running (or starting) is ignored: nothing is sent;
5. **redelivery**: an attempt whose result is already in the spool is not run again: the
   stored result is sent;
6. **capacity**: a free slot, enough memory and disk, and an agent that is not stopping.

No clock is read: wall time enters as ``now``. No file is read: the spool's answer and the
capacity problem enter as ``DispatchFacts``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import attrs

from wfe.protocols.messages import Dispatch
from wfe.protocols.signing import SignatureRejected, script_sha256, verify
from wfe.protocols.xmpp import bare_jid

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


@attrs.frozen(kw_only=True)
class Run:
    """Take a slot now and start the attempt."""


@attrs.frozen(kw_only=True)
class Ignore:
    """Do nothing: the attempt is already running here (a duplicate delivery)."""

    reason: str


@attrs.frozen(kw_only=True)
class Resend:
    """Do not run it again: it already ran here; send its stored result."""


@attrs.frozen(kw_only=True)
class Refuse:
    """Answer ``JobRefused`` with ``reason``."""

    reason: str


Verdict = Run | Ignore | Resend | Refuse


@attrs.frozen(kw_only=True)
class DispatchFacts:
    """What the agent knows of a dispatch's attempt when it arrives."""

    running: bool = False  # an attempt with this job id and number runs (or starts) here
    stored: bool = False  # its result is in the spool
    unreadable: str = ""  # the spool holds something for it that cannot be read: why
    capacity: str = ""  # why it cannot take the attempt now (slots, memory, disk, stopping)


def _bare_jids(jids: Iterable[str]) -> frozenset[str]:
    return frozenset(bare_jid(jid) for jid in jids)


@attrs.frozen(kw_only=True)
class Admission:
    """The agent's admission rules, configured once; every method is a pure decision.

    ``trusted_key``: the engine's public key (None: the script's sha256 is checked, not a
    signature). ``controllers``: the bare JIDs obeyed over XMPP. ``max_age``: seconds a
    dispatch stays valid after it was signed (None: no check).
    """

    trusted_key: Ed25519PublicKey | None = None
    controllers: frozenset[str] = attrs.field(default=frozenset(), converter=_bare_jids)
    max_age: float | None = None

    def sender_problem(self, sender: str, session_peer: str | None) -> str:
        """Why a message from ``sender`` (a full JID) must not be obeyed, or ``""``.

        ``session_peer`` is the full JID of the controller the agent has a session with.
        """
        if bare_jid(sender) not in self.controllers:
            return f"{bare_jid(sender)} is not a controller this agent obeys"
        if session_peer is None or session_peer != sender:
            return "no session: the agent has not said hello to you yet"
        return ""

    def age_problem(self, dispatch: Dispatch, *, now: float) -> str:
        """Why ``dispatch`` is too old (or too new) to run at wall time ``now``, or ``""``."""
        if self.max_age is None:
            return ""
        if dispatch.issued is None:
            return "the dispatch has no issue time (issued), so it may be a replay"
        age = now - dispatch.issued
        if abs(age) <= self.max_age:
            return ""
        when = f"{age:.0f} s ago" if age > 0 else f"{-age:.0f} s in the future"
        return (
            f"issued {when}, outside max_dispatch_age {self.max_age:g} s: a replay, or the clocks"
            " of the engine and agent hosts differ (check NTP)"
        )

    def signature_problem(self, dispatch: Dispatch) -> str:
        """Why ``dispatch`` is not the engine's, or ``""``."""
        if self.trusted_key is not None:
            try:
                verify(dispatch, self.trusted_key)
            except SignatureRejected as exc:
                return str(exc)
        elif script_sha256(dispatch.script) != dispatch.sha256:
            return f"dispatch {dispatch.job_id}#{dispatch.attempt}: script sha256 does not match its text"
        return ""

    def admit(self, dispatch: Dispatch, facts: DispatchFacts) -> Verdict:
        """The verdict on a dispatch that passed the transport's checks (sender, age)."""
        if problem := self.signature_problem(dispatch):
            return Refuse(reason=problem)
        if facts.running:
            return Ignore(reason="running: a duplicate delivery")
        if facts.unreadable:
            return Refuse(reason=f"its stored result is unreadable: {facts.unreadable}")
        if facts.stored:
            return Resend()
        if facts.capacity:
            return Refuse(reason=facts.capacity)
        return Run()


__all__ = [
    "Admission",
    "DispatchFacts",
    "Ignore",
    "Refuse",
    "Resend",
    "Run",
    "Verdict",
]
