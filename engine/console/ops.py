"""The console's own operations: jobs, agents, events, statistics, streams and tokens.

Requests, products and the catalog add theirs in ``wfe.engine.console.ops_requests``. Every operation
that changes something passes the session's token name as ``by``, which the engine writes
into the events of the change. See docs/console-protocol.md for arguments and results.
"""

from __future__ import annotations

import tomllib
from typing import TYPE_CHECKING, Any

import trio

from wfe.engine.console import protocol, tokens
from wfe.engine.console.filters import EventFilter
from wfe.engine.console.protocol import ApiError
from wfe.engine.console.registry import OPS, arg, bounded, op, string_list
from wfe.engine.console.tail import start_tail
from wfe.engine.runtime.jobs import TERMINAL

if TYPE_CHECKING:
    from wfe.engine.console.session import Session

# --- session ---------------------------------------------------------------------------------


@op("whoami", role="viewer")
async def _whoami(session: Session, args: dict[str, Any]) -> Any:
    """The token's name and role."""
    return {"name": session.name, "role": session.role.label}


@op("ops", role="viewer")
async def _ops(session: Session, args: dict[str, Any]) -> Any:
    """Every operation with the least role it needs and whether this token may use it."""
    from wfe.engine.console.server import ops_table

    return ops_table(session)


@op("ping", role="viewer")
async def _ping(session: Session, args: dict[str, Any]) -> Any:
    """Answers at once: {"pong": true}."""
    return {"pong": True}


# --- jobs --------------------------------------------------------------------------------------


@op("status", role="viewer")
async def _status(session: Session, args: dict[str, Any]) -> Any:
    """Statistics and the latest root jobs; or, with job, that job in detail."""
    job_id = arg(args, "job", str, None)
    if job_id is not None:
        return await session.engine.job(job_id)
    return {
        "statistics": _statistics(session),
        "jobs": await session.engine.jobs(limit=bounded(args, "limit", 20), root_only=True),
    }


@op("jobs", role="viewer")
async def _jobs(session: Session, args: dict[str, Any]) -> Any:
    """Jobs, newest first: limit (50), state, root_only (false)."""
    return await session.engine.jobs(
        limit=bounded(args, "limit", 50),
        state=arg(args, "state", str, None),
        root_only=arg(args, "root_only", bool, False),
    )


@op("job", role="viewer")
async def _job(session: Session, args: dict[str, Any]) -> Any:
    """One job with its attempts, children and descendants' states: job."""
    return await session.engine.job(arg(args, "job", str))


@op("logs", role="viewer")
async def _logs(session: Session, args: dict[str, Any]) -> Any:
    """Stored output of an attempt (the last by default): job, attempt, offset (0), limit (1 MiB)."""
    job_id = arg(args, "job", str)
    offset = bounded(args, "offset", 0, low=0, high=2**62)
    limit = bounded(args, "limit", 1024 * 1024, high=4 * 1024 * 1024)
    page = await session.engine.output_page(job_id, arg(args, "attempt", int, None), offset, limit)
    end = page.offset + len(page.data)
    return {
        "output": page.data.decode("utf-8", errors="replace"),
        "offset": page.offset,
        "next_offset": end,
        "size": page.size,
        "more": end < page.size,
    }


@op("wait", role="viewer")
async def _wait(session: Session, args: dict[str, Any]) -> Any:
    """Reply once the job has ended: job. Result: job, state, error."""
    job = await wait_job(session, arg(args, "job", str))
    return {"job": job["id"], "state": job["state"], "error": job["error"]}


async def wait_job(session: Session, job_id: str) -> dict[str, Any]:
    """Wait until ``job_id`` has ended (its end committed) and return it. Raises ``UnknownJob``."""
    hub = session.server.hub
    while True:
        ended = hub.job_ended(job_id)  # before reading: no gap
        job = await session.engine.job(job_id)
        if job["state"] in TERMINAL:
            return job
        await ended.wait()


@op("run", role="operator")
async def _run(session: Session, args: dict[str, Any]) -> Any:
    """Start an action (action, params) or one RScript (rscript, params, priority, retries)."""
    session.engine.admit_new_work()  # refused while the repository's disk is full
    params = arg(args, "params", dict, {})
    action, rscript = arg(args, "action", str, None), arg(args, "rscript", str, None)
    if (action is None) == (rscript is None):
        raise ApiError(protocol.BAD_REQUEST, "give exactly one of args.action and args.rscript")
    if rscript is not None:
        options = {k: arg(args, k, int, None) for k in ("priority", "retries")}
        job_id = await session.engine.run_rscript(
            rscript, params, by=session.name, **{k: v for k, v in options.items() if v is not None}
        )
    else:
        job_id = await session.engine.run_action(str(action), params, by=session.name)
    return {"job": job_id}


@op("kill", role="operator")
async def _kill(session: Session, args: dict[str, Any]) -> Any:
    """Cancel a job and everything it started: job. Result: the state it was in."""
    return {
        "job": args.get("job"),
        "state": await session.engine.kill(arg(args, "job", str), by=session.name),
    }


@op("agents", role="viewer")
async def _agents(session: Session, args: dict[str, Any]) -> Any:
    """The agents the engine knows, with slots and what they run."""
    return session.engine.agents()


@op("agents.up", role="operator")
async def _agents_up(session: Session, args: dict[str, Any]) -> Any:
    """Start the local agents of a group (every group without ``group``) that do not run."""
    return {"started": await session.engine.agents_up(arg(args, "group", str, None))}


