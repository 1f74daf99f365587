"""``wfe backup DEST``: a consistent copy of the repository, taken while the engine runs.

SQLite's online backup API (``sqlite3.Connection.backup``) copies the database through a
read-only connection of this process, in one step: the copy is the database as of one read
transaction (a snapshot in WAL mode), so it holds every event committed before the backup
began and no half of a later one, and the engine's writer is never blocked (a WAL reader does
not stop writers). It is written to a temporary file beside ``DEST``, switched out of WAL mode
(one self-contained file), checked (``PRAGMA quick_check``, or ``integrity_check`` with
``full_check``), fsynced and renamed onto ``DEST``: a failed backup leaves no ``DEST``.

It runs in the CLI process, not through the console: it needs read access to the workspace
(the repository file), no token, and works the same whether the engine runs or not.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import attrs

from wfe.engine.errors import EngineError


class BackupError(EngineError):
    """The backup could not be made; nothing was left at the destination."""


@attrs.frozen(kw_only=True)
class BackupReport:
    """What ``backup`` wrote."""

    path: str
    bytes: int
    last_event: int  # the highest event id in the copy
    seconds: float
    check: str  # "ok", from quick_check or integrity_check


def backup(
    source: Path, dest: Path, *, force: bool = False, full_check: bool = False
) -> BackupReport:
    """Copy the repository at ``source`` to ``dest`` (see the module doc). Blocking.

    Raises ``BackupError`` when ``source`` is missing or not a repository, ``dest`` exists
    (without ``force``) or is a directory, or the copy fails its check.
    """
    if not source.is_file():
        raise BackupError(f"no repository at {source}")
    if dest.is_dir():
        raise BackupError(f"{dest} is a directory: give a file name, e.g. {dest / 'wfe.db'}")
    if dest.exists() and not force:
        raise BackupError(f"{dest} exists (use --force to replace it)")
    if not dest.parent.is_dir():
        raise BackupError(f"no directory {dest.parent} for the backup")
    started = time.perf_counter()
    partial = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
    try:
        src = sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True)
        try:
            src.execute("PRAGMA busy_timeout = 10000")
            dst = sqlite3.connect(partial)
            try:
                src.backup(dst)  # pages=-1: the whole database from one read snapshot
                dst.execute("PRAGMA journal_mode = DELETE")  # one file, no -wal beside it
                (last,) = dst.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()
                pragma = "integrity_check" if full_check else "quick_check"
                rows = [r[0] for r in dst.execute(f"PRAGMA {pragma}")]
            finally:
                dst.close()
        finally:
            src.close()
        if rows != ["ok"]:
            raise BackupError(f"the copy failed {pragma}: {rows[0]}")
        with open(partial, "rb") as written:
            os.fsync(written.fileno())
        os.replace(partial, dest)
        directory = os.open(dest.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except sqlite3.Error as exc:
        raise BackupError(f"backup of {source} failed: {exc}") from None
    finally:
        partial.unlink(missing_ok=True)
    return BackupReport(
        path=str(dest),
        bytes=dest.stat().st_size,
        last_event=int(last),
        seconds=round(time.perf_counter() - started, 3),
        check="ok",
    )
