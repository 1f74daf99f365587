"""Fixtures for console tests: a real engine with a real local agent, its console on loopback.

``console`` yields a ``Console``: the engine, the websocket URL, the bootstrap token, and
helpers to connect as any role (tokens are made through the API, as an admin would) and to
submit requests. The engine's RScript library includes ``scripts/console_work.py``, which
prints numbered lines over time and can hold on a gate file. Real time throughout, every
wait guarded by ``trio.fail_after``.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import strategies as st
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, TextMessage

from wfe.engine.cli.client import Client, connect
from wfe.engine.config import Config, load_config
from wfe.engine.console.api import serve_api
from wfe.engine.console.session import Limits
from wfe.engine.console.streams import EventStream
from wfe.engine.keys import create_secrets, read_token
from wfe.engine.repository import Event
from wfe.engine.runtime.daemon import Engine, open_engine

SCRIPTS = Path(__file__).with_name("scripts")
GUARD = 60  # seconds any one test may take with a real engine and agent on a busy machine

CONFIG = """\
[engine]
repository = "wfe.db"
rscripts = ["{scripts}"]

[api]
host = "127.0.0.1"
port = 0

[agents]
local = 1
slots = 4
heartbeat = 0.5
heartbeat_deadline = 3.0
reconcile_grace = 1.0

[jobs]
timeout = 60.0
"""

#: A one-stage request over the catalog's files of kind "raw", approved by a person.
DEFINITION = """\
[workflow]
name = "{name}"
namespace = "{namespace}"

[policy]
approval = "required"

[params.gate]
type = "str"
default = ""

[[query.where]]
field = "kind"
op = "eq"
value = "raw"

[[stages]]
name = "echo"
rscript = "console_work"
consumes = "query"
params = {{ lines = 3, seconds = 0.05, gate = "${{gate}}" }}
"""


def workspace(root: Path) -> Config:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "wfe.toml"
    path.write_text(CONFIG.format(scripts=SCRIPTS))
    config = load_config(path)
    create_secrets(config)
    return config


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
        """A token of ``role`` named ``<role>-1``, created once through the API."""
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
        """Return once ``count`` agents are connected (checked after every committed event)."""

        def connected() -> bool:
            return sum(1 for a in self.engine.agents() if a["state"] == "connected") >= count

        async with self.engine.repo.subscribe() as events:
            if connected():
                return
            async for _ in events:
                if connected():
                    return

    def definition(self, name: str = "echo", namespace: str = "tests") -> Path:
        path = self.root / f"{name}.toml"
        path.write_text(textwrap.dedent(DEFINITION.format(name=name, namespace=namespace)))
        return path

    async def catalog(self, client: Client, count: int = 2) -> None:
        data = self.root / "data"
        data.mkdir(exist_ok=True)
        paths = []
        for i in range(count):
            path = data / f"raw{i}.dat"
            path.write_text(f"raw {i}\n")
            paths.append(str(path))
        await client.call("catalog_add", paths=paths, metadata={"kind": "raw"})

    async def submit(
        self, client: Client, *, name: str = "echo", namespace: str = "tests", **params: Any
    ) -> dict[str, Any]:
        from wfe.engine.cli.requests import submission

        payload = submission(
            self.definition(name, namespace),
            params=[f"{k}={v}" for k, v in params.items()],
            user="alice",
        )
        return await client.call("submit", **payload)  # type: ignore[no-any-return]


@asynccontextmanager
async def open_console(root: Path, limits: Limits | None = None) -> AsyncIterator[Console]:
    """An engine on a fresh workspace in ``root`` and its console, for the block."""
    config = workspace(root / "ws")
    token = read_token(config)
    async with open_engine(config) as engine, trio.open_nursery() as nursery:
        port = await nursery.start(lambda task_status: serve_api(
            engine, host="127.0.0.1", port=0, token=token, max_message=64 * 1024, limits=limits,
            task_status=task_status))  # fmt: skip
        console = Console(engine, f"ws://127.0.0.1:{port}/", token, config.root)
        await console.wait_for_agents(1)
        yield console
        nursery.cancel_scope.cancel()


@pytest.fixture
async def console(tmp_path: Path) -> AsyncIterator[Console]:
    with trio.fail_after(GUARD):
        async with open_console(tmp_path) as c:
            yield c


def fill(stream: trio.SocketStream) -> None:
    """Write to ``stream``'s socket until it takes no more (nobody reads the other end)."""
    while True:
        try:
            os.write(stream.socket.fileno(), b"f" * 65536)
        except BlockingIOError:
            return


#: Any JSON value (for event data and request arguments).
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


def taken(stream: EventStream) -> list[Any]:
    """What the stream's writer would send now, read back by a websocket client."""
    chunks, count = stream.take_chunks()
    client = Connection(ConnectionType.CLIENT)
    client.receive_data(b"".join(chunks))
    messages = [e.data for e in client.events() if isinstance(e, TextMessage | BytesMessage)]
    assert len(messages) == count
    return messages


def event(n: int, kind: str = "job.state", subject: str = "j1", **data: Any) -> Event:
    return Event(id=n, at=0.0, kind=kind, subject=subject, data=data)
