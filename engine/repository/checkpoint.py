"""Checkpoints off the writer's path: the WAL is copied back into the database by another thread.

SQLite's automatic checkpoint runs inside the COMMIT that crosses its threshold, so every few
thousand changes one writer batch stalls for the copy and two fsyncs (measured here: up to
~30 ms, and ~10-20% of group-commit throughput). The writer connection therefore has
``wal_autocheckpoint=0``, and this task runs ``PRAGMA wal_checkpoint(PASSIVE)`` on its own
connection, on a worker thread, at most once per ``interval`` seconds and only after commits.
PASSIVE never blocks the writer or the readers; SQLite's C code releases the GIL while it copies,
so the work lands on another core. If a checkpoint fails it is logged and the WAL simply grows
until the next one; closing the last connection checkpoints and removes the WAL anyway.

PASSIVE alone does not bound the WAL: SQLite starts writing the WAL from its beginning again
only once a checkpoint has copied every frame, and under a steady stream of commits new frames
arrive while it copies, so that moment never comes (measured: 519 MB of WAL after 10,000 jobs).
``WalLimit`` closes the gap: the writer, between two batches, runs a TRUNCATE checkpoint on its
own connection and worker thread when the WAL file passes half the limit. No commit can come in
while it runs (the writer is the only one), readers that started before it are waited for a
little (``TRUNCATE_BUSY_MS``; new readers read the database file, not the WAL), and the file is
cut to zero bytes. Both kinds of checkpoint take ``lock``: SQLite refuses a second checkpointer at once
(SQLITE_BUSY, without calling the busy handler), so the writer waits for a PASSIVE run to end.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from pathlib import Path

import trio

from wfe.engine.repository.reader import BUSY_TIMEOUT_MS

logger = logging.getLogger("wfe.engine.repository")


class Checkpointer:
    """Runs PASSIVE checkpoints after commits, on its own connection and thread."""

    def __init__(
        self,
        path: Path,
        *,
        synchronous: str,
        interval: float,
        lock: threading.Lock | None = None,
    ) -> None:
        if interval < 0:
            raise ValueError(f"checkpoint interval must be >= 0 seconds, not {interval}")
        self._path = path
        self._lock = threading.Lock() if lock is None else lock  # shared with WalLimit
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
        with self._lock:
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


#: How long (ms) a TRUNCATE checkpoint waits for readers that began before it, then gives up
#: until ``TRUNCATE_RETRY``: briefly while the WAL is under three quarters of its limit (a long
#: reader, a backup's snapshot, then costs the writer 10 ms a try instead of holding every
#: commit back), and up to 250 ms past that, where the limit matters more than a commit's wait.
TRUNCATE_BUSY_MS = (10, 250)
#: After a TRUNCATE checkpoint that could not finish (readers, full disk), the least wait in
#: seconds before the writer tries again.
TRUNCATE_RETRY = 0.5


class WalLimit:
    """Keeps the WAL file under ``max_bytes``: the writer asks ``due(now)`` after each commit
    and, when it says so, runs ``truncate(conn)`` on its worker thread.

    ``due`` costs one ``stat``; it is true once the file passes half the limit (the other half
    is room for the batches committed while a checkpoint waits its turn) and not within
    ``TRUNCATE_RETRY`` seconds (trio time) of an attempt that could not finish.
    """

    def __init__(self, path: Path, max_bytes: int, lock: threading.Lock) -> None:
        if max_bytes < 1:
            raise ValueError(f"WAL limit must be at least 1 byte, not {max_bytes}")
        self._wal = f"{path}-wal"
        self.max_bytes = max_bytes
        self._trigger = max_bytes // 2
        self._urgent = max_bytes * 3 // 4  # past this, wait longer for old readers
        self._lock = lock
        self._not_before = -float("inf")  # trio time before which no new attempt is made
        self.size = 0  # bytes, at the last look
        self.peak = 0  # the largest size seen after a commit
        self.truncations = 0  # TRUNCATE checkpoints that emptied the WAL
        self.incomplete = 0  # those that could not (readers stayed, or the disk was full)
        self.pause_max = 0.0  # seconds: the longest a truncation kept the writer from committing

    def due(self, now: float) -> bool:
        """Whether the WAL has passed half the limit and it is time to try (``now``: trio time)."""
        try:
            size = os.stat(self._wal).st_size
        except OSError:
            return False
        self.size = size
        if size > self.peak:
            self.peak = size
        return size > self._trigger and now >= self._not_before

    def truncate(self, conn: sqlite3.Connection, now: float) -> None:
        """Checkpoint everything and cut the WAL to zero bytes (worker thread, between batches).

        ``conn`` is the writer's connection with no transaction open; ``now`` the trio time
        it was called at. A checkpoint that cannot finish is logged and tried again
        ``TRUNCATE_RETRY`` seconds later; it never raises.
        """
        started = time.perf_counter()  # measures the writer's real pause, not workflow time
        with self._lock:
            (timeout,) = conn.execute("PRAGMA busy_timeout").fetchone()
            short, long = TRUNCATE_BUSY_MS
            patience = long if self.size > self._urgent else short
            conn.execute(f"PRAGMA busy_timeout = {patience:d}")
            try:
                busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            except sqlite3.Error as exc:
                busy, frames, copied = 1, -1, -1
                logger.warning("WAL checkpoint (TRUNCATE) failed, will retry: %s", exc)
            finally:
                conn.execute(f"PRAGMA busy_timeout = {int(timeout):d}")
        self.pause_max = max(self.pause_max, time.perf_counter() - started)
        if busy:
            self.incomplete += 1
            self._not_before = now + TRUNCATE_RETRY
            if frames >= 0:
                logger.info(
                    "WAL checkpoint (TRUNCATE) waited for readers: %d of %d frames copied",
                    copied,
                    frames,
                )
            return
        self.truncations += 1
        self.size = 0
