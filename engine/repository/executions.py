"""The repository side of simulated executions (``wfe simulate``): write ops and reads.

An execution is one run of a definition's workflow action on a simulation clock. Its id is
``<workflow>-<user>-<NNNN>`` from the same counter as requests (``request:<workflow>:<user>``),
so an id names a request or an execution, never both. Its story is the events whose subject is
its id, each with the simulation time in its data: ``execution.started``, ``execution.state``
(the workflow's state changes), ``broadcast.<topic>`` (its messages, recorded by
``ctx.publish`` with the execution as subject) and ``execution.ended`` with
the performance figures, which the ``executions`` row keeps too.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from wfe.engine.repository.rowtypes import Db, JsonObject, Row
from wfe.engine.repository.writer import Tx
from wfe.protocols.request import request_id

if TYPE_CHECKING:
    from wfe.engine.definitions import Definition

#: The migration that makes the table (appended to ``schema.MIGRATIONS``): one row per
#: execution, its figures as JSON once it has ended.
SCHEMA = """
CREATE TABLE executions (
  id TEXT PRIMARY KEY, workflow TEXT NOT NULL, user TEXT NOT NULL, number INTEGER NOT NULL,
  definition TEXT NOT NULL REFERENCES definitions(sha256), namespace TEXT NOT NULL,
  action TEXT NOT NULL, job TEXT, mode TEXT NOT NULL CHECK (mode IN ('fast','realtime')),
  until REAL, params TEXT NOT NULL DEFAULT '{}', state TEXT NOT NULL, started_at REAL NOT NULL,
  ended_at REAL, error TEXT, figures TEXT, UNIQUE (workflow, user, number));
CREATE INDEX executions_state ON executions(state);
"""

#: States of an execution: running, then one of the three ends.
RUNNING = "running"
ENDS = ("completed", "failed", "cancelled")

_COLUMNS = (
    "id, workflow, user, number, definition, namespace, action, job, mode, until, params,"
    " state, started_at, ended_at, error, figures"
)


class UnknownExecution(LookupError):
    """No execution has that id."""


@attrs.frozen(kw_only=True)
class ExecutionRecord:
    """One row of ``executions``."""

    id: str
    workflow: str
    user: str
    number: int
    definition: str  # sha256 of the stored expanded definition
    namespace: str
    action: str  # the workflow action that ran
    job: str | None  # its root job
    mode: str  # "fast" or "realtime"
    until: float | None
    params: JsonObject
    state: str
    started_at: float
    ended_at: float | None
    error: str | None
    figures: JsonObject | None

    def as_dict(self) -> JsonObject:
        return attrs.asdict(self)


def _record(row: Row) -> ExecutionRecord:
    return ExecutionRecord(
        id=row[0],
        workflow=row[1],
        user=row[2],
        number=row[3],
        definition=row[4],
        namespace=row[5],
        action=row[6],
        job=row[7],
        mode=row[8],
        until=row[9],
        params=json.loads(row[10]),
        state=row[11],
        started_at=row[12],
        ended_at=row[13],
        error=row[14],
        figures=None if row[15] is None else json.loads(row[15]),
    )


def create_execution(
    d: Definition,
    *,
    user: str,
    action: str,
    mode: str,
    until: float | None,
    params: Mapping[str, Any],
    by: str | None,
) -> Callable[[Tx], ExecutionRecord]:
    """Store the definition (once), allocate the id and record the execution as running
    (``execution.started``, at simulation time 0)."""

    from wfe.engine.repository.requests import store_definition

    def op(tx: Tx) -> ExecutionRecord:
        store_definition(tx, d, {}, {})
        number = tx.allocate(f"request:{d.name}:{user}")
        eid = request_id(d.name, user, number)
        tx.execute(
            f"INSERT INTO executions ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, NULL, ?, ?, ?, ?, ?, NULL, NULL, NULL)",
            (eid, d.name, user, number, d.sha256, d.namespace, action, mode, until,
             json.dumps(dict(params)), RUNNING, tx.at),
        )  # fmt: skip
        tx.emit(
            "execution.started",
            eid,
            {"workflow": d.name, "user": user, "namespace": d.namespace, "action": action,
             "mode": mode, "until": until, "params": dict(params), "definition": d.sha256,
             "by": by, "sim_time": 0.0},
        )  # fmt: skip
        return get_execution(tx, eid)

    return op


def set_job(eid: str, job: str) -> Callable[[Tx], None]:
    """Record the root job the execution's workflow action runs as."""

    def op(tx: Tx) -> None:
        tx.execute("UPDATE executions SET job = ? WHERE id = ?", (job, eid))

    return op


