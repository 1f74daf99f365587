"""What an RScript job asks for: the record of a submission, the live job made from a
recorded row, and the ``Dispatch`` that carries one attempt to an agent.

Defaults come from ``[jobs]`` and the script's header: ``timeout`` (per attempt) is the
caller's, else the header's ``# timeout:``, else ``[jobs] timeout``; ``backoff``,
``wait_agent`` and ``overall`` are stored in the job's requirements only when the caller
gave them, and read back with ``[jobs]`` defaults.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from wfe.engine.config import JobsSection
from wfe.engine.dispatch import locality
from wfe.engine.dispatch.fairshare import NO_SHARE, Share
from wfe.engine.dispatch.live import LiveJob
from wfe.engine.repository import Repository
from wfe.engine.repository.rowtypes import JsonObject, JsonValue
from wfe.engine.repository.shares import request_share
from wfe.engine.runtime.jobs import JobRow, JobState, NewJob
from wfe.protocols.messages import Dispatch, Limits
from wfe.rscripts.loader import RScript


@attrs.frozen(kw_only=True)
class Submission:
    """What a caller of ``AgentController.submit`` asked for besides the script and params."""

    parent: JobRow | None = None
    call_seq: int | None = None
    on: str | None = None
    priority: int | None = None
    requires: dict[str, Any] | None = None
    retries: int | None = None
    timeout: float | None = None
    backoff: float | None = None
    wait_agent: float | None = None
    overall: float | None = None
    request_id: str | None = None
    by: str | None = None
    share: Share = NO_SHARE  # (namespace, user), for fair share


class ShareLookup:
    """The share of a new job: its request's namespace and user (read once per request), or
    for work that is no request's, no namespace and the submitter's token name."""

    def __init__(self, repo: Repository) -> None:
        self._repo = repo
        self._known: dict[str, Share] = {}

    async def __call__(self, request_id: str | None, by: str | None) -> Share:
        if request_id is None:
            return ("", by or "")
        share = self._known.get(request_id)
        if share is None:
            share = self._known[request_id] = await self._repo.read(request_share(request_id))
        return share


def scheduling(script: RScript, sub: Submission) -> dict[str, Any]:
    """The requirements the scheduler matches (cpus, memory, tags, site, on, ...): the
    script header's, overridden by the caller's."""
    req = script.header.requires
    requirements: dict[str, Any] = {
        k: v
        for k, v in {
            "cpus": req.cpus,
            "memory": req.memory,
            "tags": list(req.tags),
            "site": req.site,
        }.items()
        if v not in (None, [], ())
    }
    requirements.update(sub.requires or {})
    if sub.on is not None:
        requirements["on"] = sub.on
    return requirements


def new_job(
    name: str, script: RScript, params: JsonObject, sub: Submission, defaults: JobsSection
) -> NewJob:
    """The record of a new queued RScript job of script ``name`` (``params`` validated)."""
    limits = (("backoff", sub.backoff), ("wait_agent", sub.wait_agent), ("overall", sub.overall))
    retries = defaults.retries if sub.retries is None else sub.retries
    return NewJob(
        kind="rscript",
        name=name,
        params=params,
        parent_id=sub.parent.id if sub.parent else None,
        root_id=sub.parent.root_id if sub.parent else None,
        call_seq=sub.call_seq,
        state=JobState.QUEUED,
        priority=defaults.priority if sub.priority is None else sub.priority,
        requirements={
            **scheduling(script, sub),
            "timeout": sub.timeout or script.header.declared_timeout or defaults.timeout,
            **{k: v for k, v in limits if v is not None},
            **({"share": list(sub.share)} if sub.share != NO_SHARE else {}),
        },
        max_attempts=1 + retries,
        request_id=sub.request_id,
        by=sub.by,
    )


def live_job(job: JobRow, defaults: JobsSection, seq: int) -> LiveJob:
    """The live form of a recorded RScript job (no attempt counted yet)."""
    req = dict(job.requirements)
    on = req.pop("on", None)
    share = req.pop("share", None)
    on_retry = req.pop("on_retry", None)
    return LiveJob(
        timeout=_seconds(req.pop("timeout", defaults.timeout)),
        on=on if isinstance(on, str) else None,
        backoff=_seconds(req.pop("backoff", defaults.backoff)),
        wait_agent=_seconds(req.pop("wait_agent", defaults.wait_agent_timeout)),
        overall=_seconds(req.pop("overall", defaults.overall_timeout)),
        job_id=job.id,
        script_name=job.name,
        params=job.params,
        priority=job.priority,
        requirements=req,
        max_attempts=job.max_attempts,
        seq=seq,
        parent_id=job.parent_id,
        request_id=job.request_id,
        share=_share(share),
        on_retry=_rules(on_retry),
    )


def dispatch_message(
    job: LiveJob, script: RScript, sign: Callable[[Dispatch], Dispatch], site: str = ""
) -> Dispatch:
    """The signed ``Dispatch`` of ``job``'s current attempt, to an agent at ``site``: each
    input with replicas is given the one chosen for that site (``locality.with_replicas``)."""
    assert job.machine is not None
    memory = job.requirements.get("memory")
    placed = job.requirements.get("locality")
    params = job.params if placed is None else locality.with_replicas(job.params, placed, site)
    return sign(
        Dispatch(
            job_id=job.job_id,
            attempt=job.machine.attempt,
            script_name=script.header.name,
            script=script.text,
            sha256=script.sha256,
            params=params,
            limits=Limits(timeout=job.timeout, memory=int(memory) if memory else None),
        )
    )


def _seconds(value: JsonValue) -> float:
    """A stored duration: the engine wrote it as a number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"a stored duration must be a number, not {value!r}")
    return float(value)


def _rules(value: JsonValue) -> dict[str, str]:
    """A job's stored ``on_retry`` rules (checked when its definition was loaded)."""
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    return {}


def _share(value: JsonValue) -> Share:
    """A stored share: ``[namespace, user]`` (none stored: no share)."""
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value):
        return (str(value[0]), str(value[1]))
    return NO_SHARE
