"""Filtered, paged reads for the web console's search and views (issue 17).

``search(query)`` reads one page of jobs, requests or events matching a ``SearchQuery``
(every filter optional, combined with AND) together with the number of all matches, so a
page can show "41-60 of 9,312" and history is never limited to what a client saw arrive.
``attempt_timeline`` reads the attempts of a job tree or of a request's jobs, for a Gantt
chart per agent. Plain JSON-ready data; all SQL of these views is here.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Literal

import attrs

from wfe.engine.errors import UnknownJob
from wfe.engine.repository.requests import get_request
from wfe.engine.repository.rowtypes import Conn, JsonObject, JsonValue

Kind = Literal["jobs", "requests", "events"]
KINDS: tuple[Kind, ...] = ("jobs", "requests", "events")
#: The most rows one page may hold.
MAX_PAGE = 500
#: The most attempts a timeline shows (the newest are kept).
TIMELINE_LIMIT = 5000


@attrs.frozen(kw_only=True)
class SearchQuery:
    """What to look for. ``text`` is a substring of a job's or request's error, or of an
    event's subject or data; ``name`` a substring of a job's name, a request's workflow or
    an event's kind (a prefix there); ``since``/``until`` bound creation (events: ``at``)."""

    kind: Kind
    states: tuple[str, ...] = ()
    name: str | None = None
    namespace: str | None = None
    user: str | None = None
    text: str | None = None
    since: float | None = None
    until: float | None = None
    root_only: bool = False
    limit: int = 50
    offset: int = 0


def _like(value: str) -> str:
    """``value`` as a LIKE pattern matching it anywhere, its wildcards taken literally."""
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _where(query: SearchQuery) -> tuple[str, list[object]]:
    clauses: list[str] = []
    params: list[object] = []
    if query.kind == "events":
        if query.name:
            clauses.append("kind LIKE ? ESCAPE '\\'")
            params.append(_like(query.name)[1:])
        if query.text:
            clauses.append("(subject LIKE ? ESCAPE '\\' OR data LIKE ? ESCAPE '\\')")
            params += [_like(query.text)] * 2
        if query.since is not None:
            clauses.append("at >= ?")
            params.append(query.since)
        if query.until is not None:
            clauses.append("at <= ?")
            params.append(query.until)
    else:
        if query.states:
            clauses.append(f"state IN ({', '.join('?' * len(query.states))})")
            params += list(query.states)
        if query.name:
            clauses.append(f"{'name' if query.kind == 'jobs' else 'workflow'} LIKE ? ESCAPE '\\'")
            params.append(_like(query.name))
        if query.text:
            clauses.append("error LIKE ? ESCAPE '\\'")
            params.append(_like(query.text))
        if query.since is not None:
            clauses.append("created_at >= ?")
            params.append(query.since)
        if query.until is not None:
            clauses.append("created_at <= ?")
            params.append(query.until)
        if query.kind == "jobs" and query.root_only:
            clauses.append("parent_id IS NULL")
        if query.kind == "requests":
            if query.namespace:
                clauses.append("namespace = ?")
                params.append(query.namespace)
            if query.user:
                clauses.append("user = ?")
                params.append(query.user)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


_SELECT = {
    "jobs": (
        "SELECT id, kind, name, parent_id, root_id, state, attempts, created_at, started_at,"
        " ended_at, error, request_id FROM jobs",
        (
            "id",
            "kind",
            "name",
            "parent",
            "root",
            "state",
            "attempts",
            "created_at",
            "started_at",
            "ended_at",
            "error",
            "request",
        ),  # fmt: skip
        "created_at DESC, id DESC",
    ),
    "requests": (
        "SELECT id, workflow, namespace, user, state, priority, created_at, updated_at, error"
        " FROM requests",
        (
            "id",
            "workflow",
            "namespace",
            "user",
            "state",
            "priority",
            "created_at",
            "updated_at",
            "error",
        ),  # fmt: skip
        "created_at DESC, id DESC",
    ),
    "events": (
        "SELECT id, at, kind, subject, data FROM events",
        ("id", "at", "kind", "subject", "data"),
        "id DESC",
    ),
}


def search(query: SearchQuery) -> Callable[[Conn], JsonObject]:
    """One page of matches, newest first: ``{kind, rows, total, offset, limit}``."""

    def fn(conn: Conn) -> JsonObject:
        select, names, order = _SELECT[query.kind]
        where, params = _where(query)
        total = conn.execute(f"SELECT COUNT(*) FROM ({select}{where})", params).fetchone()[0]
        rows: list[JsonValue] = []
        for row in conn.execute(
            f"{select}{where} ORDER BY {order} LIMIT ? OFFSET ?",
            [*params, query.limit, query.offset],
        ):
            item: JsonObject = dict(zip(names, row, strict=True))
            if query.kind == "events":
                item["data"] = json.loads(str(item["data"]))
            rows.append(item)
        return {
            "kind": query.kind,
            "rows": rows,
            "total": total,
            "offset": query.offset,
            "limit": query.limit,
        }

    return fn


_ATTEMPTS = (
    "SELECT a.job_id, j.name, j.kind, a.attempt, a.state, a.agent, a.dispatched_at,"
    " a.started_at, a.ended_at, a.exit_code FROM attempts a JOIN jobs j ON j.id = a.job_id"
)
_ATTEMPT_NAMES = ("job", "name", "kind", "attempt", "state", "agent", "dispatched_at",
                  "started_at", "ended_at", "exit_code")  # fmt: skip


