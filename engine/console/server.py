"""The console server: one loopback port for the websocket API (``wfe.console.v1``) and the page.

Each connection must authenticate first: its first request is ``auth`` with a token, sent
within ``auth_timeout``; anything else, a bad token or silence is answered with an
``unauthenticated`` error and the connection is closed (4401) before any operation runs.
After that every request is checked against the operation's least role, handled in a task
of its own (at most ``max_inflight`` at once per connection), and answered exactly once. A
malformed or oversized request is answered with an error and the connection stays up.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_server_stream

from wfe.engine.console import protocol, web
from wfe.engine.console.hub import ConsoleHub
from wfe.engine.console.metrics import ConsoleMetrics
from wfe.engine.console.protocol import ApiError, BadFrame, Request
from wfe.engine.console.registry import OPS
from wfe.engine.console.session import ClientGone, ClientStalled, Limits, Session
from wfe.engine.console.tokens import Authenticator, Principal, Role
from wfe.engine.console.wire import Wire
from wfe.engine.errors import EngineError
from wfe.engine.runtime.actions import one_line

if TYPE_CHECKING:
    from wfe.engine.runtime.facade import Engine

log = logging.getLogger("wfe.console")


class ConsoleServer:
    """Serves one engine's console; ``serve`` runs it until cancelled."""

    def __init__(
        self, engine: Engine, *, bootstrap_token: str | None, limits: Limits | None = None
    ) -> None:
        self.engine = engine
        self.limits = limits or Limits()
        self.hub = ConsoleHub(
            engine,
            flush_interval=self.limits.flush_interval,
            frames_per_second=self.limits.event_frames_per_second,
        )
        self.auth = Authenticator(engine.token_by_digest, bootstrap_token)
        self.sessions: set[Session] = set()
        self.connections = 0  # open sockets on the port, whatever they are doing
        self.unauthenticated = 0  # of them, those not authenticated (yet)
        self._refusing = 0  # sockets being refused at once (not counted above)
        self.metrics = ConsoleMetrics(self)
        self.refused = {"unauthenticated": 0, "stalled": 0, "forbidden": 0, "too_many": 0}
        self.port = 0

    async def serve(
        self, host: str, port: int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen on ``host:port`` (0: any free port); ``task_status.started`` gets the port."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.hub.run)
            nursery.start_soon(self.metrics.run)
            listeners = await trio.open_tcp_listeners(port, host=host)
            self.port = listeners[0].socket.getsockname()[1]
            await nursery.start(trio.serve_listeners, self._connection, listeners)
            log.info(
                "console on http://%s:%d/ (websocket protocol %s)",
                host,
                self.port,
                protocol.PROTOCOL,
            )
            task_status.started(self.port)

    # --- one TCP connection ----------------------------------------------------------------

    async def _connection(self, stream: trio.SocketStream) -> None:
        # Admission is decided here, before the first await: counting a connection only once
        # it had authenticated let every connection that raced through its handshake in
        # (1,006 open under a cap of 1,000).
        limits = self.limits
        if self.connections >= limits.max_connections or (
            self.unauthenticated >= limits.max_unauthenticated
        ):
            await self._refuse_at_once(stream)
            return
        self.connections += 1
        self.unauthenticated += 1
        authenticated = False

        def now_authenticated() -> None:
            nonlocal authenticated
            authenticated = True
            self.unauthenticated -= 1

        try:
            # One deadline for everything before authentication: head, upgrade and auth.
            deadline = trio.current_time() + limits.auth_timeout
            with trio.CancelScope(
                deadline=min(deadline, trio.current_time() + web.HEAD_TIMEOUT)
            ) as reading:
                try:
                    data = await web.read_head(stream)
                    head = web.parse_head(data)
                except (web.BadHttp, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    await _try_send(stream, web.response(400, "Bad Request", f"{exc}\n".encode()))
                    return
            if reading.cancelled_caught:
                await _try_send(
                    stream, web.response(408, "Request Timeout", b"no request head in time\n")
                )
                return
            if not head.wants_websocket:
                page = await self.metrics.answer(head) if self.metrics.serves(head) else None
                await _try_send(stream, page if page is not None else web.answer(head))
                return
            if not head.same_origin():
                await _try_send(
                    stream, web.response(403, "Forbidden", b"cross-origin websocket refused\n")
                )
                return
            await self._websocket(Wire(stream, data), deadline, now_authenticated)
        finally:
            self.connections -= 1
            if not authenticated:
                self.unauthenticated -= 1
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def _refuse_at_once(self, stream: trio.SocketStream) -> None:
        """Answer 503 without reading the request, then close once the peer has sent its
        head (or within ``REFUSE_LINGER``): closing with its head unread would reset the
        connection, and the answer could be lost. At most ``max_unauthenticated`` sockets
        linger like this at once; beyond that the answer is sent and the socket closed."""
        self.refused["too_many"] += 1
        linger = self._refusing < self.limits.max_unauthenticated
        self._refusing += linger
        try:
            with trio.move_on_after(REFUSE_LINGER if linger else 0.1):
                await stream.send_all(_TOO_MANY)
                await stream.send_eof()
                while linger and await stream.receive_some(web.MAX_HEAD):
                    pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self._refusing -= linger
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def _websocket(
        self, wire: Wire, deadline: float, now_authenticated: Callable[[], None]
    ) -> None:
        async with trio.open_nursery() as nursery:
            ws: WebSocketConnection | None = None
            with trio.CancelScope(deadline=deadline):
                request = await wrap_server_stream(nursery, wire, message_queue_size=1,
                                                   max_message_size=self.limits.max_message)  # fmt: skip
                ws = await request.accept()
            if ws is None:
                nursery.cancel_scope.cancel()
                return
            try:
                await self._authenticated(ws, wire, deadline, now_authenticated)
            except ConnectionClosed:
                pass
            finally:
                nursery.cancel_scope.cancel()

    async def _authenticated(
        self,
        ws: WebSocketConnection,
        wire: Wire,
        deadline: float,
        now_authenticated: Callable[[], None],
    ) -> None:
        principal, request_id = await self._authenticate(ws, deadline)
        if principal is None:
            self.refused["unauthenticated"] += 1
            await _close(ws, protocol.CLOSE_UNAUTHENTICATED, "unauthenticated")
            return
        full = self._full_for(principal)
        if full:
            self.refused["too_many"] += 1
            await ws.send_message(protocol.error(request_id, protocol.UNAVAILABLE, full))
            await _close(ws, protocol.CLOSE_TRY_LATER, "too many console connections")
            return
        now_authenticated()  # from here on it counts as authenticated (no await in between)
        close: tuple[int, str] | None = (protocol.CLOSE_GOING_AWAY, "the engine is stopping")
        session: Session | None = None
        try:
            async with trio.open_nursery() as nursery:
                session = Session(server=self, ws=ws, wire=wire, principal=principal,
                                  nursery=nursery, limits=self.limits)  # fmt: skip
                self.sessions.add(session)
                await session.send(protocol.ok(request_id, self._welcome(session)))
                nursery.start_soon(self._writer, session)
                await self._read_requests(session)
        except* ClientStalled as group:
            self.refused["stalled"] += 1
            close = (protocol.CLOSE_TOO_SLOW, str(group.exceptions[0]))
            log.warning("console: closing %s's connection: %s", principal.name, close[1])
        except* (ConnectionClosed, ClientGone):
            close = None  # the client went away (or was closed on purpose): nothing to say
        finally:
            if session is not None:
                self.sessions.discard(session)
                session.close_all_streams()
                session.outbox.close()
            if close is not None:
                await _close(ws, *close)

    async def _writer(self, session: Session) -> None:
        await session.pump()  # ConnectionClosed or ClientStalled end the session

    def _full_for(self, principal: Principal) -> str:
        """Why ``principal`` may not have one more connection now ("" if it may).

        Admins always may: their socket was admitted under ``max_connections`` already. The
        others stop at ``max_connections - max_unauthenticated - admin_reserve`` authenticated
        connections, so that whatever they open, an admin still finds a free socket.
        """
        limits = self.limits
        if principal.role >= Role.ADMIN:
            return ""
        room = limits.max_connections - limits.max_unauthenticated - limits.admin_reserve
        authenticated = self.connections - self.unauthenticated
        if authenticated < room:
            return ""
        return (
            f"too many console connections: {authenticated} open; the last"
            f" {limits.admin_reserve} of {limits.max_connections - limits.max_unauthenticated}"
            " are kept for admin tokens (try again later)"
        )

    async def _authenticate(
        self, ws: WebSocketConnection, deadline: float
    ) -> tuple[Principal | None, Any]:
        """Read the first request; return who it authenticates (None: refused, already said why)."""
        with trio.CancelScope(deadline=deadline):
            text = await ws.get_message()
            try:
                request = protocol.parse_request(text, max_size=self.limits.max_request)
            except BadFrame as exc:
                await ws.send_message(protocol.error(exc.request_id, protocol.UNAUTHENTICATED,
                                                     f"authenticate first; and: {exc}"))  # fmt: skip
                return None, None
            if request.op != "auth":
                await ws.send_message(
                    protocol.error(request.id, protocol.UNAUTHENTICATED, _AUTH_FIRST)
                )
                return None, None
            wanted = request.args.get("protocol", protocol.PROTOCOL)
            if wanted != protocol.PROTOCOL:
                await ws.send_message(protocol.error(request.id, protocol.UNSUPPORTED_PROTOCOL,
                                                     f"this engine speaks {protocol.PROTOCOL}, not {wanted!r}"))  # fmt: skip
                return None, None
            principal = await self.auth.authenticate(request.args.get("token"))  # type: ignore[arg-type]
            if principal is None:
                await ws.send_message(
                    protocol.error(request.id, protocol.UNAUTHENTICATED, "bad or revoked token")
                )
                return None, None
            return principal, request.id
        await ws.send_message(protocol.error(None, protocol.UNAUTHENTICATED,
                                             f"no auth request within {self.limits.auth_timeout:g} s"))  # fmt: skip
        return None, None

    def _welcome(self, session: Session) -> dict[str, Any]:
        from wfe.engine import __version__

        return {
            "protocol": protocol.PROTOCOL,
            "engine": __version__,
            "name": session.name,
            "role": session.role.label,
            "ops": ops_table(session),
            "limits": {
                "max_request": self.limits.max_request,
                "max_message": self.limits.max_message,
            },
        }

    async def _read_requests(self, session: Session) -> None:
        while True:
            text = await session.ws.get_message()
            try:
                request = protocol.parse_request(text, max_size=self.limits.max_request)
            except BadFrame as exc:
                await session.send(protocol.error(exc.request_id, exc.code, str(exc)))
                continue
            await session.inflight.acquire()  # a client that does not read its replies stops here
            session.nursery.start_soon(self._handle, session, request)

    async def _handle(self, session: Session, request: Request) -> None:
        try:
            frame = await self.dispatch(session, request)
            await session.send(frame)
            session.streams_opened_here()
        except trio.ClosedResourceError:
            pass
        finally:
            session.inflight.release()

    async def dispatch(self, session: Session, request: Request) -> str:
        """Run one request and return its reply frame (never raises for a refused request)."""
        try:
            found = OPS.get(request.op)
            if request.op == "auth":
                raise ApiError(protocol.BAD_REQUEST, f"already authenticated as {session.name}")
            if found is None:
                known = ", ".join(sorted(OPS))
                raise ApiError(
                    protocol.UNKNOWN_OP, f"unknown op {request.op[:64]!r} (known: {known})"
                )
            if not found.allows(session.role):
                self.refused["forbidden"] += 1
                raise ApiError(
                    protocol.FORBIDDEN,
                    f"{found.name} needs role {found.role.label}; token {session.name!r} is {session.role.label}",
                )
            result = await found.handler(session, request.args)
        except ApiError as exc:
            return protocol.error(request.id, exc.code, str(exc))
        except LookupError as exc:
            return protocol.error(request.id, protocol.NOT_FOUND, one_line(exc))
        except (EngineError, ValueError, TypeError) as exc:
            return protocol.error(request.id, protocol.REFUSED, one_line(exc))
        except Exception as exc:  # a bug in an op: say so, keep the connection and the engine
            log.exception("console op %s failed", request.op)
            return protocol.error(
                request.id, protocol.INTERNAL, f"internal error in {request.op}: {one_line(exc)}"
            )
        try:
            return protocol.ok(request.id, result)
        except (TypeError, ValueError) as exc:
            return protocol.error(
                request.id, protocol.INTERNAL, f"{request.op}: result is not JSON: {exc}"
            )

    def revoke(self, name: str) -> int:
        """Close every connection that uses the token ``name``; return how many."""
        doomed = [s for s in self.sessions if s.name == name]
        for session in doomed:
            session.nursery.start_soon(
                _close, session.ws, protocol.CLOSE_REVOKED, f"token {name!r} was revoked"
            )
        return len(doomed)

    def statistics(self) -> dict[str, Any]:
        return {
            "connections": len(self.sessions),
            "sockets": self.connections,
            "unauthenticated": self.unauthenticated,
            "refused": dict(self.refused),
            **self.hub.statistics(trio.current_time()),
            "queued_frames": sum(len(s.outbox) for s in self.sessions),
            "bytes_sent": sum(s.bytes_sent for s in self.sessions),
            "frames_sent": sum(s.frames_sent for s in self.sessions),
            "frames_direct": sum(s.frames_direct for s in self.sessions),
            "events_missed": sum(
                st.missed_total for s in self.sessions for st in s.event_streams.values()
            ),
        }


REFUSE_LINGER = 1.0  # seconds a refused socket may take to send its head before it is closed
_TOO_MANY = web.response(503, "Service Unavailable", b"too many console connections\n")
_AUTH_FIRST = 'authenticate first: send {"id": 1, "op": "auth", "args": {"token": "..."}}'


def ops_table(session: Session | None = None) -> list[dict[str, Any]]:
    """Every operation with its least role (and whether ``session`` may use it)."""
    return [
        {"op": o.name, "role": o.role.label, "summary": o.summary}
        | ({} if session is None else {"allowed": o.allows(session.role)})
        for o in sorted(OPS.values(), key=lambda o: o.name)
    ]


async def _close(ws: WebSocketConnection, code: int, reason: str) -> None:
    with trio.CancelScope(shield=True), trio.move_on_after(2):
        await ws.aclose(code=code, reason=reason[:120])


async def _try_send(stream: trio.abc.Stream, data: bytes) -> None:
    try:
        with trio.move_on_after(web.HEAD_TIMEOUT):
            await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
