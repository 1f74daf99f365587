"""The agent's spool: finished results and their output, kept until the engine acknowledges.

Layout of the spool directory:

* ``journal`` — an append-only log of records ``length (4) | crc32 (4) | kind (1) | payload``:
  ``B`` an attempt began (payload: its name), ``R`` it finished (payload: the
  ``JobFinished`` in its wire form), ``D`` the engine acknowledged it and it was dropped
  (payload: its name). Replaying the journal gives what is held and what was running.
  A ``R`` record is fsynced (``fdatasync``) *before* ``store`` returns, so before the
  result is sent: a result the engine may have seen is never lost by a crash of the agent.
  Results stored at about the same time share one fsync (group commit). ``B`` and ``D``
  records are not fsynced: after a crash of the operating system (not just of the agent) a
  running attempt may leave no trace (the engine then finds it neither running nor held and
  treats it as lost), and an acknowledged result may be held again (it is sent again and
  acknowledged again). A torn or damaged tail is ignored. The journal is rewritten with only
  what is live when it passes ``COMPACT_BYTES`` and at ``recover``.
* ``<job>-<attempt>.out`` — every ``OutputChunk`` of the attempt, as records of
  ``stream (1 byte) | seq (8) | length (4) | data``, created with the first chunk (an attempt
  without output has none). Fsynced before the attempt's ``R`` record is written.
* ``<job>-<attempt>.json`` — a result stored by an agent of an earlier version, which kept
  one file per result; still read, and removed when dropped.
* ``agent.lock`` — ``flock``-ed by the agent process that owns the spool.

``<job>`` is the job id percent-encoded (``urllib.parse.quote`` with no safe characters),
so no job id can name a path outside the spool. What is held is kept in memory: ``get`` and
``held`` read no file. Appends are small writes to the page cache made on the event loop;
fsyncs run in a worker thread.

One ``Spool`` object owns its directory (see ``locked``); a second object on the same
directory sees what was on disk when it was made, not what the first writes later.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import struct
import urllib.parse
import zlib
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import attrs
import trio

from wfe.agents.errors import SpoolError, SpoolLocked
from wfe.protocols import codec
from wfe.protocols.errors import DecodeError
from wfe.protocols.messages import AttemptRef, FinishReason, JobFinished, OutputChunk, Stream

log = logging.getLogger("wfe.agent.spool")

_RECORD = struct.Struct(">BQI")
_STREAM_CODES = {Stream.STDOUT: 0, Stream.STDERR: 1}
_CODE_STREAMS = {code: stream for stream, code in _STREAM_CODES.items()}

_ENTRY = struct.Struct(">II")  # journal record: length of kind + payload, crc32 of them
_BEGUN, _RESULT, _DROPPED = b"B", b"R", b"D"

LOCK_NAME = "agent.lock"
JOURNAL_NAME = "journal"

#: The journal is rewritten with only what is live once it grows past this many bytes.
COMPACT_BYTES = 4 * 1024 * 1024

#: A lone result's fsync runs on the event loop only while the last fsync took less than
#: this; after a slower one, fsyncs go to a worker thread until one is quick again.
INLINE_SYNC_SECONDS = 0.01


def attempt_name(job_id: str, attempt: int) -> str:
    """The file-name stem of an attempt: ``<quoted job id>-<attempt>``."""
    return f"{urllib.parse.quote(job_id, safe='')}-{attempt}"


def parse_name(stem: str) -> AttemptRef | None:
    job, sep, attempt = stem.rpartition("-")
    if not sep or not attempt.isdigit() or not job:
        return None
    return AttemptRef(job_id=urllib.parse.unquote(job), attempt=int(attempt))


def encode_record(chunk: OutputChunk) -> bytes:
    """The bytes of one output record."""
    return _RECORD.pack(_STREAM_CODES[chunk.stream], chunk.seq, len(chunk.data)) + chunk.data


def read_records(f: BinaryIO, ref: AttemptRef) -> Iterator[OutputChunk]:
    """Yield the output records of ``f`` in file order; a truncated last record is ignored.

    Raises ``SpoolError`` on a record with an unknown stream code.
    """
    while True:
        header = f.read(_RECORD.size)
        if len(header) < _RECORD.size:
            return
        code, seq, length = _RECORD.unpack(header)
        data = f.read(length)
        if len(data) < length:
            return
        stream = _CODE_STREAMS.get(code)
        if stream is None:
            raise SpoolError(f"{f.name}: unknown stream code {code} in record {seq}")
        yield OutputChunk(job_id=ref.job_id, attempt=ref.attempt, stream=stream, seq=seq, data=data)


def journal_entry(kind: bytes, payload: bytes) -> bytes:
    """The bytes of one journal record."""
    body = kind + payload
    return _ENTRY.pack(len(body), zlib.crc32(body)) + body


def read_journal(data: bytes) -> tuple[list[tuple[bytes, bytes]], int]:
    """The whole records at the start of ``data`` as ``(kind, payload)``, and where they end.

    Reading stops at the first record that is cut short or fails its checksum.
    """
    entries: list[tuple[bytes, bytes]] = []
    offset = 0
    while offset + _ENTRY.size <= len(data):
        length, crc = _ENTRY.unpack_from(data, offset)
        start = offset + _ENTRY.size
        body = data[start : start + length]
        if length == 0 or len(body) < length or zlib.crc32(body) != crc:
            break
        entries.append((body[:1], body[1:]))
        offset = start + length
    return entries, offset


@attrs.define
class Progress:
    """How much of a running attempt's output the spool holds."""

    chunks: int = 0
    sizes: dict[Stream, int] = attrs.Factory(lambda: {Stream.STDOUT: 0, Stream.STDERR: 0})


