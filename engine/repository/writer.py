"""The repository's single writer: group commit of queued operations on one connection.

Theory of operation. A caller wraps its op in a ``Command``, puts it on an unbounded trio memory
channel and parks (``write``) or walks away (``write_nowait``). The writer task takes the first
command, drains whatever else is queued (up to ``max_batch``) and runs the whole batch on a worker
thread inside ONE transaction::

    BEGIN IMMEDIATE
      SAVEPOINT op; <op 1>; RELEASE op        -- or ROLLBACK TO op: only op 1 is undone
      SAVEPOINT op; <op 2>; RELEASE op
      ...
      INSERT INTO events ...                  -- what the surviving ops emitted, in one executemany
    COMMIT

Back on the trio thread it reschedules every parked caller with its op's outcome and hands the
committed events to the subscribers. One commit (one fsync, or none under ``synchronous=NORMAL`` in
WAL) covers the batch, so the cost per op is the op's own SQL plus a few microseconds. Nothing in
the hot path awaits except the one thread hop per batch; the writer never awaits a subscriber.

Small batches skip the thread: a batch of at most ``inline_max`` ops runs on the trio thread
itself (an op may weigh more than one: an output chunk counts one per 4 KiB, so a batch of
big chunks goes to the thread). Without an fsync a small commit costs ~0.1-0.3 ms of SQLite
work, less than the two thread hops around it (~0.1 ms of CPU and ~0.25 ms of latency on
this machine, plus the GIL passed back and forth while both threads run Python); bigger
batches still go to the thread so the loop keeps serving while they run. The repository sets ``inline_max`` to 0 (always the
thread) when commits fsync (``synchronous`` FULL or EXTRA).

Backpressure. The channel is unbounded so that ``write_nowait`` never blocks, but a producer
that queues as fast as its input arrives (an agent's output chunks) must not outrun the
writer for long: it calls ``wait_room(limit)`` between inputs, which returns at once while at
most ``limit`` commands are queued and otherwise waits until the writer takes a batch and the
queue is back under the limit. The queue then refills while that batch commits, so the writer
stays busy and at most about twice ``limit`` commands are held in memory (queued + in flight).

A full disk. A batch that fails because the disk refused a write (``SQLITE_FULL``, or an
``SQLITE_IOERR``; see ``space.py``), whether in an op or at COMMIT, is not failed: nothing of it
committed, so the writer keeps the whole batch, tells no caller anything, and tries it again on
its worker thread after a backoff (0.05 s doubling to 2 s) until it commits. Everything queued
meanwhile waits behind it, so no op is lost or reordered; the callers of ``write`` simply wait.
While it waits ``trouble`` says so (the repository refuses new work with it) and the first
commit that succeeds clears it. Closing while held tries once more, then fails what is left
with ``RepositoryFull`` (like a crash: nothing committed is lost).

A bounded WAL. After a commit the writer looks at the WAL file's size; past half its limit it
runs a TRUNCATE checkpoint on its own worker thread before taking the next batch (see
``checkpoint.WalLimit``): it is the only writer, so the checkpoint never races a commit.

A command is QUEUED until the writer takes it. A caller cancelled while its command is QUEUED gets
``Cancelled`` and the op never runs; once TAKEN the op runs and commits (or not) regardless, and the
caller is told the outcome before the cancellation is delivered, as trio's rules require.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
from pathlib import Path
from typing import Any, Generic, TypeVar

import attrs
import outcome
import trio

from wfe.engine.repository.checkpoint import WalLimit
from wfe.engine.repository.errors import RepositoryClosed, RepositoryError
from wfe.engine.repository.events import EventHub, EventRow
from wfe.engine.repository.space import SQLITE_FULL, DiskTrouble, free_bytes, storage_error

T = TypeVar("T")

logger = logging.getLogger("wfe.engine.repository")

_QUEUED, _TAKEN, _CANCELLED = 0, 1, 2

#: The last event id at open. Ids are contiguous: the writer numbers each batch's events after
#: the last one committed, keeps the count in memory, and never deletes an event.
_LAST_EVENT_ID = "SELECT coalesce(max(id), 0) FROM events"

#: Seconds between tries of a batch the disk refused: the first wait, and the longest.
RETRY_FIRST = 0.05
RETRY_MAX = 2.0
_INSERT_EVENT = "INSERT INTO events (id, at, kind, subject, data) VALUES (?, ?, ?, ?, ?)"
_ALLOCATE = (
    "INSERT INTO counters (name, value) VALUES (?, 1)"
    " ON CONFLICT (name) DO UPDATE SET value = value + 1 RETURNING value"
)


def _unserialisable(value: object) -> object:
    raise TypeError(f"event data is not JSON serialisable: {type(value).__name__}")


_encoder = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=_unserialisable
)
# The C encoder made once and reused: json.dumps builds a new one per call, which costs more
# than encoding a small dict (measured ~1.9 vs ~0.7 us per event). Same output, same errors.
_c_encoder = (
    None
    if c_make_encoder is None
    else c_make_encoder(
        None, _unserialisable, encode_basestring, None, ":", ",", False, False, False
    )
)


def dumps_data(data: Mapping[str, Any]) -> str:
    """Encode event data as compact strict JSON (no NaN/Infinity)."""
    value = data if type(data) is dict else dict(data)
    if _c_encoder is None:
        return _encoder.encode(value)
    return "".join(_c_encoder(value, 0))


class Tx:
    """The group transaction as one op sees it; valid only inside that op, on the writer thread.

    ``at`` is the batch's wall-clock time (unix seconds), the same value its events carry. Do not
    run ``BEGIN``, ``COMMIT``, ``ROLLBACK`` or ``SAVEPOINT`` through it.
    """

    __slots__ = ("_conn", "_events", "at")

    def __init__(self, conn: sqlite3.Connection, at: float) -> None:
        self._conn: sqlite3.Connection | None = conn
        self._events: list[tuple[str, str, str]] = []
        self.at = at

    def _live(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RepositoryError(
                "transaction used after its op returned: use tx only inside the op"
            )
        return self._conn

    def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> sqlite3.Cursor:
        """Run one statement in the group transaction."""
        return self._live().execute(sql, params)

    def executemany(self, sql: str, rows: Iterable[Any]) -> None:
        """Run one statement once per row of parameters."""
        self._live().executemany(sql, rows)

    def emit(self, kind: str, subject: str, data: Mapping[str, Any] | None = None) -> None:
        """Append an event, committed with this op's changes (dropped if the op fails).

        ``data`` must be JSON-serialisable (finite numbers only); otherwise this raises
        ``TypeError``/``ValueError`` inside the op. The row is inserted at the end of the batch,
        so the op itself cannot read it back.
        """
        self._live()
        self._events.append((kind, subject, "{}" if not data else dumps_data(data)))

    def allocate(self, counter: str) -> int:
        """Return the next value (1, 2, ...) of the named counter; rolled back with the op."""
        rows = self._live().execute(_ALLOCATE, (counter,)).fetchall()
        return int(rows[0][0])


@attrs.frozen(kw_only=True)
class WriterStatistics:
    """What the writer has done so far."""

    commits: int  # transactions committed
    ops: int  # ops run (committed or rolled back by their own error)
    failed_ops: int  # ops that raised (their own changes rolled back) or whose batch failed
    last_batch: int  # ops in the most recent batch
    max_batch: int  # ops in the largest batch so far
    ops_per_commit: float  # average batch size
    queue_depth: int  # commands waiting for the writer right now
    held_retries: int  # tries of batches the disk refused (each kept, and tried again)
    wal_bytes: int  # WAL file size after the last commit (0 without a WAL limit)
    wal_peak_bytes: int  # the largest WAL file size seen after a commit
    wal_truncations: int  # TRUNCATE checkpoints that emptied the WAL
    wal_pause_max: float  # seconds: the longest such checkpoint (the writer waits, not the loop)


class Command(Generic[T]):
    """One op on its way to the writer; ``task`` is the parked caller (None: fire-and-forget),
    ``then`` a function to call with the outcome instead (on the trio thread)."""

    __slots__ = ("op", "task", "then", "state", "result", "weight")

    def __init__(
        self,
        op: Callable[[Tx], T],
        task: trio.lowlevel.Task | None,
        then: Callable[[outcome.Outcome[T]], object] | None = None,
        weight: int = 1,
    ) -> None:
        self.op = op
        self.task = task
        self.then = then
        self.weight = weight  # how many small ops it counts as against ``inline_max``
        self.state = _QUEUED
        self.result: outcome.Outcome[T] | None = None

    def abort(self, _: Any) -> trio.lowlevel.Abort:
        """``wait_task_rescheduled`` abort hook: a command not yet taken is withdrawn."""
        if self.state == _QUEUED:
            self.state = _CANCELLED
            return trio.lowlevel.Abort.SUCCEEDED
        return trio.lowlevel.Abort.FAILED


class Writer:
    """Owns the write connection; the only code that writes the database."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        hub: EventHub,
        *,
        max_batch: int,
        inline: bool = False,
        inline_max: int = 0,
        on_commit: Callable[[], None] = lambda: None,
        directory: Path | None = None,
        wal_limit: WalLimit | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        if inline_max < 0:
            raise ValueError(f"inline_max must be at least 0, not {inline_max}")
        self._conn = conn
        self._control = conn.cursor()
        self._hub = hub
        self._on_commit = on_commit
        self._max_batch = max_batch
        self._inline = inline  # run batches on the trio thread (tests on a MockClock, simulation)
        self._inline_max = inline_max  # batches of at most this many ops run on the trio thread
        self._send, self._receive = trio.open_memory_channel[Command[Any]](math.inf)
        self._limiter = trio.CapacityLimiter(1)
        self._stopped = trio.Event()
        self._depth = 0  # commands in the channel (taken ones not counted), read by wait_room
        self._room: trio.Event | None = None  # set when the writer takes commands, if awaited
        self.failure: Exception | None = None
        self._commits = self._ops = self._failed = self._last = self._largest = 0
        self._directory = directory  # where free space is measured when the disk is full
        self._wal_limit = wal_limit
        self._last_event: int | None = None  # id of the last committed event (read at first use)
        self.trouble: DiskTrouble | None = None  # set while a batch waits for the disk
        self._trouble_changed = trio.Event()  # set (and replaced) when trouble comes or goes
        self._refused: sqlite3.Error | None = None  # the storage error of the last try
        self._closing = trio.Event()  # aclose was called: a held batch gets one more try
        self._retries = 0

    # --- the callers' side -----------------------------------------------------------------

    def submit(self, command: Command[Any]) -> None:
        """Queue a command for the next batch; raises ``RepositoryClosed`` after close."""
        try:
            self._send.send_nowait(command)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            cause = f" (writer failed: {self.failure})" if self.failure else ""
            raise RepositoryClosed(f"repository is closed{cause}") from self.failure
        self._depth += 1

    async def wait_room(self, limit: int) -> None:
        """Return once at most ``limit`` commands are queued; see the module's Backpressure.

        Returns at once, without a checkpoint, when there is room already. After the writer
        has stopped the queue is empty, so this returns.
        """
        while self._depth > limit:
            if self._room is None:
                self._room = trio.Event()
            await self._room.wait()

    def _taken(self, count: int) -> None:
        """The writer took ``count`` commands off the channel: wake those waiting for room."""
        self._depth -= count
        room, self._room = self._room, None
        if room is not None:
            room.set()

    def statistics(self) -> WriterStatistics:
        return WriterStatistics(
            commits=self._commits,
            ops=self._ops,
            failed_ops=self._failed,
            last_batch=self._last,
            max_batch=self._largest,
            ops_per_commit=self._ops / self._commits if self._commits else 0.0,
            queue_depth=self._receive.statistics().current_buffer_used,
            held_retries=self._retries,
            wal_bytes=0 if self._wal_limit is None else self._wal_limit.size,
            wal_peak_bytes=0 if self._wal_limit is None else self._wal_limit.peak,
            wal_truncations=0 if self._wal_limit is None else self._wal_limit.truncations,
            wal_pause_max=0.0 if self._wal_limit is None else self._wal_limit.pause_max,
        )

    async def aclose(self) -> None:
        """Stop taking commands, commit everything already queued, and wait for the writer.

        If the disk is full, what cannot be committed after one more try is failed with
        ``RepositoryFull`` (nothing committed is lost).
        """
        self._send.close()
        self._closing.set()
        await self._stopped.wait()

    # --- the writer task -------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The writer task: runs until ``aclose``; only a ``BaseException`` escapes it."""
        batch: list[Command[Any]] = []
        stopped_by: BaseException | None = None
        # Shielded: a batch in flight always finishes and its callers always hear the outcome.
        with trio.CancelScope(shield=True):
            task_status.started()
            try:
                async for first in self._receive:
                    batch = self._take(first)
                    if batch:
                        rows = await self._commit(batch)
                        self._finish(batch, rows)
                        wal = self._wal_limit
                        if wal is not None and rows is not _NOT_COMMITTED:
                            if wal.due(trio.current_time()):
                                await trio.to_thread.run_sync(
                                    wal.truncate,
                                    self._conn,
                                    trio.current_time(),
                                    limiter=self._limiter,
                                )
                    batch = []
            except Exception as exc:
                logger.exception("repository writer failed; no more writes are possible")
                self.failure = stopped_by = exc
            except BaseException as exc:
                stopped_by = exc
                raise
            finally:
                self._send.close()
                self._abandon(batch, stopped_by)
                self._stopped.set()

    async def _commit(self, batch: list[Command[Any]]) -> list[EventRow]:
        """Run ``batch`` until it commits or fails for its own reasons; see "A full disk"."""
        delay = RETRY_FIRST
        while True:
            if self._inline:
                await trio.lowlevel.checkpoint()
                rows = self._apply(batch)
            elif (
                self.trouble is None
                and len(batch) <= self._inline_max
                and sum(c.weight for c in batch) <= self._inline_max
            ):
                rows = self._apply(batch)
            else:
                rows = await trio.to_thread.run_sync(self._apply, batch, limiter=self._limiter)
            if rows is not _HELD:
                if self.trouble is not None:
                    logger.warning(
                        "repository writes again after %.1f s: %d held writes committed",
                        trio.current_time() - self.trouble.since,
                        len(batch),
                    )
                    self._set_trouble(None)
                return rows
            self._held(batch)
            if self._closing.is_set():  # closing: this was the last try
                refusal = self.trouble.refusal() if self.trouble else RepositoryError("held")
                for command in batch:
                    command.result = outcome.Error(refusal)
                return _NOT_COMMITTED
            with trio.move_on_after(delay):
                await self._closing.wait()
            delay = min(delay * 2, RETRY_MAX)

    def _held(self, batch: list[Command[Any]]) -> None:
        """The disk refused ``batch``: note it (it is tried again, nothing is failed)."""
        error = self._refused
        assert error is not None, "a held batch has its storage error"
        self._retries += 1
        directory = self._directory
        free = None if directory is None else free_bytes(directory)
        code = getattr(error, "sqlite_errorcode", 0) & 0xFF
        before = self.trouble
        trouble = DiskTrouble(
            directory=directory or Path("."),
            free=free,
            full=code == SQLITE_FULL,
            error=str(error),
            held_ops=len(batch) + self._depth,
            since=trio.current_time() if before is None else before.since,
        )
        self._set_trouble(trouble)
        if before is None:
            logger.error(
                "%s (%d writes held, tried again until they commit): %s",
                trouble.message,
                trouble.held_ops,
                error,
            )

    def _set_trouble(self, trouble: DiskTrouble | None) -> None:
        changed = (trouble is None) != (self.trouble is None)
        self.trouble = trouble
        if changed:
            self._trouble_changed.set()
            self._trouble_changed = trio.Event()

    async def wait_trouble(self, *, present: bool) -> None:
        """Return once writes are held for the disk (``present``) or commit again (not)."""
        while (self.trouble is not None) != present:
            await self._trouble_changed.wait()

    def _take(self, first: Command[Any]) -> list[Command[Any]]:
        batch: list[Command[Any]] = []
        if first.state == _QUEUED:
            first.state = _TAKEN
            batch.append(first)
        receive = self._receive.receive_nowait
        limit = self._max_batch
        taken = 1  # first
        while len(batch) < limit:
            try:
                command = receive()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            if command.state == _QUEUED:
                command.state = _TAKEN
                batch.append(command)
            taken += 1
        self._taken(taken)
        return batch

    def _finish(self, batch: list[Command[Any]], rows: list[EventRow]) -> None:
        reschedule = trio.lowlevel.reschedule
        committed = rows is not _NOT_COMMITTED
        self._ops += len(batch)
        self._last = len(batch)
        self._largest = max(self._largest, len(batch))
        if committed:
            self._commits += 1  # before anyone hears of it, so that they see it counted
        failed = 0
        for command in batch:
            result = command.result
            assert result is not None, "every op of a finished batch has a result"
            if type(result) is not outcome.Value:
                failed += 1
                if (
                    command.task is None
                    and command.then is None
                    and isinstance(result, outcome.Error)
                ):
                    exc = result.error
                    logger.error("write_nowait op %r failed: %s", command.op, exc, exc_info=exc)
            task = command.task
            if task is not None:
                command.task = None  # told: _abandon must not reschedule it again
                reschedule(task, result)
            elif command.then is not None:
                _call_then(command, result)
        self._failed += failed
        if committed:
            self._on_commit()
            self._hub.publish(rows)

    def _abandon(self, batch: list[Command[Any]], reason: BaseException | None) -> None:
        """Tell every caller still parked: the in-flight batch's and those still queued."""
        pending = list(batch)
        while True:
            try:
                command = self._receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            if command.state == _QUEUED:
                command.state = _TAKEN
                pending.append(command)
        self._taken(self._depth)  # the queue is empty for good: no one waits for room
        for command in pending:
            task, command.task = command.task, None
            if task is None and command.then is None:
                continue
            result = command.result  # set only when the batch's outcome is known (committed)
            if result is None:
                error = RepositoryClosed(f"repository writer stopped before committing: {reason!r}")
                error.__cause__ = reason
                result = outcome.Error(error)
            if task is not None:
                trio.lowlevel.reschedule(task, result)
            else:
                _call_then(command, result)

    # --- on the worker thread --------------------------------------------------------------

    def _apply(self, batch: list[Command[Any]]) -> list[EventRow]:
        """Run one batch as one transaction; set each command's result; return committed events.

        Returns ``_NOT_COMMITTED`` when the transaction was rolled back (every result is then
        an error), and ``_HELD`` when the disk refused it (nothing committed, every result
        None, the error in ``_refused``: the batch is to be tried again). If it raises,
        nothing was committed and every result is cleared to None.
        """
        try:
            return self._transaction(batch)
        except BaseException:
            for command in batch:
                command.result = None
            raise

    def _transaction(self, batch: list[Command[Any]]) -> list[EventRow]:
        conn = self._conn
        control = self._control  # one reused cursor for BEGIN/SAVEPOINT/RELEASE/COMMIT
        at = time.time()  # wall-clock
        emitted: list[tuple[str, str, str]] = []
        single = len(batch) == 1
        control.execute("BEGIN IMMEDIATE")
        try:
            for command in batch:
                tx = Tx(conn, at)
                if not single:
                    control.execute("SAVEPOINT op")
                try:
                    command.result = outcome.Value(command.op(tx))
                except Exception as exc:
                    command.result = outcome.Error(exc)
                    if storage_error(exc) is not None:  # not the op's fault: hold the batch
                        raise
                tx._conn = None
                if not conn.in_transaction:
                    # SQLite rolled the whole transaction back (disk full, I/O error...), or the
                    # op ran COMMIT/ROLLBACK itself: the batch's earlier ops are gone too.
                    raise _ended_transaction(command)
                if type(command.result) is outcome.Value:
                    if not single:
                        control.execute("RELEASE op")
                    if tx._events:
                        emitted.extend(tx._events)
                elif single:
                    control.execute("ROLLBACK")
                    return _NOT_COMMITTED
                else:
                    control.execute("ROLLBACK TO op")
                    control.execute("RELEASE op")
            rows: list[EventRow] = []
            if emitted:
                last = self._last_event
                if last is None:
                    (last,) = conn.execute(_LAST_EVENT_ID).fetchone()
                rows = [(last + n, at, k, s, d) for n, (k, s, d) in enumerate(emitted, 1)]
                conn.executemany(_INSERT_EVENT, rows)
            control.execute("COMMIT")
            if rows:
                self._last_event = rows[-1][0]
            return rows
        except Exception as exc:
            if conn.in_transaction:
                control.execute("ROLLBACK")
            refused = storage_error(exc)
            if refused is not None:
                self._refused = refused
                for command in batch:
                    command.result = None
                return _HELD
            for command in batch:
                error = RepositoryError(f"group transaction failed, nothing committed: {exc}")
                error.__cause__ = exc
                command.result = outcome.Error(error)
            return _NOT_COMMITTED
        except BaseException:  # KeyboardInterrupt and the like: roll back, the writer stops
            if conn.in_transaction:
                control.execute("ROLLBACK")
            raise


def _call_then(command: Command[Any], result: outcome.Outcome[Any]) -> None:
    then, command.then = command.then, None  # told once
    assert then is not None
    try:
        then(result)
    except Exception:
        logger.exception("the function called after op %r failed", command.op)


def _ended_transaction(command: Command[Any]) -> RepositoryError:
    if isinstance(command.result, outcome.Error):
        cause = command.result.error
        error = RepositoryError(f"SQLite rolled back the whole transaction after: {cause}")
        error.__cause__ = cause
        return error
    return RepositoryError(
        f"op {command.op!r} ended the group transaction: ops must not COMMIT or ROLLBACK"
    )


#: Returned by ``_apply`` when the batch committed nothing (identity-compared).
_NOT_COMMITTED: list[EventRow] = []
#: Returned by ``_apply`` when the disk refused the batch: it is to be tried again.
_HELD: list[EventRow] = []
