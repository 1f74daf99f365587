"""The ``works`` table: the work queue's buckets, and the typed reads and writes on it.

A bucket is the queued works of one pipeline. Each write here is an op of the one repository
writer, so a withdraw is atomic by construction: the op that picks the highest-priority,
oldest queued work also marks it running, and no other op runs in between. Every change
emits its event (subject: the work id) in the same transaction:

``work.deposited`` {pipeline, priority, by} · ``work.withdrawn`` {pipeline, attempt, worker} ·
``work.updated`` {status, attempt, by} · ``work.requeued`` {attempt, reason} (back to queued
for another attempt) · ``work.failed`` {attempt, reason} · ``work.cancelled`` {from, by} ·
``work.deleted`` {status, by}.

A running work is fenced by its attempt: an update or an expiry names the attempt it is
about, and is refused (update) or ignored (expiry) once the work has moved on to another.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs

from wfe.engine.repository.rowtypes import Conn, Db, JsonObject
from wfe.engine.repository.writer import Tx
from wfe.engine.works.archive import ArchivedFile
from wfe.engine.works.model import (
    TERMINAL,
    UnknownWork,
    Work,
    WorkError,
    WorkStatus,
    parse_work,
    payload,
)

_STATUSES = frozenset(s.value for s in WorkStatus)

#: What an update may change; the rest of a work is fixed once deposited.
UPDATABLE = frozenset({"results", "products", "plots", "status"})

_ALLOCATE_MANY = (
    "INSERT INTO counters (name, value) VALUES ('work', ?)"
    " ON CONFLICT (name) DO UPDATE SET value = value + excluded.value RETURNING value"
)
_INSERT = (
    "INSERT INTO works (id, seq, pipeline, status, priority, site, user, attempt, creation,"
    " start, stop, worker, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_SAVE = (
    "UPDATE works SET status = ?, attempt = ?, start = ?, stop = ?, worker = ?, payload = ?"
    " WHERE id = ?"
)


@attrs.frozen(kw_only=True)
class WorkQuery:
    """Which works: every given field must match (tags: the work has every one of them)."""

    pipeline: str | None = None
    statuses: tuple[WorkStatus, ...] = ()
    event: int | None = None
    site: str | None = None
    priority: int | None = None
    user: str | None = None
    tags: tuple[str, ...] = ()
    group: str | None = None
    parent: str | None = None  # deposited by this job's tasklets (``ctx.work``)
    since: float | None = None  # created at or after (epoch seconds)
    until: float | None = None  # created before


def _where(query: WorkQuery) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    for column, value in (
        ("pipeline", query.pipeline),
        ("site", query.site),
        ("priority", query.priority),
        ("user", query.user),
    ):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    if query.statuses:
        clauses.append(f"status IN ({', '.join('?' * len(query.statuses))})")
        params.extend(s.value for s in query.statuses)
    if query.since is not None:
        clauses.append("creation >= ?")
        params.append(query.since)
    if query.until is not None:
        clauses.append("creation < ?")
        params.append(query.until)
    if query.parent is not None:
        clauses.append("id IN (SELECT work_id FROM work_calls WHERE parent = ?)")
        params.append(query.parent)
    contains: list[tuple[str, Any]] = [("$.tags", t) for t in query.tags]
    if query.event is not None:
        contains.append(("$.event", query.event))
    if query.group is not None:
        contains.append(("$.group", query.group))
    for path, value in contains:
        clauses.append("EXISTS (SELECT 1 FROM json_each(works.payload, ?) WHERE value = ?)")
        params.extend((path, value))
    return (" AND ".join(clauses) or "1"), params


def _decode(text: str) -> Work:
    """A stored payload as a ``Work``: built directly (the attrs validators still run), and
    through the full converter only if that fails (its errors name the field)."""
    data = json.loads(text)
    try:
        return Work(**{**data, "status": WorkStatus(data["status"])})
    except (TypeError, ValueError, KeyError):
        return parse_work(data)


def get_work(db: Db, work_id: str) -> Work | None:
    """The work ``work_id``, or None."""
    row = db.execute("SELECT payload FROM works WHERE id = ?", (work_id,)).fetchone()
    return None if row is None else _decode(row[0])


def _known(db: Db, work_id: str) -> Work:
    work = get_work(db, work_id)
    if work is None:
        raise UnknownWork(f"no work {work_id!r}")
    return work


def _save(tx: Tx, work: Work, *, worker: str | None) -> None:
    assert work.id is not None
    tx.execute(
        _SAVE,
        (
            work.status.value,
            work.attempt,
            work.start,
            work.stop,
            worker,
            json.dumps(payload(work)),
            work.id,
        ),
    )


# --- writes -------------------------------------------------------------------------------------


def deposit_works(works: Sequence[Work], *, by: str | None) -> Callable[[Tx], list[str]]:
    """A write op that queues ``works`` (all or none) and returns their new ids, in order.

    Raises ``WorkError`` for a work that already has an id (nothing is stored)."""

    def op(tx: Tx) -> list[str]:
        if not works:
            return []
        for work in works:
            if work.id is not None:
                raise WorkError(f"id: set by the bucket, a new work has none (got {work.id!r})")
        (last,) = tx.execute(_ALLOCATE_MANY, (len(works),)).fetchone()
        first = int(last) - len(works) + 1
        rows = []
        ids = []
        for seq, work in enumerate(works, first):
            work_id = f"w{seq:07d}"
            queued = attrs.evolve(work, id=work_id, status=WorkStatus.QUEUED)
            rows.append(
                (
                    work_id,
                    seq,
                    work.pipeline,
                    WorkStatus.QUEUED.value,
                    work.priority,
                    work.site,
                    work.user,
                    work.attempt,
                    work.creation,
                    None,
                    None,
                    None,
                    json.dumps(payload(queued)),
                )
            )
            ids.append(work_id)
            tx.emit(
                "work.deposited",
                work_id,
                {"pipeline": work.pipeline, "priority": work.priority, "by": by},
            )
        tx.executemany(_INSERT, rows)
        return ids

    return op


def deposit_call(work: Work, *, parent: str, call_seq: int) -> Callable[[Tx], str]:
    """A write op for a tasklet's ``ctx.work``: deposit ``work`` for call ``call_seq`` of job
    ``parent`` and return its id; a call made before (a replay after a restart) returns the
    work it deposited then, and deposits nothing."""

    def op(tx: Tx) -> str:
        row = tx.execute(
            "SELECT work_id FROM work_calls WHERE parent = ? AND call_seq = ?", (parent, call_seq)
        ).fetchone()
        if row is not None:
            return str(row[0])
        [work_id] = deposit_works([work], by=f"job {parent}")(tx)
        tx.execute(
            "INSERT INTO work_calls (parent, call_seq, work_id) VALUES (?, ?, ?)",
            (parent, call_seq, work_id),
        )
        return work_id

    return op


def withdraw_work(query: WorkQuery, *, worker: str) -> Callable[[Tx], Work | None]:
    """A write op: the best queued work matching ``query`` (highest priority, then oldest),
    now running under ``worker``; None when there is none. ``query.statuses`` is ignored."""
    if query.pipeline is None:
        raise WorkError("pipeline: is required to withdraw")
    clause, params = _where(attrs.evolve(query, statuses=(WorkStatus.QUEUED,)))

    def op(tx: Tx) -> Work | None:
        return _withdraw(tx, clause, params, worker)

    return op


def _withdraw(tx: Tx, clause: str, params: list[Any], worker: str) -> Work | None:
    row = tx.execute(
        f"SELECT payload FROM works WHERE {clause} ORDER BY priority DESC, seq LIMIT 1", params
    ).fetchone()
    if row is None:
        return None
    work = attrs.evolve(_decode(row[0]), status=WorkStatus.RUNNING, start=tx.at)
    _save(tx, work, worker=worker)
    assert work.id is not None
    tx.emit(
        "work.withdrawn",
        work.id,
        {"pipeline": work.pipeline, "attempt": work.attempt, "worker": worker},
    )
    return work


def _again_or_failed(tx: Tx, work: Work, reason: str, results: Any) -> Work:
    """A running work's attempt ended badly: queue it for another, or fail it for good."""
    assert work.id is not None
    if work.attempt <= work.retries:
        again = attrs.evolve(
            work,
            status=WorkStatus.QUEUED,
            attempt=work.attempt + 1,
            start=None,
            results=results,
        )
        _save(tx, again, worker=None)
        tx.emit("work.requeued", work.id, {"attempt": again.attempt, "reason": reason})
        return again
    failed = attrs.evolve(
        work,
        status=WorkStatus.FAILURE,
        stop=tx.at,
        results={"error": reason} if results is None else results,
    )
    _save(tx, failed, worker=None)
    tx.emit("work.failed", work.id, {"attempt": work.attempt, "reason": reason})
    return failed


