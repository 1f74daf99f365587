"""What the controller holds in memory: the agents it knows and the jobs it has not ended.

Plain records shared by the job queue (``queue``), the agent registry (``registry``) and the
controller; they hold no logic beyond what follows from their own fields.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import attrs

from wfe.engine.repository.rowtypes import JsonObject
from wfe.protocols.attempt import AttemptMachine
from wfe.protocols.messages import Capabilities, Message


class AgentLink(Protocol):
    """How the controller sends to one connected agent (messages keep their order)."""

    def send_nowait(self, message: Message) -> None: ...


@attrs.define(eq=False)
class AgentEntry:
    """What the controller knows of one agent."""

    name: str
    capabilities: Capabilities
    transport: str
    link: AgentLink | None = None
    last_heard: float = 0.0
    held_back: bool = False  # not read while the repository catches up: its silence is ours
    lost: bool = False
    lease_heard: float = -math.inf  # when we received the last message we granted a lease for
    attempts: dict[tuple[str, int], LiveJob] = attrs.Factory(dict)
    reserved: int = 0  # slots held for new jobs whose dispatch is being committed with them

    @property
    def busy_slots(self) -> int:
        taken = sum(j.cpus for j in self.attempts.values())
        return taken + self.reserved

    @property
    def free_slots(self) -> int:
        return max(0, self.capabilities.slots - self.busy_slots)

    @property
    def usable(self) -> bool:
        """Connected and not lost: new work may go to it."""
        return self.link is not None and not self.lost


@attrs.define(eq=False)
class LiveJob:
    """An unfinished RScript job."""

    job_id: str
    script_name: str
    params: JsonObject
    priority: int
    requirements: dict[str, Any]  # decoded JSON: cpus, memory, tags, site, storage
    on: str | None
    max_attempts: int  # 1 + retries, for attempts that fail or time out
    timeout: float  # per attempt
    seq: int
    parent_id: str | None
    request_id: str | None = None  # the request it works for; a held request keeps it back
    backoff: float = 1.0  # seconds before the first retry, doubled each time
    wait_agent: float = 0.0  # seconds a queued job waits for an agent (0: forever)
    overall: float = 0.0  # seconds from submission to the end (0: no limit)
    attempts_made: int = 0
    failures: int = 0
    lost: int = 0
    machine: AttemptMachine | None = None
    sent: bool = False
    queued_token: int = 0  # entries of the ready heap (and wait timers) with another are stale
    fail_reason: str | None = None  # set when the engine (not an operator) cancels the attempt
    share: tuple[str, str] = ("", "")  # (namespace, user), for fair share
    on_retry: dict[str, str] = attrs.Factory(dict)  # its stage's rules (definitions/on_retry)

    @property
    def cpus(self) -> int:
        """The slots an attempt of it takes."""
        return int(self.requirements.get("cpus", 1))

    @property
    def active(self) -> bool:
        """An attempt of it is out (dispatched, running or being cancelled)."""
        return self.machine is not None and not self.machine.terminal
