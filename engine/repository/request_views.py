"""Read functions that show requests to people (CLI, console): plain JSON-ready data."""

from __future__ import annotations

import json
from collections.abc import Callable

from wfe.engine.repository.requests import get_request
from wfe.engine.repository.rowtypes import Conn, JsonObject
from wfe.engine.requests.model import RequestRecord


def record_dict(record: RequestRecord) -> JsonObject:
    """A request record as JSON-ready data."""
    return {
        "id": record.id,
        "workflow": record.workflow,
        "user": record.user,
        "namespace": record.namespace,
        "state": record.state.value,
        "priority": record.priority,
        "approval_required": record.approval_required,
        "definition": record.definition,
        "params": dict(record.params),
        "scripts": {name: dict(entry) for name, entry in record.scripts.items()},
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "error": record.error,
        "failures": list(record.failures),
    }


def _input_counts(conn: Conn, rid: str) -> dict[str, JsonObject]:
    counts: dict[str, JsonObject] = {}
    for stage, state, n in conn.execute(
        "SELECT stage, state, COUNT(*) FROM stage_inputs WHERE request = ? GROUP BY stage, state",
        (rid,),
    ):
        counts.setdefault(stage, {})[state] = n
    return counts


def request_detail(rid: str, *, history: int = 200) -> Callable[[Conn], JsonObject]:
    """One request: its record, stages (with input counts), jobs and history.
    Raises ``UnknownRequest``."""

    def fn(conn: Conn) -> JsonObject:
        detail = record_dict(get_request(conn, rid))
        counts = _input_counts(conn, rid)
        detail["stages"] = [
            {"name": r[0], "state": r[1], "error": r[2], "inputs": counts.get(r[0], {})}
            for r in conn.execute(
                "SELECT stage, state, error FROM request_stages WHERE request = ? ORDER BY position",
                (rid,),
            )
        ]
        detail["jobs"] = [
            {
                "batch": r[0],
                "stage": r[1],
                "job": r[2],
                "inputs": len(json.loads(r[3])),
                "batch_state": r[4],
                "outcome": r[5],
                "stop": r[6],
                "state": r[7],
                "error": r[8] or r[9],
            }  # fmt: skip
            for r in conn.execute(
                "SELECT b.id, b.stage, b.job, b.inputs, b.state, b.outcome, b.stop, j.state, b.error, j.error"
                " FROM stage_batches b LEFT JOIN jobs j ON j.id = b.job WHERE b.request = ? ORDER BY b.id",
                (rid,),
            )
        ]
        (detail["products"],) = conn.execute(
            "SELECT COUNT(*) FROM products WHERE request = ?", (rid,)
        ).fetchone()
        (detail["stale_products"],) = conn.execute(
            "SELECT COUNT(*) FROM products WHERE request = ? AND stale IS NOT NULL", (rid,)
        ).fetchone()
        detail["history"] = [
            {"id": r[0], "at": r[1], "kind": r[2], **json.loads(r[3])}
            for r in conn.execute(
                "SELECT id, at, kind, data FROM events WHERE subject = ? AND kind LIKE 'request.%'"
                " ORDER BY id LIMIT ?",
                (rid, history),
            )
        ]
        return detail

    return fn


def request_list(
    *, limit: int = 50, state: str | None = None
) -> Callable[[Conn], list[JsonObject]]:
    """The most recent requests (optionally in one state), newest first, with progress."""

    def fn(conn: Conn) -> list[JsonObject]:
        where, args = ("WHERE state = ?", [state]) if state else ("", [])
        rows = conn.execute(
            f"SELECT id, workflow, user, namespace, state, priority, created_at, updated_at, error"
            f" FROM requests {where} ORDER BY created_at DESC, id DESC LIMIT ?",
            (*args, limit),
        ).fetchall()
        result = []
        for r in rows:
            done, total = conn.execute(
                "SELECT COALESCE(SUM(state IN ('processed', 'failed')), 0), COUNT(*) FROM stage_inputs"
                " WHERE request = ?",
                (r[0],),
            ).fetchone()
            keys = (
                "id",
                "workflow",
                "user",
                "namespace",
                "state",
                "priority",
                "created_at",
                "updated_at",
                "error",
            )
            result.append({**dict(zip(keys, r, strict=True)), "inputs_done": done, "inputs": total})
        return result

    return fn
