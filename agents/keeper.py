"""The keeper: a small per-agent supervisor that outlives its agent (``python -m wfe.agents.keeper``).

An agent starts its scripts through its keeper: one process per spool, in a session of its
own, started by the agent when none runs (``wfe.agents.keeper_link``). The keeper is the
scripts' parent. It starts each in a new session (its own process group) with stdout and
stderr going to files in the attempt's directory, reaps it, kills what the script left in
its group, and keeps the exit status until the agent says it has it. So when the agent dies
(SIGKILL, the OOM killer, a crash) its scripts run on and lose no output, and the agent that
starts next asks the keeper what it holds, adopts what still runs and reports what ended
(containerd's shim, one per agent rather than one per script: a script costs no extra
process).

The keeper also enforces the agent's **lease** (docs/decisions.md #41): the agent forwards
the time until which the engine lets its attempts run (``CLOCK_MONOTONIC``, the same clock
in every process of the host). Once that time passes with no renewal — the agent is cut off
from the engine, or dead and not back — the keeper kills every script it holds (SIGTERM,
then SIGKILL after ``KILL_GRACE``) and reports them ``fenced``. The engine dispatches that
work again only after the same lease has run out on its side, so a job never runs twice at
once.

Wire: newline-delimited JSON on a Unix socket in the abstract namespace (no path length
limit), accepted only from the keeper's own user (``SO_PEERCRED``). One agent at a time; a
new connection replaces the old. Requests: ``spawn``, ``lease``, ``release``, ``list``.
Unsolicited: ``exited``. The keeper exits once no agent is connected and it runs nothing,
after ``IDLE_EXIT`` seconds, or ``KEEP_ENDED`` seconds while it keeps exit statuses no agent
came back for.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import json
import os
import resource
import selectors
import signal
import socket
import struct
import subprocess
import sys
import time
from typing import Any

#: Seconds between SIGTERM and SIGKILL when the lease runs out.
KILL_GRACE = 2.0

#: Seconds the keeper stays with nothing to hold and no agent, in case one reconnects.
IDLE_EXIT = 3.0

#: Seconds the keeper keeps the exit status of scripts that ended while no agent was there
#: to take it, waiting for one to come back.
KEEP_ENDED = 600.0


def socket_name(spool: str | os.PathLike[str]) -> bytes:
    """The abstract socket address of the keeper of ``spool``: named by the spool directory
    itself (its device and inode), its path and the user, so that the same directory seen
    from another mount namespace (a service started again) finds the same keeper, and
    another directory that happens to have the same path there (a container's) never does."""
    st = os.stat(spool)
    key = f"{os.path.realpath(spool)}\0{os.getuid()}\0{st.st_dev}:{st.st_ino}"
    digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:32]
    return b"\0wfe-keeper-" + digest.encode()


class _Child:
    def __init__(self, key: str, popen: subprocess.Popen[bytes], meta: dict[str, Any]) -> None:
        self.key = key
        self.popen = popen
        self.pid = popen.pid
        self.meta = meta
        self.pidfd = os.pidfd_open(popen.pid)
        self.status: int | None = None  # returncode once reaped (negative: killed by a signal)
        self.fenced = False
        self.term_at: float | None = None  # when the lease killing began

    def record(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "pid": self.pid,
            "meta": self.meta,
            "status": self.status,
            "fenced": self.fenced,
        }