def update_work(
    work_id: str,
    *,
    attempt: int,
    changes: JsonObject,
    by: str | None,
    files: Sequence[ArchivedFile] = (),
) -> Callable[[Tx], Work]:
    """A write op: record a running work's ``results``, ``products``, ``plots`` and
    ``status`` (running, success or failure) for its current ``attempt``; return it as stored.

    A failure while attempts remain puts the work back to queued with ``attempt + 1``.
    Raises ``UnknownWork``, or ``WorkError`` (nothing changed) for a field that may not be
    updated, a bad value, a work that is not running, or an attempt that is over. ``files``
    (the archive's copies of its products and plots) are recorded if it ends in success."""
    unknown = sorted(set(changes) - UPDATABLE)
    if unknown:
        raise WorkError(f"{unknown[0]}: may not be updated (only {', '.join(sorted(UPDATABLE))})")

    def op(tx: Tx) -> Work:
        return _update(tx, work_id, attempt, changes, by, files)

    return op


def update_and_withdraw(
    work_id: str,
    *,
    attempt: int,
    changes: JsonObject,
    by: str,
    query: WorkQuery,
    files: Sequence[ArchivedFile] = (),
) -> Callable[[Tx], tuple[Work, Work | None]]:
    """A write op: ``update_work`` then ``withdraw_work(query, worker=by)`` in one
    transaction (a worker's round trip and commit per work instead of two). When the update
    is refused nothing is withdrawn."""
    updating = update_work(work_id, attempt=attempt, changes=changes, by=by, files=files)
    withdrawing = withdraw_work(query, worker=by)

    def op(tx: Tx) -> tuple[Work, Work | None]:
        return updating(tx), withdrawing(tx)

    return op


