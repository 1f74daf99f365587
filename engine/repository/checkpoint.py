"""Checkpoints off the writer's path: the WAL is copied back into the database by another thread.

SQLite's automatic checkpoint runs inside the COMMIT that crosses its threshold, so every few
thousand changes one writer batch stalls for the copy and two fsyncs (measured here: up to
~30 ms, and ~10-20% of group-commit throughput). The writer connection therefore has
``wal_autocheckpoint=0``, and this task runs ``PRAGMA wal_checkpoint(PASSIVE)`` on its own
connection, on a worker thread, at most once per ``interval`` seconds and only after commits.
PASSIVE never blocks the writer or the readers; SQLite's C code releases the GIL while it copies,
so the work lands on another core. If a checkpoint fails it is logged and the WAL simply grows
until the next one; closing the last connection checkpoints and removes the WAL anyway.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import trio

from engine.repository.reader import BUSY_TIMEOUT_MS

logger = logging.getLogger("engine.repository")


class Checkpointer:
    """Runs PASSIVE checkpoints after commits, on its own connection and thread."""

    def __init__(self, path: Path, *, synchronous: str, interval: float) -> None:
        if interval < 0:
            raise ValueError(f"checkpoint interval must be >= 0 seconds, not {interval}")
        self._path = path
        self._synchronous = synchronous
        self._interval = interval
        self._dirty = trio.Event()
        self._limiter = trio.CapacityLimiter(1)
        self._conn: sqlite3.Connection | None = None
        self._scope = trio.CancelScope()
        self._stopped = trio.Event()
        self._done = trio.Event()  # set (and replaced) after each checkpoint run
        self.checkpoints = 0  # completed checkpoint runs
        self.wal_frames = 0  # frames in the WAL at the last run (pages written since its reset)

    def committed(self) -> None:
        """Tell the checkpointer that a transaction committed (called by the writer)."""
        self._dirty.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Checkpoint after commits, at most once per interval, until ``aclose``."""
        try:
            with self._scope:
                task_status.started()
                while True:
                    await self._dirty.wait()
                    self._dirty = trio.Event()
                    try:
                        await trio.to_thread.run_sync(self._checkpoint, limiter=self._limiter)
                    except sqlite3.Error as exc:
                        logger.warning("WAL checkpoint failed, will retry: %s", exc)
                    done, self._done = self._done, trio.Event()
                    done.set()
                    await trio.sleep(self._interval)
        finally:
            with trio.CancelScope(shield=True):
                conn, self._conn = self._conn, None
                if conn is not None:
                    await trio.to_thread.run_sync(conn.close, limiter=self._limiter)
                self._stopped.set()

    def _checkpoint(self) -> None:
        if self._conn is None:
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS:d}")
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            self._conn = conn
        busy, frames, _copied = self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        self.checkpoints += 1
        self.wal_frames = frames

    async def wait_checkpointed(self) -> None:
        """Return after the next checkpoint run ends (for tests and maintenance)."""
        await self._done.wait()

    async def aclose(self) -> None:
        """Stop (a checkpoint in progress finishes first) and close the connection."""
        self._scope.cancel()
        await self._stopped.wait()
