"""Run one attempt of a job: an RScript as a child process in its own process group.

The script text goes to ``<workdir>/<job>-<attempt>/script``, which is also the child's
working directory; the parameters go to ``params.json`` there and to the child's stdin, and
never into code. The interpreter is named by the script's ``# interpreter:`` header line
(default ``sh``). The child sees ``WFE_PARAMS``, ``WFE_RESULT``, ``WFE_JOB_ID`` and
``WFE_ATTEMPT`` in its environment, and may write a JSON object to ``$WFE_RESULT``.

stdout and stderr are read concurrently in pieces of at most ``MAX_CHUNK_BYTES``; each
becomes an ``OutputChunk`` numbered by one ``seq`` counter across both streams and is handed
to the caller's callback, which may block (back-pressure reaches the child through its
pipes). At the timeout or on ``cancel()`` the whole group gets SIGTERM, then SIGKILL after
``kill_grace`` seconds. When the main process has exited, whatever is left of its group is
killed too: an attempt is over when its script is, and leaves nothing running behind.
"""

from __future__ import annotations

import json
import logging
import os
import re
import resource
import shlex
import shutil
import signal
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from agents.spool import attempt_name
from protocols import codec
from protocols.errors import DecodeError
from protocols.messages import (
    MAX_CHUNK_BYTES,
    AttemptRef,
    Dispatch,
    FinishReason,
    JobFinished,
    OutputChunk,
    Stream,
)

log = logging.getLogger("wfe.agent.runner")

#: Seconds between SIGTERM and SIGKILL, and how long output is awaited once the group is gone.
KILL_GRACE = 2.0

#: Upper bound for the size of ``$WFE_RESULT``; the result must travel in one message,
#: and XMPP servers cap a stanza at 256 KiB by default.
MAX_RESULT_BYTES = 128 * 1024

DEFAULT_INTERPRETER = "sh"

ChunkCallback = Callable[[OutputChunk], Awaitable[None]]

_INTERPRETER_LINE = re.compile(r"#\s*interpreter\s*:(?P<value>.*)")


def script_interpreter(script: str) -> list[str]:
    """The command that runs ``script``, from its ``# interpreter:`` header line.

    Only the leading block of comment lines (blank lines allowed) is the header. Without
    the key the answer is ``["sh"]``. The value is split like a shell word list, so
    ``# interpreter: python3 -u`` gives ``["python3", "-u"]``. Raises ``ValueError`` on a
    value that does not split (an unclosed quote) or is empty.
    """
    for line in script.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if not stripped.startswith("#"):
            break
        match = _INTERPRETER_LINE.fullmatch(stripped)
        if match is not None:
            command = shlex.split(match["value"])
            if not command:
                raise ValueError("the interpreter header line names no interpreter")
            return command
    return [DEFAULT_INTERPRETER]


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass  # the whole group is gone already
    except PermissionError as exc:  # a member changed its user id; nothing more we can do
        log.warning("could not signal process group %d: %s", pgid, exc)


def _memory_limiter(limit: int) -> Callable[[], None]:
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)

    def preexec() -> None:  # runs in the child between fork and exec
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return preexec


