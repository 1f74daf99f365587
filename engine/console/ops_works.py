"""Console operations of the work queue (``wfe.engine.works``): deposit, withdraw, heartbeat,
update, read and search works, and an operator's cancel and delete.

Registered with ``@op`` when ``wfe.engine.console.api`` imports this module. The ``worker``
role (pull workers, ``wfe work run``) may use every op here except ``work.cancel`` and
``work.delete``, and nothing outside this module; viewers read works and change none. A work
travels as its payload (``wfe.engine.works.model.payload``); a bad one is refused with
``bad_request`` and one line naming the field (``works[1].priority: must be 1..5, got 9``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from wfe.engine.console.protocol import BAD_REQUEST, ApiError
from wfe.engine.console.registry import arg, bounded, epoch_seconds, op, string_list
from wfe.engine.repository.works import UPDATABLE, WorkQuery
from wfe.engine.works.model import WorkError, WorkStatus, parse_work, payload

if TYPE_CHECKING:
    from wfe.engine.console.session import Session

#: The most works one deposit may carry.
MAX_DEPOSIT = 10_000


def work_query(args: dict[str, Any], *, pipeline_required: bool = False) -> WorkQuery:
    """The filters of a withdraw, search or count, from a request's ``args``."""
    statuses = string_list(args, "status")
    known = [s.value for s in WorkStatus]
    for status in statuses:
        if status not in known:
            raise ApiError(
                BAD_REQUEST, f"args.status: unknown status {status!r} (known: {', '.join(known)})"
            )
    priority = arg(args, "priority", int, None)
    if priority is not None and not 1 <= priority <= 5:
        raise ApiError(BAD_REQUEST, f"args.priority: must be 1..5, got {priority}")
    return WorkQuery(
        pipeline=arg(args, "pipeline", str)
        if pipeline_required
        else arg(args, "pipeline", str, None),
        statuses=tuple(WorkStatus(s) for s in statuses),
        event=arg(args, "event", int, None),
        site=arg(args, "site", str, None),
        priority=priority,
        user=arg(args, "user", str, None),
        tags=string_list(args, "tags"),
        group=arg(args, "group", str, None),
        parent=arg(args, "parent", str, None),
        since=epoch_seconds(args, "since"),
        until=epoch_seconds(args, "until"),
    )


@op("work.deposit", role="operator", workers=True)
async def _deposit(session: Session, args: dict[str, Any]) -> Any:
    """Queue works (all or none): works (an array of payloads) or work (one). Result: ids."""
    if ("works" in args) == ("work" in args):
        raise ApiError(BAD_REQUEST, "give exactly one of args.works and args.work")
    many = "works" in args
    given = arg(args, "works", list) if many else [arg(args, "work", dict)]
    if not 1 <= len(given) <= MAX_DEPOSIT:
        raise ApiError(BAD_REQUEST, f"args.works: expected 1 to {MAX_DEPOSIT} works")
    works = []
    for i, data in enumerate(given):
        try:
            works.append(parse_work(data))
        except WorkError as exc:
            raise ApiError(BAD_REQUEST, f"works[{i}].{exc}" if many else str(exc)) from None
    ids = await session.engine.deposit_works(works, by=session.name)
    return {"ids": ids}


@op("work.withdraw", role="operator", workers=True)
async def _withdraw(session: Session, args: dict[str, Any]) -> Any:
    """Take the best queued work of a pipeline and hold its lease: pipeline, event, site,
    priority, user, tags. Result: work (its payload, running), or null when none is queued."""
    work = await session.engine.withdraw_work(
        work_query(args, pipeline_required=True), worker=session.name
    )
    return {"work": None if work is None else payload(work)}


@op("work.heartbeat", role="operator", workers=True)
async def _heartbeat(session: Session, args: dict[str, Any]) -> Any:
    """Renew a running work's lease: id, attempt. Result: id, attempt, lease (seconds)."""
    work_id, attempt = arg(args, "id", str), arg(args, "attempt", int)
    lease = session.engine.renew_work_lease(work_id, attempt)
    return {"id": work_id, "attempt": attempt, "lease": lease.period}


