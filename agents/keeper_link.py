"""The agent's side of its keeper (``wfe.agents.keeper``): start it if none runs, and talk to it.

``open_keeper(spool)`` connects to the keeper of ``spool`` (starting one, in a session of its
own, when none answers) and yields a ``KeeperLink``: ``spawn`` a script, ``exited`` to await
its end, ``kill`` its group, ``lease`` to forward the agent's lease, ``release`` a record the
agent is done with, and ``held`` (what the keeper held when the link opened: the attempts a
previous agent left behind).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import attrs
import trio

from wfe.agents.keeper import socket_name

log = logging.getLogger("wfe.agent.keeper")

#: Seconds to wait for a keeper that was just started to listen.
START_TIMEOUT = 10.0


class KeeperGone(OSError):
    """The keeper's connection closed: scripts can be neither started nor awaited."""


@attrs.define
class Held:
    """A script the keeper holds: running (``status`` None) or ended and not yet released."""

    key: str
    pid: int
    meta: dict[str, Any]
    status: int | None
    fenced: bool


@attrs.define
class Ended:
    """How a script ended: ``status`` as ``Popen.returncode`` (negative: the signal)."""

    status: int
    fenced: bool


class KeeperLink:
    """One connection to the keeper; see the module docstring."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._send_lock = trio.Lock()
        self._replies: dict[str, trio.MemorySendChannel[dict[str, Any]]] = {}
        self._ended: dict[str, Ended] = {}
        self._waiters: dict[str, trio.Event] = {}
        self._list_reply: trio.MemorySendChannel[list[dict[str, Any]]] | None = None
        self._closed = False
        self.held: list[Held] = []

    async def _send(self, message: dict[str, Any]) -> None:
        if self._closed:
            raise KeeperGone("the keeper is gone")
        async with self._send_lock:
            try:
                await self._stream.send_all(json.dumps(message).encode() + b"\n")
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise KeeperGone(f"the keeper is gone: {exc}") from exc

    async def _reader(self, *, task_status: trio.TaskStatus[None]) -> None:
        buffer = b""
        started = False
        try:
            while True:
                if not started:
                    task_status.started()
                    started = True
                try:
                    data = await self._stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                if not data:
                    return
                buffer += data
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    self._dispatch(json.loads(line))
        finally:
            self._closed = True
            for waiter in self._waiters.values():
                waiter.set()
            for channel in self._replies.values():
                channel.close()
            if self._list_reply is not None:
                self._list_reply.close()

    def _dispatch(self, message: dict[str, Any]) -> None:
        op = message.get("op")
        if op in ("spawned", "failed"):
            channel = self._replies.pop(message["key"], None)
            if channel is not None:
                channel.send_nowait(message)
        elif op == "exited":
            key = message["key"]
            self._ended[key] = Ended(status=int(message["status"]), fenced=bool(message["fenced"]))
            waiter = self._waiters.get(key)
            if waiter is not None:
                waiter.set()
        elif op == "held" and self._list_reply is not None:
            self._list_reply.send_nowait(message["attempts"])
            self._list_reply = None

    async def _list(self) -> list[Held]:
        send, receive = trio.open_memory_channel[list[dict[str, Any]]](1)
        self._list_reply = send
        await self._send({"op": "list"})
        try:
            records = await receive.receive()
        except trio.EndOfChannel as exc:
            raise KeeperGone("the keeper closed the connection") from exc
        held = [
            Held(key=r["key"], pid=r["pid"], meta=r["meta"], status=r["status"], fenced=r["fenced"])
            for r in records
        ]
        for h in held:
            if h.status is not None:
                self._ended[h.key] = Ended(status=h.status, fenced=h.fenced)
        return held

    async def spawn(
        self,
        key: str,
        argv: list[str],
        *,
        cwd: str,
        env: dict[str, str],
        stdin: str,
        stdout: str,
        stderr: str,
        memory: int | None,
        meta: dict[str, Any],
    ) -> int:
        """Start ``argv`` as the script of attempt ``key``; returns its pid (also its process
        group). Raises ``OSError`` when it cannot be started, ``KeeperGone`` without a keeper."""
        send, receive = trio.open_memory_channel[dict[str, Any]](1)
        self._replies[key] = send
        self._waiters.setdefault(key, trio.Event())
        request = {
            "op": "spawn",
            "key": key,
            "argv": argv,
            "cwd": cwd,
            "env": env,
            "stdin": stdin,
            "stdout": stdout,
            "stderr": stderr,
            "memory": memory,
            "meta": {**meta, "started": time.monotonic()},  # wall-clock: for the next agent
        }
        await self._send(request)
        try:
            reply = await receive.receive()
        except trio.EndOfChannel as exc:
            raise KeeperGone("the keeper closed the connection") from exc
        if reply["op"] == "failed":
            raise OSError(reply["error"])
        return int(reply["pid"])

    async def exited(self, key: str) -> Ended:
        """Wait until the script of ``key`` has ended and been reaped; how it ended."""
        waiter = self._waiters.setdefault(key, trio.Event())
        if key not in self._ended:
            await waiter.wait()
        if key not in self._ended:
            raise KeeperGone(f"the keeper went away while {key} ran")
        return self._ended[key]

    def ended(self, key: str) -> Ended | None:
        """How ``key`` ended, if it has (never blocks)."""
        return self._ended.get(key)

    async def release(self, key: str) -> None:
        """The agent has the end of ``key`` safely: the keeper may forget it."""
        self._ended.pop(key, None)
        self._waiters.pop(key, None)
        with contextlib.suppress(KeeperGone):
            await self._send({"op": "release", "key": key})

    async def lease(self, until: float) -> None:
        """Forward the agent's lease: scripts may run until ``until`` (CLOCK_MONOTONIC)."""
        await self._send({"op": "lease", "until": until})

    def kill(self, pid: int, sig: int) -> None:
        """Signal the process group of a script the keeper started."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)

    async def aclose(self) -> None:
        self._closed = True
        await self._stream.aclose()


async def _connect(name: bytes) -> trio.SocketStream:
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await sock.connect(name)
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


def _start_keeper(spool: str, name: bytes) -> None:
    """Start the keeper of ``spool`` and wait (blocking: run in a thread) until it listens."""
    log_path = os.path.join(spool, "keeper.log")
    with open(log_path, "ab") as log_file:
        subprocess.run(
            [sys.executable, "-P", "-m", "wfe.agents.keeper", "--daemon", spool],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            start_new_session=True,
            cwd=spool,
            check=False,
        )
    deadline = time.monotonic() + START_TIMEOUT  # wall-clock: a blocking wait in a thread
    while True:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(name)
                return
            except OSError:
                if time.monotonic() > deadline:  # wall-clock
                    raise
        time.sleep(0.005)  # wall-clock: in a worker thread, not the loop


@contextlib.asynccontextmanager
async def open_keeper(spool: str | os.PathLike[str]) -> AsyncIterator[KeeperLink]:
    """Connect to the keeper of ``spool``, starting it when none answers (see module doc)."""
    path = os.fspath(spool)
    name = socket_name(path)
    try:
        stream = await _connect(name)
    except OSError:
        await trio.to_thread.run_sync(_start_keeper, path, name)
        stream = await _connect(name)
    async with _linked(stream) as link:
        yield link


@contextlib.asynccontextmanager
async def running_keeper(spool: str | os.PathLike[str]) -> AsyncIterator[KeeperLink | None]:
    """Connect to the keeper of ``spool`` if one runs (it holds scripts a previous agent left);
    None when none answers: none is started (an agent starts its keeper at its first attempt,
    so that an idle agent costs no process)."""
    try:
        stream = await _connect(socket_name(os.fspath(spool)))
    except OSError:
        yield None
        return
    async with _linked(stream) as link:
        yield link


@contextlib.asynccontextmanager
async def _linked(stream: trio.SocketStream) -> AsyncIterator[KeeperLink]:
    link = KeeperLink(stream)
    async with trio.open_nursery() as nursery:
        await nursery.start(link._reader)
        link.held = await link._list()
        try:
            yield link
        finally:
            nursery.cancel_scope.cancel()
            with trio.CancelScope(shield=True):
                await link.aclose()


def signal_name(status: int) -> str:
    """How a returncode reads in a log line."""
    if status < 0:
        try:
            return signal.Signals(-status).name
        except ValueError:
            return f"signal {-status}"
    return f"exit {status}"
