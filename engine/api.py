"""The engine's websocket API (protocol ``wfe.console.v1``, see docs/console-protocol.md).

Every frame is one JSON object. The client sends requests ``{"id": 1, "op": "run",
"args": {...}}`` and gets exactly one reply ``{"id": 1, "ok": true, "result": ...}`` or
``{"id": 1, "ok": false, "error": {"code": "...", "message": "..."}}``. The first request
must be ``auth`` with the token; anything else before it is refused and the connection
closed. Streams (``subscribe``, ``tail``) push ``{"stream": id, ...}`` frames after their
reply. A bad request is answered with an error and the connection stays up.

The server binds to loopback unless the configuration says otherwise. Each connection
has a bounded outgoing queue: a client that does not read loses pushed frames (it is told
how many) rather than slowing the engine.
"""

from __future__ import annotations

import hmac
import importlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket

from engine.actions import one_line
from engine.attempts import output_count
from engine.errors import EngineError, UnknownJob

if TYPE_CHECKING:
    from engine.daemon import Engine

log = logging.getLogger("wfe.api")

PROTOCOL = "wfe.console.v1"
OUTBOX = 1000


class ApiError(EngineError):
    """An error reply: ``code`` is machine-readable, the message is one line."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


Handler = Callable[["Session", dict[str, Any]], Awaitable[Any]]
OPS: dict[str, Handler] = {}

#: Modules that add operations with ``@op(...)``; imported when the server starts.
OP_MODULES: tuple[str, ...] = ("engine.api_requests",)


def op(name: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        OPS[name] = fn
        return fn

    return register


class Session:
    """One authenticated websocket connection."""

    def __init__(self, engine: Engine, ws: WebSocketConnection, nursery: trio.Nursery) -> None:
        self.engine = engine
        self.ws = ws
        self.nursery = nursery
        self.outbox_send, self.outbox_receive = trio.open_memory_channel[str](OUTBOX)
        self.missed = 0
        self.next_stream = 1

    def push(self, frame: dict[str, Any]) -> None:
        """Queue a server-pushed frame; drop it (and count it) if the client is behind."""
        if self.missed:
            frame = {**frame, "missed": self.missed}
        try:
            self.outbox_send.send_nowait(json.dumps(frame))
            self.missed = 0
        except trio.WouldBlock:
            self.missed += 1

    async def reply(self, frame: dict[str, Any]) -> None:
        await self.outbox_send.send(json.dumps(frame))

    async def pump(self) -> None:
        async for text in self.outbox_receive:
            await self.ws.send_message(text)


async def serve_api(
    engine: Engine,
    *,
    host: str,
    port: int,
    token: str,
    max_message: int = 1024 * 1024,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the API until cancelled; ``task_status.started`` gets the bound port."""
    for module in OP_MODULES:
        importlib.import_module(module)

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        try:
            await _connection(engine, ws, token)
        except ConnectionClosed:
            pass

    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            lambda task_status: serve_websocket(
                handler, host, port, ssl_context=None, max_message_size=max_message, task_status=task_status
            )
        )
        log.info("console API on ws://%s:%d", host, server.port)
        task_status.started(server.port)


async def _connection(engine: Engine, ws: WebSocketConnection, token: str) -> None:
    first = await ws.get_message()
    request_id, name, args, problem = _parse(first)
    if problem is not None or name != "auth":
        await _send_error(ws, request_id, "unauthenticated", problem or "the first request must be auth")
        await ws.aclose(code=4401, reason="unauthenticated")
        return
    given = args.get("token")
    if not isinstance(given, str) or not hmac.compare_digest(given.encode(), token.encode()):
        await _send_error(ws, request_id, "unauthenticated", "bad token")
        await ws.aclose(code=4401, reason="unauthenticated")
        return
    await ws.send_message(json.dumps({"id": request_id, "ok": True, "result": {"protocol": PROTOCOL}}))
    async with trio.open_nursery() as nursery:
        session = Session(engine, ws, nursery)
        nursery.start_soon(session.pump)
        try:
            while True:
                text = await ws.get_message()
                request_id, name, args, problem = _parse(text)
                if problem is not None:
                    await session.reply(_error(request_id, "bad_request", problem))
                    continue
                nursery.start_soon(_dispatch, session, request_id, name, args)
        finally:
            nursery.cancel_scope.cancel()


def _parse(text: str | bytes) -> tuple[Any, str, dict[str, Any], str | None]:
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        return None, "", {}, f"not JSON: {exc}"
    if not isinstance(data, dict):
        return None, "", {}, "a request must be a JSON object"
    request_id = data.get("id")
    name = data.get("op")
    args = data.get("args", {})
    if not isinstance(name, str):
        return request_id, "", {}, "missing op"
    if not isinstance(args, dict):
        return request_id, name, {}, "args must be an object"
    return request_id, name, args, None


def _error(request_id: Any, code: str, message: str) -> dict[str, Any]:
    return {"id": request_id, "ok": False, "error": {"code": code, "message": message}}


async def _send_error(ws: WebSocketConnection, request_id: Any, code: str, message: str) -> None:
    await ws.send_message(json.dumps(_error(request_id, code, message)))