def _update(
    tx: Tx,
    work_id: str,
    attempt: int,
    changes: JsonObject,
    by: str | None,
    files: Sequence[ArchivedFile],
) -> Work:
    work = _known(tx, work_id)
    if attempt != work.attempt:
        raise WorkError(
            f"work {work_id}: attempt {attempt} is over (the work is {work.status} on"
            f" attempt {work.attempt}): its lease ran out"
        )
    if work.status is not WorkStatus.RUNNING:
        raise WorkError(f"work {work_id} is {work.status}: only a running work is updated")
    if changes.keys() == {"status"} and changes["status"] in _STATUSES:  # the common case
        new = attrs.evolve(work, status=WorkStatus(changes["status"]))
    else:
        new = parse_work(payload(work) | changes)
    if new.status not in (WorkStatus.RUNNING, WorkStatus.SUCCESS, WorkStatus.FAILURE):
        raise WorkError(f"status: an update sets running, success or failure, not {new.status}")
    tx.emit("work.updated", work_id, {"status": new.status, "attempt": attempt, "by": by})
    if new.status is WorkStatus.FAILURE:
        reason = _reason(new.results)
        return _again_or_failed(tx, new, reason, new.results)
    if new.status is WorkStatus.SUCCESS:
        new = attrs.evolve(new, stop=tx.at)
        if files:
            _record_files(tx, work_id, files)
    _save(tx, new, worker=by if new.status is WorkStatus.RUNNING else None)
    return new


def _record_files(tx: Tx, work_id: str, files: Sequence[ArchivedFile]) -> None:
    tx.executemany(
        "INSERT OR REPLACE INTO work_files (work_id, kind, source, archived, size, sha256,"
        " reason) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(work_id, f.kind, f.source, f.archived, f.size, f.sha256, f.reason) for f in files],
    )
    archived = sum(1 for f in files if f.archived is not None)
    tx.emit("work.archived", work_id, {"files": len(files), "archived": archived})


def _reason(results: Any) -> str:
    if isinstance(results, dict) and isinstance(results.get("error"), str):
        return str(results["error"]).strip().splitlines()[-1][:500] if results["error"] else ""
    return "failed"


def expire_work(work_id: str, attempt: int, reason: str) -> Callable[[Tx], Work | None]:
    """A write op for a lease that ran out: if ``work_id`` still runs ``attempt``, queue it
    again (or fail it when its retries are spent) and return it; else None (nothing to do)."""

    def op(tx: Tx) -> Work | None:
        work = get_work(tx, work_id)
        if work is None or work.status is not WorkStatus.RUNNING or work.attempt != attempt:
            return None
        return _again_or_failed(tx, work, reason, work.results)

    return op