class Keeper:
    """The keeper's state and loop; see the module docstring."""

    def __init__(self, spool: str) -> None:
        self.spool = spool
        self.children: dict[str, _Child] = {}
        self.by_fd: dict[int, _Child] = {}
        self.lease_until: float | None = None
        self.agent: socket.socket | None = None
        self.buffer = b""
        self.selector = selectors.DefaultSelector()
        self.idle_since = time.monotonic()  # wall-clock: a plain process, no trio here

    def serve(self, listener: socket.socket) -> None:
        listener.setblocking(False)
        self.selector.register(listener, selectors.EVENT_READ, "listen")
        # The keeper is a subreaper: what a script leaves behind when its own parent dies is
        # reparented here and reaped at once (SIGCHLD wakes the loop), never left a zombie.
        _set_child_subreaper()
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        self.selector.register(wake_r, selectors.EVENT_READ, "wake")
        while True:
            now = time.monotonic()  # wall-clock: leases are CLOCK_MONOTONIC, shared with the agent
            self._enforce_lease(now)
            running = any(c.status is None for c in self.children.values())
            if self.agent is None and not running:
                idle = now - self.idle_since
                if idle >= (KEEP_ENDED if self.children else IDLE_EXIT):
                    return
            else:
                self.idle_since = now
            for key, _ in self.selector.select(timeout=0.25):
                if key.data == "listen":
                    self._accept(listener)
                elif key.data == "agent":
                    self._read_agent()
                elif key.data == "wake":
                    with contextlib.suppress(BlockingIOError):
                        wake_r.recv(4096)
                    self._reap_orphans()
                else:
                    self._reap(key.data)

    # --- the agent's connection ----------------------------------------------------------

    def _accept(self, listener: socket.socket) -> None:
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        if uid != os.getuid():
            conn.close()
            return
        if self.agent is not None:
            self._drop_agent()
        conn.setblocking(True)
        self.agent = conn
        self.buffer = b""
        self.selector.register(conn, selectors.EVENT_READ, "agent")

    def _drop_agent(self) -> None:
        assert self.agent is not None
        self.selector.unregister(self.agent)
        self.agent.close()
        self.agent = None

    def _read_agent(self) -> None:
        assert self.agent is not None
        try:
            data = self.agent.recv(65536)
        except OSError:
            data = b""
        if not data:
            self._drop_agent()
            return
        self.buffer += data
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            try:
                request = json.loads(line)
            except ValueError:
                continue
            self._handle(request)

    def _send(self, message: dict[str, Any]) -> None:
        if self.agent is None:
            return
        try:
            self.agent.sendall(json.dumps(message).encode() + b"\n")
        except OSError:
            self._drop_agent()

    def _handle(self, request: dict[str, Any]) -> None:
        op = request.get("op")
        if op == "spawn":
            self._spawn(request)
        elif op == "lease":
            self.lease_until = float(request["until"])
        elif op == "release":
            child = self.children.get(request["key"])
            if child is not None and child.status is not None:
                del self.children[child.key]
        elif op == "list":
            self._send({"op": "held", "attempts": [c.record() for c in self.children.values()]})

    # --- scripts -------------------------------------------------------------------------

    def _spawn(self, request: dict[str, Any]) -> None:
        key = request["key"]
        if key in self.children:
            self._send({"op": "failed", "key": key, "error": "already started"})
            return
        fds: list[int] = []
        try:
            stdin = os.open(request["stdin"], os.O_RDONLY | os.O_CLOEXEC)
            fds.append(stdin)
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW
            out = os.open(request["stdout"], flags, 0o600)
            fds.append(out)
            err = os.open(request["stderr"], flags, 0o600)
            fds.append(err)
            memory = request.get("memory")
            popen = subprocess.Popen(
                request["argv"],
                stdin=stdin,
                stdout=out,
                stderr=err,
                cwd=request["cwd"],
                env=request["env"],
                start_new_session=True,
                preexec_fn=None if memory is None else _memory_limiter(int(memory)),
            )
        except (OSError, subprocess.SubprocessError, KeyError, TypeError, ValueError) as exc:
            self._send({"op": "failed", "key": key, "error": str(exc)})
            return
        finally:
            for fd in fds:
                os.close(fd)
        meta = dict(request.get("meta") or {})
        meta.setdefault("started", time.monotonic())  # wall-clock: read by the next agent
        child = _Child(key, popen, meta)
        self.children[key] = child
        self.by_fd[child.pidfd] = child
        self.selector.register(child.pidfd, selectors.EVENT_READ, child)
        self._send({"op": "spawned", "key": key, "pid": popen.pid})

    def _reap(self, child: _Child) -> None:
        self.selector.unregister(child.pidfd)
        del self.by_fd[child.pidfd]
        _killpg(child.pid, signal.SIGKILL)  # what it left in its group; not reaped, so no reuse
        os.close(child.pidfd)
        child.status = child.popen.wait()
        self._send(
            {
                "op": "exited",
                "key": child.key,
                "pid": child.pid,
                "status": child.status,
                "fenced": child.fenced,
            }
        )

    def _reap_orphans(self) -> None:
        """Reap exited processes that are not scripts we started (their leftovers)."""
        ours = {c.pid for c in self.children.values() if c.status is None}
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None or info.si_pid in ours:
                return  # a script of ours: its pidfd says so, and _reap takes it
            with contextlib.suppress(ChildProcessError):
                os.waitpid(info.si_pid, 0)

    def _enforce_lease(self, now: float) -> None:
        if self.lease_until is None or now < self.lease_until:
            return
        for child in self.children.values():
            if child.status is not None:
                continue
            if child.term_at is None:
                child.fenced = True
                child.term_at = now
                _killpg(child.pid, signal.SIGTERM)
            elif now - child.term_at >= KILL_GRACE:
                _killpg(child.pid, signal.SIGKILL)


def _set_child_subreaper() -> None:
    PR_SET_CHILD_SUBREAPER = 36
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: leftovers go to init, as they would without a keeper


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _memory_limiter(limit: int) -> Any:
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)

    def preexec() -> None:  # in the child between fork and exec
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return preexec


def main(argv: list[str] | None = None) -> int:
    """Run the keeper of the spool named by the only argument; exit 0 when idle, 3 when
    another keeper of that spool runs. With ``--daemon`` it forks first and the parent
    exits at once, so that the keeper is nobody's child to reap."""
    args = sys.argv[1:] if argv is None else argv
    daemon = "--daemon" in args
    args = [a for a in args if a != "--daemon"]
    if len(args) != 1:
        print("usage: python -m wfe.agents.keeper [--daemon] SPOOL_DIR", file=sys.stderr)
        return 2
    spool = args[0]
    if daemon and os.fork() > 0:  # the agent waits for this parent; init adopts the keeper
        os._exit(0)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    lock = os.open(os.path.join(spool, "keeper.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return 3
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(socket_name(spool))
    except OSError:  # a keeper that lost its lock file still listens: leave it be
        return 3
    listener.listen(8)
    os.ftruncate(lock, 0)
    os.write(lock, f"{os.getpid()}\n".encode())
    Keeper(spool).serve(listener)
    return 0


if __name__ == "__main__":
    sys.exit(main())