async def _dispatch(session: Session, request_id: Any, name: str, args: dict[str, Any]) -> None:
    handler = OPS.get(name)
    if handler is None:
        await session.reply(_error(request_id, "unknown_op", f"unknown op {name!r} (known: {', '.join(sorted(OPS))})"))
        return
    try:
        result = await handler(session, args)
    except ApiError as exc:
        await session.reply(_error(request_id, exc.code, str(exc)))
    except UnknownJob as exc:
        await session.reply(_error(request_id, "not_found", str(exc)))
    except (EngineError, ValueError, LookupError, TypeError) as exc:
        await session.reply(_error(request_id, "refused", one_line(exc)))
    else:
        await session.reply({"id": request_id, "ok": True, "result": result})


def _arg(args: dict[str, Any], key: str, kind: type, default: Any = ...) -> Any:
    value = args.get(key, default)
    if value is ...:
        raise ApiError("bad_request", f"args.{key} is required")
    if value is not None and value is not default and not isinstance(value, kind):
        raise ApiError("bad_request", f"args.{key}: expected {kind.__name__}")
    return value


# --- operations ----------------------------------------------------------------------------


@op("run")
async def _run(session: Session, args: dict[str, Any]) -> Any:
    params = _arg(args, "params", dict, {})
    if "rscript" in args:
        job_id = await session.engine.run_rscript(_arg(args, "rscript", str), params)
    else:
        job_id = await session.engine.run_action(_arg(args, "action", str), params)
    return {"job": job_id}


@op("status")
async def _status(session: Session, args: dict[str, Any]) -> Any:
    job_id = _arg(args, "job", str, None)
    if job_id is not None:
        return await session.engine.job(job_id)
    return {
        "statistics": session.engine.statistics(),
        "jobs": await session.engine.jobs(limit=_arg(args, "limit", int, 20), root_only=True),
    }


@op("jobs")
async def _jobs(session: Session, args: dict[str, Any]) -> Any:
    return await session.engine.jobs(
        limit=_arg(args, "limit", int, 50),
        state=_arg(args, "state", str, None),
        root_only=_arg(args, "root_only", bool, False),
    )


@op("logs")
async def _logs(session: Session, args: dict[str, Any]) -> Any:
    data = await session.engine.output(_arg(args, "job", str), attempt=_arg(args, "attempt", int, None))
    return {"output": data.decode("utf-8", errors="replace")}


@op("agents")
async def _agents(session: Session, args: dict[str, Any]) -> Any:
    return session.engine.agents()


@op("kill")
async def _kill(session: Session, args: dict[str, Any]) -> Any:
    return {"state": await session.engine.kill(_arg(args, "job", str))}


@op("wait")
async def _wait(session: Session, args: dict[str, Any]) -> Any:
    outcome = await session.engine.wait(_arg(args, "job", str))
    return {"job": outcome.job_id, "state": outcome.state, "error": outcome.error}


@op("stats")
async def _stats(session: Session, args: dict[str, Any]) -> Any:
    return session.engine.statistics()


@op("subscribe")
async def _subscribe(session: Session, args: dict[str, Any]) -> Any:
    """Push committed events (optionally only those whose kind starts with a prefix)."""
    prefix = _arg(args, "kind", str, "")
    subject = _arg(args, "subject", str, None)
    stream = session.next_stream
    session.next_stream += 1

    async def forward() -> None:
        async with session.engine.repo.subscribe() as events:
            async for event in events:
                kind = getattr(event, "kind", None)
                if kind is None:  # a marker that we fell behind
                    session.push({"stream": stream, "missed_events": _jsonable(event)})
                    continue
                if kind.startswith(prefix) and (subject is None or event.subject == subject):
                    session.push({"stream": stream, "event": _jsonable(event)})

    session.nursery.start_soon(forward)
    return {"stream": stream}


@op("tail")
async def _tail(session: Session, args: dict[str, Any]) -> Any:
    """Push a job's output as it is produced; what was stored before comes first."""
    job_id = _arg(args, "job", str)
    detail = await session.engine.job(job_id)  # raises UnknownJob
    stream = session.next_stream
    session.next_stream += 1
    send, receive = trio.open_memory_channel[Any](OUTBOX)
    stop = session.engine.controller.watch_output(job_id, send)  # before reading: no gap
    attempt = detail["attempts"] or None
    stored = await session.engine.output(job_id, attempt=attempt)
    stored_chunks = await session.engine.repo.read(output_count(job_id, attempt or 0))

    def push(chunk: Any) -> None:
        if chunk.attempt == attempt and chunk.seq < stored_chunks:
            return  # already sent as part of the stored output
        text = chunk.data.decode("utf-8", errors="replace")
        session.push({"stream": stream, "output": text, "attempt": chunk.attempt})

    async def forward() -> None:
        try:
            if stored:
                session.push({"stream": stream, "output": stored.decode("utf-8", errors="replace")})
            async with trio.open_nursery() as inner:

                async def until_done() -> None:
                    await session.engine.wait(job_id)
                    inner.cancel_scope.cancel()

                inner.start_soon(until_done)
                async for chunk in receive:
                    push(chunk)
            while True:  # chunks that arrived before the end was committed
                try:
                    push(receive.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            final = await session.engine.job(job_id)
            session.push({"stream": stream, "end": True, "state": final["state"]})
        finally:
            stop()

    session.nursery.start_soon(forward)
    return {"stream": stream}


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "__attrs_attrs__"):
        import attrs

        return attrs.asdict(obj)
    if hasattr(obj, "_asdict"):
        return obj._asdict()
    return obj
