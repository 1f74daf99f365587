"""The local transport: agents on this machine, over a Unix socket, started by the engine.

The engine listens on ``run/agents.sock`` (mode 0600, in a 0700 directory) and speaks the
same framed messages as ``wfe.links.stream`` on the agent side (the framing code is shared:
``wfe.links.stream.StreamLink``). The first message on a connection must be ``AgentHello``.

``LocalAgents`` starts ``agents`` processes in their own sessions, so that an engine
killed with SIGKILL does not take them (and the scripts they run) with it: they keep their
results in their spools and reconnect when the engine comes back. Two agents with the same
name cannot run at once (the spool is locked), so an engine that starts again simply starts
its agents again; those still alive from before keep their name, the new ones exit, and
``watch_local_agents`` watches the old ones instead. An agent that dies is started again
(with a backoff), and adopts from its keeper what its scripts are doing.
"""

from __future__ import annotations

import collections
import functools
import logging
import os
import signal
import socket as stdsocket
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from wfe.engine.errors import EngineError
from wfe.links.stream import StreamLink
from wfe.protocols import codec
from wfe.protocols.framing import frame
from wfe.protocols.messages import MAX_MESSAGE_BYTES, AgentHello, Message, Shutdown

if TYPE_CHECKING:
    from wfe.engine.dispatch.controller import AgentController

log = logging.getLogger("wfe.local")

HELLO_TIMEOUT = 10.0
# wfe.agents.main.EXIT_LOCKED: another process of that name holds the spool. Not imported: the
# engine loads no agent module.
EXIT_LOCKED = 3
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


