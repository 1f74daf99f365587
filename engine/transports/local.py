"""The local transport: agents on this machine, over a Unix socket, started by the engine.

The engine listens on ``run/agents.sock`` (mode 0600, in a 0700 directory) and speaks the
same framed messages as ``wfe.links.stream`` on the agent side (the framing code is shared:
``wfe.links.stream.StreamLink``). The first message on a connection must be ``AgentHello``.

The agent processes themselves, their groups and their supervision are in
``wfe.engine.transports.local_agents``.
"""

from __future__ import annotations

import collections
import logging
import os
import socket as stdsocket
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from wfe.links.stream import StreamLink
from wfe.protocols import codec
from wfe.protocols.framing import frame
from wfe.protocols.messages import MAX_MESSAGE_BYTES, AgentHello, Message

if TYPE_CHECKING:
    from wfe.engine.dispatch.controller import AgentController

log = logging.getLogger("wfe.local")

HELLO_TIMEOUT = 10.0
OUTBOX_SIZE = 100_000
SEND_BYTES = 256 * 1024  # write at most about this much per send_all


class LocalAgentLink:
    """The controller's ``AgentLink`` for one socket connection: an ordered outbox.

    ``send_nowait`` encodes and frames the message (``wfe.links.stream``'s framing) and, when
    nothing is waiting to go before it, writes it to the socket at once: a non-blocking write
    that the socket buffer takes whole in the usual case, with no task step at all. What does
    not fit waits in the outbox, in order, for ``pump``, which writes everything waiting with
    one ``send_all``. A message that cannot travel (over ``MAX_MESSAGE_BYTES`` encoded) is
    logged and dropped, as the XMPP transport does. An agent that lets ``OUTBOX_SIZE``
    messages pile up is cut off.
    """

    def __init__(self, stream: trio.abc.SendStream, *, max_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self._stream = stream
        # the socket to write to directly; None for other streams (all goes through the pump)
        self._socket = stream.socket if isinstance(stream, trio.SocketStream) else None
        self._max_bytes = max_bytes
        self._waiting: collections.deque[bytes] = collections.deque()  # frames, in order
        self._sending = False  # the pump is writing: nothing may overtake what it holds
        self._closed = False
        self._wake = trio.Event()

    def send_nowait(self, message: Message) -> None:
        if self._closed:
            return
        data = self._frame(message)
        if not data:
            return
        if not self._waiting and not self._sending and self._socket is not None:
            data = self._write_now(self._socket, data)
            if not data:
                return
        if len(self._waiting) >= OUTBOX_SIZE:
            log.error("outbox full: closing a local agent connection that does not read")
            self.close()
            return
        self._waiting.append(data)
        self._wake.set()

    def close(self) -> None:
        """Send nothing more (the connection is ending); ``pump`` returns."""
        self._closed = True
        self._waiting.clear()
        self._wake.set()

    async def pump(self) -> None:
        """Send what waits in the outbox until the connection breaks or is closed."""
        while not self._closed:
            if not self._waiting:
                await self._wake.wait()
                self._wake = trio.Event()
                continue
            frames, size = [], 0
            while self._waiting and size < SEND_BYTES:
                frames.append(self._waiting.popleft())
                size += len(frames[-1])
            self._sending = True
            try:
                await self._stream.send_all(b"".join(frames))
            finally:
                self._sending = False

    def _write_now(self, sock: trio.socket.SocketType, data: bytes) -> bytes:
        """Write what the socket takes without blocking; return the rest."""
        fd = sock.fileno()
        if fd < 0:  # closed: the connection is ending
            return data
        try:
            sent = os.write(fd, data)
        except BlockingIOError:
            return data
        except OSError:  # the agent went away: the pump's send fails too and ends the connection
            return data
        return data[sent:]

    def _frame(self, message: Message) -> bytes:
        payload = codec.encode(message)
        if len(payload) > self._max_bytes:
            log.error(
                "cannot send %s of %d bytes to a local agent: over the limit of %d; dropped",
                type(message).__name__,
                len(payload),
                self._max_bytes,
            )
            return b""
        return frame(payload)


async def serve_local_agents(
    controller: AgentController,
    socket_path: Path,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept local agents on ``socket_path`` until cancelled."""
    socket_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    socket_path.unlink(missing_ok=True)  # noqa: ASYNC240 - once, at start, on a local directory
    sock = trio.socket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
    await sock.bind(os.fspath(socket_path))
    os.chmod(socket_path, 0o600)
    sock.listen(128)
    listener = trio.SocketListener(sock)
    log.info("local agents connect to %s", socket_path)

    async def handler(stream: trio.SocketStream) -> None:
        await _serve_one(controller, stream)

    async with listener:
        task_status.started()
        await trio.serve_listeners(handler, [listener])


async def _serve_one(controller: AgentController, stream: trio.abc.Stream) -> None:
    link = StreamLink(stream)
    incoming = link.receive()
    with trio.move_on_after(HELLO_TIMEOUT):
        try:
            hello = await incoming.__anext__()
        except StopAsyncIteration:
            return
    if not isinstance(hello, AgentHello):
        log.warning("local connection closed: first message must be a hello")
        await link.aclose()
        return
    outbox = LocalAgentLink(stream)  # the only writer of the stream: receiving goes via link
    controller.agent_connected(hello, outbox, transport="local")
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_pump, outbox, nursery.cancel_scope)
            async for message in incoming:
                controller.agent_message(hello.name, message)
                # The repository is behind (a flood of output): read no more from this agent
                # until it catches up; the socket pushes back and the agent's spool holds it.
                await controller.read_room(hello.name)
            nursery.cancel_scope.cancel()
    finally:
        controller.agent_disconnected(hello.name, outbox)
        outbox.close()  # before the socket closes: its descriptor may be reused after
        with trio.CancelScope(shield=True):
            await link.aclose()


async def _pump(outbox: LocalAgentLink, scope: trio.CancelScope) -> None:
    try:
        await outbox.pump()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    scope.cancel()
