"""A websocket client of the engine's API, used by the CLI (and by tests)."""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
from trio_websocket import ConnectionClosed, HandshakeError, WebSocketConnection, open_websocket_url

from engine.config import Config
from engine.errors import EngineError
from engine.keys import read_token


class ClientError(EngineError):
    """The engine refused a request, or could not be reached; the message is one line."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


class Client:
    """Requests and replies over one connection (one request at a time per ``call``)."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self._ids = itertools.count(1)
        self.pushed: list[dict[str, Any]] = []

    async def call(self, op: str, **args: Any) -> Any:
        """Send a request and return its result; raise ``ClientError`` on an error reply.
        Pushed frames that arrive meanwhile are kept in ``pushed``."""
        request_id = next(self._ids)
        await self.ws.send_message(json.dumps({"id": request_id, "op": op, "args": args}))
        while True:
            frame = json.loads(await self.ws.get_message())
            if frame.get("id") == request_id:
                if frame.get("ok"):
                    return frame.get("result")
                error = frame.get("error") or {}
                raise ClientError(error.get("message", "refused"), error.get("code", ""))
            self.pushed.append(frame)

    async def frames(self) -> AsyncIterator[dict[str, Any]]:
        """Pushed frames: those already received, then new ones as they come."""
        while self.pushed:
            yield self.pushed.pop(0)
        while True:
            yield json.loads(await self.ws.get_message())


@asynccontextmanager
async def connect(url: str, token: str) -> AsyncIterator[Client]:
    """Open an authenticated connection. Raises ``ClientError`` if refused or unreachable."""
    try:
        async with open_websocket_url(url) as ws:
            client = Client(ws)
            await client.call("auth", token=token)
            yield client
    except (OSError, HandshakeError) as exc:
        raise ClientError(f"cannot reach the engine at {url}: {exc} (is `wfe engine` running?)") from None
    except ConnectionClosed as exc:
        raise ClientError(f"the engine closed the connection: {exc.reason}") from None


def engine_url(config: Config) -> str:
    """Where the engine of ``config`` listens (as written by the engine when it starts)."""
    port_file = config.run_dir / "api.port"
    port = config.api.port
    if port == 0 and port_file.exists():
        port = int(port_file.read_text().strip())
    host = "127.0.0.1" if config.api.host in ("0.0.0.0", "") else config.api.host
    return f"ws://{host}:{port}/"


def connect_config(config: Config) -> Any:
    return connect(engine_url(config), read_token(config))


__all__ = ["Client", "ClientError", "connect", "connect_config", "engine_url", "trio"]
