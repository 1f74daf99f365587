"""Console API operations behind the CLI's listings and repairs: what can be run, jobs found
by filters, a job's tree, and retrying a job.

Registered with ``@op`` when ``wfe.engine.console.api`` imports this module:

- ``actions`` / ``rscripts`` (viewer): what the engine can run, with parameters and docs.
- ``find_jobs`` (viewer): jobs newest first; ``limit`` (20), ``state`` (a string or an array),
  ``name`` (a glob such as ``demo.*``), ``since`` (epoch seconds), ``all`` (false: roots only).
- ``tree`` (viewer): ``job`` and its descendants, nested.
- ``retry`` (operator): run a failed or cancelled root job again (``wfe.engine.runtime.retry``).
- ``rerun`` (operator): a request's failed inputs again, as a new request (``wfe.engine.requests.rerun``).
- ``purge`` (admin): delete old finished jobs' output and events (``wfe.engine.repository.retention``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

from wfe.engine.console.protocol import BAD_REQUEST, UNAVAILABLE, ApiError
from wfe.engine.console.registry import arg, bounded, op, string_list
from wfe.engine.repository import listing
from wfe.engine.requests.rerun import rerun_request
from wfe.engine.runtime.clock import wall_now
from wfe.engine.runtime.jobs import TERMINAL, JobState

if TYPE_CHECKING:
    from wfe.engine.console.session import Session

JOB_STATES = (JobState.QUEUED, JobState.RUNNING, *sorted(TERMINAL))


@op("actions", role="viewer")
async def _actions(session: Session, args: dict[str, Any]) -> Any:
    """Actions the engine can run: name, params (name, type), doc; name (one action)."""
    name = arg(args, "name", str, None)
    library = session.engine.runner.library
    if name is not None:
        await trio.to_thread.run_sync(library.get, name)  # UnknownAction: not_found
    found = await trio.to_thread.run_sync(listing.describe_actions, library)
    return [a for a in found if name is None or a["name"] == name]


@op("rscripts", role="viewer")
async def _rscripts(session: Session, args: dict[str, Any]) -> Any:
    """RScripts the engine can dispatch: name, version, params (type, default), doc; name."""
    name = arg(args, "name", str, None)
    await trio.lowlevel.checkpoint()
    if name is not None:
        session.engine.scripts.get(name)  # UnknownRScript: not_found
    found = listing.describe_rscripts(session.engine.scripts)
    return [s for s in found if name is None or s["name"] == name]


@op("find_jobs", role="viewer")
async def _find_jobs(session: Session, args: dict[str, Any]) -> Any:
    """Jobs newest first: limit (20), state (one or several), name (glob), since (epoch s), all."""
    states = string_list(args, "state")
    unknown = [s for s in states if s not in JOB_STATES]
    if unknown:
        raise ApiError(
            BAD_REQUEST,
            f"args.state: unknown state {unknown[0]!r} (known: {', '.join(JOB_STATES)})",
        )
    since = args.get("since")
    if since is not None and (isinstance(since, bool) or not isinstance(since, int | float)):
        raise ApiError(BAD_REQUEST, "args.since: expected a number (seconds since the epoch)")
    return await session.engine.find_jobs(
        limit=bounded(args, "limit", 20),
        states=tuple(JobState(s) for s in states),
        name=arg(args, "name", str, None),
        since=None if since is None else float(since),
        root_only=not arg(args, "all", bool, False),
    )


@op("tree", role="viewer")
async def _tree(session: Session, args: dict[str, Any]) -> Any:
    """A job and its descendants as nested children: job."""
    return await session.engine.job_tree(arg(args, "job", str))


@op("retry", role="operator")
async def _retry(session: Session, args: dict[str, Any]) -> Any:
    """Run a failed or cancelled root job again: job. Result: job, state, reset (job ids)."""
    return await session.engine.retry(arg(args, "job", str), by=session.name)


@op("purge", role="admin")
async def _purge(session: Session, args: dict[str, Any]) -> Any:
    """Delete output and events of jobs that ended before a time: before (epoch s), dry_run.
    Result: roots, jobs, events, output_chunks, output_bytes (wfe.engine.repository.retention)."""
    before = args.get("before")
    if isinstance(before, bool) or not isinstance(before, int | float):
        raise ApiError(BAD_REQUEST, "args.before: expected a number (seconds since the epoch)")
    if before > wall_now():
        raise ApiError(BAD_REQUEST, "args.before is in the future")
    dry_run = arg(args, "dry_run", bool, False)
    count = await session.engine.purge(float(before), by=session.name, dry_run=dry_run)
    return count.as_dict()


@op("rerun", role="operator")
async def _rerun(session: Session, args: dict[str, Any]) -> Any:
    """Run a request's failed inputs again as a new request: request. Result: request (the
    new id), of, state, inputs (wfe.engine.requests.rerun)."""
    session.engine.admit_new_work()  # refused while the repository's disk is full
    service = session.engine.requests
    if service is None:
        raise ApiError(UNAVAILABLE, "this engine does not run requests")
    return await rerun_request(service, arg(args, "request", str), by=session.name)