def _json_kind(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class Attempt:
    """One attempt of a job, run once with ``run``; ``cancel`` may be called at any time."""

    def __init__(
        self,
        dispatch: Dispatch,
        *,
        workdir: str | os.PathLike[str],
        keep_workdir: bool = False,
        kill_grace: float = KILL_GRACE,
    ) -> None:
        self.dispatch = dispatch
        self.ref = AttemptRef(job_id=dispatch.job_id, attempt=dispatch.attempt)
        self.directory = Path(workdir) / attempt_name(dispatch.job_id, dispatch.attempt)
        self.pid: int | None = None
        self._keep_workdir = keep_workdir
        self._kill_grace = kill_grace
        self._cancel_scope = trio.CancelScope()
        self._cancel_reason = ""
        self._chunks = 0
        self._exited = False
        self._read_scopes: set[trio.CancelScope] = set()

    def cancel(self, reason: str = "") -> None:
        """Kill the attempt's process group; ``run`` then reports ``CANCELLED``.

        Does nothing once the script has exited.
        """
        if not self._cancel_scope.cancel_called:
            self._cancel_reason = reason
        self._cancel_scope.cancel()

    async def run(
        self,
        on_chunk: ChunkCallback,
        *,
        task_status: trio.TaskStatus[int | None] = trio.TASK_STATUS_IGNORED,
    ) -> JobFinished:
        """Run the attempt to its end and return how it ended; never raises for the script's sake.

        ``task_status.started`` gets the child's pid, or None if it could not be started (the
        result then has reason ``ERROR`` and says why). If the caller is cancelled, the group
        is killed before ``Cancelled`` propagates. The working directory is removed at the
        end unless ``keep_workdir``.
        """
        try:
            return await self._run(on_chunk, task_status)
        finally:
            if not self._keep_workdir:
                with trio.CancelScope(shield=True):
                    await self.remove_directory()

    async def remove_directory(self) -> None:
        """Remove the attempt's working directory, if there is one (for ``keep_workdir`` users)."""
        await trio.to_thread.run_sync(lambda: shutil.rmtree(self.directory, ignore_errors=True))

    def _finished(self, reason: FinishReason, **fields: Any) -> JobFinished:
        return JobFinished(
            job_id=self.ref.job_id,
            attempt=self.ref.attempt,
            reason=reason,
            chunks=self._chunks,
            **fields,
        )

    async def _run(
        self, on_chunk: ChunkCallback, task_status: trio.TaskStatus[int | None]
    ) -> JobFinished:
        name = f"attempt {self.ref.job_id}#{self.ref.attempt}"
        try:
            command = script_interpreter(self.dispatch.script)
        except ValueError as exc:
            task_status.started(None)
            return self._finished(FinishReason.ERROR, detail=f"bad interpreter header: {exc}")
        program = shutil.which(command[0])
        if program is None:
            task_status.started(None)
            return self._finished(
                FinishReason.ERROR, detail=f"interpreter {command[0]!r} not found on PATH"
            )
        if self._cancel_scope.cancel_called:
            task_status.started(None)
            return self._finished(FinishReason.CANCELLED, detail=self._cancel_detail())
        try:
            params_path = await trio.to_thread.run_sync(self._prepare)
            with params_path.open("rb") as stdin:
                process = await trio.lowlevel.open_process(
                    [program, *command[1:], "script"],
                    stdin=stdin,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    cwd=self.directory,
                    env=self._environment(params_path),
                    start_new_session=True,
                    preexec_fn=self._preexec(),
                )
        except (OSError, subprocess.SubprocessError) as exc:
            task_status.started(None)
            return self._finished(FinishReason.ERROR, detail=f"could not start {command[0]}: {exc}")
        started = trio.current_time()
        self.pid = process.pid
        log.info("%s started: pid %d", name, process.pid)
        task_status.started(process.pid)
        try:
            reason, ended = await self._supervise(process, on_chunk)
        finally:
            with trio.CancelScope(shield=True):
                if not self._exited:  # we were cancelled from outside: the group dies too
                    _killpg(process.pid, signal.SIGKILL)
                    # End of file on both pipes proves their holders are dead; wait for it a little.
                    with trio.move_on_after(self._kill_grace):
                        for pipe in (process.stdout, process.stderr):
                            while pipe is not None and await pipe.receive_some(MAX_CHUNK_BYTES):
                                pass
                for pipe in (process.stdout, process.stderr):
                    if pipe is not None:
                        await pipe.aclose()
                await process.wait()
        code = process.returncode
        fields: dict[str, Any] = {"duration": ended - started}
        if code is not None and code < 0:
            fields["signal"] = -code
        else:
            fields["exit_code"] = code
        if reason is FinishReason.TIMED_OUT:
            fields["detail"] = f"killed at the timeout of {self.dispatch.limits.timeout:g} s"
        elif reason is FinishReason.CANCELLED:
            fields["detail"] = self._cancel_detail()
        else:
            result, problem = await trio.to_thread.run_sync(self._read_result)
            fields["detail"] = problem
            if result is not None:
                problem = _travel_problem(self._finished(reason, result=result, **fields))
                if problem:
                    fields["detail"] = f"result.json rejected: {problem}"
                else:
                    fields["result"] = result
        finished = self._finished(reason, **fields)
        log.info("%s ended: %s", name, _describe(finished))
        return finished

    def _cancel_detail(self) -> str:
        return f"cancelled: {self._cancel_reason}" if self._cancel_reason else "cancelled"

    def _prepare(self) -> Path:
        if self.directory.exists():  # left behind by an agent that died mid-attempt
            shutil.rmtree(self.directory)
        self.directory.mkdir(parents=True)
        (self.directory / "script").write_text(self.dispatch.script, encoding="utf-8")
        params_path = self.directory / "params.json"
        params_path.write_text(json.dumps(self.dispatch.params), encoding="utf-8")
        return params_path

    def _environment(self, params_path: Path) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            WFE_PARAMS=str(params_path),
            WFE_RESULT=str(self.directory / "result.json"),
            WFE_JOB_ID=self.ref.job_id,
            WFE_ATTEMPT=str(self.ref.attempt),
        )
        return env

    def _preexec(self) -> Callable[[], None] | None:
        memory = self.dispatch.limits.memory
        return None if memory is None else _memory_limiter(memory)

    async def _supervise(
        self, process: trio.Process, on_chunk: ChunkCallback
    ) -> tuple[FinishReason, float]:
        assert process.stdout is not None and process.stderr is not None
        reason = FinishReason.EXITED
        send, receive = trio.open_memory_channel[tuple[Stream, bytes]](0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._forward, receive, on_chunk)
            async with send:
                nursery.start_soon(self._pump, process.stdout, Stream.STDOUT, send.clone())
                nursery.start_soon(self._pump, process.stderr, Stream.STDERR, send.clone())
            with self._cancel_scope:
                with trio.move_on_after(self.dispatch.limits.timeout) as deadline:
                    await process.wait()
            if deadline.cancelled_caught:
                reason = FinishReason.TIMED_OUT
            elif self._cancel_scope.cancelled_caught:
                reason = FinishReason.CANCELLED
            if process.returncode is None:
                await self._terminate(process)
            ended = trio.current_time()
            _killpg(process.pid, signal.SIGKILL)  # what the script left running in its group
            self._exited = True
            for scope in self._read_scopes:
                scope.deadline = ended + self._kill_grace
        return reason, ended

    async def _terminate(self, process: trio.Process) -> None:
        _killpg(process.pid, signal.SIGTERM)
        with trio.move_on_after(self._kill_grace):
            await process.wait()
            return
        _killpg(process.pid, signal.SIGKILL)
        await process.wait()

    async def _pump(
        self,
        stream: trio.abc.ReceiveStream,
        which: Stream,
        send: trio.MemorySendChannel[tuple[Stream, bytes]],
    ) -> None:
        async with send:
            while True:
                with trio.CancelScope() as scope:
                    if self._exited:
                        # The group is gone: more output can only come from a process that
                        # left the group. Wait for it a little, not forever.
                        scope.deadline = trio.current_time() + self._kill_grace
                    self._read_scopes.add(scope)
                    try:
                        data = await stream.receive_some(MAX_CHUNK_BYTES)
                    finally:
                        self._read_scopes.discard(scope)
                if scope.cancelled_caught:
                    log.warning(
                        "attempt %s#%s: %s still open after the process group ended; stopped reading",
                        self.ref.job_id,
                        self.ref.attempt,
                        which.value,
                    )
                    return
                if not data:
                    return
                await send.send((which, bytes(data)))

    async def _forward(
        self,
        receive: trio.MemoryReceiveChannel[tuple[Stream, bytes]],
        on_chunk: ChunkCallback,
    ) -> None:
        async with receive:
            async for which, data in receive:
                chunk = OutputChunk(
                    job_id=self.ref.job_id,
                    attempt=self.ref.attempt,
                    stream=which,
                    seq=self._chunks,
                    data=data,
                )
                self._chunks += 1
                await on_chunk(chunk)

    def _read_result(self) -> tuple[dict[str, Any] | None, str]:
        path = self.directory / "result.json"
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return None, ""
        if size > MAX_RESULT_BYTES:
            return None, f"result.json of {size} bytes exceeds the limit of {MAX_RESULT_BYTES}"
        try:
            value = json.loads(path.read_bytes(), parse_constant=_refuse_constant)
        except (ValueError, RecursionError) as exc:
            return None, f"result.json is not valid JSON: {exc}"
        if not isinstance(value, dict):
            return None, f"result.json must hold a JSON object, not {_json_kind(value)}"
        return value, ""


def _travel_problem(finished: JobFinished) -> str:
    """Why ``finished`` would not survive the trip to the engine, or ``""``."""
    try:
        codec.decode(codec.encode(finished))
    except (DecodeError, ValueError, RecursionError) as exc:
        return str(exc)
    return ""


def _describe(finished: JobFinished) -> str:
    how = (
        f"signal {finished.signal}" if finished.signal is not None else f"exit {finished.exit_code}"
    )
    text = f"{finished.reason.value}, {how}, {finished.duration:.3f} s, {finished.chunks} chunks"
    return f"{text}; {finished.detail}" if finished.detail else text
