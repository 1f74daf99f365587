"""A websocket client of the engine's console API (``wfe.console.v1``): the CLI, ``wfe console``, tests.

``connect(url, token)`` opens an authenticated connection. ``Client.call(op, **args)``
sends a request and returns its result (calls may run concurrently); pushed frames of the
streams that ``subscribe`` and ``tail`` open arrive, in order, on ``Client.frames()``. A
background task reads the socket; when nobody takes pushed frames, it stops reading after
``PUSH_BUFFER`` of them and the server starts counting what this client misses.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    wrap_client_stream,
)

from engine.config import Config
from engine.errors import EngineError
from engine.keys import read_token
from protocols.console_frames import decode_binary

PROTOCOL = "wfe.console.v1"
PUSH_BUFFER = 10_000
MAX_MESSAGE = 64 * 1024 * 1024


class ClientError(EngineError):
    """The engine refused a request, or could not be reached; the message is one line."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


class _Pending:
    def __init__(self) -> None:
        self.done = trio.Event()
        self.frame: dict[str, Any] | None = None


class Client:
    """One authenticated connection. Get one from ``connect``."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self.welcome: dict[str, Any] = {}
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._push_send, self._push_receive = trio.open_memory_channel[dict[str, Any]](PUSH_BUFFER)
        self.closed: str | None = None

    @property
    def name(self) -> str:
        return str(self.welcome.get("name", ""))

    @property
    def role(self) -> str:
        return str(self.welcome.get("role", ""))

    async def call(self, op: str, **args: Any) -> Any:
        """Send a request and return its result; raise ``ClientError`` (with ``code``) on an
        error reply or when the connection closes first."""
        request_id = next(self._ids)
        pending = self._pending[request_id] = _Pending()
        try:
            try:
                await self.ws.send_message(json.dumps({"id": request_id, "op": op, "args": args}))
            except ConnectionClosed:
                raise ClientError(
                    f"the engine closed the connection: {self.closed or 'closed'}", "closed"
                ) from None
            await pending.done.wait()
        finally:
            self._pending.pop(request_id, None)
        frame = pending.frame
        if frame is None:
            raise ClientError(
                f"the engine closed the connection: {self.closed or 'closed'}", "closed"
            )
        if frame.get("ok"):
            return frame.get("result")
        error = frame.get("error") or {}
        raise ClientError(str(error.get("message", "refused")), str(error.get("code", "")))

    def _close_reason(self) -> str:
        reason = self.ws.closed
        if reason is None:
            return self.closed or "closed"
        return f"{reason.code} {reason.reason or reason.name}"

    def frames(self) -> trio.MemoryReceiveChannel[dict[str, Any]]:
        """Pushed frames (``{"stream": n, ...}``) in the order they came, as an async iterable
        (breaking out of ``async for`` and iterating again later is fine); it ends when the
        connection does."""
        return self._push_receive

    async def _read(self) -> None:
        try:
            while True:
                message = await self.ws.get_message()
                frame: dict[str, Any] = (
                    decode_binary(message) if isinstance(message, bytes) else json.loads(message)
                )
                if "stream" in frame and "ok" not in frame:
                    await self._push_send.send(frame)
                    continue
                pending = self._pending.get(frame.get("id", 0))
                if pending is not None:
                    pending.frame = frame
                    pending.done.set()
        except ConnectionClosed:
            self.closed = self._close_reason()
        finally:
            self._push_send.close()
            for pending in list(self._pending.values()):
                pending.done.set()


@asynccontextmanager
async def connect(url: str, token: str) -> AsyncIterator[Client]:
    """Open an authenticated connection. Raises ``ClientError`` if refused or unreachable.

    An exception raised in the block comes out as itself (not inside an exception group).
    """
    parts = urlsplit(url)
    if parts.scheme != "ws" or not parts.hostname:
        raise ClientError(f"bad console URL {url!r}: expected ws://HOST:PORT/")
    try:
        async with trio.open_nursery() as nursery:
            # Our own TCP stream, closed by us: trio-websocket's client leaves its socket
            # open when the server closes first.
            stream = await trio.open_tcp_stream(parts.hostname, parts.port or 80)
            try:
                ws = await wrap_client_stream(
                    nursery, stream, parts.netloc, parts.path or "/", max_message_size=MAX_MESSAGE
                )
                client = Client(ws)
                nursery.start_soon(client._read)
                client.welcome = await client.call("auth", token=token, protocol=PROTOCOL)
                yield client
                with trio.move_on_after(5):
                    await ws.aclose()
            finally:
                with trio.CancelScope(shield=True):
                    await stream.aclose()
                nursery.cancel_scope.cancel()
    except BaseException as exc:
        inner = _single(exc)
        if isinstance(inner, ConnectionRejected):  # an HTTP answer, not a websocket
            body = (inner.body or b"").decode("utf-8", "replace").strip()
            raise ClientError(
                f"the engine at {url} refused the connection: HTTP {inner.status_code}"
                + (f": {body}" if body else "")
            ) from None
        if isinstance(inner, OSError | HandshakeError):
            raise ClientError(
                f"cannot reach the engine at {url}: {inner} (is `wfe engine` running?)"
            ) from None
        if isinstance(inner, ConnectionClosed):
            raise ClientError(
                f"the engine closed the connection: {inner.reason}", "closed"
            ) from None
        if inner is not exc:
            raise inner from None
        raise


def _single(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def engine_url(config: Config) -> str:
    """Where the engine of ``config`` listens (as written by the engine when it starts)."""
    port_file = config.run_dir / "api.port"
    port = config.api.port
    if port == 0 and port_file.exists():
        port = int(port_file.read_text().strip())
    host = config.api.host
    if host in ("0.0.0.0", "", "::"):
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    return f"ws://{host}:{port}/"


def client_token(config: Config) -> str:
    """The token to present: ``$WFE_TOKEN`` if set, else the bootstrap token file."""
    return os.environ.get("WFE_TOKEN") or read_token(config)


def connect_config(config: Config) -> Any:
    """``connect`` to the engine of ``config`` with ``client_token(config)``."""
    return connect(engine_url(config), client_token(config))


__all__ = ["Client", "ClientError", "client_token", "connect", "connect_config", "engine_url"]
