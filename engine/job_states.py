"""The states of a job, in a module of their own: the engine, the repository and the CLI all
name them, and the CLI must not load the repository to do so."""

from __future__ import annotations

import enum


class JobState(enum.StrEnum):
    """The state of a job; the ``jobs.state`` column holds its value.

    Actions: pending -> running -> succeeded | failed | cancelled. RScript jobs: queued ->
    running -> succeeded | failed | cancelled (their attempts carry the detail, as
    ``AttemptState``). A ``StrEnum``: a member equals its value, as stored and as sent.
    """

    PENDING = "pending"  # an action job recorded, its tasklet not started yet
    QUEUED = "queued"  # an RScript job waiting for an agent with a free slot
    RUNNING = "running"  # an action's tasklet runs, or an RScript job has an attempt on an agent
    SUCCEEDED = "succeeded"  # ended well: the result is recorded
    FAILED = "failed"  # ended badly: the error is recorded
    CANCELLED = "cancelled"  # stopped by an operator (or its parent's end) before it ended


TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
