"""The local agents: processes the engine starts on its own machine, in groups, and supervises.

A group (``[agents.<name>]`` in wfe.toml, or ``[agents] local = N`` for the group "local") is
``count`` agents named ``<name>-1`` ... with the group's slots, tags and site. Groups marked
``enabled`` start with the engine; any group starts (``up``) and stops (``down``) while the
engine runs (``wfe agents up|down [GROUP]``).

Each agent runs in its own session, so that an engine killed with SIGKILL does not take it
(and the scripts it runs) with it: it keeps its results in its spool and reconnects when the
engine comes back. Two agents with the same name cannot run at once (the spool is locked), so
an engine that starts again simply starts its agents again; those still alive from before
keep their name, the new ones exit (``EXIT_LOCKED``), and the supervisor watches the old ones
instead. An agent that dies is started again (with a backoff), and adopts from its keeper
what its scripts are doing. An agent taken down is asked to stop with ``Shutdown(leave_running)``
like at an engine stop: what it runs goes on under its keeper, is adopted if the group comes
up again within the lease, and is fenced and run elsewhere if not.
"""

from __future__ import annotations

import collections
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from wfe.engine.config import AgentGroup
from wfe.engine.errors import EngineError
from wfe.protocols.messages import Shutdown

if TYPE_CHECKING:
    from wfe.engine.dispatch.controller import AgentController

log = logging.getLogger("wfe.local")

# wfe.agents.main.EXIT_LOCKED: another process of that name holds the spool. Not imported: the
# engine loads no agent module.
EXIT_LOCKED = 3


class UnknownGroup(EngineError, LookupError):
    """No group of local agents has that name."""


class LocalAgentFailed(EngineError):
    """A local agent process exited with a failure before it ever connected: it cannot start."""


