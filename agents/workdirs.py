"""The attempts' working directories, reused from one attempt to the next.

Creating a file or directory costs far more than overwriting one on many filesystems
(130-250 us of CPU on ext4 here), and a trivial job is a few milliseconds in all. So a
finished attempt's directory is emptied but for the files the next attempt overwrites and
kept as a spare (``Workdirs``). These are small operations on local files, done on the event
loop without a worker-thread hop; a directory too big for that is left to the caller.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from pathlib import Path

#: A directory with more entries than this (a script that left many files behind) is
#: removed in a worker thread, not on the event loop.
_INLINE_REMOVE_ENTRIES = 16

#: The files a reused directory keeps, to be overwritten by the next attempt.
_KEPT = ("script", "params.json", ".wfe-stdout", ".wfe-stderr")

_FREE_PREFIX = ".free-"


def _remove_path(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class Workdirs:
    """The attempts' working directories under ``root``, reused to spare the filesystem.

    Creating a file or directory costs far more than overwriting one on many filesystems
    (130-250 us of CPU on ext4 here). So a finished attempt's directory is emptied except
    for its ``script`` and ``params.json``, renamed to ``.free-<n>`` and, up to ``keep`` of
    them, renamed into place for a later attempt, which overwrites those two files. Only
    regular files with one link are overwritten, opened without following symlinks; anything
    else is replaced. With ``keep=0`` every attempt gets a fresh directory. ``close`` removes
    the spare ones.
    """

    def __init__(self, root: str | os.PathLike[str], *, keep: int = 0) -> None:
        self.root = Path(root)
        self.keep = keep
        self._root = os.fspath(root)  # paths are joined as strings: pathlib costs on every job
        self._free: list[str] = []
        self._count = 0

    def make(self, name: str) -> tuple[str, bool]:
        """An empty-but-for-kept-files directory ``root/name``; True if it was reused.

        A directory of that name left behind by an agent that died mid-attempt is removed
        first. Raises ``OSError``.
        """
        target = os.path.join(self._root, name)
        while self._free:
            spare = self._free.pop()
            try:
                os.rename(spare, target)  # replaces an empty directory left behind, too
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                    _remove_path(target)  # left behind by an agent that died mid-attempt
                    self._free.append(spare)
                else:
                    shutil.rmtree(spare, ignore_errors=True)
                continue
            return target, True
        try:
            os.makedirs(target)
        except FileExistsError:  # left behind by an agent that died mid-attempt
            _remove_path(target)
            os.mkdir(target)
        return target, False

    def write(self, path: str, data: bytes, *, reuse: bool) -> None:
        """Make ``path`` a regular file holding ``data``, overwriting it if ``reuse`` allows."""
        if reuse:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:
                fd = -1
            if fd >= 0:
                try:
                    st = os.fstat(fd)
                    if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
                        _write_all(fd, data)
                        os.ftruncate(fd, len(data))
                        return
                finally:
                    os.close(fd)
            _remove_path(path)
        fd = os.open(
            path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644
        )
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)

    def release(self, directory: str) -> bool:
        """Empty ``directory`` and keep it for reuse, or remove it; False if it is too big or
        odd to handle here (the caller then removes it with ``shutil.rmtree`` in a thread).

        A directory that is already gone counts as handled.
        """
        try:
            keep: list[str] = []
            drop: list[str] = []
            with os.scandir(directory) as entries:
                for entry in entries:
                    if len(keep) + len(drop) >= _INLINE_REMOVE_ENTRIES:
                        return False
                    if entry.is_dir(follow_symlinks=False):
                        return False
                    if entry.name in _KEPT and entry.is_file(follow_symlinks=False):
                        keep.append(entry.name)  # ``write`` checks it before overwriting
                    else:
                        drop.append(entry.name)
            if len(self._free) < self.keep:
                for name in drop:
                    os.unlink(f"{directory}/{name}")
                self._count += 1
                spare = f"{self._root}/{_FREE_PREFIX}{self._count}"
                os.rename(directory, spare)
                self._free.append(spare)
                return True
            for name in keep + drop:
                os.unlink(f"{directory}/{name}")
            os.rmdir(directory)
        except FileNotFoundError:
            return not os.path.exists(directory)
        except OSError:
            return False
        return True

    def close(self) -> None:
        """Remove the spare directories (and any a previous run left behind)."""
        self._free.clear()
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self._root):
                if entry.name.startswith(_FREE_PREFIX):
                    shutil.rmtree(entry.path, ignore_errors=True)