def attempt_timeline(
    *, root: str | None = None, request: str | None = None, limit: int = TIMELINE_LIMIT
) -> Callable[[Conn], JsonObject]:
    """The attempts of the tree under root job ``root`` (raises ``UnknownJob``), or of the
    jobs of request ``request``, oldest dispatch first: ``{attempts, truncated}``."""

    def fn(conn: Conn) -> JsonObject:
        if root is not None:
            found = conn.execute("SELECT root_id FROM jobs WHERE id = ?", (root,)).fetchone()
            if found is None:
                raise UnknownJob(f"no job {root}")
            where, key = " WHERE j.root_id = ?", str(found[0])
        else:
            where, key = " WHERE j.request_id = ?", str(request)
        rows = conn.execute(
            f"{_ATTEMPTS}{where} ORDER BY COALESCE(a.dispatched_at, a.started_at) DESC LIMIT ?",
            (key, limit + 1),
        ).fetchall()
        attempts: list[JsonValue] = [
            dict(zip(_ATTEMPT_NAMES, row, strict=True)) for row in reversed(rows[:limit])
        ]
        return {"attempts": attempts, "truncated": len(rows) > limit}

    return fn


def _depends_on(stage: JsonObject) -> list[str]:
    """Upstream stages of one stage of an expanded definition: ``after`` plus the stage its
    ``consumes`` names (a name or ``{stage = ...}``; ``"query"`` is the catalog query)."""
    after = stage.get("after") or []
    names = [str(a) for a in after] if isinstance(after, list) else [str(after)]
    consumes = stage.get("consumes")
    source = consumes.get("stage") if isinstance(consumes, dict) else consumes
    if isinstance(source, str) and source != "query" and source not in names:
        names.append(source)
    return names


def request_graph(rid: str) -> Callable[[Conn], JsonObject]:
    """Request ``rid``'s stage graph from its expanded definition: ``{stages, expanded}``,
    each stage with ``name``, ``depends_on``, ``from_query``, ``rscript``, ``action``.
    Raises ``UnknownRequest``."""

    def fn(conn: Conn) -> JsonObject:
        get_request(conn, rid)  # raises UnknownRequest
        (text,) = conn.execute(
            "SELECT d.expanded FROM requests r JOIN definitions d ON d.sha256 = r.definition"
            " WHERE r.id = ?",
            (rid,),
        ).fetchone()
        expanded = json.loads(text)
        stages: list[JsonValue] = []
        for stage in expanded.get("stages", []) if isinstance(expanded, dict) else []:
            if not isinstance(stage, dict):
                continue
            consumes = stage.get("consumes")
            source = consumes.get("stage") if isinstance(consumes, dict) else consumes
            stages.append(
                {
                    "name": str(stage.get("name")),
                    "depends_on": list(_depends_on(stage)),
                    "from_query": source == "query",
                    "rscript": stage.get("rscript"),
                    "action": stage.get("action"),
                }
            )
        return {"request": rid, "stages": stages, "expanded": expanded}

    return fn


def agent_history(name: str, *, limit: int = 200) -> Callable[[Conn], JsonObject]:
    """What the repository knows of agent ``name``: ``first_seen``, ``last_seen`` (its last
    change of state), ``state`` (None for all three when never recorded) and its newest
    ``agent.*`` events (connected, lost, reconnected...), newest first."""

    def fn(conn: Conn) -> JsonObject:
        row = conn.execute(
            "SELECT first_seen, last_seen, state FROM agents WHERE name = ?", (name,)
        ).fetchone()
        first, last, state = row if row is not None else (None, None, None)
        events: list[JsonValue] = [
            {"id": r[0], "at": r[1], "kind": r[2], "data": json.loads(r[3])}
            for r in conn.execute(
                "SELECT id, at, kind, data FROM events WHERE subject = ? AND kind LIKE 'agent.%'"
                " ORDER BY id DESC LIMIT ?",
                (name, limit),
            )
        ]
        return {
            "name": name,
            "first_seen": first,
            "last_seen": last,
            "state": state,
            "events": events,
        }

    return fn


def activity(since: float, until: float, buckets: int) -> Callable[[Conn], JsonObject]:
    """RScript jobs over ``[since, until]`` in ``buckets`` equal steps: per step the jobs that
    ended in it by final state (``ended``: ``{state: [counts]}``), and at each step's end
    how many were queued (created, not started or ended) and running (started, not ended).
    Read in one pass over the jobs that overlap the window."""

    def fn(conn: Conn) -> JsonObject:
        step = (until - since) / buckets
        ends = [since + step * (i + 1) for i in range(buckets)]
        ended: dict[str, list[int]] = {}
        queued = [0] * buckets
        running = [0] * buckets
        rows = conn.execute(
            "SELECT created_at, started_at, ended_at, state FROM jobs WHERE kind = 'rscript'"
            " AND created_at <= ? AND (ended_at IS NULL OR ended_at >= ?)",
            (until, since),
        )
        for created, started, finished, state in rows:
            if finished is not None and since < finished <= until:
                i = min(buckets - 1, int((finished - since) / step))
                ended.setdefault(str(state), [0] * buckets)[i] += 1
            for i, t in enumerate(ends):
                if created <= t and (finished is None or finished > t):
                    if started is not None and started <= t:
                        running[i] += 1
                    else:
                        queued[i] += 1
        return {
            "since": since,
            "until": until,
            "step": step,
            "ended": {k: list(v) for k, v in sorted(ended.items())},
            "queued": list(queued),
            "running": list(running),
        }

    return fn