class LocalAgents:
    """Starts, restarts and stops the agent processes the engine runs on its own machine."""

    def __init__(
        self,
        *,
        count: int,
        slots: int,
        socket_path: Path,
        directory: Path,
        public_key: Path | None,
        heartbeat: float,
        restart_backoff: float = 1.0,
    ) -> None:
        self.names = [f"local-{i}" for i in range(1, count + 1)]
        self._slots = slots
        self._socket = socket_path
        self._dir = directory
        self._key = public_key
        self._heartbeat = heartbeat
        self.restart_backoff = restart_backoff
        self._processes: dict[str, trio.Process] = {}
        self.restarts: collections.Counter[str] = collections.Counter()
        self.stopping = False  # set by stop(): exits from then on are expected

    def home(self, name: str) -> Path:
        """The agent's directory: its spool, work directories and ``agent.log``."""
        return self._dir / name

    def command(self, name: str) -> list[str]:
        home = self.home(name)
        cmd = [
            sys.executable,
            "-P",  # never import from the working directory: a workspace has an agents/ folder
            "-m",
            "wfe.agents",
            "--name",
            name,
            "--socket",
            os.fspath(self._socket),
            "--slots",
            str(self._slots),
            "--spool",
            os.fspath(home / "spool"),
            "--workdir",
            os.fspath(home / "work"),
            "--heartbeat",
            str(self._heartbeat),
            "--give-up-after",
            "120",
        ]
        if self._key is not None:
            cmd += ["--trusted-key", os.fspath(self._key)]
        return cmd

    async def start(self) -> None:
        """Start every agent (those already running from before exit at once: ``EXIT_LOCKED``)."""
        for name in self.names:
            await self.spawn(name)

    async def spawn(self, name: str) -> trio.Process:
        """Start agent ``name`` (again)."""
        home = self._dir / name
        home.mkdir(parents=True, exist_ok=True)
        with open(home / "agent.log", "ab") as log_file:  # noqa: ASYNC230 - once per agent start
            process = await trio.lowlevel.open_process(
                self.command(name),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                cwd=home,
                start_new_session=True,
            )
        self._processes[name] = process
        return process

    @property
    def processes(self) -> dict[str, trio.Process]:
        """The agent processes started last, by agent name."""
        return dict(self._processes)

    def holder(self, name: str) -> int | None:
        """The pid of the process holding agent ``name``'s spool lock (from before), if any."""
        try:
            text = (self.home(name) / "spool" / "agent.lock").read_text()
            pid = int(text.split()[0])
        except (OSError, ValueError, IndexError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return pid

    async def stop(self, controller: AgentController, *, grace: float = 5.0) -> None:
        """Ask our agents to exit, leaving what they run to their keepers (a stopping engine
        cancels nothing: the next start finds it running, or finished, as after a crash);
        then make sure they did."""
        self.stopping = True
        for name in self.names:
            entry = controller.agents.get(name)
            if entry is not None and entry.link is not None:
                entry.link.send_nowait(Shutdown(reason="engine stopping", leave_running=True))
        processes = list(self._processes.values())
        with trio.move_on_after(grace):
            for process in processes:
                await process.wait()
        for process in processes:
            if process.returncode is None:
                try:
                    os.killpg(process.pid, signal.SIGKILL)  # the agent's own session only:
                except ProcessLookupError:  # its scripts are the keeper's, in theirs
                    pass
                await process.wait()


class LocalAgentFailed(EngineError):
    """A local agent process exited with a failure before it ever connected: it cannot start."""


async def watch_local_agents(local: LocalAgents, controller: AgentController) -> None:
    """Supervise the local agent processes until cancelled: one that exits while the engine
    runs is started again, after ``restart_backoff`` seconds doubling up to a minute (back
    to the start once it has run a minute); its successor adopts what its scripts' keeper
    holds. An agent still running from an engine before holds the name (``EXIT_LOCKED``):
    it is watched instead, and replaced when it exits. An agent that exits with a failure
    before it ever connected raises ``LocalAgentFailed`` (with the last line of its
    ``agent.log``), so that the engine stops at once rather than wait for agents that will
    never come.
    """
    failed: list[LocalAgentFailed] = []
    async with trio.open_nursery() as nursery:
        for name, process in local.processes.items():
            watch = functools.partial(_supervise, local, controller, failed, nursery.cancel_scope)
            nursery.start_soon(watch, name, process)
    if failed:
        raise failed[0]


async def _supervise(
    local: LocalAgents,
    controller: AgentController,
    failed: list[LocalAgentFailed],
    watching: trio.CancelScope,
    name: str,
    process: trio.Process,
) -> None:
    delay = local.restart_backoff
    while True:
        started = trio.current_time()
        code = await process.wait()
        if local.stopping:
            return
        if code == EXIT_LOCKED:
            pid = local.holder(name)
            if pid is not None:
                log.info("local agent %s still runs from before (pid %d): watching it", name, pid)
                await _wait_pid(pid)
                if local.stopping:
                    return
                log.warning("local agent %s (pid %d, from before) exited: starting it", name, pid)
                process = await local.spawn(name)
                continue
        agent_log = local.home(name) / "agent.log"
        last = await trio.to_thread.run_sync(_last_line, agent_log)
        detail = f": {last} (in {agent_log})" if last else f" ({agent_log} is empty)"
        if code > 0 and code != EXIT_LOCKED and name not in controller.agents:
            failed.append(
                LocalAgentFailed(f"local agent {name} cannot start: exit code {code}{detail}")
            )
            watching.cancel()  # one is enough: stop watching the others
            return
        if trio.current_time() - started >= 60:
            delay = local.restart_backoff
        log.error(
            "local agent %s exited with %s%s; starting it again in %g s",
            name,
            _how(code),
            detail,
            delay,
        )
        await trio.sleep(delay)
        delay = min(2 * delay, 60.0)
        if local.stopping:
            return
        local.restarts[name] += 1
        process = await local.spawn(name)


async def _wait_pid(pid: int) -> None:
    """Wait until process ``pid`` (not our child) has exited."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except OSError:  # no pidfd here: look now and then
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            await trio.sleep(0.5)
    try:
        await trio.lowlevel.wait_readable(fd)
    finally:
        trio.lowlevel.notify_closing(fd)
        os.close(fd)


def _how(code: int) -> str:
    try:
        return f"code {code}" if code >= 0 else f"signal {signal.Signals(-code).name}"
    except ValueError:
        return f"signal {-code}"


def _last_line(path: Path, tail: int = 8192) -> str:
    """The last non-blank line of ``path`` (of its last ``tail`` bytes), or ""."""
    try:
        with open(path, "rb") as file:
            file.seek(max(0, file.seek(0, os.SEEK_END) - tail))
            lines = file.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return ""
    return next((x.strip() for x in reversed(lines) if x.strip()), "")
