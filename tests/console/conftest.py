"""Fixtures for console tests: a real engine with real local agents, its console on loopback.

``console`` yields a ``Console``: the engine, the websocket URL, the bootstrap token, and
helpers to connect as any role (tokens are made through the API, as an admin would).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from engine.api import serve_api
from engine.client import Client, connect
from engine.daemon import Engine, open_engine
from engine.demo import make_workspace
from engine.keys import read_token

GUARD = 60  # seconds: a real engine with real agents; generous against a busy machine


class Console:
    """A running engine and its console."""

    def __init__(self, engine: Engine, url: str, token: str, root: Path) -> None:
        self.engine = engine
        self.url = url
        self.token = token
        self.root = root
        self._tokens: dict[str, str] = {}

    def connect(self, token: str | None = None) -> Any:
        return connect(self.url, self.token if token is None else token)

    async def token_for(self, role: str) -> str:
        """A token of ``role`` (named after it), created once through the API."""
        if role not in self._tokens:
            async with self.connect() as admin:
                made = await admin.call("token.create", name=f"{role}-1", role=role)
            self._tokens[role] = made["token"]
        return self._tokens[role]

    @asynccontextmanager
    async def as_role(self, role: str) -> AsyncIterator[Client]:
        async with self.connect(await self.token_for(role)) as client:
            yield client

    async def wait_for_agents(self, count: int = 1) -> None:
        while sum(1 for a in self.engine.agents() if a["state"] == "connected") < count:
            await trio.sleep(0.02)


@pytest.fixture
async def console(tmp_path: Path) -> AsyncIterator[Console]:
    config = make_workspace(tmp_path / "ws", agents=1, slots=4)
    with trio.fail_after(GUARD):
        async with open_engine(config) as engine, trio.open_nursery() as nursery:
            token = read_token(config)
            port = await nursery.start(lambda task_status: serve_api(
                engine, host="127.0.0.1", port=0, token=token, max_message=64 * 1024, task_status=task_status))  # fmt: skip
            c = Console(engine, f"ws://127.0.0.1:{port}/", token, config.root)
            await c.wait_for_agents(1)
            yield c
            nursery.cancel_scope.cancel()
