"""The agent's spool: finished results and their output, kept until the engine acknowledges.

Layout of the spool directory:

* ``<job>-<attempt>.json`` — the ``JobFinished`` of an attempt, in its wire form. Written
  atomically (temporary file, fsync, rename, fsync of the directory) *before* the result is
  sent, so a result the engine may have seen is never lost by a crash of the agent.
* ``<job>-<attempt>.out`` — every ``OutputChunk`` of the attempt, as records of
  ``stream (1 byte) | seq (8) | length (4) | data``. Created (empty, not fsynced) when the
  attempt starts, so an ``.out`` without a ``.json`` means the agent died while the attempt
  ran (see ``Spool.recover``). Fsynced before the ``.json`` is written when it holds any
  chunk; the directory fsync after the ``.json`` makes its name durable too. After a crash of
  the operating system (not just of the agent) a running attempt may leave no ``.out``; the
  engine then finds it neither running nor held and treats it as lost.
* ``agent.lock`` — ``flock``-ed by the agent process that owns the spool.

``<job>`` is the job id percent-encoded (``urllib.parse.quote`` with no safe characters),
so no job id can name a path outside the spool. The blocking writes run in a worker thread.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import attrs
import trio

from agents.errors import SpoolError, SpoolLocked
from protocols import codec
from protocols.errors import DecodeError
from protocols.messages import AttemptRef, FinishReason, JobFinished, OutputChunk, Stream

log = logging.getLogger("wfe.agent.spool")

_RECORD = struct.Struct(">BQI")
_STREAM_CODES = {Stream.STDOUT: 0, Stream.STDERR: 1}
_CODE_STREAMS = {code: stream for stream, code in _STREAM_CODES.items()}

LOCK_NAME = "agent.lock"


def attempt_name(job_id: str, attempt: int) -> str:
    """The file-name stem of an attempt: ``<quoted job id>-<attempt>``."""
    return f"{urllib.parse.quote(job_id, safe='')}-{attempt}"


def _parse_name(stem: str) -> AttemptRef | None:
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


class Spool:
    """A directory of finished results and their output; see the module docstring."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock_fd: int | None = None

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

    async def store(self, finished: JobFinished) -> None:
        """Make ``finished`` and its output durable. Returns once both are on disk."""
        await trio.to_thread.run_sync(self._store_sync, finished)

    def _store_sync(self, finished: JobFinished) -> None:
        out = self._out(finished.job_id, finished.attempt)
        if finished.chunks and out.exists():  # an empty output has no data to make durable
            with out.open("rb") as f:
                os.fsync(f.fileno())
        target = self._json(finished.job_id, finished.attempt)
        tmp = target.with_name(target.name + ".tmp")
        with tmp.open("wb") as f:
            f.write(codec.encode(finished))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        self._fsync_dir()

    def _fsync_dir(self) -> None:
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def get(self, job_id: str, attempt: int) -> JobFinished | None:
        """The stored result of an attempt, or None. Raises ``SpoolError`` if it is unreadable."""
        path = self._json(job_id, attempt)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            message = codec.decode(data)
        except DecodeError as exc:
            raise SpoolError(f"{path}: {exc}") from None
        if not isinstance(message, JobFinished):
            raise SpoolError(f"{path}: holds a {type(message).__name__}, not a result")
        return message

    def held(self) -> list[AttemptRef]:
        """Every attempt whose result is stored and not yet dropped, sorted."""
        refs = [_parse_name(p.stem) for p in self.path.glob("*.json")]
        return sorted((r for r in refs if r is not None), key=lambda r: (r.job_id, r.attempt))

    async def drop(self, job_id: str, attempt: int) -> bool:
        """Forget an attempt (the engine acknowledged it). Returns whether anything was held."""
        # The output goes first: a crash between the two leaves a plain held result, never an
        # output file without a result (which ``recover`` would take for a lost attempt).
        return await trio.to_thread.run_sync(self._drop_sync, job_id, attempt)

    def _drop_sync(self, job_id: str, attempt: int) -> bool:
        self._out(job_id, attempt).unlink(missing_ok=True)
        path = self._json(job_id, attempt)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True

    # --- output --------------------------------------------------------------------------

    async def begin_output(self, job_id: str, attempt: int) -> None:
        """Start an empty output file for an attempt that is about to run.

        Not fsynced: ``store`` makes the output durable together with the result.
        """

        def begin() -> None:
            self._out(job_id, attempt).open("wb").close()

        await trio.to_thread.run_sync(begin)

    async def append_output(self, chunk: OutputChunk) -> None:
        """Append one chunk to its attempt's output file (not fsynced until ``store``)."""

        def append() -> None:
            with self._out(chunk.job_id, chunk.attempt).open("ab") as f:
                f.write(encode_record(chunk))

        await trio.to_thread.run_sync(append)

    def open_output(self, job_id: str, attempt: int) -> OutputReader | None:
        """A reader over an attempt's stored output, or None when there is none."""
        try:
            f = self._out(job_id, attempt).open("rb")
        except FileNotFoundError:
            return None
        return OutputReader(f, AttemptRef(job_id=job_id, attempt=attempt))

    # --- after a restart -----------------------------------------------------------------

    async def recover(self) -> list[JobFinished]:
        """Close the books on attempts that were running when the agent last stopped.

        Call once at start-up, before anything runs. An ``.out`` without a ``.json`` is an
        attempt the agent lost (it died or was killed); it gets a stored ``JobFinished`` with
        reason ``ERROR`` so the engine learns at once instead of waiting for a timeout. Its
        processes, if any survive, are not touched. Leftover temporary files are removed.
        """
        return await trio.to_thread.run_sync(self._recover_sync)

    def _recover_sync(self) -> list[JobFinished]:
        for tmp in self.path.glob("*.tmp"):
            tmp.unlink(missing_ok=True)
        closed: list[JobFinished] = []
        for out in sorted(self.path.glob("*.out")):
            ref = _parse_name(out.stem)
            if ref is None or out.with_suffix(".json").exists():
                continue
            with out.open("rb") as f:
                chunks = sum(1 for _ in read_records(f, ref))
            finished = JobFinished(
                job_id=ref.job_id,
                attempt=ref.attempt,
                reason=FinishReason.ERROR,
                detail="the agent stopped while the attempt ran; its outcome is unknown",
                chunks=chunks,
            )
            self._store_sync(finished)
            closed.append(finished)
        return closed


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
