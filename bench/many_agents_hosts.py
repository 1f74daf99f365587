"""The pieces of bench.many_agents: a timed watch of the engine's events, the agent hosts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import trio

from bench._common import cpu_seconds, rss_bytes
from bench.xmpp_dispatch import ENGINE_USER
from wfe.engine.devtools.prosody import ProsodyServer

AGENT_GIVE_UP = 120.0  # seconds an agent lives on without an engine (they start a few at a time)


class Watch:
    """Every ``attempt.state`` (job, attempt, state) and ``agent.state`` change, timed."""

    def __init__(self, expected: int) -> None:
        self.attempts: dict[tuple[str, int, str], tuple[float, str]] = {}
        self.agents: dict[tuple[str, str], float] = {}
        self.connected = 0
        self.expected = expected
        self.all_connected = trio.Event()
        self._changed = trio.Event()

    async def run(
        self, repo: Any, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        async with repo.subscribe(max_buffer=10_000_000) as events:
            task_status.started()
            async for event in events:
                now = time.perf_counter()
                state = str(getattr(event, "data", {}).get("state"))
                if event.kind == "attempt.state":
                    key = (event.subject, int(event.data["attempt"]), state)
                    self.attempts.setdefault(key, (now, str(event.data.get("agent"))))
                elif event.kind == "agent.state":
                    if (event.subject, state) not in self.agents and state == "connected":
                        self.connected += 1
                        if self.connected >= self.expected:
                            self.all_connected.set()
                    self.agents.setdefault((event.subject, state), now)
                self._changed.set()

    async def until(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds, checked after every event."""
        while not predicate():
            self._changed = trio.Event()
            await self._changed.wait()


@attrs.define
class Hosts:
    """The agent-host processes: ``python -m wfe.agents.many``, ``per`` agents each."""

    processes: list[trio.Process] = attrs.Factory(list)
    members: list[list[str]] = attrs.Factory(list)  # the agents' JIDs, per process

    async def start(
        self,
        server: ProsodyServer,
        root: Path,
        key: Path,
        *,
        agents: int,
        per: int,
        slots: int,
        heartbeat: float,
    ) -> None:
        root.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, before the hosts start
        password = root / "agent.password"
        password.write_text("agent-pw\n")
        password.chmod(0o600)
        for first in range(1, agents + 1, per):
            count = min(per, agents - first + 1)
            command = [
                sys.executable, "-m", "wfe.agents.many", "--count", str(count), "--first", str(first),
                "--xmpp", "--jid", f"agent{{n}}@{server.domain}", "--password-file", str(password),
                "--server", server.host, "--port", str(server.port), "--tls", "plain",
                "--controller", server.jid(ENGINE_USER), "--trusted-key", str(key),
                "--slots", str(slots), "--heartbeat", f"{heartbeat:g}",
                "--spool", str(root / "a{n}" / "spool"), "--workdir", str(root / "a{n}" / "work"),
                "--log-level", "WARNING", "--give-up-after", f"{AGENT_GIVE_UP:g}",
            ]  # fmt: skip
            with (root / f"host{first}.log").open("ab") as log_file:  # noqa: ASYNC230 - once per host
                process = await trio.lowlevel.open_process(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=log_file,
                    start_new_session=True,
                )
            self.processes.append(process)
            self.members.append([server.jid(f"agent{n}") for n in range(first, first + count)])

    def kill(self, index: int) -> None:
        try:
            os.killpg(self.processes[index].pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    async def stop(self) -> None:
        for i, process in enumerate(self.processes):
            self.kill(i)
            await process.wait()

    def rss(self) -> int:
        """Resident bytes of the host processes (not their agents' keepers)."""
        return sum(rss_bytes(p.pid) for p in self.processes)

    def cpu(self) -> float:
        return sum(cpu_of(p.pid) for p in self.processes)


def cpu_of(pid: int) -> float:
    try:
        return cpu_seconds(pid)
    except OSError:
        return 0.0


def keepers(root: Path) -> tuple[int, int]:
    """How many agent keepers run for spools under ``root``, and their resident bytes."""
    pids = keeper_pids(root)
    total = 0
    for pid in pids:
        try:
            total += rss_bytes(pid)
        except (OSError, RuntimeError):
            continue
    return len(pids), total


def keeper_pids(root: Path) -> list[int]:
    """The keepers of spools under ``root`` (they outlive their agents by design)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            command = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"wfe.agents.keeper" in command and any(str(root).encode() in a for a in command):
            pids.append(int(proc.name))
    return pids


def stop_keepers(root: Path) -> None:
    """SIGTERM the keepers of spools under ``root``: the run is over, nothing comes back for
    what they hold."""
    for pid in keeper_pids(root):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
