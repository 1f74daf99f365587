"""The ``replicas`` table: where copies of a catalog entry are, by storage element (RSE).

A catalog entry (an absolute path the engine hashed) may have replicas: one per storage
element name, each with a location (a path or a URL) that a job at a site near that storage
reads instead of the path. ``wfe catalog add --rse NAME`` records the path itself as a
replica at NAME; ``wfe catalog replica add|ls|rm`` manage the rest. Each change emits
``catalog.replica`` in the same transaction. Which replica a job gets is decided at dispatch
(``wfe.engine.dispatch.locality``); the attempt records it (``attempts.replicas``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence

import attrs

from wfe.engine.repository.catalog import NewEntry, add_entries
from wfe.engine.repository.rowtypes import Conn, JsonObject, JsonValue
from wfe.engine.repository.writer import Tx

__all__ = [
    "SCHEMA",
    "Replica",
    "UnknownEntry",
    "add_replicas",
    "add_with_replica",
    "check_rse",
    "attempt_replicas",
    "list_replicas",
    "remove_replica",
    "replicas_of",
]

#: Migration: replicas of catalog entries, and the replicas each attempt was given (JSON: one
#: ``[rse, location]`` or null per input, in the order of its ``inputs``). Issue 16.
SCHEMA = """
CREATE TABLE replicas (path TEXT NOT NULL REFERENCES catalog (path) ON DELETE CASCADE,
  rse TEXT NOT NULL, location TEXT NOT NULL, added_at REAL NOT NULL, PRIMARY KEY (path, rse));
ALTER TABLE attempts ADD COLUMN replicas TEXT;
"""


class UnknownEntry(LookupError):
    """No catalog entry has this path."""


_RSE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")


def check_rse(name: object) -> str:
    """A storage element's name as given; ``ValueError`` (one line) for a bad one."""
    if not isinstance(name, str) or not _RSE.fullmatch(name):
        raise ValueError(
            f"storage element {name!r}: use letters, digits, '_', '.', ':' and '-' (at most 64)"
        )
    return name


@attrs.frozen(kw_only=True)
class Replica:
    """One copy of a catalog entry: its storage element and where it is there."""

    path: str  # the catalog entry's path
    rse: str  # the storage element's name
    location: str  # a path or URL on that storage element


def add_replicas(replicas: Sequence[Replica], *, by: str | None = None) -> Callable[[Tx], int]:
    """Write op: record (or move) replicas of existing catalog entries; returns how many.
    Raises ``UnknownEntry`` naming the first path the catalog lacks (nothing is stored)."""

    def op(tx: Tx) -> int:
        for r in replicas:
            if tx.execute("SELECT 1 FROM catalog WHERE path = ?", (r.path,)).fetchone() is None:
                raise UnknownEntry(f"{r.path}: not in the catalog (add it with `wfe catalog add`)")
        for r in replicas:
            tx.execute(
                "INSERT INTO replicas (path, rse, location, added_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (path, rse) DO UPDATE SET location = excluded.location",
                (r.path, r.rse, r.location, tx.at),
            )
            data: dict[str, JsonValue] = {"rse": r.rse, "location": r.location, "added": True}
            if by:
                data["by"] = by
            tx.emit("catalog.replica", r.path, data)
        return len(replicas)

    return op


def add_with_replica(
    entries: Sequence[NewEntry], rse: str, *, by: str | None = None
) -> Callable[[Tx], list[JsonObject]]:
    """Write op: ``add_entries`` and, in the same transaction, each entry's path as its
    replica at storage element ``rse`` (``wfe catalog add --rse``)."""
    add = add_entries(entries, by=by)

    def op(tx: Tx) -> list[JsonObject]:
        added = add(tx)
        add_replicas([Replica(path=e.path, rse=rse, location=e.path) for e in entries], by=by)(tx)
        return [{**e, "rse": rse} for e in added]

    return op


def remove_replica(path: str, rse: str, *, by: str | None = None) -> Callable[[Tx], bool]:
    """Write op: forget the replica of ``path`` at ``rse``; False if there was none."""

    def op(tx: Tx) -> bool:
        gone = tx.execute("DELETE FROM replicas WHERE path = ? AND rse = ?", (path, rse)).rowcount
        if gone:
            data: dict[str, JsonValue] = {"rse": rse, "added": False}
            if by:
                data["by"] = by
            tx.emit("catalog.replica", path, data)
        return bool(gone)

    return op


def list_replicas(path: str | None = None) -> Callable[[Conn], list[Replica]]:
    """Read: the replicas of ``path`` (of every entry when None), by path then RSE."""

    def fn(conn: Conn) -> list[Replica]:
        sql = "SELECT path, rse, location FROM replicas"
        rows = conn.execute(
            sql + (" WHERE path = ?" if path is not None else "") + " ORDER BY path, rse",
            (path,) if path is not None else (),
        ).fetchall()
        return [Replica(path=p, rse=r, location=loc) for p, r, loc in rows]

    return fn


def replicas_of(paths: Sequence[str]) -> Callable[[Conn], dict[str, list[tuple[str, str]]]]:
    """Read: ``path -> [(rse, location), ...]`` (by RSE) for the paths that have replicas."""

    def fn(conn: Conn) -> dict[str, list[tuple[str, str]]]:
        found: dict[str, list[tuple[str, str]]] = {}
        for start in range(0, len(paths), 500):
            chunk = list(paths[start : start + 500])
            marks = ", ".join("?" * len(chunk))
            for p, rse, loc in conn.execute(
                f"SELECT path, rse, location FROM replicas WHERE path IN ({marks})"
                " ORDER BY path, rse",
                chunk,
            ):
                found.setdefault(p, []).append((rse, loc))
        return found

    return fn


def attempt_replicas(job_id: str) -> Callable[[Conn], dict[int, JsonValue]]:
    """Read: ``attempt -> the replicas it was given`` for the job's attempts that had any."""

    def fn(conn: Conn) -> dict[int, JsonValue]:
        rows = conn.execute(
            "SELECT attempt, replicas FROM attempts WHERE job_id = ? AND replicas IS NOT NULL"
            " ORDER BY attempt",
            (job_id,),
        ).fetchall()
        return {a: json.loads(r) for a, r in rows}

    return fn
