"""The messages exchanged between the engine's agent controller and an agent.

Every message is a frozen, keyword-only attrs class. The same messages travel over every
transport (local Unix socket, XMPP); only the framing differs. ``codec`` turns them into
bytes and back. A job attempt is identified everywhere by ``(job_id, attempt)``.

Direction: ``Dispatch``, ``Cancel``, ``Ack``, ``StatusRequest``, ``Resume``, ``Lease`` and
``Shutdown`` go from the engine to an agent; the others from an agent to the engine.

Leases (docs/decisions.md #41): every ``AgentHello`` and ``AgentStatus`` carries a ``seq``;
the engine answers each with ``Lease(seq, ttl)``. The agent's attempts may run until ``ttl``
seconds after it *sent* the message numbered ``seq`` (so a slow trip only shortens the
lease); past that, the agent side kills them and reports them ``FENCED``. The engine, which
received that message later than it was sent, knows the agent's work is dead ``ttl`` seconds
(plus a kill grace) after it received it, and only then dispatches that work again.
"""

from __future__ import annotations

import enum
from typing import Any

import attrs

PROTOCOL_VERSION = 1

#: Upper bound for one encoded message; a bigger one is refused by the decoder.
MAX_MESSAGE_BYTES = 1024 * 1024

#: Upper bound for the payload of one ``OutputChunk``. Chosen so that an encoded chunk
#: (base64 plus envelope) stays far below Prosody's default 256 KiB stanza limit.
MAX_CHUNK_BYTES = 64 * 1024


class Stream(enum.Enum):
    """Which output stream of a script a chunk belongs to."""

    STDOUT = "stdout"
    STDERR = "stderr"


class FinishReason(enum.Enum):
    """Why an attempt ended, as the agent saw it."""

    EXITED = "exited"  # the script exited by itself (exit_code tells how) or died of a signal
    TIMED_OUT = "timed_out"  # the agent killed it at the attempt timeout
    CANCELLED = "cancelled"  # the agent killed it on a Cancel from the engine
    ERROR = "error"  # the agent could not start it (detail says why)
    FENCED = "fenced"  # killed by the agent side because its lease ran out, or found dead
    # after the agent restarted with no supervisor to tell its end: nothing more will run


@attrs.frozen(kw_only=True)
class AttemptRef:
    """Names one attempt of one job."""

    job_id: str
    attempt: int


@attrs.frozen(kw_only=True)
class Limits:
    """Resource limits the agent enforces on one attempt."""

    timeout: float  # seconds of wall time before the whole process group is killed
    memory: int | None = None  # bytes of address space, None for no limit


@attrs.frozen(kw_only=True)
class Capabilities:
    """What an agent offers to the scheduler."""

    slots: int
    memory: int | None = None  # bytes available to scripts, None when unknown
    site: str = "local"
    tags: tuple[str, ...] = ()
    storage: tuple[str, ...] = ()  # storage areas (paths or names) the agent can read
    namespace: str = ""  # the namespace whose broadcasts it hears ("" for none)
    topics: tuple[str, ...] = ()  # the broadcast topics it has reactors for


# --- engine -> agent ---------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Dispatch:
    """Run an RScript as one attempt of a job."""

    job_id: str
    attempt: int
    script_name: str
    script: str  # the full text of the RScript
    sha256: str  # hex digest of ``script`` encoded as UTF-8
    params: dict[str, Any]
    limits: Limits
    signature: str | None = None  # base64 Ed25519 signature, see wfe.protocols.signing
    issued: float | None = None  # the engine's wall time at signing, for replay checks


@attrs.frozen(kw_only=True)
class Cancel:
    """Kill an attempt's whole process group."""

    job_id: str
    attempt: int
    reason: str = ""


@attrs.frozen(kw_only=True)
class Ack:
    """The engine committed an attempt's result: the agent may drop it from its spool."""

    job_id: str
    attempt: int


@attrs.frozen(kw_only=True)
class StatusRequest:
    """Ask the agent for an ``AgentStatus`` now."""


@attrs.frozen(kw_only=True)
class Resume:
    """After a reconnect: send again the output of an attempt from ``next_seq`` on."""

    job_id: str
    attempt: int
    next_seq: int


