"""When the repository's disk is full: which errors mean it, how much space is left, what to say.

A commit that fails because the filesystem has no room (SQLite's ``SQLITE_FULL``; an
``SQLITE_IOERR`` too, since growing the ``-shm`` file or writing the WAL can fail that way)
is not the op's fault and must not lose the op: the writer keeps the whole batch and tries it
again until it commits (see ``writer.py``). While it waits the repository reports a
``DiskTrouble`` and refuses new work with ``RepositoryFull``; reads go on.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import attrs

from wfe.engine.repository.errors import RepositoryFull

#: SQLite's primary result codes for "no room" and "the OS refused an I/O" (sqlite3.h).
SQLITE_IOERR = 10
SQLITE_FULL = 13

MB = 1024 * 1024


def storage_error(exc: BaseException) -> sqlite3.Error | None:
    """The SQLite error behind ``exc`` that says the disk refused a write, or None.

    Follows ``__cause__``/``__context__``, so an op that wrapped the error is still recognised.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, sqlite3.Error):
            code = getattr(current, "sqlite_errorcode", None)
            if code is not None and code & 0xFF in (SQLITE_FULL, SQLITE_IOERR):
                return current
        current = current.__cause__ or current.__context__
    return None


def free_bytes(directory: Path) -> int | None:
    """Bytes an unprivileged process may still write in ``directory``'s filesystem (None: unknown)."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


@attrs.frozen(kw_only=True)
class DiskTrouble:
    """The repository cannot commit: its writes wait, new work is refused."""

    directory: Path  # where the database lives
    free: int | None  # bytes free there when last measured (None: unknown)
    full: bool  # SQLITE_FULL (no room); False: another I/O error
    error: str  # SQLite's message
    held_ops: int  # writes waiting for the failed batch (it included)
    since: float  # trio time of the first failure

    @property
    def message(self) -> str:
        """One line for the operator, also the text of ``RepositoryFull``."""
        free = "? MB" if self.free is None else f"{self.free / MB:.1f} MB"
        if self.full:
            return (
                f"repository disk is full ({free} free at {self.directory}):"
                " new work refused until space returns"
            )
        return (
            f"repository cannot write ({self.error}; {free} free at {self.directory}):"
            " new work refused until writes succeed again"
        )

    def refusal(self) -> RepositoryFull:
        return RepositoryFull(self.message)