def record_state(eid: str, state: str, substate: str, *, sim_time: float) -> Callable[[Tx], None]:
    """The workflow's state changed (``execution.state``)."""

    def op(tx: Tx) -> None:
        tx.emit(
            "execution.state", eid, {"state": state, "substate": substate, "sim_time": sim_time}
        )

    return op


def end_execution(
    eid: str, state: str, *, error: str | None, figures: JsonObject, sim_time: float
) -> Callable[[Tx], ExecutionRecord]:
    """Record the execution's end and its figures (``execution.ended``); an execution that
    has already ended is left as it is."""
    if state not in ENDS:
        raise ValueError(f"execution state {state!r}: expected one of {', '.join(ENDS)}")

    def op(tx: Tx) -> ExecutionRecord:
        changed = tx.execute(
            "UPDATE executions SET state = ?, ended_at = ?, error = ?, figures = ?"
            " WHERE id = ? AND state = ?",
            (state, tx.at, error, json.dumps(figures), eid, RUNNING),
        ).rowcount
        if changed:
            tx.emit(
                "execution.ended",
                eid,
                {"state": state, "error": error, "figures": figures, "sim_time": sim_time},
            )
        return get_execution(tx, eid)

    return op


def fail_unfinished(reason: str) -> Callable[[Tx], list[str]]:
    """After a restart: every execution still running fails with ``reason`` (its clock and
    followers were in the engine that stopped). Returns their root jobs."""

    def op(tx: Tx) -> list[str]:
        rows = tx.execute("SELECT id, job FROM executions WHERE state = ?", (RUNNING,)).fetchall()
        for eid, _ in rows:
            tx.execute(
                "UPDATE executions SET state = 'failed', ended_at = ?, error = ? WHERE id = ?",
                (tx.at, reason, eid),
            )
            tx.emit("execution.ended", eid, {"state": "failed", "error": reason})
        return [job for _, job in rows if job is not None]

    return op


def get_execution(db: Db, eid: str) -> ExecutionRecord:
    """The execution ``eid``; raises ``UnknownExecution``."""
    row = db.execute(f"SELECT {_COLUMNS} FROM executions WHERE id = ?", (eid,)).fetchone()
    if row is None:
        raise UnknownExecution(f"no execution {eid}")
    return _record(row)


def find_execution(eid: str) -> Callable[[Db], ExecutionRecord | None]:
    """The execution ``eid``, or None."""

    def fn(db: Db) -> ExecutionRecord | None:
        row = db.execute(f"SELECT {_COLUMNS} FROM executions WHERE id = ?", (eid,)).fetchone()
        return None if row is None else _record(row)

    return fn


def execution_story(eid: str, *, limit: int = 100_000) -> Callable[[Db], list[JsonObject]]:
    """The events of the execution ``eid`` in order: ``{id, at, kind, data}``."""

    def fn(db: Db) -> list[JsonObject]:
        rows = db.execute(
            "SELECT id, at, kind, data FROM events WHERE subject = ? ORDER BY id LIMIT ?",
            (eid, limit),
        ).fetchall()
        return [{"id": r[0], "at": r[1], "kind": r[2], "data": json.loads(r[3])} for r in rows]

    return fn