@op("work.update", role="operator", workers=True)
async def _update(session: Session, args: dict[str, Any]) -> Any:
    """Record a running work's results, products, plots, status: id, attempt. Result: the
    work as stored (queued again with attempt + 1 after a failure while retries remain);
    with withdraw (work.withdraw's args), {updated, next}: the next work withdrawn with it."""
    work_id, attempt = arg(args, "id", str), arg(args, "attempt", int)
    changes = {k: v for k, v in args.items() if k in UPDATABLE}
    extra = sorted(set(args) - UPDATABLE - {"id", "attempt", "withdraw"})
    if extra:
        raise ApiError(
            BAD_REQUEST,
            f"args.{extra[0]}: may not be updated (only {', '.join(sorted(UPDATABLE))})",
        )
    then = arg(args, "withdraw", dict, None)
    query = None if then is None else work_query(then, pipeline_required=True)
    try:
        if query is None:
            return payload(
                await session.engine.update_work(
                    work_id, attempt=attempt, changes=changes, by=session.name
                )
            )
        work, after = await session.engine.update_and_withdraw_work(
            work_id, attempt=attempt, changes=changes, by=session.name, query=query
        )
    except WorkError as exc:
        if isinstance(exc, LookupError) or " is over " in str(exc) or "only a running" in str(exc):
            raise
        raise ApiError(BAD_REQUEST, str(exc)) from None
    return {"updated": payload(work), "next": None if after is None else payload(after)}


@op("work.get", role="viewer", workers=True)
async def _get(session: Session, args: dict[str, Any]) -> Any:
    """One work's payload: id."""
    return payload(await session.engine.work(arg(args, "id", str)))


@op("work.files", role="viewer", workers=True)
async def _files(session: Session, args: dict[str, Any]) -> Any:
    """A finished work's products and plots as archived: id. Result: kind, source, archived,
    size, sha256, reason (why there is no copy) for each."""
    return [f.as_data() for f in await session.engine.work_files(arg(args, "id", str))]


@op("work.find", role="viewer", workers=True)
async def _find(session: Session, args: dict[str, Any]) -> Any:
    """Works newest first: pipeline, status, event, site, priority, user, tags, group, since,
    until, limit (50), offset (0). Result: works, count (all matches), offset, limit."""
    query = work_query(args)
    limit = bounded(args, "limit", 50)
    offset = bounded(args, "offset", 0, low=0, high=2**62)
    works = await session.engine.find_works(query, limit=limit, offset=offset)
    count = await session.engine.count_works(query)
    return {"works": [payload(w) for w in works], "count": count, "offset": offset, "limit": limit}


@op("work.count", role="viewer", workers=True)
async def _count(session: Session, args: dict[str, Any]) -> Any:
    """How many works match: the filters of work.find. Result: count."""
    return {"count": await session.engine.count_works(work_query(args))}


@op("work.buckets", role="viewer", workers=True)
async def _buckets(session: Session, args: dict[str, Any]) -> Any:
    """Works per pipeline and status: {pipeline: {status: count}}."""
    return await session.engine.buckets()


@op("work.cancel", role="operator")
async def _cancel(session: Session, args: dict[str, Any]) -> Any:
    """Take a queued or running work out of its bucket: id. Result: the work (cancelled)."""
    return payload(await session.engine.cancel_work(arg(args, "id", str), by=session.name))


@op("work.delete", role="operator")
async def _delete(session: Session, args: dict[str, Any]) -> Any:
    """Delete works (all or none): ids. Result: deleted (their ids)."""
    ids = string_list(args, "ids")
    if not ids:
        raise ApiError(BAD_REQUEST, "args.ids is required")
    return {"deleted": await session.engine.delete_works(ids, by=session.name)}
