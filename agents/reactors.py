"""Reactors: local scripts an agent runs when the engine sends it a broadcast of their topic.

An agent's configuration maps topics to scripts on its host (``[reactors] stf_gen =
"process.sh"`` in agent.toml, or ``--reactor stf_gen=process.sh``); with its ``namespace`` they
are what the agent tells the engine it hears (``Capabilities.namespace`` and ``topics``), and
the engine sends it the broadcasts of that namespace on those topics only.

A broadcast is run at most once per agent: its number (the engine's, increasing) is written
to ``<spool>/reactions.last`` before the script starts, and a broadcast numbered at or below
it is ignored, so one delivered again after a reconnection does not run twice. The script
runs as an RScript does (its ``# interpreter:`` header, default ``sh``), in a directory of its
own under the agent's work directory, with the message as its parameters (``params.json``,
its stdin and ``$WFE_PARAMS``), ``$WFE_TOPIC``, ``$WFE_NAMESPACE``, ``$WFE_BROADCAST`` (the
number) and ``$WFE_RESULT`` (a JSON object it may write). At most ``slots`` run at once, beside
the agent's attempts. How each ended goes back to the engine as a ``Reacted``, recorded there
as the event ``reaction.ended``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import trio

from wfe.agents.interpreters import script_interpreter
from wfe.agents.results import RESULT_FILE, read_result
from wfe.protocols.messages import Broadcast, Message, Reacted

log = logging.getLogger("wfe.agent.reactors")

#: Seconds a reactor may run before its process is killed.
REACTOR_TIMEOUT = 3600.0

#: Bytes of a failed reactor's stderr kept for its ``Reacted`` detail.
DETAIL_BYTES = 4096


class Reactors:
    """The agent's reactors; see the module docstring."""

    def __init__(
        self,
        scripts: Mapping[str, Path],
        *,
        spool: Path,
        workdir: Path,
        slots: int,
        timeout: float = REACTOR_TIMEOUT,
    ) -> None:
        self.scripts = dict(scripts)
        self.workdir = workdir / "reactions"
        self.timeout = timeout
        self._last_path = spool / "reactions.last"
        self._last = _read_last(self._last_path)
        self._limiter = trio.CapacityLimiter(max(1, slots))
        self._nursery: trio.Nursery | None = None
        self._send: Callable[[Message], Awaitable[bool]] | None = None
        self.ran = 0  # reactors started since the agent started

    @property
    def topics(self) -> tuple[str, ...]:
        return tuple(sorted(self.scripts))

    def attach(self, nursery: trio.Nursery, send: Callable[[Message], Awaitable[bool]]) -> None:
        """Run reactors in ``nursery`` (the agent's) and report through ``send``."""
        self._nursery, self._send = nursery, send

    def receive(self, broadcast: Broadcast) -> None:
        """Start the reactor for ``broadcast`` unless it ran already or there is none."""
        script = self.scripts.get(broadcast.topic)
        if script is None or self._nursery is None:
            log.info("broadcast %d on %s: no reactor here; ignored", broadcast.seq, broadcast.topic)
            return
        if broadcast.seq <= self._last:
            log.info("broadcast %d on %s: reacted to already", broadcast.seq, broadcast.topic)
            return
        self._last = broadcast.seq
        _write_last(self._last_path, broadcast.seq)  # before it runs: at most once
        self.ran += 1
        self._nursery.start_soon(self._react, broadcast, script)

    async def _react(self, broadcast: Broadcast, script: Path) -> None:
        async with self._limiter:
            report = await self._run(broadcast, script)
        log.info(
            "reactor %s for broadcast %d (%s) ended: exit %s",
            script,
            broadcast.seq,
            broadcast.topic,
            report.exit_code,
        )
        if self._send is not None:
            await self._send(report)

    async def _run(self, broadcast: Broadcast, script: Path) -> Reacted:
        def reacted(
            exit_code: int | None,
            detail: str,
            duration: float = 0.0,
            result: dict[str, Any] | None = None,
        ) -> Reacted:
            return Reacted(
                seq=broadcast.seq,
                topic=broadcast.topic,
                reactor=str(script),
                exit_code=exit_code,
                duration=duration,
                result=result,
                detail=detail,
            )

        directory = self.workdir / f"{broadcast.seq}-{broadcast.topic}"
        message = json.dumps(broadcast.message).encode()
        try:
            argv = await trio.to_thread.run_sync(_prepare, script, directory, message)
        except (OSError, ValueError) as exc:
            return reacted(None, f"cannot start {script}: {exc}")
        params = directory / "params.json"
        env = {
            **os.environ,
            "WFE_PARAMS": str(params),
            "WFE_RESULT": str(directory / RESULT_FILE),
            "WFE_TOPIC": broadcast.topic,
            "WFE_NAMESPACE": broadcast.namespace,
            "WFE_BROADCAST": str(broadcast.seq),
        }
        began = trio.current_time()
        try:
            with trio.move_on_after(self.timeout) as timer:
                done = await trio.run_process(
                    argv,
                    cwd=directory,
                    env=env,
                    stdin=message,
                    stdout=subprocess.DEVNULL,
                    capture_stderr=True,
                    check=False,
                )
        except OSError as exc:
            return reacted(None, f"cannot start {script}: {exc}")
        duration = trio.current_time() - began
        try:
            if timer.cancelled_caught:
                return reacted(None, f"killed after {self.timeout:g} s", duration=duration)
            result, problem = read_result(str(directory))
            stderr = done.stderr[-DETAIL_BYTES:].decode("utf-8", "replace").strip()
            detail = problem or (stderr.splitlines()[-1] if done.returncode and stderr else "")
            return reacted(done.returncode, detail, duration=duration, result=result)
        finally:
            await trio.to_thread.run_sync(lambda: shutil.rmtree(directory, ignore_errors=True))


def _prepare(script: Path, directory: Path, message: bytes) -> list[str]:
    """The command that runs ``script`` (its interpreter header), in ``directory`` made ready
    with the message as ``params.json``. Raises ``OSError`` or ``ValueError``."""
    try:
        text = script.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text: {exc}") from None
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "params.json").write_bytes(message)
    return [*script_interpreter(text), str(script)]


def _read_last(path: Path) -> int:
    try:
        return int(path.read_text(encoding="ascii").strip() or 0)
    except (OSError, ValueError):
        return 0


def _write_last(path: Path, number: int) -> None:
    """Replace the file with ``number``, durably (a crash leaves the old or the new one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    with temporary.open("w", encoding="ascii") as f:
        f.write(f"{number}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)