@attrs.define
class _State:
    """What a journal (and any result files of an earlier version) say."""

    held: dict[AttemptRef, JobFinished] = attrs.Factory(dict)
    begun: set[AttemptRef] = attrs.Factory(set)
    damaged: dict[AttemptRef, str] = attrs.Factory(dict)  # result files that do not decode
    legacy: set[AttemptRef] = attrs.Factory(set)  # held in <name>.json files
    outputs: set[AttemptRef] = attrs.Factory(set)  # have a .out file
    ignored: int = 0  # bytes after the last whole journal record
    size: int = 0  # bytes of whole records


@attrs.define(eq=False)
class _SyncRound:
    """One fdatasync of the journal and the results it makes durable."""

    results: dict[AttemptRef, JobFinished]
    done: trio.Event = attrs.Factory(trio.Event)
    error: OSError | None = None


class Spool:
    """A directory of finished results and their output; see the module docstring."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock_fd: int | None = None
        self._journal = self.path / JOURNAL_NAME
        state = self._load()
        self._held = state.held
        self._begun = state.begun
        self._damaged = state.damaged
        self._legacy = state.legacy
        self._outputs = state.outputs
        self._fd: int | None = None
        self._end = state.size  # where the next record goes
        self._unsynced: dict[AttemptRef, JobFinished] = {}  # appended, no fsync begun since
        self._round: _SyncRound | None = None  # the fsync under way
        self._sync_seconds = 0.0  # how long the last fsync took

    # --- the lock ------------------------------------------------------------------------

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold ``agent.lock`` for the duration. Raises ``SpoolLocked`` if another holds it."""
        path = self.path / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SpoolLocked(str(path)) from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            yield
        finally:
            os.close(fd)

    # --- results -------------------------------------------------------------------------

    def _json(self, job_id: str, attempt: int) -> Path:
        return self.path / f"{attempt_name(job_id, attempt)}.json"

    def _out(self, job_id: str, attempt: int) -> Path:
        return self.path / f"{attempt_name(job_id, attempt)}.out"

    async def store(self, finished: JobFinished, *, alone: bool = False) -> None:
        """Make ``finished`` and its output durable. Returns once both are on disk.

        ``alone`` says nothing else will want the event loop meanwhile (no other attempt
        runs): the fsync then runs on it, sparing a worker-thread hop, as long as the last
        one took less than ``INLINE_SYNC_SECONDS`` (a stalling disk must not stop heartbeats
        and cancels). Otherwise a worker thread fsyncs, and results stored meanwhile share
        the next fsync. Raises ``OSError`` if they could not be made durable; the result is
        then not held.
        """
        ref = AttemptRef(job_id=finished.job_id, attempt=finished.attempt)
        if finished.chunks and ref in self._outputs:  # the output is durable before the result
            await trio.to_thread.run_sync(_fsync_path, self._out(ref.job_id, ref.attempt))
        self._held.pop(ref, None)
        self._append(_RESULT, codec.encode(finished))
        self._unsynced[ref] = finished
        while ref not in self._held:
            current = self._round
            if current is not None:  # its fsync may not cover our record: wait, then look again
                await current.done.wait()
                if current.error is not None and ref in current.results:
                    raise OSError(f"could not make the spool durable: {current.error}")
                continue
            if self._end > COMPACT_BYTES:
                self._rewrite()  # durable as a whole, our record with it
                continue
            current = self._round = _SyncRound(results=self._unsynced)
            self._unsynced = {}
            try:
                began = trio.current_time()
                if alone and self._sync_seconds < INLINE_SYNC_SECONDS:
                    os.fdatasync(self._open())
                else:
                    await trio.to_thread.run_sync(os.fdatasync, self._open())
                self._sync_seconds = trio.current_time() - began
            except OSError as exc:
                current.error = exc
                raise
            else:
                self._commit(current.results)
            finally:
                self._round = None
                current.done.set()

    def _commit(self, results: dict[AttemptRef, JobFinished]) -> None:
        """Results whose records are durable: held from now on."""
        self._held.update(results)
        self._begun.difference_update(results)

    def get(self, job_id: str, attempt: int) -> JobFinished | None:
        """The stored result of an attempt, or None. Raises ``SpoolError`` if it is unreadable."""
        ref = AttemptRef(job_id=job_id, attempt=attempt)
        problem = self._damaged.get(ref)
        if problem is not None:
            raise SpoolError(problem)
        return self._held.get(ref)

    def held(self) -> list[AttemptRef]:
        """Every attempt whose result is stored and not yet dropped, sorted."""
        refs = [*self._held, *self._damaged]
        return sorted(refs, key=lambda r: (r.job_id, r.attempt))

    async def drop(self, job_id: str, attempt: int) -> bool:
        """Forget an attempt (the engine acknowledged it). Returns whether anything was held."""
        ref = AttemptRef(job_id=job_id, attempt=attempt)
        # The output goes first: a crash between the two leaves a plain held result, never an
        # output file without a result (which ``recover`` would take for a lost attempt).
        if ref in self._outputs:
            self._out(job_id, attempt).unlink(missing_ok=True)
            self._outputs.discard(ref)
        found = ref in self._held or ref in self._damaged
        if ref in self._legacy or ref in self._damaged:
            self._json(job_id, attempt).unlink(missing_ok=True)
            self._legacy.discard(ref)
            self._damaged.pop(ref, None)
        elif found or ref in self._begun:  # a begun attempt that never ran is forgotten too
            with contextlib.suppress(OSError):  # a full disk: recover reports it, harmlessly
                self._append(_DROPPED, attempt_name(job_id, attempt).encode())
        self._begun.discard(ref)
        self._held.pop(ref, None)
        self._compact_if_big()
        return found

    # --- output --------------------------------------------------------------------------

    async def begin_output(self, job_id: str, attempt: int) -> None:
        """Note that an attempt is about to run; its output starts empty.

        Not fsynced: ``store`` makes the output durable together with the result.
        """
        ref = AttemptRef(job_id=job_id, attempt=attempt)
        if ref in self._outputs:  # a rerun does not inherit the old output
            self._out(job_id, attempt).unlink(missing_ok=True)
            self._outputs.discard(ref)
        self._append(_BEGUN, attempt_name(job_id, attempt).encode())
        self._begun.add(ref)
        self._compact_if_big()

    async def append_output(self, chunk: OutputChunk) -> None:
        """Append one chunk to its attempt's output file (not fsynced until ``store``)."""
        ref = AttemptRef(job_id=chunk.job_id, attempt=chunk.attempt)
        with self._out(chunk.job_id, chunk.attempt).open("ab") as f:
            self._outputs.add(ref)
            f.write(encode_record(chunk))

    def open_output(self, job_id: str, attempt: int) -> OutputReader | None:
        """A reader over an attempt's stored output, or None when there is none."""
        try:
            f = self._out(job_id, attempt).open("rb")
        except FileNotFoundError:
            return None
        return OutputReader(f, AttemptRef(job_id=job_id, attempt=attempt))

    # --- after a restart -----------------------------------------------------------------

    async def recover(
        self, adoptable: Collection[AttemptRef] = ()
    ) -> tuple[list[JobFinished], dict[AttemptRef, Progress]]:
        """Close the books on attempts that were running when the agent last stopped.

        Call once at start-up, before anything runs. An attempt that began (or has output)
        but has no result either still runs under the agent's keeper (it is in
        ``adoptable``): it stays begun, its output file is cut back to its last whole record,
        and its ``Progress`` (chunks and bytes per stream stored so far) is returned for the
        agent to read on from there. Or nothing supervises it any more: it gets a stored
        ``JobFinished`` with reason ``FENCED`` (it will not run on; the engine may run it
        again) so the engine learns at once instead of waiting for a timeout. The journal is
        then rewritten with only what is live, and leftover temporary files are removed.
        """
        return await trio.to_thread.run_sync(self._recover_sync, frozenset(adoptable))

    def _recover_sync(
        self, adoptable: frozenset[AttemptRef]
    ) -> tuple[list[JobFinished], dict[AttemptRef, Progress]]:
        self._close()
        state = self._load()
        if state.ignored:
            log.warning(
                "%s: ignored %d bytes after the last whole record (a write cut short by a crash)",
                self._journal,
                state.ignored,
            )
        for tmp in self.path.glob("*.tmp"):
            tmp.unlink(missing_ok=True)
        closed: list[JobFinished] = []
        adopted: dict[AttemptRef, Progress] = {}
        lost = (state.begun | state.outputs) - state.held.keys() - state.damaged.keys()
        for ref in sorted(lost, key=lambda r: (r.job_id, r.attempt)):
            progress = self._progress(ref) if ref in state.outputs else Progress()
            if ref in adoptable:
                adopted[ref] = progress
                continue
            finished = JobFinished(
                job_id=ref.job_id,
                attempt=ref.attempt,
                reason=FinishReason.FENCED,
                detail="the agent stopped while the attempt ran, and nothing supervises it any"
                " more: it does not run on",
                chunks=progress.chunks,
            )
            state.held[ref] = finished
            closed.append(finished)
        state.begun = {ref for ref in state.begun if ref in adopted}
        self._held, self._begun, self._damaged = state.held, state.begun, state.damaged
        self._legacy, self._outputs = state.legacy, state.outputs
        self._rewrite()
        return closed, adopted

    def _progress(self, ref: AttemptRef) -> Progress:
        """Count an attempt's stored output, cut a torn last record off, and fsync it."""
        path = self._out(ref.job_id, ref.attempt)
        progress = Progress()
        with path.open("rb+") as f:
            whole = 0
            for chunk in read_records(f, ref):
                progress.chunks += 1
                progress.sizes[chunk.stream] += len(chunk.data)
                whole = f.tell()
            f.truncate(whole)
        _fsync_path(path)
        return progress

    # --- the journal ---------------------------------------------------------------------

    def _load(self) -> _State:
        """Replay the journal and read result files of an earlier version."""
        state = _State()
        try:
            data = self._journal.read_bytes()
        except FileNotFoundError:
            data = b""
        entries, state.size = read_journal(data)
        state.ignored = len(data) - state.size
        for kind, payload in entries:
            self._replay(state, kind, payload)
        for path in self.path.iterdir():
            ref = parse_name(path.stem)
            if ref is None:
                continue
            if path.suffix == ".out":
                state.outputs.add(ref)
            elif path.suffix == ".json" and ref not in state.held:
                try:
                    message = codec.decode(path.read_bytes())
                except DecodeError as exc:
                    state.damaged[ref] = f"{path}: {exc}"
                    continue
                if not isinstance(message, JobFinished):
                    state.damaged[ref] = f"{path}: holds a {type(message).__name__}, not a result"
                    continue
                state.held[ref] = message
                state.legacy.add(ref)
        return state

    def _replay(self, state: _State, kind: bytes, payload: bytes) -> None:
        if kind == _RESULT:
            try:
                message = codec.decode(payload)
            except DecodeError as exc:
                log.error("%s: skipped a result that does not decode: %s", self._journal, exc)
                return
            if isinstance(message, JobFinished):
                ref = AttemptRef(job_id=message.job_id, attempt=message.attempt)
                state.held[ref] = message
                state.begun.discard(ref)
            return
        named = parse_name(payload.decode("utf-8", "replace"))
        if named is None:
            return
        if kind == _BEGUN:
            state.begun.add(named)
        elif kind == _DROPPED:
            state.held.pop(named, None)
            state.begun.discard(named)

    def _open(self) -> int:
        if self._fd is None:
            fd = os.open(
                self._journal, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644
            )
            size = os.fstat(fd).st_size
            if size != self._end:  # a torn tail: cut it off, records go after whole ones
                os.ftruncate(fd, self._end)
            self._fd = fd
        return self._fd

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _append(self, kind: bytes, payload: bytes) -> int:
        """Append one record (not fsynced); returns the offset where it ends."""
        entry = journal_entry(kind, payload)
        fd = self._open()
        try:
            written = os.write(fd, entry)
        except OSError:
            os.ftruncate(fd, self._end)  # no half record may stay before later ones
            raise
        if written != len(entry):
            os.ftruncate(fd, self._end)
            raise OSError(f"{self._journal}: short write ({written} of {len(entry)} bytes)")
        self._end += written
        return self._end

    def _compact_if_big(self) -> None:
        """Rewrite the journal if it is past ``COMPACT_BYTES`` and no fsync is under way."""
        if self._end > COMPACT_BYTES and self._round is None:
            self._rewrite()

    def _rewrite(self) -> None:
        """Replace the journal with one holding only what is live, durably (blocking)."""
        assert self._round is None, "the journal is rewritten only between fsyncs"
        tmp = self._journal.with_name(JOURNAL_NAME + ".tmp")
        results = {r: f for r, f in self._held.items() if r not in self._legacy}
        results.update(self._unsynced)
        entries = [
            journal_entry(_BEGUN, attempt_name(r.job_id, r.attempt).encode())
            for r in self._begun
            if r not in results
        ]
        entries += [journal_entry(_RESULT, codec.encode(f)) for f in results.values()]
        data = b"".join(entries)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self._journal)
        _fsync_path(self.path)
        self._close()
        self._end = len(data)
        unsynced, self._unsynced = self._unsynced, {}
        self._commit(unsynced)


def _fsync_path(path: Path) -> None:
    """fsync a file or directory by path."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@attrs.define
class OutputReader:
    """Reads an attempt's output records one at a time; use as a context manager."""

    _file: BinaryIO
    _ref: AttemptRef
    _records: Iterator[OutputChunk] | None = None

    def next_chunk(self) -> OutputChunk | None:
        """The next stored chunk, or None at the end (blocking: call it in a thread)."""
        if self._records is None:
            self._records = read_records(self._file, self._ref)
        return next(self._records, None)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> OutputReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