@attrs.frozen(kw_only=True)
class Lease:
    """The engine heard the agent's message ``seq``: its attempts may run until ``ttl``
    seconds after that message was sent."""

    seq: int
    ttl: float


@attrs.frozen(kw_only=True)
class Shutdown:
    """Stop the agent (used for agents the engine started): after killing what it runs, or,
    with ``leave_running``, leaving it to the agent's keeper for the next agent to adopt (an
    engine that stops is not cancelling anything)."""

    reason: str = ""
    leave_running: bool = False


@attrs.frozen(kw_only=True)
class Broadcast:
    """A message workflow code published (``ctx.publish``), for an agent's reactor. ``seq`` is
    the event's number in the engine's repository: an agent reacts once per ``seq``."""

    seq: int
    namespace: str
    topic: str
    message: dict[str, Any]


# --- agent -> engine ---------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class AgentHello:
    """First message of an agent on every (re)connection."""

    name: str
    software: str  # wfe version of the agent
    capabilities: Capabilities
    running: tuple[AttemptRef, ...] = ()
    held: tuple[AttemptRef, ...] = ()  # finished, result spooled, not yet acknowledged
    seq: int = 0  # answered by a Lease; counts up over the agent's life


@attrs.frozen(kw_only=True)
class AgentStatus:
    """Heartbeat: the agent's current load. Sent periodically and on ``StatusRequest``."""

    name: str
    free_slots: int
    running: tuple[AttemptRef, ...] = ()
    held: tuple[AttemptRef, ...] = ()
    seq: int = 0  # answered by a Lease; counts up over the agent's life


@attrs.frozen(kw_only=True)
class JobAccepted:
    """The agent started the attempt."""

    job_id: str
    attempt: int
    pid: int | None = None


@attrs.frozen(kw_only=True)
class JobRefused:
    """The agent will not run the attempt (bad signature, untrusted sender, no slot...)."""

    job_id: str
    attempt: int
    reason: str


@attrs.frozen(kw_only=True)
class OutputChunk:
    """A bounded piece of a running script's output. ``seq`` counts from 0 per attempt."""

    job_id: str
    attempt: int
    stream: Stream
    seq: int
    data: bytes


@attrs.frozen(kw_only=True)
class JobFinished:
    """An attempt ended. ``chunks`` is how many OutputChunks were sent for it in total."""

    job_id: str
    attempt: int
    reason: FinishReason
    exit_code: int | None = None
    signal: int | None = None
    duration: float = 0.0  # seconds from start to end of the process
    result: dict[str, Any] | None = None  # the JSON the script wrote to $WFE_RESULT
    detail: str = ""  # one line: why it failed to start, or why the result was rejected
    chunks: int = 0


@attrs.frozen(kw_only=True)
class Reacted:
    """An agent's reactor ran for the broadcast ``seq``: how it ended."""

    seq: int
    topic: str
    reactor: str  # what ran (the reactor's script, as the agent's configuration names it)
    exit_code: int | None = None  # None: it could not be started, or was killed
    duration: float = 0.0
    result: dict[str, Any] | None = None  # the JSON it wrote to $WFE_RESULT
    detail: str = ""  # one line: why it failed, or the end of its stderr


Message = (
    Dispatch
    | Cancel
    | Ack
    | StatusRequest
    | Resume
    | Lease
    | Shutdown
    | Broadcast
    | AgentHello
    | AgentStatus
    | JobAccepted
    | JobRefused
    | OutputChunk
    | JobFinished
    | Reacted
)

#: The wire name of every message type.
MESSAGE_TYPES: dict[str, type[Any]] = {
    "dispatch": Dispatch,
    "cancel": Cancel,
    "ack": Ack,
    "status_request": StatusRequest,
    "resume": Resume,
    "lease": Lease,
    "shutdown": Shutdown,
    "broadcast": Broadcast,
    "hello": AgentHello,
    "status": AgentStatus,
    "accepted": JobAccepted,
    "refused": JobRefused,
    "output": OutputChunk,
    "finished": JobFinished,
    "reacted": Reacted,
}

TYPE_NAMES: dict[type[Any], str] = {cls: name for name, cls in MESSAGE_TYPES.items()}
