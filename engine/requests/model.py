"""What a running request is made of, as frozen records read back from the repository.

A request runs its definition's stages; each stage has inputs (``StageInput``, one
``InputAllocation`` each) and hands them to jobs in *batches* (``Batch``): one batch is
one RScript (or action) job with at most ``max_inputs`` inputs. Input keys name where an
input came from: ``catalog:<path>`` (the finder's query), ``product:<id>`` (an upstream
stage's product), or ``once`` (the single input of a stage that consumes nothing).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

import attrs

from wfe.engine.repository.jobs import JobState
from wfe.protocols.request import InputAllocation, RequestState

#: The key of the one input of a stage that consumes nothing (it runs once).
ONCE = "once"


class StageState(enum.Enum):
    """Where one stage of a request is."""

    WAITING = "waiting"  # an upstream stage has not finished yet
    RUNNING = "running"  # inputs resolved; batches are made and run
    DONE = "done"  # every input processed (terminal)
    FAILED = "failed"  # an input failed (terminal); downstream stages are skipped
    SKIPPED = "skipped"  # an upstream stage failed or was skipped: never runs (terminal)


STAGE_TERMINAL = frozenset({StageState.DONE, StageState.FAILED, StageState.SKIPPED})


class BatchOutcome(enum.Enum):
    """How a batch's job ended, as far as its inputs are concerned."""

    PROCESSED = "processed"  # the job succeeded: inputs processed, products recorded
    RELEASED = "released"  # the job failed, was lost or timed out: inputs back (counted)
    WITHDRAWN = "withdrawn"  # the engine stopped it (pause, request over): back, not counted


def catalog_key(path: str) -> str:
    """The input key of a catalog entry."""
    return f"catalog:{path}"


def product_key(product_id: str) -> str:
    """The input key of a product."""
    return f"product:{product_id}"


@attrs.frozen(kw_only=True)
class StageInput:
    """One input of one stage, with its allocation state."""

    key: str
    seq: int  # order within the stage: batches take inputs in this order
    path: str
    metadata: Mapping[str, Any] = attrs.field(factory=dict, hash=False)
    allocation: InputAllocation

    def as_param(self) -> dict[str, Any]:
        """What the RScript receives for this input in ``params["inputs"]``."""
        return {"path": self.path, "metadata": dict(self.metadata)}


@attrs.frozen(kw_only=True)
class Batch:
    """One job's worth of a stage's inputs. ``job`` is None until the job is recorded."""

    id: str
    request: str
    stage: str
    job: str | None
    inputs: tuple[str, ...]
    output_dir: str | None
    open: bool  # False once settled
    stop: str | None = None  # why the engine stopped its job, when it did
    outcome: BatchOutcome | None = None


@attrs.frozen(kw_only=True)
class RequestRecord:
    """A request as stored (the ``requests`` row)."""

    id: str
    workflow: str
    user: str
    number: int
    definition: str  # sha256 of the expanded definition
    namespace: str
    params: Mapping[str, Any] = attrs.field(hash=False)
    priority: int
    approval_required: bool
    scripts: Mapping[str, Any] = attrs.field(hash=False)  # rscript name -> {key, sha256}
    state: RequestState
    created_at: float
    updated_at: float
    error: str | None = None
    failures: tuple[str, ...] = ()

    def script_key(self, name: str) -> str:
        """The name under which the engine's script library holds RScript ``name``."""
        entry = self.scripts.get(name)
        return str(entry["key"]) if entry else name


@attrs.frozen(kw_only=True)
class StageRecord:
    """A stage of a request as stored (the ``request_stages`` row)."""

    name: str
    position: int
    state: StageState
    error: str | None = None


@attrs.frozen(kw_only=True)
class JobEnd:
    """A finished job of a batch, as the jobs table has it."""

    job_id: str
    kind: str  # "rscript" or "action"
    state: JobState  # succeeded, failed or cancelled
    result: Any = None
    error: str | None = None


@attrs.frozen(kw_only=True)
class Snapshot:
    """Everything the service needs to take the next steps of one request (one read)."""

    request: RequestRecord
    expanded: Mapping[str, Any] = attrs.field(hash=False)
    stages: Mapping[str, StageRecord] = attrs.field(hash=False)
    inputs: Mapping[str, tuple[StageInput, ...]] = attrs.field(hash=False)  # by stage
    batches: tuple[Batch, ...]  # the open ones
    ended: Mapping[str, JobEnd] = attrs.field(hash=False)  # finished jobs of open batches
    unlinked_jobs: tuple[str, ...] = ()  # unfinished jobs of the request no batch names
