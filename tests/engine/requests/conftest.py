"""Fixtures for request tests: a real engine with local agents, its API, and a client.

``open_world`` starts an engine on a workspace in ``tmp_path`` (real repository, real local
agent processes, the websocket API on a loopback port) and yields a ``World`` that drives
it the way ``wfe`` does. Real time, every wait guarded by ``trio.fail_after``. Definitions
are written beside an ``rscripts/`` folder holding ``scripts/work.py`` (see its header).
"""

from __future__ import annotations

import shutil
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from wfe.engine.cli.client import Client, connect
from wfe.engine.cli.requests import submission
from wfe.engine.config import Config, load_config
from wfe.engine.console.api import serve_api
from wfe.engine.keys import create_secrets, read_token
from wfe.engine.runtime.daemon import Engine, open_engine

SCRIPTS = Path(__file__).with_name("scripts")
ACTIONS = Path(__file__).with_name("actions")  # t.count
PATIENCE = 30.0  # seconds any one wait may take before the test fails

CONFIG = """\
[engine]
repository = "wfe.db"
actions = ["actions"]

[api]
host = "127.0.0.1"
port = 0

[agents]
local = {agents}
slots = {slots}
heartbeat = 0.5
heartbeat_deadline = 3.0
reconcile_grace = 1.0

[jobs]
timeout = 60.0
retries = 0
backoff = {backoff}
"""

#: The head of most test definitions: no approval, inputs are the catalog's raw files.
HEAD = """\
[workflow]
name = "t"
namespace = "tests"

[policy]
approval = "none"
max_allocations = 2

[[query.where]]
field = "kind"
op = "eq"
value = "raw"
"""


def workspace(
    root: Path, *, agents: int, slots: int, extra: str = "", backoff: float = 0.1
) -> Config:
    """A workspace for an engine with ``agents`` local agents of ``slots`` slots each, retries
    ``backoff`` seconds after a failure; ``extra`` is appended to its wfe.toml."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / "wfe.toml"
    if not path.exists():
        path.write_text(CONFIG.format(agents=agents, slots=slots, backoff=backoff) + extra)
        create_secrets(load_config(path))
        shutil.copytree(ACTIONS, root / "actions")
    return load_config(path)


class World:
    """An engine, its API client, and helpers to make data and definitions."""

    def __init__(self, engine: Engine, client: Client, root: Path) -> None:
        self.config = engine.config
        self.engine = engine
        self.client = client
        self.root = root
        self.data = root / "data"
        self.data.mkdir(exist_ok=True)

    async def call(self, op: str, **args: Any) -> Any:
        return await self.client.call(op, **args)

    async def wfe(self, *argv: str) -> tuple[int, str, str]:
        """Run a ``wfe`` command against this engine (on a thread: it runs trio itself);
        return its exit code, stdout and stderr."""
        import contextlib
        import io

        from wfe.engine.cli.main import main

        out, err = io.StringIO(), io.StringIO()

        def run() -> int:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                return main([*argv, "--config", str(self.config.root / "wfe.toml")])

        with trio.fail_after(PATIENCE):
            code = await trio.to_thread.run_sync(run)
        return code, out.getvalue(), err.getvalue()

    async def catalog(self, names: list[str], **metadata: Any) -> list[dict[str, Any]]:
        """Write small data files and catalogue them (``kind = "raw"`` unless given)."""
        paths = []
        for name in names:
            path = self.data / name
            path.write_text(f"data of {name}\n")
            paths.append(str(path))
        return await self.call("catalog_add", paths=paths, metadata={"kind": "raw", **metadata})  # type: ignore[no-any-return]

    def definition(self, text: str, name: str = "def.toml") -> Path:
        """Write a definition with ``work`` in ``rscripts/`` beside it; return its path."""
        folder = self.root / "defs"
        (folder / "rscripts").mkdir(parents=True, exist_ok=True)
        shutil.copy(SCRIPTS / "work.py", folder / "rscripts" / "work.py")
        path = folder / name
        path.write_text(textwrap.dedent(text))
        return path

    async def submit(
        self, path: Path, *, user: str = "alice", namespace: str | None = None, **params: Any
    ) -> dict[str, Any]:
        """Submit as ``wfe submit`` does (in ``namespace`` if given); return the record."""
        assigned = [f"{k}={v}" for k, v in params.items()]
        payload = submission(path, params=assigned, user=user, namespace=namespace)
        return await self.call("submit", **payload)  # type: ignore[no-any-return]

    async def wait(self, rid: str, *states: str) -> dict[str, Any]:
        """The request once it is in one of ``states`` (default: ended)."""
        with trio.fail_after(PATIENCE):
            args = {"states": list(states)} if states else {}
            return await self.call("request_wait", request=rid, **args)  # type: ignore[no-any-return]

    async def detail(self, rid: str) -> dict[str, Any]:
        return await self.call("request", request=rid)  # type: ignore[no-any-return]

    async def until(self, what: str, check: Callable[[], Awaitable[Any]]) -> Any:
        """Check again after every committed event until ``check`` returns something
        truthy, and return it."""
        with trio.move_on_after(PATIENCE):
            async with self.engine.repo.subscribe() as events:
                if found := await check():
                    return found
                async for _ in events:
                    if found := await check():
                        return found
        pytest.fail(f"timed out waiting for {what}")

    async def job_running(self, rid: str, stage: str | None = None) -> dict[str, Any]:
        """Wait until a job of ``rid`` (of ``stage``, if given) runs on an agent; return
        its row in the request's detail."""

        async def check() -> Any:
            jobs = (await self.detail(rid))["jobs"]
            return next(
                (j for j in jobs if j["state"] == "running" and stage in (None, j["stage"])), None
            )

        return await self.until(f"a running job of {rid}", check)  # type: ignore[no-any-return]

    def open_gate(self) -> None:
        (self.root / "gate").write_text("open\n")

    @property
    def gate(self) -> str:
        return str(self.root / "gate")


async def _agents_connected(engine: Engine, count: int) -> None:
    def connected() -> bool:
        return sum(1 for a in engine.agents() if a["state"] == "connected") >= count

    with trio.fail_after(PATIENCE):
        async with engine.repo.subscribe() as events:
            if connected():
                return
            async for _ in events:  # agents are registered before their event commits
                if connected():
                    return


@asynccontextmanager
async def open_world(
    root: Path,
    *,
    agents: int = 1,
    slots: int = 4,
    extra_config: str = "",
    backoff: float = 0.1,
) -> AsyncIterator[World]:
    """Run an engine on the workspace in ``root`` (made if new) for the block."""
    config = workspace(root / "ws", agents=agents, slots=slots, extra=extra_config, backoff=backoff)
    token = read_token(config)
    async with open_engine(config) as engine:
        await _agents_connected(engine, agents)
        async with trio.open_nursery() as nursery:
            serve = partial(serve_api, engine, host="127.0.0.1", port=0, token=token)
            port = await nursery.start(serve)
            (config.run_dir / "api.port").write_text(f"{port}\n")  # where `wfe --config` looks
            async with connect(f"ws://127.0.0.1:{port}/", token) as client:
                try:
                    yield World(engine, client, root)
                finally:
                    # Stop the server before the client hangs up: a client going away
                    # must not be what ends the test's engine.
                    nursery.cancel_scope.cancel()


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    """An engine with one local agent of four slots."""
    async with open_world(tmp_path) as w:
        yield w
