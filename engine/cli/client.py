"""A websocket client of the engine's console API (``wfe.console.v1``): the CLI, ``wfe console``, tests.

``connect(url, token)`` opens an authenticated connection. ``Client.call(op, **args)``
sends a request and returns its result (calls may run concurrently); pushed frames of the
streams that ``subscribe`` and ``tail`` open arrive, in order, on ``Client.frames()``. A
background task reads the socket; when nobody takes pushed frames, it stops reading after
``PUSH_BUFFER`` of them and the server starts counting what this client misses.

No call waits for ever. Arguments JSON can't carry (``NaN``, ``Infinity``) are refused
before anything is sent. A reply must come within ``Client.reply_timeout`` (60 s), except
for the long polls ``wait`` and ``request_wait``, which may take as long as the job or
request does: while one is pending the client pings the engine every ``KEEPALIVE`` seconds
and gives up on every call when a ping goes unanswered for ``reply_timeout``. A reply with
``"id": null`` (the engine could not read which request it answers) fails the calls in
flight with the engine's error instead of leaving them waiting for a reply that will not come.
"""

from __future__ import annotations

import itertools
import json
import math
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

from wfe.engine.config import Config
from wfe.engine.errors import EngineError
from wfe.engine.keys import read_token
from wfe.protocols.console_frames import decode_binary

