"""The repository: every object and state change of the engine, in one SQLite file.

``open_repository`` opens (or creates) the file, applies the schema migrations, and starts the one
writer task. Writes go through ``write``/``write_nowait`` and are group-committed by that task;
reads run on read-only connections on worker threads; ``subscribe`` streams committed events.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import attrs
import outcome
import trio

from wfe.engine.repository.checkpoint import Checkpointer, WalLimit
from wfe.engine.repository.errors import RepositoryError
from wfe.engine.repository.events import Event, EventHub, Subscription
from wfe.engine.repository.reader import BUSY_TIMEOUT_MS, ReaderPool, events_since
from wfe.engine.repository.schema import migrate
from wfe.engine.repository.space import MB, DiskTrouble
from wfe.engine.repository.writer import Command, Tx, Writer

T = TypeVar("T")

SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")

#: Queued writes past which ``room`` makes a producer wait. 256 output chunks of at most 64 KiB
#: are 16 MiB queued (and as much again in the batch being committed): about 50 ms of the
#: writer's work at the ~300 MB/s it stores such chunks on the 2-core dev machine, batches big
#: enough to amortise a commit, and above the queue a burst of small writes reaches in the
#: dispatch benchmarks, so only a flood of output is held back (bench/output_flood.py).
ROOM_LIMIT = 256

#: The WAL file's default limit in MB (``[repository] wal_max_mb``): see ``checkpoint.WalLimit``.
WAL_MAX_MB = 64


@attrs.frozen(kw_only=True)
class RepositoryStatistics:
    """A snapshot of the repository's activity, for the console and benchmarks."""

    commits: int  # transactions committed
    ops: int  # write ops run
    failed_ops: int  # ops that raised or whose transaction failed
    ops_per_commit_last: int  # ops in the most recent transaction
    ops_per_commit_avg: float
    max_ops_per_commit: int
    queue_depth: int  # ops waiting for the writer
    subscribers: int
    checkpoints: int  # WAL checkpoints run by the background checkpointer
    wal_frames: int  # WAL size in pages at the last checkpoint
    wal_bytes: int  # WAL file size after the last commit (0: no WAL limit, inline mode)
    wal_peak_bytes: int  # the largest WAL file size seen after a commit
    wal_truncations: int  # TRUNCATE checkpoints run because the WAL passed half its limit
    wal_pause_max: float  # seconds: the longest of them (a pause of the writer, not the loop)
    disk_full: bool  # writes are held because the disk refused them; new work is refused
    held_retries: int  # tries of batches the disk refused


