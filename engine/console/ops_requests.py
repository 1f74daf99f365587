"""Console API operations for workflow requests, the catalog and products.

Registered with ``@op`` when ``wfe.engine.console.api`` imports this module.
Every op replies with JSON-ready data; a refused verb replies ``refused`` with the line
that names the request's state, an unknown request or product ``not_found``. Each op
declares the least role it needs (``ROLES``): viewers read, operators change things.

Ops: ``submit``, ``approve``, ``pause``, ``resume``, ``cancel``, ``archive``, ``requests``,
``request``, ``request_wait``, ``catalog_add``, ``catalog_ls``, ``replica_add``, ``replica_rm``,
``replica_ls``, ``products``, ``provenance``. The arguments of each are in its docstring and in docs/definitions.md.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs

from wfe.engine.console.protocol import ApiError
from wfe.engine.console.registry import Handler, arg, op
from wfe.engine.repository import request_views as views
from wfe.engine.repository.replicas import Replica, UnknownEntry, check_rse
from wfe.engine.repository.rowtypes import JsonValue
from wfe.engine.requests import catalog
from wfe.protocols.errors import ProtocolError
from wfe.protocols.request import Actor, RequestState, RequestVerb

if TYPE_CHECKING:
    from wfe.engine.console.api import Session
    from wfe.engine.requests import RequestService

#: The role each op needs. Viewers read; operators change things.
ROLES: dict[str, str] = {
    "submit": "operator",
    "approve": "operator",
    "pause": "operator",
    "resume": "operator",
    "cancel": "operator",
    "archive": "operator",
    "catalog_add": "operator",
    "requests": "viewer",
    "request": "viewer",
    "request_wait": "viewer",
    "catalog_ls": "viewer",
    "replica_add": "operator",
    "replica_rm": "operator",
    "replica_ls": "viewer",
    "products": "viewer",
    "provenance": "viewer",
}


def _register(name: str) -> Callable[[Handler], Handler]:
    """``@op(name, role=ROLES[name])``; a lifecycle refusal from ``protocols`` (not an
    ``EngineError``) is answered ``refused`` with its line."""

    def decorate(fn: Handler) -> Handler:
        @functools.wraps(fn)
        async def handler(session: Session, args: dict[str, Any]) -> Any:
            try:
                return await fn(session, args)
            except ProtocolError as exc:
                raise ApiError("refused", str(exc)) from None

        return op(name, role=ROLES[name])(handler)

    return decorate


def _service(session: Session) -> RequestService:
    service: RequestService | None = getattr(session.engine, "requests", None)
    if service is None:
        raise ApiError("unavailable", "this engine does not run requests")
    return service


@_register("submit")
async def _submit(session: Session, args: dict[str, Any]) -> Any:
    """args: expanded (object, the expanded definition), user, and optionally sources
    (array), git (object), scripts ({name: text}), params (object), namespace, priority;
    or update (a standing request's id): give that request this new version of its
    definition (changed scripts or stage parameters) instead of making a new one."""
    session.engine.admit_new_work()  # refused while the repository's disk is full
    update = arg(args, "update", str, None)
    if update is not None:
        record = await _service(session).update(
            update,
            expanded=arg(args, "expanded", dict),
            sources=arg(args, "sources", list, []),
            git=arg(args, "git", dict, None),
            scripts_text=arg(args, "scripts", dict, {}),
            by=session.name,
        )
        return views.record_dict(record)
    record = await _service(session).submit(
        expanded=arg(args, "expanded", dict),
        user=arg(args, "user", str),
        sources=arg(args, "sources", list, []),
        git=arg(args, "git", dict, None),
        scripts_text=arg(args, "scripts", dict, {}),
        params=arg(args, "params", dict, {}),
        namespace=arg(args, "namespace", str, None),
        priority=arg(args, "priority", int, None),  # None: its type's, from wfe.toml
        by=session.name,
    )
    warnings = await _service(session).warnings_for(record)
    return {**views.record_dict(record), **({"warnings": warnings} if warnings else {})}


async def _verb(session: Session, args: dict[str, Any], verb: RequestVerb) -> Any:
    rid = arg(args, "request", str)
    change = await _service(session).act(rid, verb, actor=Actor.OPERATOR, by=session.name)
    return {
        "request": rid,
        "verb": verb.value,
        "from": change.before.value,
        "state": change.after.value,
    }


@_register("approve")
async def _approve(session: Session, args: dict[str, Any]) -> Any:
    """args: request."""
    return await _verb(session, args, RequestVerb.APPROVE)


@_register("pause")
async def _pause(session: Session, args: dict[str, Any]) -> Any:
    """args: request. Stops new dispatches; running jobs finish."""
    return await _verb(session, args, RequestVerb.PAUSE)


@_register("resume")
async def _resume(session: Session, args: dict[str, Any]) -> Any:
    """args: request."""
    return await _verb(session, args, RequestVerb.RESUME)


@_register("cancel")
async def _cancel(session: Session, args: dict[str, Any]) -> Any:
    """args: request. Kills the request's running jobs on their agents."""
    return await _verb(session, args, RequestVerb.CANCEL)


@_register("archive")
async def _archive(session: Session, args: dict[str, Any]) -> Any:
    """args: request."""
    return await _verb(session, args, RequestVerb.ARCHIVE)


@_register("requests")
async def _requests(session: Session, args: dict[str, Any]) -> Any:
    """args: limit (50), state."""
    return await session.engine.request_list(
        limit=arg(args, "limit", int, 50), state=arg(args, "state", str, None)
    )


@_register("request")
async def _request(session: Session, args: dict[str, Any]) -> Any:
    """args: request. The record, stages with input counts, jobs and history; for a
    standing request also ``standing`` (trigger, gaps, cooldowns, last and next rounds)."""
    rid = arg(args, "request", str)
    detail = await session.engine.request_detail(rid)
    service: RequestService | None = getattr(session.engine, "requests", None)
    if service is not None:
        view = await service.standing_view(rid)
        if view is not None:
            detail["standing"] = view
        waiting = service.why_waiting(rid)  # no agent's site near enough their replicas
        if waiting:
            detail["waiting"] = list[JsonValue](waiting)
    return detail


@_register("request_wait")
async def _request_wait(session: Session, args: dict[str, Any]) -> Any:
    """args: request, states (default: completed, failed, cancelled). Replies once the
    request is, or has been, in one of them; refused once it can never reach any."""
    names = arg(args, "states", list, ["completed", "failed", "cancelled"])
    try:
        states = {RequestState(n) for n in names}
    except ValueError:
        known = ", ".join(s.value for s in RequestState)
        raise ApiError("bad_request", f"args.states: expected request states ({known})") from None
    record = await _service(session).wait(arg(args, "request", str), states)
    return views.record_dict(record)


@_register("catalog_add")
async def _catalog_add(session: Session, args: dict[str, Any]) -> Any:
    """args: paths (absolute), metadata (object, applied to each over its sidecar), rse
    (a storage element where the paths are a replica of each entry)."""
    session.engine.admit_new_work()  # refused while the repository's disk is full
    paths = arg(args, "paths", list)
    if not paths or not all(isinstance(p, str) for p in paths):
        raise ApiError("bad_request", "args.paths: expected a non-empty array of paths")
    rse = _rse(arg(args, "rse", str, None))
    entries = await catalog.describe_files(paths, arg(args, "metadata", dict, {}))
    if rse is not None:
        return await session.engine.catalog_add_at(entries, rse, by=session.name)
    return await session.engine.catalog_add(entries, by=session.name)


def _rse(name: str | None) -> str | None:
    try:
        return None if name is None else check_rse(name)
    except ValueError as exc:
        raise ApiError("bad_request", f"args.rse: {exc}") from None


@_register("replica_add")
async def _replica_add(session: Session, args: dict[str, Any]) -> Any:
    """args: path (a catalog entry's), rse, location (a path or URL there). A replica at the
    same storage element is moved."""
    rse = _rse(arg(args, "rse", str))
    location = arg(args, "location", str)
    if not location.strip():
        raise ApiError("bad_request", "args.location: expected a path or URL")
    replica = Replica(path=arg(args, "path", str), rse=str(rse), location=location)
    try:
        await session.engine.replica_add([replica], by=session.name)
    except UnknownEntry as exc:
        raise ApiError("not_found", str(exc)) from None
    return attrs.asdict(replica)


@_register("replica_rm")
async def _replica_rm(session: Session, args: dict[str, Any]) -> Any:
    """args: path, rse. Refused ``not_found`` when there is no such replica."""
    path, rse = arg(args, "path", str), arg(args, "rse", str)
    if not await session.engine.replica_remove(path, rse, by=session.name):
        raise ApiError("not_found", f"{path}: no replica at {rse}")
    return {"path": path, "rse": rse}


@_register("replica_ls")
async def _replica_ls(session: Session, args: dict[str, Any]) -> Any:
    """args: path (none: every entry's). ``[{path, rse, location}]``."""
    return [attrs.asdict(r) for r in await session.engine.replicas(arg(args, "path", str, None))]


@_register("catalog_ls")
async def _catalog_ls(session: Session, args: dict[str, Any]) -> Any:
    """args: limit (none)."""
    entries = await session.engine.catalog_entries(limit=arg(args, "limit", int, None))
    return [attrs.asdict(e) for e in entries]


@_register("products")
async def _products(session: Session, args: dict[str, Any]) -> Any:
    """args: request, stale (false: only products no longer current, with why)."""
    rid = arg(args, "request", str)
    await _service(session).get(rid)  # not_found for an unknown request
    if arg(args, "stale", bool, False):
        return await _service(session).stale_products(rid)
    return await session.engine.products(rid)


@_register("provenance")
async def _provenance(session: Session, args: dict[str, Any]) -> Any:
    """args: product. The chain back to the raw catalog entries."""
    return await session.engine.provenance(arg(args, "product", str))
