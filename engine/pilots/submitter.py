"""The interface a batch system implements for the pilot factory (Slurm first; HTCondor or
Kubernetes Jobs later): submit a pilot, say where pilots are, cancel one.

Implementations run the batch system's commands and parse their output; the factory loop
(``wfe.engine.pilots.loop``) calls them from trio, so they are async. Errors are
``SubmitError`` with one line naming the command and what it said.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import attrs

from wfe.engine.errors import EngineError


class SubmitError(EngineError, RuntimeError):
    """The batch system refused or failed a command; the message says which and why."""


class BatchState(enum.Enum):
    """Where a batch job is, as the factory needs to know it."""

    QUEUED = "queued"  # waiting for resources (may still be cancelled without cost)
    RUNNING = "running"  # its payload runs
    ENDED = "ended"  # over: see ``BatchStatus.end_state``


@attrs.frozen(kw_only=True)
class BatchStatus:
    """One batch job's state; for an ended one, how it ended."""

    state: BatchState
    end_state: str = ""  # the batch system's own word: COMPLETED, CANCELLED, TIMEOUT, ...
    exit_code: int | None = None
    reason: str = ""


@attrs.frozen(kw_only=True)
class PilotJob:
    """A batch job to submit: the agent command it runs and the resources it asks for."""

    name: str  # the pilot's id, also the batch job's name
    command: tuple[str, ...]  # the payload: ``wfe agent ...`` as argv
    cpus: int
    memory_mb: int
    walltime: float  # seconds
    directory: Path  # where the job script and its output go (exists, shared with the nodes)


class Submitter(Protocol):
    """A batch system, as the pilot factory uses it."""

    system: str  # its name in the books: "slurm"

    async def submit(self, job: PilotJob) -> str:
        """Submit ``job``; return its batch id. Raises ``SubmitError``."""
        ...

    async def statuses(self, batch_ids: Sequence[str]) -> dict[str, BatchStatus]:
        """The state of each of ``batch_ids``; an id the batch system no longer knows is
        ``ENDED`` with ``end_state`` ``UNKNOWN``. Raises ``SubmitError``."""
        ...

    async def cancel(self, batch_id: str) -> None:
        """Cancel a batch job (queued or running). Raises ``SubmitError``."""
        ...
