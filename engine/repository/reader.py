"""Read-only connections, used on worker threads so that reads never block the trio loop.

Each ``read(fn)`` borrows an idle connection (opening one when none is free, at most ``size`` at
once), runs ``fn(conn)`` inside one read transaction on a worker thread, so ``fn`` sees a single
consistent snapshot of everything committed before it started, and gives the connection back.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import trio

from wfe.engine.repository.errors import RepositoryClosed
from wfe.engine.repository.events import Event

T = TypeVar("T")

BUSY_TIMEOUT_MS = 5000


def connect_read_only(path: Path) -> sqlite3.Connection:
    """Open ``path`` read-only (writes raise ``sqlite3.OperationalError``)."""
    uri = f"{path.resolve().as_uri()}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS:d}")
    conn.execute("PRAGMA query_only = ON")
    return conn


class ReaderPool:
    """A bounded pool of read-only connections to one database file."""

    def __init__(self, path: Path, *, size: int = 4, inline: bool = False) -> None:
        if size < 1:
            raise ValueError(f"reader pool size must be at least 1, not {size}")
        self._path = path
        self._inline = inline  # read on the trio thread (tests on a MockClock, simulation)
        self._limiter = trio.CapacityLimiter(size)
        self._idle: list[sqlite3.Connection] = []
        self._closed = False
        self._lock = threading.Lock()  # guards _idle and _closed between threads

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` on a worker thread in one read transaction; return its result."""
        if self._closed:
            raise RepositoryClosed("repository is closed")
        if self._inline:
            await trio.lowlevel.checkpoint()
            return self._call(fn)
        return await trio.to_thread.run_sync(self._call, fn, limiter=self._limiter)

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = connect_read_only(self._path)
        try:
            conn.execute("BEGIN")
            try:
                return fn(conn)
            finally:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
        finally:
            with self._lock:
                keep = not self._closed
                if keep:
                    self._idle.append(conn)
            if not keep:
                conn.close()

    async def aclose(self) -> None:
        """Close the idle connections; connections in use close when their read ends."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        if idle:
            await trio.to_thread.run_sync(_close_all, idle)


def _close_all(conns: list[sqlite3.Connection]) -> None:
    for conn in conns:
        conn.close()


def events_since(conn: sqlite3.Connection, after_id: int, limit: int) -> list[Event]:
    """Return up to ``limit`` committed events with ``id > after_id``, oldest first."""
    rows = conn.execute(
        "SELECT id, at, kind, subject, data FROM events WHERE id > ? ORDER BY id LIMIT ?",
        (after_id, limit),
    ).fetchall()
    return [Event.from_row(row) for row in rows]


def find_events(
    *, after: int, limit: int, kind: str = "", subject: str | None = None
) -> Callable[[sqlite3.Connection], list[Event]]:
    """A read function: up to ``limit`` committed events with ``id > after`` whose kind starts
    with ``kind`` (every kind when empty) and, when given, whose subject is ``subject``."""

    def fn(conn: sqlite3.Connection) -> list[Event]:
        sql = (
            "SELECT id, at, kind, subject, data FROM events WHERE id > ? AND kind >= ? AND kind < ?"
        )
        params: list[int | str] = [after, kind, kind + "\U0010ffff"]
        if subject is not None:
            sql += " AND subject = ?"
            params.append(subject)
        rows = conn.execute(sql + " ORDER BY id LIMIT ?", (*params, limit)).fetchall()
        return [Event.from_row(r) for r in rows]

    return fn


def last_event_id(conn: sqlite3.Connection) -> int:
    """The id of the newest committed event (0 when there is none)."""
    return int(conn.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0])
