"""Fixtures for the repository tests: a real SQLite file per test, and a gate to hold the writer."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing

from engine.repository import Repository, Tx, open_repository


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
