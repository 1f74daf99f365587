"""The real processes of a chaos run, and the faults done to them (``python -m bench.chaos``).

A :class:`Cluster` owns: a Prosody (``wfe.engine.devtools.prosody.ProsodyServer``), a ``wfe engine``
subprocess with local agents it starts itself, ``wfe agent --xmpp`` subprocesses, and
optionally a small tmpfs holding the workspace (repository, local spools) that can be filled.
Every process is started here, in its own session, and killed here by its pid: the engine
and agents with SIGKILL (faults) or SIGTERM (the end of the run). Local agents are found by
the pid in their spool lock.

:class:`Watcher` samples, every ``SAMPLE`` seconds, which agents can reach the engine (engine
answering on its port, agent process alive, Prosody up for XMPP agents) and which workload
scripts are alive; ``bench.chaos_checks`` judges with what it saw.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import attrs
import trio

from bench.chaos_checks import Execution, parse_log
from wfe.engine.config import load_config
from wfe.engine.devtools.prosody import ProsodyServer
from wfe.engine.errors import EngineError
from wfe.engine.keys import create_secrets

SAMPLE = 0.25  # seconds between two looks at the processes
ENGINE_USER = "engine"
FILL_BLOCK = 1 << 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def alive(pid: int) -> bool:
    """True while ``pid`` is a running (not zombie) process."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def start_time(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (to tell a reused pid), or None if it is gone."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def kill(pid: int, sig: signal.Signals = signal.SIGKILL) -> bool:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
        return True
    return False


