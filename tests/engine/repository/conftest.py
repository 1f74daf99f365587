"""Fixtures for the repository tests: a real SQLite file per test, a gate to hold the writer,
and a small real filesystem to fill."""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from wfe.engine.repository import Repository, Tx, open_repository


@pytest.fixture
def repo_path(tmp_path: Path) -> Path:
    return tmp_path / "wfe.db"


@pytest.fixture
async def repo(repo_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Repository]:
    # A gate parks the writer inside an op, so with a gate every batch must run on the worker
    # thread (a small batch otherwise runs on the trio thread, which the gate would block).
    gated = "gate" in request.fixturenames
    opened = open_repository(repo_path, inline_max=0) if gated else open_repository(repo_path)
    async with opened as repository:
        yield repository


class WriterGate:
    """Holds the writer inside a batch until released, so that ops queued meanwhile share one batch.

    Only for a repository whose batches all run on the worker thread (``inline_max=0``).
    """

    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self._entered = threading.Event()
        self._release = threading.Event()

    def _block(self, tx: Tx) -> None:
        self._entered.set()
        self._release.wait(30)  # a guard against a hung test, never reached when tests pass

    async def hold(self) -> None:
        """Return once the writer thread is parked inside a batch."""
        self._entered.clear()
        self._release.clear()
        self.repo.write_nowait(self._block)
        await trio.to_thread.run_sync(self._entered.wait, abandon_on_cancel=True)

    async def settle(self) -> None:
        """Wait until every other task is blocked (so every op they submit is queued)."""
        await trio.testing.wait_all_tasks_blocked()

    def release(self) -> None:
        self._release.set()


@pytest.fixture
def make_gate() -> type[WriterGate]:
    """WriterGate itself, for tests that open their own repository."""
    return WriterGate


@pytest.fixture
def gate(repo: Repository) -> WriterGate:
    return WriterGate(repo)


#: Size of the filesystem ``small_fs`` mounts: room for a repository, little more.
SMALL_FS_MB = 8


def mount_small_fs(directory: Path, megabytes: int = SMALL_FS_MB) -> None:
    """Mount a tmpfs of ``megabytes`` on ``directory``; skip the test where that is refused.

    A tmpfs is a real filesystem: a write past its size fails with ENOSPC exactly as on a
    full disk. Mounting needs root (CAP_SYS_ADMIN); without it the test is skipped with the
    reason rather than faked.
    """
    directory.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m,mode=0700", "tmpfs", str(directory)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a {megabytes} MB tmpfs here: {done.stderr.strip()}")


def unmount(directory: Path) -> None:
    subprocess.run(["umount", "-l", str(directory)], check=True)


class SmallFs:
    """A directory on its own small filesystem, and a way to fill it and free it again."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.filler = path / "filler"

    def free(self) -> int:
        """Bytes still free for an unprivileged writer."""
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def fill(self, leave: int = 0) -> None:
        """Grow one filler file until at most ``leave`` bytes are free."""
        chunk = b"\0" * (64 * 1024)
        with open(self.filler, "ab") as f:
            while (free := self.free()) > leave:
                try:
                    f.write(chunk[: min(len(chunk), free - leave)])
                    f.flush()
                except OSError:  # ENOSPC: full
                    break

    def release(self) -> None:
        """Delete the filler: the space is back."""
        self.filler.unlink(missing_ok=True)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[SmallFs]:
    """A directory on its own 8 MB filesystem (a tmpfs), unmounted after the test."""
    directory = tmp_path / "small"
    mount_small_fs(directory)
    try:
        yield SmallFs(directory)
    finally:
        unmount(directory)
