"""The processes a pull worker runs works in: a kept function child, or a shell per command.

``FunctionChild`` starts ``wfe.engine.works.child`` for one ``module.function`` and keeps it
for work after work (the function is imported once), one work at a time: the parameters go
down its standard input, the outcome comes back on a pipe of its own. A call that is
cancelled (the work's timeout, or its lease lost) kills the child's whole process group, and
the next call starts a fresh child; so does a child that died. ``run_command`` runs a work's
shell ``command`` with its parameters in ``WFE_PARAMETERS``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import Any

import trio


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _ended(code: int | None) -> str:
    if code is None:
        return "stopped answering"
    return f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"


class FunctionChild:
    """One child process serving ``spec`` (``module.function``); see the module docstring."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self._process: trio.Process | None = None
        self._results: trio.lowlevel.FdStream | None = None
        self._buffer = bytearray()
        self.started = 0  # children started so far

    async def _start(self) -> trio.Process:
        read_fd, write_fd = os.pipe()
        env = dict(os.environ, WFE_WORKER_PID=str(os.getpid()))
        try:
            process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "wfe.engine.works.child", self.spec, str(write_fd)],
                stdin=subprocess.PIPE,
                env=env,
                pass_fds=(write_fd,),
                start_new_session=True,  # a terminal's Ctrl-C is the worker's, not the work's
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        self._process, self._results = process, trio.lowlevel.FdStream(read_fd)
        self._buffer.clear()
        self.started += 1
        return process

    async def call(self, parameters: Any) -> dict[str, Any]:
        """Run one work; return its outcome. Cancelled: the child is killed first."""
        process = self._process
        if process is None or process.returncode is not None:
            process = await self._start()
        assert process.stdin is not None
        try:
            try:
                await process.stdin.send_all(json.dumps(parameters).encode() + b"\n")
                line = await self._line()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                line = None
            if line is None:  # it died during the work
                with trio.move_on_after(5):
                    await process.wait()
                how = _ended(process.returncode)
                await self.close()
                return {"ok": False, "error": f"the function's process {how} without a result"}
            return json.loads(line)  # type: ignore[no-any-return]
        except BaseException:
            await self.close()
            raise

    async def _line(self) -> bytes | None:
        assert self._results is not None
        while (end := self._buffer.find(b"\n")) < 0:
            chunk = await self._results.receive_some(65536)
            if not chunk:
                return None
            self._buffer += chunk
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        return line

    async def close(self) -> None:
        """Kill the child (and everything it started) and forget it."""
        process, results = self._process, self._results
        self._process = self._results = None
        with trio.CancelScope(shield=True):
            if process is not None:
                if process.returncode is None:
                    _kill_group(process.pid)
                await process.wait()
                if process.stdin is not None:
                    await process.stdin.aclose()
            if results is not None:
                await results.aclose()


async def run_command(command: str, work_id: str, parameters: Any) -> dict[str, Any]:
    """Run a work's shell command (cancelled: its process group is killed)."""
    env = dict(os.environ, WFE_PARAMETERS=json.dumps(parameters or {}), WFE_WORK=work_id)
    process = await trio.lowlevel.open_process(
        ["sh", "-c", command], env=env, start_new_session=True
    )
    try:
        code = await process.wait()
    finally:
        if process.returncode is None:
            _kill_group(process.pid)
            with trio.CancelScope(shield=True):
                await process.wait()
    if code == 0:
        return {"ok": True, "results": None}
    return {"ok": False, "error": f"the command {_ended(code)}"}


__all__ = ["FunctionChild", "run_command"]