@attrs.define
class Cluster:
    """The processes under test. ``async with open_cluster(...)`` starts and stops them."""

    root: Path
    server: ProsodyServer
    xmpp_users: list[str]
    local: int
    api_port: int
    workspace: Path
    log: Path  # the executions log, outside the workspace
    engine: trio.Process | None = None
    xmpp: dict[str, trio.Process | None] = attrs.Factory(dict)
    never: set[str] = attrs.Factory(set)  # XMPP agents killed for good
    engine_exits: list[str] = attrs.Factory(list)  # exits we did not cause
    lease_supported: bool = False
    stopping: bool = False
    _expected: set[int] = attrs.Factory(set)
    _nursery: trio.Nursery | None = None

    @property
    def config_path(self) -> Path:
        return self.workspace / "wfe.toml"

    def jid(self, user: str) -> str:
        return self.server.jid(user)

    def agent_names(self) -> list[str]:
        return [f"local-{k}" for k in range(1, self.local + 1)] + [
            self.jid(u) for u in self.xmpp_users
        ]

    # --- the engine -------------------------------------------------------------------------

    async def start_engine(self) -> None:
        if self.engine is not None and self.engine.returncode is None:
            return
        # `wfe engine` is wfe.engine.cli.main:main; -m keeps to the interpreter (and PYTHONPATH) we run on
        command = [sys.executable, "-m", "wfe"]
        with (self.root / "engine.log").open("ab") as log:
            self.engine = await trio.lowlevel.open_process(
                [*command, "engine", "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        assert self._nursery is not None
        self._nursery.start_soon(self._watch_engine, self.engine)

    async def _watch_engine(self, process: trio.Process) -> None:
        code = await process.wait()
        if process.pid in self._expected or self.stopping:
            return
        self.engine_exits.append(f"engine pid {process.pid} exited by itself with status {code}")
        if self.engine is process:
            self.engine = None
            await trio.sleep(2.0)  # as a service manager would: restart after a pause
            if not self.stopping and self.engine is None:
                await self.start_engine()

    async def kill_engine(self) -> bool:
        process = self.engine
        if process is None or process.returncode is not None:
            return False
        self._expected.add(process.pid)
        kill(process.pid)
        await process.wait()
        self.engine = None
        return True

    def engine_listening(self) -> bool:
        if self.engine is None or self.engine.returncode is not None:
            return False
        try:
            socket.create_connection(("127.0.0.1", self.api_port), timeout=0.2).close()
        except OSError:
            return False
        return True

    # --- agents -------------------------------------------------------------------------------

    def local_pids(self) -> dict[str, int]:
        """Local agent name -> the pid in its spool lock (whether or not it still runs)."""
        pids = {}
        for lock in sorted((self.workspace / "agents").glob("*/spool/agent.lock")):
            text = lock.read_text().strip() if lock.exists() else ""
            if text.isdigit():
                pids[lock.parent.parent.name] = int(text)
        return pids

    def kill_local(self, name: str) -> bool:
        pid = self.local_pids().get(name)
        return pid is not None and alive(pid) and kill(pid)

    def xmpp_command(self, user: str) -> list[str]:
        home = self.root / "xmpp" / user
        password = home / "password"
        return [
            sys.executable, "-m", "wfe.agents", "--xmpp", "--jid", self.jid(user),
            "--password-file", str(password), "--server", self.server.host,
            "--port", str(self.server.port), "--tls", "plain",
            "--controller", self.jid(ENGINE_USER),
            "--trusted-key", str(self.workspace / "engine.pub"),
            "--slots", "2", "--spool", str(home / "spool"), "--workdir", str(home / "work"),
        ]  # fmt: skip

    async def start_xmpp(self, user: str) -> None:
        home = self.root / "xmpp" / user
        with (home / "agent.log").open("ab") as log:
            self.xmpp[user] = await trio.lowlevel.open_process(
                self.xmpp_command(user),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )

    async def kill_xmpp(self, user: str) -> bool:
        process = self.xmpp.get(user)
        if process is None or process.returncode is not None:
            return False
        kill(process.pid)
        await process.wait()
        self.xmpp[user] = None
        return True

    def xmpp_alive(self, user: str) -> bool:
        process = self.xmpp.get(user)
        return process is not None and process.returncode is None and alive(process.pid)

    # --- Prosody and the disk ---------------------------------------------------------------

    async def kill_prosody(self) -> bool:
        pid = self.server.pid
        if pid is None:
            return False
        kill(pid)
        await trio.to_thread.run_sync(self.server.stop)
        return True

    async def start_prosody(self) -> None:
        if not self.server.running:
            await trio.to_thread.run_sync(self.server.start)

    def _filler(self) -> Path:
        return self.workspace / ".chaos-fill"

    async def fill_disk(self) -> int:
        """Write to the workspace's filesystem until it is full; return the bytes written."""

        def fill() -> int:
            written = 0
            block = b"\0" * FILL_BLOCK
            with self._filler().open("ab") as f:
                try:
                    while True:
                        written += f.write(block)
                        f.flush()
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
            return written

        try:
            return await trio.to_thread.run_sync(fill)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:  # the close flushed into a full disk: still full
                raise
            return 0

    def free_disk(self) -> None:
        self._filler().unlink(missing_ok=True)

    # --- the end ------------------------------------------------------------------------------

    async def stop(self) -> list[str]:
        """Stop everything gracefully (SIGTERM, then SIGKILL); return what needed SIGKILL."""
        self.stopping = True
        forced = []
        self.free_disk()
        processes = [("engine", self.engine)] + [(u, p) for u, p in self.xmpp.items()]
        for name, process in processes:
            if process is None or process.returncode is not None:
                continue
            self._expected.add(process.pid)
            kill(process.pid, signal.SIGTERM)
            with trio.move_on_after(30):
                await process.wait()
            if process.returncode is None:
                forced.append(f"{name} (pid {process.pid}) ignored SIGTERM for 30 s")
                kill(process.pid)
                await process.wait()
        agents = {n: p for n, p in self.local_pids().items() if "agents" in _cmdline(p)}
        with trio.move_on_after(10):  # the engine stops its local agents as it stops
            while any(alive(pid) for pid in agents.values()):  # noqa: ASYNC110 - other processes
                await trio.sleep(0.1)
        for name, pid in agents.items():
            if alive(pid):
                forced.append(
                    f"local agent {name} (pid {pid}) ran on 10 s after the engine stopped"
                )
                kill(pid, signal.SIGTERM)
        return forced

    def leftovers(self) -> dict[int, str]:
        """Processes (other than this one) whose command line or directory is in the run's root."""
        found = {}
        root = str(self.root)
        ours = _ancestors()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) in ours:
                continue
            pid = int(entry.name)
            cmdline = _cmdline(pid)
            try:
                cwd = os.readlink(entry / "cwd")
            except OSError:
                cwd = ""
            if alive(pid) and (root in cmdline or cwd.startswith(root)):
                found[pid] = cmdline[:200]
        return found


def _ancestors() -> set[int]:
    """This process and its ancestors (never counted as left over, never killed)."""
    pids, pid = set(), os.getpid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
    return pids


def _cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


# --- the workspace -----------------------------------------------------------------------------


def write_workspace(cluster: Cluster, *, lease: float, scripts: Path) -> None:
    """``wfe.toml`` with local and XMPP agents, the keys and the token; ``lease`` when supported."""
    password = cluster.root / "engine.password"
    password.write_text(cluster.server.users[ENGINE_USER] + "\n")
    password.chmod(0o600)
    agents = ", ".join(f'"{cluster.jid(u)}"' for u in cluster.xmpp_users)
    lines = [
        "[engine]",
        'repository = "wfe.db"',
        f'rscripts = ["{scripts}"]',
        "[api]",
        'host = "127.0.0.1"',
        f"port = {cluster.api_port}",
        "[agents]",
        f"local = {cluster.local}",
        "slots = 2",
        "LEASE",
        "[jobs]",
        "timeout = 600.0",
        "retries = 0",
        "[xmpp]",
        "enabled = true",
        f'jid = "{cluster.jid(ENGINE_USER)}"',
        f'password_file = "{password}"',
        f'host = "{cluster.server.host}"',
        f"port = {cluster.server.port}",
        'tls = "plain"',
        f"agents = [{agents}]",
    ]
    text = "\n".join(lines) + "\n"
    path = cluster.config_path
    path.write_text(text.replace("LEASE", f"lease = {float(lease)}"))
    try:
        config = load_config(path)
        cluster.lease_supported = True
    except EngineError as exc:
        if "lease" not in str(exc):
            raise
        path.write_text(text.replace("LEASE\n", ""))
        config = load_config(path)
    create_secrets(config)
    for user in cluster.xmpp_users:
        home = cluster.root / "xmpp" / user
        home.mkdir(parents=True, exist_ok=True)
        (home / "password").write_text(cluster.server.users[user] + "\n")
        (home / "password").chmod(0o600)


def mount_tmpfs(path: Path, megabytes: int) -> None:
    """A tmpfs of ``megabytes`` at ``path`` (needs CAP_SYS_ADMIN; raises with mount's reason)."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m,mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"cannot mount a tmpfs at {path}: {done.stderr.strip()}")


def unmount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


# --- what the harness watches ------------------------------------------------------------------


@attrs.define
class Watcher:
    """Samples the cluster: agents' cut-offs from the engine, and the workload's processes."""

    cluster: Cluster
    executions: dict[tuple[str, int, int], Execution] = attrs.Factory(dict)
    cutoffs: dict[str, list[tuple[float, float]]] = attrs.Factory(dict)
    _down_since: dict[str, float] = attrs.Factory(dict)
    _started: dict[int, int | None] = attrs.Factory(dict)
    _read: int = 0
    _text: str = ""

    def sample(self) -> None:
        now = time.monotonic()
        self._sample_agents(now)
        self._sample_scripts(now)

    def _sample_agents(self, now: float) -> None:
        c = self.cluster
        engine = c.engine_listening()
        prosody = c.server.running
        locals_ = c.local_pids()
        for name in c.agent_names():
            if name.startswith("local-"):
                pid = locals_.get(name)
                up = pid is not None and alive(pid)
            else:
                up = prosody and c.xmpp_alive(name.split("@")[0])
            reachable = engine and up
            if not reachable and name not in self._down_since:
                self._down_since[name] = now
            elif reachable and name in self._down_since:
                since = self._down_since.pop(name)
                self.cutoffs.setdefault(name, []).append((since, now))

    def _sample_scripts(self, now: float) -> None:
        log = self.cluster.log
        if log.exists():
            with log.open("rb") as f:
                f.seek(self._read)
                chunk = f.read()
            complete = chunk.rfind(b"\n") + 1  # a line still being written waits
            self._read += complete
            self._text += chunk[:complete].decode()
        for run in parse_log(self._text):
            key = (run.job, run.attempt, run.pid)
            known = self.executions.get(key)
            if known is None:
                self.executions[key] = known = run
                self._started[run.pid] = start_time(run.pid)
            known.end, known.code = run.end, run.code
            if known.gone is None:
                if alive(run.pid) and start_time(run.pid) == self._started[run.pid]:
                    known.last_alive = now
                else:
                    known.gone = now

    def close(self) -> None:
        """Close every open cut-off: an agent never back was cut off until the end of time."""
        for name, since in self._down_since.items():
            self.cutoffs.setdefault(name, []).append((since, float("inf")))
        self._down_since.clear()

    def alive_scripts(self) -> list[Execution]:
        self._sample_scripts(time.monotonic())
        return [run for run in self.executions.values() if run.gone is None]

    async def run(self) -> None:
        """Sample until cancelled (on the trio thread: it only reads /proc and one file)."""
        while True:
            self.sample()
            await trio.sleep(SAMPLE)


__all__ = ["Cluster", "Watcher", "free_port", "mount_tmpfs", "unmount", "write_workspace"]