class Repository:
    """Handle on an open repository; get one from ``open_repository``.

    ``write(op)`` runs ``op(tx)`` on the writer thread inside the group transaction and its own
    SAVEPOINT: if ``op`` raises, only its changes are rolled back and the exception is re-raised
    to this caller; the other ops of the batch commit. It returns ``op``'s result after COMMIT.
    Ops must be quick, must not block or await, and must not touch ``tx`` after returning.
    If the disk refuses the transaction (full, or an I/O error), nothing is failed: the batch
    is kept and tried again until it commits, and the writes queued behind it wait (``write``
    just takes longer); meanwhile ``trouble`` says so and ``admit_new_work`` refuses. If the
    transaction fails for another reason, every op of the batch gets a ``RepositoryError`` and
    nothing of it is committed. After close, writes raise ``RepositoryClosed``.
    """

    def __init__(
        self,
        path: Path,
        writer: Writer,
        readers: ReaderPool,
        hub: EventHub,
        checkpointer: Checkpointer,
    ) -> None:
        self.path = path
        self._checkpointer = checkpointer
        self._writer = writer
        self._readers = readers
        self._hub = hub

    @property
    def trouble(self) -> DiskTrouble | None:
        """Why writes are held right now (the disk refused them), or None when they commit."""
        return self._writer.trouble

    @property
    def writable(self) -> bool:
        """Whether writes commit now (False while they are held for a full disk)."""
        return self._writer.trouble is None and self._writer.failure is None

    def admit_new_work(self) -> None:
        """Raise ``RepositoryFull`` while the disk refuses writes; else return at once.

        Call it before accepting new work (run, submit, catalog entries): new work would only
        queue more writes behind the held ones. Work already accepted is not refused: its
        writes wait and commit once space returns.
        """
        trouble = self._writer.trouble
        if trouble is not None:
            raise trouble.refusal()

    async def wait_trouble(self, *, present: bool) -> None:
        """Return once writes are held for the disk (``present=True``) or commit again."""
        await self._writer.wait_trouble(present=present)

    async def write(self, op: Callable[[Tx], T]) -> T:
        """Run ``op`` in the group transaction; return its result once committed.

        Cancelled while still queued, the op never runs; once the writer has taken it, the
        caller waits for the outcome and the cancellation is delivered afterwards.
        """
        command = Command(op, trio.lowlevel.current_task())
        self._writer.submit(command)
        result: T = await trio.lowlevel.wait_task_rescheduled(command.abort)
        return result

    def write_nowait(
        self,
        op: Callable[[Tx], T],
        *,
        then: Callable[[outcome.Outcome[T]], object] | None = None,
        weight: int = 1,
    ) -> None:
        """Queue ``op`` without waiting (output chunks...); ordered with ``write``.

        Without ``then`` an error of ``op`` is logged. With ``then``, ``then(outcome)`` is called
        on the trio thread once the batch's outcome is known (``outcome.Value`` after COMMIT,
        or the error, also ``RepositoryClosed`` when the writer stops first), like ``write``
        returning but without a task waiting; it must not block or await, and an exception
        it raises is logged. ``weight`` is how many small ops ``op`` counts as when the writer
        decides whether a batch is small enough for the trio thread (big output chunks are not).
        """
        self._writer.submit(Command(op, None, then, weight))

    async def wait_checkpointed(self) -> None:
        """Return after the next background checkpoint ends (for tests and maintenance)."""
        await self._checkpointer.wait_checkpointed()

    async def flush(self) -> None:
        """Return when everything written before this call is committed (or has failed)."""
        await self.write(_nothing)

    async def room(self, limit: int = ROOM_LIMIT) -> None:
        """Return once at most ``limit`` writes wait for the writer; at once if they do already.

        For a producer that calls ``write_nowait`` as fast as its input comes (an agent link's
        read loop: one queued write per output chunk): awaiting this after each input stops it
        reading while the repository is behind, so the queue and the memory it holds stay
        bounded and the sender is pushed back instead. It waits until the writer takes its next
        batch and the queue is back at or under ``limit``; when there is room it returns
        without a checkpoint, so it costs a comparison. After close it returns.
        """
        await self._writer.wait_room(limit)

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` on a read-only connection on a worker thread, in one snapshot.

        Sees everything whose ``write`` had returned before this call.
        """
        return await self._readers.read(fn)

    @asynccontextmanager
    async def subscribe(self, *, max_buffer: int = 1000) -> AsyncIterator[Subscription]:
        """Stream events committed from now on; see ``Subscription``.

        A subscriber that falls more than ``max_buffer`` events behind gets a ``Missed`` marker
        instead of the events that did not fit, and never slows the writer. To catch up from a
        known id without a gap: subscribe first, then ``events_since(known)``, then iterate,
        skipping events with an id you have already seen.
        """
        subscription = Subscription(max_buffer)
        self._hub.add(subscription)
        try:
            yield subscription
        finally:
            self._hub.remove(subscription)

    async def events_since(self, after_id: int, limit: int = 1000) -> list[Event]:
        """Return up to ``limit`` committed events with ``id > after_id``, oldest first."""
        return await self.read(lambda conn: events_since(conn, after_id, limit))

    def statistics(self) -> RepositoryStatistics:
        """Return counts of commits and ops so far, batch sizes and the current queue depth."""
        stats = self._writer.statistics()
        return RepositoryStatistics(
            commits=stats.commits,
            ops=stats.ops,
            failed_ops=stats.failed_ops,
            ops_per_commit_last=stats.last_batch,
            ops_per_commit_avg=stats.ops_per_commit,
            max_ops_per_commit=stats.max_batch,
            queue_depth=stats.queue_depth,
            subscribers=len(self._hub),
            checkpoints=self._checkpointer.checkpoints,
            wal_frames=self._checkpointer.wal_frames,
            wal_bytes=stats.wal_bytes,
            wal_peak_bytes=stats.wal_peak_bytes,
            wal_truncations=stats.wal_truncations,
            wal_pause_max=stats.wal_pause_max,
            disk_full=self._writer.trouble is not None,
            held_retries=stats.held_retries,
        )


def _nothing(tx: Tx) -> None:
    return None


def connect_writer(
    path: Path, synchronous: str = "NORMAL", *, journal_size_limit: int = WAL_MAX_MB * MB
) -> sqlite3.Connection:
    """Open (or create) the database for writing, set its PRAGMAs and migrate its schema.

    ``journal_size_limit`` (bytes) is what SQLite cuts the WAL file back to when it restarts it.

    Raises ``RepositoryError`` for a file that is not a database or a directory that does not
    exist, and ``SchemaTooNew`` for a database newer than this code.
    """
    mode = synchronous.upper()
    if mode not in SYNCHRONOUS_MODES:
        raise ValueError(
            f"synchronous must be one of {', '.join(SYNCHRONOUS_MODES)}, not {synchronous!r}"
        )
    try:
        conn = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, cached_statements=512
        )
    except sqlite3.Error as exc:
        raise RepositoryError(f"{path}: cannot open repository: {exc}") from exc
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS:d}")
        (journal,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
        if journal.lower() != "wal":
            raise RepositoryError(f"{path}: cannot switch to WAL journal mode (got {journal})")
        conn.execute(f"PRAGMA synchronous = {mode}")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute(f"PRAGMA journal_size_limit = {int(journal_size_limit):d}")
        migrate(conn)
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise RepositoryError(f"{path}: not a usable wfe repository: {exc}") from exc
    except BaseException:
        conn.close()
        raise
    return conn


def _connect(
    path: Path, synchronous: str, background_checkpoints: bool, wal_max: int
) -> sqlite3.Connection:
    conn = connect_writer(path, synchronous, journal_size_limit=wal_max)
    if background_checkpoints:
        conn.execute("PRAGMA wal_autocheckpoint = 0")  # the Checkpointer does it, off this thread
    return conn


@asynccontextmanager
async def open_repository(
    path: Path | str,
    *,
    max_batch: int = 5000,
    synchronous: str = "NORMAL",
    readers: int = 4,
    checkpoint_interval: float | None = 0.5,
    inline: bool = False,
    inline_max: int = 16,
    wal_max_mb: float | None = WAL_MAX_MB,
) -> AsyncIterator[Repository]:
    """Open or create the repository at ``path`` and run its writer until the block exits.

    ``synchronous``: ``NORMAL`` (default) survives a crash of the process at any moment; ``FULL``
    also survives power loss, at the cost of one fsync per transaction. ``max_batch`` bounds the
    ops per transaction; ``readers`` the read-only connections; ``checkpoint_interval`` is the
    least time between two background WAL checkpoints (see ``checkpoint``; ``None`` leaves them
    to SQLite, inside the writer's commits). On exit (also on
    error or cancellation) everything already queued is committed, subscriptions end, and the
    file is closed. An exception from the block is re-raised as is (not wrapped in an exception
    group). ``inline=True`` runs every database call on the trio thread instead of worker
    threads (and leaves checkpoints to SQLite): for tests on a ``MockClock`` (whose autojump
    would otherwise fire while a batch is on a thread) and for fast simulation. Otherwise a
    batch of at most ``inline_max`` ops runs on the trio thread (cheaper than the thread hops
    for a small commit that does not fsync) unless ``synchronous`` is FULL or EXTRA; larger
    batches run on the worker thread. ``inline_max=0`` sends every batch to the thread.
    ``wal_max_mb`` bounds the WAL file: past half of it the writer truncates it between two
    batches, on its worker thread (``None``: no bound; inline mode leaves it to SQLite's own
    checkpoints and ``journal_size_limit``).
    """
    if inline_max < 0:
        raise ValueError(f"inline_max must be at least 0, not {inline_max}")
    if wal_max_mb is not None and not wal_max_mb >= 1:
        raise ValueError(f"wal_max_mb must be at least 1, not {wal_max_mb}")
    path = Path(path)
    background = not inline and checkpoint_interval is not None
    wal_max = int((WAL_MAX_MB if wal_max_mb is None else wal_max_mb) * MB)
    if inline:
        conn = _connect(path, synchronous, background, wal_max)
    else:
        conn = await trio.to_thread.run_sync(_connect, path, synchronous, background, wal_max)
    hub = EventHub()
    lock = threading.Lock()  # one checkpoint at a time: the background one or the writer's
    checkpointer = Checkpointer(
        path, synchronous=synchronous.upper(), interval=checkpoint_interval or 0.0, lock=lock
    )
    bounded = not inline and wal_max_mb is not None
    on_commit = checkpointer.committed if background else _no_checkpoint
    fsyncs = synchronous.upper() in ("FULL", "EXTRA")  # a commit waits for the disk
    writer = Writer(
        conn,
        hub,
        max_batch=max_batch,
        inline=inline,
        inline_max=0 if fsyncs else inline_max,
        on_commit=on_commit,
        directory=path.resolve().parent,
        wal_limit=WalLimit(path, wal_max, lock) if bounded else None,
    )
    pool = ReaderPool(path, size=readers, inline=inline)
    repository = Repository(path, writer, pool, hub, checkpointer)
    body_error: BaseException | None = None
    try:
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(writer.run)
                if background:
                    await nursery.start(checkpointer.run)
                try:
                    yield repository
                finally:
                    with trio.CancelScope(shield=True):
                        await writer.aclose()
                        hub.close()
                        if background:
                            await checkpointer.aclose()
                        await pool.aclose()
        except BaseExceptionGroup as group:
            # The writer task never raises an Exception (it records it in writer.failure), so
            # a lone exception here is the block's own: hand it back unwrapped.
            if len(group.exceptions) != 1:
                raise
            body_error = group.exceptions[0]
        if body_error is not None:
            raise body_error
    finally:
        with trio.CancelScope(shield=True):
            if inline:
                conn.close()
            else:
                await trio.to_thread.run_sync(conn.close)
        del body_error
    if writer.failure is not None:
        raise RepositoryError(f"repository writer failed: {writer.failure}") from writer.failure


def _no_checkpoint() -> None:
    return None
