"""The ``pilots`` table: every batch job a pilot factory submitted, and how it ended.

A pilot is recorded *before* it is submitted (state ``submitting``: commit before acting), then
gets its batch id (``pending``), may start (``running``) and ends once (``ended``, with the
batch system's end state, exit code and a reason). Each change emits one event in the same
transaction, subject ``pilot:<id>``: ``pilot.created``, ``pilot.submitted``, ``pilot.started``,
``pilot.ended``. Rules about what a factory may record are in ``wfe.engine.pilots.books``.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import attrs

from wfe.engine.repository.rowtypes import Conn, Db, JsonObject
from wfe.engine.repository.writer import Tx

#: The migration that adds the table (appended to ``schema.MIGRATIONS``).
SCHEMA = """
CREATE TABLE pilots (
  id TEXT PRIMARY KEY, system TEXT NOT NULL, factory TEXT NOT NULL, agent TEXT NOT NULL,
  batch_id TEXT, requirements TEXT NOT NULL DEFAULT '{}', resources TEXT NOT NULL DEFAULT '{}',
  state TEXT NOT NULL CHECK (state IN ('submitting','pending','running','ended')),
  created_at REAL NOT NULL, submitted_at REAL, started_at REAL, ended_at REAL,
  end_state TEXT, exit_code INTEGER, reason TEXT);
CREATE INDEX pilots_live ON pilots(state) WHERE state != 'ended';
"""

LIVE_STATES = ("submitting", "pending", "running")
_COLUMNS = (
    "id, system, factory, agent, batch_id, requirements, resources, state, created_at,"
    " submitted_at, started_at, ended_at, end_state, exit_code, reason"
)


@attrs.frozen(kw_only=True)
class PilotRow:
    """One pilot as the table holds it."""

    id: str
    system: str  # the batch system: "slurm"
    factory: str  # who submitted it (the console token's name)
    agent: str  # the agent name (XMPP JID) its payload joins as
    batch_id: str | None
    requirements: JsonObject  # the set of job requirements it was submitted for
    resources: JsonObject  # what it asked the batch system for: cpus, memory, walltime, site
    state: str
    created_at: float
    submitted_at: float | None = None
    started_at: float | None = None
    ended_at: float | None = None
    end_state: str | None = None  # the batch system's: COMPLETED, CANCELLED, TIMEOUT, ...
    exit_code: int | None = None
    reason: str | None = None

    def as_data(self) -> JsonObject:
        return attrs.asdict(self)


def _row(values: tuple[object, ...]) -> PilotRow:
    names = [n.strip() for n in _COLUMNS.split(",")]
    data = dict(zip(names, values, strict=True))
    data["requirements"] = json.loads(str(data["requirements"]))
    data["resources"] = json.loads(str(data["resources"]))
    return PilotRow(**data)  # type: ignore[arg-type]


def _get(conn: Db, pilot_id: str) -> PilotRow | None:
    found = conn.execute(f"SELECT {_COLUMNS} FROM pilots WHERE id = ?", (pilot_id,)).fetchone()
    return None if found is None else _row(tuple(found))


def create_pilot(
    *, system: str, factory: str, agent: str, requirements: JsonObject, resources: JsonObject
) -> Callable[[Tx], PilotRow]:
    """A write op that records a pilot about to be submitted; returns it (id ``pilot-NNNNNN``)."""

    def op(tx: Tx) -> PilotRow:
        pilot_id = f"pilot-{tx.allocate('pilots'):06d}"
        tx.execute(
            "INSERT INTO pilots (id, system, factory, agent, requirements, resources, state,"
            " created_at) VALUES (?, ?, ?, ?, ?, ?, 'submitting', ?)",
            (
                pilot_id,
                system,
                factory,
                agent,
                json.dumps(requirements, sort_keys=True),
                json.dumps(resources, sort_keys=True),
                tx.at,
            ),
        )
        data = {"system": system, "agent": agent, "factory": factory, "resources": resources}
        tx.emit("pilot.created", f"pilot:{pilot_id}", data)
        found = _get(tx, pilot_id)
        assert found is not None
        return found

    return op


def pilot_submitted(pilot_id: str, batch_id: str) -> Callable[[Tx], PilotRow | None]:
    """A write op: ``pilot_id`` was accepted by its batch system as ``batch_id`` (``pending``).
    Returns the row, or None (nothing written) when no such pilot waits to be submitted."""

    def op(tx: Tx) -> PilotRow | None:
        cursor = tx.execute(
            "UPDATE pilots SET state = 'pending', batch_id = ?, submitted_at = ?"
            " WHERE id = ? AND state = 'submitting'",
            (batch_id, tx.at, pilot_id),
        )
        if cursor.rowcount == 0:
            return None
        tx.emit("pilot.submitted", f"pilot:{pilot_id}", {"batch_id": batch_id})
        return _get(tx, pilot_id)

    return op


def pilot_started(pilot_id: str) -> Callable[[Tx], PilotRow | None]:
    """A write op: the batch system runs ``pilot_id`` now. None when it is not pending."""

    def op(tx: Tx) -> PilotRow | None:
        cursor = tx.execute(
            "UPDATE pilots SET state = 'running', started_at = ? WHERE id = ? AND state = 'pending'",
            (tx.at, pilot_id),
        )
        if cursor.rowcount == 0:
            return None
        tx.emit("pilot.started", f"pilot:{pilot_id}")
        return _get(tx, pilot_id)

    return op


def pilot_ended(
    pilot_id: str, *, end_state: str, exit_code: int | None, reason: str
) -> Callable[[Tx], PilotRow | None]:
    """A write op: ``pilot_id`` has ended. None (nothing written) when it had ended already."""

    def op(tx: Tx) -> PilotRow | None:
        cursor = tx.execute(
            "UPDATE pilots SET state = 'ended', ended_at = ?, end_state = ?, exit_code = ?,"
            " reason = ? WHERE id = ? AND state != 'ended'",
            (tx.at, end_state, exit_code, reason, pilot_id),
        )
        if cursor.rowcount == 0:
            return None
        data = {"end_state": end_state, "exit_code": exit_code, "reason": reason}
        tx.emit("pilot.ended", f"pilot:{pilot_id}", data)
        return _get(tx, pilot_id)

    return op


def get_pilot(pilot_id: str) -> Callable[[Conn], PilotRow | None]:
    """A read: one pilot, or None."""
    return lambda conn: _get(conn, pilot_id)


def list_pilots(*, live: bool, limit: int) -> Callable[[Conn], list[PilotRow]]:
    """A read: pilots newest first; with ``live``, only those not ended (oldest first)."""

    def fn(conn: Conn) -> list[PilotRow]:
        if live:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM pilots WHERE state != 'ended' ORDER BY created_at, id"
                " LIMIT ?",
                (limit,),
            )
        else:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM pilots ORDER BY created_at DESC, id DESC LIMIT ?",
                (limit,),
            )
        return [_row(tuple(r)) for r in rows]

    return fn