def cancel_work(work_id: str, *, by: str | None) -> Callable[[Tx], Work]:
    """A write op: take a queued or running work out of its bucket (``cancelled``).
    Raises ``UnknownWork``, or ``WorkError`` for a work that has ended."""

    def op(tx: Tx) -> Work:
        work = _known(tx, work_id)
        if work.status in TERMINAL:
            raise WorkError(f"work {work_id} has ended ({work.status}): nothing to cancel")
        cancelled = attrs.evolve(work, status=WorkStatus.CANCELLED, stop=tx.at)
        _save(tx, cancelled, worker=None)
        tx.emit("work.cancelled", work_id, {"from": work.status, "by": by})
        return cancelled

    return op


def delete_works(ids: Iterable[str], *, by: str | None) -> Callable[[Tx], list[str]]:
    """A write op: delete the works ``ids`` (all or none); return them. Raises ``UnknownWork``."""
    wanted = list(dict.fromkeys(ids))

    def op(tx: Tx) -> list[str]:
        for work_id in wanted:
            work = _known(tx, work_id)
            tx.execute("DELETE FROM works WHERE id = ?", (work_id,))
            tx.execute("DELETE FROM work_files WHERE work_id = ?", (work_id,))
            tx.emit("work.deleted", work_id, {"status": work.status, "by": by})
        return wanted

    return op


# --- reads --------------------------------------------------------------------------------------


def read_work(work_id: str) -> Callable[[Conn], Work]:
    """A read function: the work ``work_id``; raises ``UnknownWork``."""

    def fn(conn: Conn) -> Work:
        return _known(conn, work_id)

    return fn


def find_works(
    query: WorkQuery, *, limit: int, offset: int = 0, oldest_first: bool = False
) -> Callable[[Conn], list[Work]]:
    """A read function: works matching ``query``, newest first (or oldest), one page."""
    clause, params = _where(query)
    order = "seq" if oldest_first else "seq DESC"

    def fn(conn: Conn) -> list[Work]:
        rows = conn.execute(
            f"SELECT payload FROM works WHERE {clause} ORDER BY {order} LIMIT ? OFFSET ?",
            (*params, limit, offset),
        ).fetchall()
        return [_decode(r[0]) for r in rows]

    return fn


def work_files(work_id: str) -> Callable[[Conn], list[ArchivedFile]]:
    """A read function: the archive's record of a work's products and plots."""

    def fn(conn: Conn) -> list[ArchivedFile]:
        rows = conn.execute(
            "SELECT kind, source, archived, size, sha256, reason FROM work_files"
            " WHERE work_id = ? ORDER BY kind DESC, rowid",
            (work_id,),
        ).fetchall()
        return [
            ArchivedFile(kind=k, source=s, archived=a, size=n, sha256=h, reason=r)
            for k, s, a, n, h, r in rows
        ]

    return fn


def count_works(query: WorkQuery) -> Callable[[Conn], int]:
    """A read function: how many works match ``query``."""
    clause, params = _where(query)

    def fn(conn: Conn) -> int:
        return int(conn.execute(f"SELECT COUNT(*) FROM works WHERE {clause}", params).fetchone()[0])

    return fn


def bucket_counts(conn: Conn) -> dict[str, dict[str, int]]:
    """Works per pipeline and status: ``{pipeline: {status: count}}``."""
    counts: dict[str, dict[str, int]] = {}
    for pipeline, status, n in conn.execute(
        "SELECT pipeline, status, COUNT(*) FROM works GROUP BY pipeline, status"
    ):
        counts.setdefault(str(pipeline), {})[str(status)] = int(n)
    return counts


def running_works(conn: Conn) -> list[tuple[str, int, int]]:
    """``(id, attempt, timeout)`` of every running work (whose leases a started engine holds)."""
    return [
        (w.id, w.attempt, w.timeout)
        for (text,) in conn.execute("SELECT payload FROM works WHERE status = 'running'")
        for w in [_decode(text)]
        if w.id is not None
    ]


__all__ = [
    "UPDATABLE",
    "WorkQuery",
    "bucket_counts",
    "cancel_work",
    "count_works",
    "delete_works",
    "deposit_works",
    "expire_work",
    "find_works",
    "get_work",
    "read_work",
    "running_works",
    "update_and_withdraw",
    "update_work",
    "withdraw_work",
    "work_files",
]
