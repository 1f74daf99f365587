"""Fixtures for the work queue's tests against a real engine.

``api`` runs an engine (no local agents: works need none) and its console on loopback in
this process and yields an ``Api`` (URL, bootstrap token, a token per role). ``engine_process``
runs ``wfe engine`` as a real process on a fresh workspace and yields its ``wfe.toml`` path,
for the tests of ``wfe work`` and of the Python API from plain synchronous code.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from wfe.engine.cli.client import Client, connect
from wfe.engine.cli.demo import make_workspace
from wfe.engine.console.api import serve_api
from wfe.engine.keys import read_token
from wfe.engine.runtime.daemon import Engine, open_engine

GUARD = 60  # seconds any one test may take with a real engine on a busy machine


class Api:
    """A running engine and its console."""

    def __init__(self, engine: Engine, url: str, token: str) -> None:
        self.engine = engine
        self.url = url
        self.token = token
        self._tokens: dict[str, str] = {}

    async def token_for(self, role: str) -> str:
        """A token of ``role`` named ``<role>-1``, made once through the API by the admin."""
        if role not in self._tokens:
            async with connect(self.url, self.token) as admin:
                made = await admin.call("token.create", name=f"{role}-1", role=role)
            self._tokens[role] = made["token"]
        return self._tokens[role]

    @asynccontextmanager
    async def as_role(self, role: str) -> AsyncIterator[Client]:
        token = self.token if role == "admin" else await self.token_for(role)
        async with connect(self.url, token) as client:
            yield client


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    with trio.fail_after(GUARD):
        config = make_workspace(tmp_path / "ws", agents=0)
        token = read_token(config)
        async with open_engine(config, start_local_agents=False) as engine:
            async with trio.open_nursery() as nursery:
                port = await nursery.start(
                    lambda task_status: serve_api(
                        engine, host="127.0.0.1", port=0, token=token, task_status=task_status
                    )
                )
                yield Api(engine, f"ws://127.0.0.1:{port}/", token)
                nursery.cancel_scope.cancel()


def wfe(
    config: Path, *args: str, timeout: float = 60, **kw: Any
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m wfe ARGS --config CONFIG`` and return what it did."""
    return subprocess.run(
        [sys.executable, "-m", "wfe", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,
    )


def start_engine(path: Path, log: Path) -> subprocess.Popen[bytes]:
    """Start ``wfe engine`` on the workspace of ``path`` and wait for its console."""
    port_file = path.parent / "run" / "api.port"  # Config.run_dir
    port_file.unlink(missing_ok=True)  # a previous engine's: wait for this one's
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "wfe", "engine", "--config", str(path)],
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    for _ in range(600):
        if port_file.exists():
            return process
        assert process.poll() is None, log.read_text()
        subprocess.run(["sleep", "0.1"], check=True)
    raise AssertionError("the engine did not start in time")


def stop_engine(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture
def engine_process(tmp_path: Path) -> Iterator[Path]:
    """A ``wfe engine`` process (no local agents) on a new workspace: its wfe.toml."""
    config = make_workspace(tmp_path / "ws", agents=0)
    path = config.root / "wfe.toml"
    process = start_engine(path, tmp_path / "engine.log")
    try:
        yield path
    finally:
        stop_engine(process)