PROTOCOL = "wfe.console.v1"
PUSH_BUFFER = 10_000
MAX_MESSAGE = 64 * 1024 * 1024
REPLY_TIMEOUT = 60.0  # seconds a reply may take (the long polls excepted)
KEEPALIVE = 15.0  # seconds between pings while a long poll is pending
LONG_POLLS = frozenset({"wait", "request_wait", "execution_wait"})  # reply when something ends


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

    def __init__(self, ws: WebSocketConnection, *, reply_timeout: float = REPLY_TIMEOUT) -> None:
        self.ws = ws
        self.welcome: dict[str, Any] = {}
        self.reply_timeout = reply_timeout
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._long_polls = 0
        self._long_poll_started = trio.Event()
        self._push_send, self._push_receive = trio.open_memory_channel[dict[str, Any]](PUSH_BUFFER)
        self.closed: str | None = None
        self._gave_up: ClientError | None = None

    @property
    def name(self) -> str:
        return str(self.welcome.get("name", ""))

    @property
    def role(self) -> str:
        return str(self.welcome.get("role", ""))

    async def call(self, op: str, **args: Any) -> Any:
        """Send a request and return its result; raise ``ClientError`` (with ``code``) on an
        error reply, when the connection closes first, when ``args`` hold a number JSON can't
        carry (code ``bad_request``, nothing sent) or when no reply comes in time (``timeout``)."""
        if self._gave_up is not None:
            raise self._gave_up
        request_id = next(self._ids)
        try:
            text = json.dumps({"id": request_id, "op": op, "args": args}, allow_nan=False)
        except ValueError:
            where = _non_finite(args) or ("args", math.nan)
            raise ClientError(
                f"{op}: {where[0]} is {where[1]}, which JSON cannot carry: give a finite number",
                "bad_request",
            ) from None
        pending = self._pending[request_id] = _Pending()
        long_poll = op in LONG_POLLS
        if long_poll:
            self._long_polls += 1
            self._long_poll_started.set()
        try:
            try:
                await self.ws.send_message(text)
            except ConnectionClosed:
                raise ClientError(
                    f"the engine closed the connection: {self.closed or 'closed'}", "closed"
                ) from None
            with trio.move_on_after(math.inf if long_poll else self.reply_timeout):
                await pending.done.wait()
        finally:
            self._pending.pop(request_id, None)
            if long_poll:
                self._long_polls -= 1
        frame = pending.frame
        if frame is None:
            if self._gave_up is not None:
                raise self._gave_up
            if not pending.done.is_set():
                raise ClientError(
                    f"no reply to {op} within {self.reply_timeout:g} s: the engine is busy or"
                    " stuck (see its log)",
                    "timeout",
                )
            raise ClientError(
                f"the engine closed the connection: {self.closed or 'closed'}", "closed"
            )
        if frame.get("ok"):
            return frame.get("result")
        error = frame.get("error") or {}
        raise ClientError(str(error.get("message", "refused")), str(error.get("code", "")))

    async def _keepalive(self) -> None:
        """While a long poll is pending, ping every ``KEEPALIVE`` s; an engine that does not
        answer one within ``reply_timeout`` fails every call (and later ones)."""
        while True:
            if not self._long_polls:
                self._long_poll_started = trio.Event()
                await self._long_poll_started.wait()
            await trio.sleep(KEEPALIVE)
            if not self._long_polls:
                continue
            with trio.move_on_after(self.reply_timeout) as waiting:
                try:
                    await self.ws.ping()
                except ConnectionClosed:
                    return  # the reader tells the calls
            if waiting.cancelled_caught:
                self._fail_all(
                    ClientError(
                        f"the engine stopped answering: no pong within {self.reply_timeout:g} s",
                        "timeout",
                    )
                )
                return

    def _fail_all(self, error: ClientError) -> None:
        self._gave_up = error
        for pending in list(self._pending.values()):
            pending.done.set()

    def _unmatched(self, frame: dict[str, Any]) -> None:
        """An error reply the engine could not address: it answers one of the calls in
        flight, and we can't tell which, so each of them gets it."""
        error = frame.get("error") or {}
        message = str(error.get("message", "refused"))
        for pending in list(self._pending.values()):
            pending.frame = {
                "ok": False,
                "error": {
                    "code": str(error.get("code", "")),
                    "message": f"the engine could not tell which request it refused: {message}",
                },
            }
            pending.done.set()

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
                request_id = frame.get("id")
                if request_id is None and self._pending:
                    self._unmatched(frame)
                    continue
                pending = self._pending.get(request_id)  # type: ignore[arg-type]
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

    An exception raised in the block comes out as itself (not inside an exception group);
    an ``OSError`` of the block's own (a closed pipe) is not taken for an unreachable engine.
    """
    parts = urlsplit(url)
    if parts.scheme != "ws" or not parts.hostname:
        raise ClientError(f"bad console URL {url!r}: expected ws://HOST:PORT/")
    inside = False  # the caller's block runs: its own errors come out as they are
    try:
        # Our own TCP stream, closed by us: trio-websocket's client leaves its socket open
        # when the server closes first.
        stream = await trio.open_tcp_stream(parts.hostname, parts.port or 80)
        try:
            async with open_client(stream, token, host=parts.netloc, path=parts.path or "/") as c:
                inside = True
                yield c
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()
    except BaseException as exc:
        inner = _single(exc)
        if isinstance(inner, ConnectionRejected):  # an HTTP answer, not a websocket
            body = (inner.body or b"").decode("utf-8", "replace").strip()
            raise ClientError(
                f"the engine at {url} refused the connection: HTTP {inner.status_code}"
                + (f": {body}" if body else "")
            ) from None
        if inside and isinstance(inner, OSError):  # e.g. BrokenPipeError writing the output
            raise inner from None
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


@asynccontextmanager
async def open_client(
    stream: trio.abc.Stream,
    token: str,
    *,
    host: str = "localhost",
    path: str = "/",
    reply_timeout: float = REPLY_TIMEOUT,
) -> AsyncIterator[Client]:
    """Speak the console protocol over ``stream`` (already connected; the caller closes it):
    open the websocket, authenticate, yield the ``Client``. Errors come as they are (``connect``
    turns them into ``ClientError``)."""
    async with trio.open_nursery() as nursery:
        try:
            with trio.move_on_after(reply_timeout) as upgrading:
                ws = await wrap_client_stream(nursery, stream, host, path,  # type: ignore[arg-type]
                                              max_message_size=MAX_MESSAGE)  # any Stream  # fmt: skip
            if upgrading.cancelled_caught:
                raise ClientError(
                    f"no answer to the websocket upgrade within {reply_timeout:g} s", "timeout"
                )
            client = Client(ws, reply_timeout=reply_timeout)
            nursery.start_soon(client._read)
            nursery.start_soon(client._keepalive)
            client.welcome = await client.call("auth", token=token, protocol=PROTOCOL)
            yield client
            with trio.move_on_after(5):
                await ws.aclose()
        finally:
            nursery.cancel_scope.cancel()


def _non_finite(value: Any, path: str = "args") -> tuple[str, float] | None:
    """The path and value of the first NaN or infinity inside ``value``, or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return path, value
    items: Any = ()
    if isinstance(value, dict):
        items = ((f"{path}.{k}", v) for k, v in value.items())
    elif isinstance(value, list | tuple):
        items = ((f"{path}[{i}]", v) for i, v in enumerate(value))
    for where, item in items:
        found = _non_finite(item, where)
        if found is not None:
            return found
    return None


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


__all__ = [
    "Client",
    "ClientError",
    "client_token",
    "connect",
    "connect_config",
    "engine_url",
    "open_client",
]