class LocalAgents:
    """Starts, restarts and stops the agent processes the engine runs on its own machine."""

    def __init__(
        self,
        *,
        groups: Mapping[str, AgentGroup],
        slots: int,
        socket_path: Path,
        directory: Path,
        public_key: Path | None,
        heartbeat: float,
        restart_backoff: float = 1.0,
    ) -> None:
        self.groups = dict(groups)
        self._group_of = {
            f"{group}-{n}": group
            for group, spec in self.groups.items()
            for n in range(1, spec.count + 1)
        }
        self._slots = slots
        self._socket = socket_path
        self._dir = directory
        self._key = public_key
        self._heartbeat = heartbeat
        self.restart_backoff = restart_backoff
        self._processes: dict[str, trio.Process] = {}
        self._supervised: set[str] = set()  # agents a supervisor task watches
        self._down: set[str] = set()  # agents taken down (or never up): not started again
        self._nursery: trio.Nursery | None = None  # the supervisors', set by watch_local_agents
        self._failed: list[LocalAgentFailed] = []
        self._controller: AgentController | None = None
        self.restarts: collections.Counter[str] = collections.Counter()
        self.stopping = False  # set by stop(): exits from then on are expected

    # --- names and commands ---------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        """Every local agent of every group, in order."""
        return list(self._group_of)

    def group_of(self, name: str) -> str | None:
        """The group of local agent ``name``, or None (not one of ours)."""
        return self._group_of.get(name)

    def members(self, group: str) -> list[str]:
        """The agents of ``group``. Raises ``UnknownGroup``."""
        if group not in self.groups:
            known = ", ".join(self.groups) or "none"
            raise UnknownGroup(f"no agent group {group!r} (groups: {known})")
        return [name for name, of in self._group_of.items() if of == group]

    def home(self, name: str) -> Path:
        """The agent's directory: its spool, work directories and ``agent.log``."""
        return self._dir / name

    def command(self, name: str) -> list[str]:
        spec = self.groups[self._group_of[name]]
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
            str(spec.slots or self._slots),
            "--site",
            spec.site,
            "--spool",
            os.fspath(home / "spool"),
            "--workdir",
            os.fspath(home / "work"),
            "--heartbeat",
            str(self._heartbeat),
            "--give-up-after",
            "120",
        ]
        for tag in spec.tags:
            cmd += ["--tag", tag]
        if spec.namespace:
            cmd += ["--namespace", spec.namespace]
        for topic, script in spec.reactors.items():  # relative to the root, as checked
            cmd += ["--reactor", f"{topic}={self._dir.parent / script}"]
        if self._key is not None:
            cmd += ["--trusted-key", os.fspath(self._key)]
        return cmd

    # --- starting and stopping ------------------------------------------------------------------

    async def start(self) -> None:
        """Start the agents of every enabled group (those already running from before exit at
        once: ``EXIT_LOCKED``); the other groups wait for ``up``."""
        for group, spec in self.groups.items():
            names = self.members(group)
            if spec.enabled:
                for name in names:
                    await self.spawn(name)
            else:
                self._down.update(names)

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

    def running(self, name: str) -> bool:
        """Agent ``name`` is up: started by us and not taken down."""
        process = self._processes.get(name)
        return name not in self._down and process is not None and process.returncode is None

    async def up(self, group: str) -> list[str]:
        """Start the agents of ``group`` that do not run, supervised; return those started.
        Raises ``UnknownGroup``."""
        if self._nursery is None or self.stopping:
            raise EngineError("local agents are not supervised: the engine is starting or stopping")
        started = []
        for name in self.members(group):
            if self.running(name) and name in self._supervised:
                continue
            self._down.discard(name)
            process = await self.spawn(name)
            self._watch(name, process)
            started.append(name)
        if started:
            log.info("agent group %s up: %s", group, ", ".join(started))
        return started

    async def down(
        self, group: str, controller: AgentController, *, grace: float = 5.0
    ) -> list[str]:
        """Stop the agents of ``group`` (their scripts go on under their keepers); return those
        stopped. Raises ``UnknownGroup``."""
        names = [name for name in self.members(group) if name not in self._down]
        self._down.update(names)
        await self._shut(names, controller, grace)
        if names:
            log.info("agent group %s down: %s", group, ", ".join(names))
        return names

    async def stop(self, controller: AgentController, *, grace: float = 5.0) -> None:
        """Ask our agents to exit, leaving what they run to their keepers (a stopping engine
        cancels nothing: the next start finds it running, or finished, as after a crash);
        then make sure they did."""
        self.stopping = True
        await self._shut(self.names, controller, grace)

    async def _shut(self, names: list[str], controller: AgentController, grace: float) -> None:
        for name in names:
            entry = controller.agents.get(name)
            if entry is not None and entry.link is not None:
                entry.link.send_nowait(Shutdown(reason="engine stopping", leave_running=True))
        processes = [p for n in names if (p := self._processes.get(n)) is not None]
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

    # --- supervision ----------------------------------------------------------------------------

    def _watch(self, name: str, process: trio.Process) -> None:
        assert self._nursery is not None
        if name in self._supervised:
            return  # its supervisor takes the new process when the old one's exit is seen
        self._supervised.add(name)
        self._nursery.start_soon(self._supervise_one, name, process)

    async def _supervise_one(self, name: str, process: trio.Process) -> None:
        assert self._controller is not None and self._nursery is not None
        watching = self._nursery.cancel_scope
        try:
            await _supervise(self, self._controller, self._failed, watching, name, process)
        finally:
            self._supervised.discard(name)


async def watch_local_agents(local: LocalAgents, controller: AgentController) -> None:
    """Supervise the local agent processes until cancelled: one that exits while the engine
    runs is started again, after ``restart_backoff`` seconds doubling up to a minute (back
    to the start once it has run a minute); its successor adopts what its scripts' keeper
    holds. An agent still running from an engine before holds the name (``EXIT_LOCKED``):
    it is watched instead, and replaced when it exits. An agent that exits with a failure
    before it ever connected raises ``LocalAgentFailed`` (with the last line of its
    ``agent.log``), so that the engine stops at once rather than wait for agents that will
    never come. Groups brought up meanwhile (``LocalAgents.up``) are supervised here too.
    """
    local._controller = controller
    async with trio.open_nursery() as nursery:
        local._nursery = nursery
        for name, process in local.processes.items():
            local._watch(name, process)
        await trio.sleep_forever()  # until the engine stops, or an agent cannot start
    local._nursery = None
    if local._failed:
        raise local._failed[0]


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
        if local.stopping or name in local._down:
            return
        if local.processes.get(name) is not process:  # brought up again meanwhile
            process = local.processes[name]
            continue
        if code == EXIT_LOCKED:
            pid = local.holder(name)
            if pid is not None:
                log.info("local agent %s still runs from before (pid %d): watching it", name, pid)
                await _wait_pid(pid)
                if local.stopping or name in local._down:
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
        if local.stopping or name in local._down:
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