@op("agents.down", role="operator")
async def _agents_down(session: Session, args: dict[str, Any]) -> Any:
    """Stop the local agents of a group (every group without ``group``)."""
    return {"stopped": await session.engine.agents_down(arg(args, "group", str, None))}


# --- events and statistics ------------------------------------------------------------------


@op("stats", role="viewer")
async def _stats(session: Session, args: dict[str, Any]) -> Any:
    """Engine statistics: queue depth, running jobs, agents, events per second, console."""
    return _statistics(session)


def _statistics(session: Session) -> dict[str, Any]:
    engine = session.engine
    stats = engine.statistics()
    console = session.server.statistics()
    stats["events_per_second"] = console["events_per_second"]
    stats["console"] = console
    return stats


@op("events", role="viewer")
async def _events(session: Session, args: dict[str, Any]) -> Any:
    """Committed events after an id, oldest first: after (0), limit (500), kind (prefix), subject."""
    after = bounded(args, "after", 0, low=0, high=2**62)
    limit = bounded(args, "limit", 500, high=5000)
    kind = arg(args, "kind", str, "")
    subject = arg(args, "subject", str, None)

    events = await session.engine.events(after=after, limit=limit, kind=kind, subject=subject)
    return [
        {"id": e.id, "at": e.at, "kind": e.kind, "subject": e.subject, "data": e.data}
        for e in events
    ]


@op("subscribe", role="viewer")
async def _subscribe(session: Session, args: dict[str, Any]) -> Any:
    """Push events committed from now on: kinds (prefixes), subjects, request, namespace;
    compress (binary zlib frames)."""
    where = EventFilter(
        kinds=string_list(args, "kinds") + string_list(args, "kind"),
        subjects=frozenset(string_list(args, "subjects") + string_list(args, "subject")),
        request=arg(args, "request", str, None),
        namespace=arg(args, "namespace", str, None),
    )
    stream = session.open_event_stream(where, compress=arg(args, "compress", bool, False))
    return {"stream": stream.id, "after": await session.engine.last_event_id()}


@op("tail", role="viewer")
async def _tail(session: Session, args: dict[str, Any]) -> Any:
    """Push a job's output (stored, then live) until it ends: job."""
    return await start_tail(session, arg(args, "job", str))


@op("unsubscribe", role="viewer")
async def _unsubscribe(session: Session, args: dict[str, Any]) -> Any:
    """Stop a stream of this connection: stream."""
    stream_id = arg(args, "stream", int)
    if not session.close_stream(stream_id):
        raise ApiError(protocol.NOT_FOUND, f"no open stream {stream_id} on this connection")
    await trio.lowlevel.checkpoint()
    return {"stream": stream_id, "closed": True}


# --- tokens ----------------------------------------------------------------------------------


@op("token.create", role="admin")
async def _token_create(session: Session, args: dict[str, Any]) -> Any:
    """Create a token: name, role. The result holds the secret; it is shown this once."""
    name = tokens.check_name(arg(args, "name", str))
    role = tokens.Role.parse(arg(args, "role", str))
    secret = tokens.new_secret()
    record = await session.engine.create_token(
        name, role.label, tokens.digest(secret), by=session.name
    )
    if record is None:
        raise tokens.name_taken(name)
    return {**record.as_data(revoked=False), "token": secret}


@op("token.revoke", role="admin")
async def _token_revoke(session: Session, args: dict[str, Any]) -> Any:
    """Revoke a token by name and close the connections that use it."""
    name = arg(args, "name", str)
    if name == tokens.BOOTSTRAP:
        raise ApiError(
            protocol.REFUSED, "the bootstrap token can't be revoked: replace its file and restart"
        )
    record = await session.engine.revoke_token(name, by=session.name)
    if record is None:
        raise tokens.no_live_token(name)
    return {
        "name": record.name,
        "role": record.role,
        "revoked_at": record.revoked_at,
        "revoked_by": record.revoked_by,
        "closed_connections": session.server.revoke(name),
    }


@op("token.list", role="admin")
async def _token_list(session: Session, args: dict[str, Any]) -> Any:
    """Tokens (never their secrets): revoked (false) to include revoked ones."""
    found = await session.engine.tokens(revoked=arg(args, "revoked", bool, False))
    return [record.as_data() for record in found]


# --- requests from the page ------------------------------------------------------------------


@op("submit_toml", role="operator")
async def _submit_toml(session: Session, args: dict[str, Any]) -> Any:
    """Submit a one-file definition given as TOML text: toml, user, params, namespace, priority."""
    try:
        expanded = tomllib.loads(arg(args, "toml", str))
    except tomllib.TOMLDecodeError as exc:
        raise ApiError(protocol.BAD_REQUEST, f"args.toml: {exc}") from None
    if "includes" in expanded:
        raise ApiError(
            protocol.REFUSED, "a definition with includes needs its files: use `wfe submit FILE`"
        )
    submit = OPS.get("submit")
    if submit is None:
        raise ApiError(protocol.UNAVAILABLE, "this engine does not run requests")
    forwarded = {
        "expanded": expanded,
        "user": arg(args, "user", str),
        "params": arg(args, "params", dict, {}),
    }
    for key, kind in (("namespace", str), ("priority", int)):
        if args.get(key) is not None:
            forwarded[key] = arg(args, key, kind)
    return await submit.handler(session, forwarded)
