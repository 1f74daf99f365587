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

Cost per attempt matters (a trivial job is a few milliseconds in all): the directory is
prepared (reused from an earlier attempt when a ``Workdirs`` keeps spares,
``agents.workdirs``), the child spawned (``agents.spawn``: ``subprocess.Popen``, which waits
only for the ``exec``, and a pidfd to await its exit), its result read
(``agents.results``) and its directory emptied on the event loop itself, without a
worker-thread hop each. These are small operations on local files.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import signal
import subprocess
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from agents.interpreters import find_program, forget_programs, interpreter_of
from agents.results import read_result, travel_problem
from agents.spawn import Child, killpg, memory_limiter, spawn
from agents.spool import attempt_name
from agents.workdirs import Workdirs
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

ChunkCallback = Callable[[OutputChunk], Awaitable[None]]
RunningCallback = Callable[[int], Awaitable[None]]


class Attempt:
    """One attempt of a job, run once with ``run``; ``cancel`` may be called at any time."""

    def __init__(
        self,
        dispatch: Dispatch,
        *,
        workdir: str | os.PathLike[str],
        keep_workdir: bool = False,
        kill_grace: float = KILL_GRACE,
        workdirs: Workdirs | None = None,
    ) -> None:
        self.dispatch = dispatch
        self.ref = AttemptRef(job_id=dispatch.job_id, attempt=dispatch.attempt)
        self._workdirs = workdirs if workdirs is not None else Workdirs(workdir)
        self.directory = self._workdirs.root / attempt_name(dispatch.job_id, dispatch.attempt)
        self._dir = os.fspath(self.directory)
        self.pid: int | None = None
        self._keep_workdir = keep_workdir
        self._kill_grace = kill_grace
        self._cancel_scope = trio.CancelScope()
        self._cancel_reason = ""
        self._chunks = 0
        self._emit_lock = trio.Lock()  # one chunk handed on at a time, in seq order
        self._on_running: RunningCallback | None = None
        self._running_after = 0.0
        self.announced = False  # on_running was called
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
        on_running: RunningCallback | None = None,
        running_after: float = 0.0,
    ) -> JobFinished:
        """Run the attempt to its end and return how it ended; never raises for the script's sake.

        ``task_status.started`` gets the child's pid, or None if it could not be started (the
        result then has reason ``ERROR`` and says why). ``on_running(pid)``, if given, is
        awaited once the child has run for ``running_after`` seconds, and its output is read
        from then on; a child that ends sooner has its output read after its end, and
        ``on_running`` is called before its first chunk or not at all (``announced`` tells
        which), so a caller can report a short attempt's start and end together. Without
        ``on_running`` output is read from the start. If the caller is cancelled, the group
        is killed before ``Cancelled`` propagates. The working directory is removed (or kept
        as a spare by the ``Workdirs``) at the end unless ``keep_workdir``.
        """
        self._on_running, self._running_after = on_running, running_after
        try:
            return await self._run(on_chunk, task_status)
        finally:
            if not self._keep_workdir:
                with trio.CancelScope(shield=True):
                    await self.remove_directory()

    async def remove_directory(self) -> None:
        """Remove the attempt's working directory, if there is one (for ``keep_workdir`` users).

        A small directory (what a short script leaves) is emptied and kept as a spare or
        removed at once (``Workdirs.release``); a big one is removed in a worker thread, so
        the event loop is not held.
        """
        if not self._workdirs.release(self._dir):
            await trio.to_thread.run_sync(
                functools.partial(shutil.rmtree, self.directory, ignore_errors=True)
            )

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
        try:
            command = interpreter_of(self.dispatch)
        except ValueError as exc:
            task_status.started(None)
            return self._finished(FinishReason.ERROR, detail=f"bad interpreter header: {exc}")
        program = find_program(command[0])
        if program is None:
            task_status.started(None)
            return self._finished(
                FinishReason.ERROR, detail=f"interpreter {command[0]!r} not found on PATH"
            )
        if self._cancel_scope.cancel_called:
            task_status.started(None)
            return self._finished(FinishReason.CANCELLED, detail=self._cancel_detail())
        try:
            child = self._start([program, *command[1:], "script"])
        except (OSError, subprocess.SubprocessError) as exc:
            forget_programs()  # the interpreter may have moved: look it up afresh next time
            task_status.started(None)
            return self._finished(FinishReason.ERROR, detail=f"could not start {command[0]}: {exc}")
        started = trio.current_time()
        self.pid = child.pid
        log.debug("attempt %s#%d started: pid %d", self.ref.job_id, self.ref.attempt, child.pid)
        task_status.started(child.pid)
        try:
            reason, ended = await self._supervise(child, on_chunk)
        finally:
            with trio.CancelScope(shield=True):
                if not self._exited:  # we were cancelled from outside: the group dies too
                    killpg(child.pid, signal.SIGKILL)
                    # End of file on both pipes proves their holders are dead; wait for it a little.
                    with trio.move_on_after(self._kill_grace):
                        for pipe in (child.stdout, child.stderr):
                            while await pipe.receive_some(MAX_CHUNK_BYTES):
                                pass
                child.stdout.close()
                child.stderr.close()
                await child.wait()
        code = child.returncode
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
            result, problem = read_result(self._dir)
            fields["detail"] = problem
            if result:  # an empty object always travels
                problem = travel_problem(self._finished(reason, result=result, **fields))
                if problem:
                    fields["detail"] = f"result.json rejected: {problem}"
                    result = None
            if result is not None:
                fields["result"] = result
        return self._finished(reason, **fields)

    def _cancel_detail(self) -> str:
        return f"cancelled: {self._cancel_reason}" if self._cancel_reason else "cancelled"

    def _start(self, argv: list[str]) -> Child:
        """Prepare the directory and start the child (blocking, but only briefly)."""
        workdirs = self._workdirs
        _, reuse = workdirs.make(self.directory.name)
        workdirs.write(f"{self._dir}/script", self.dispatch.script.encode(), reuse=reuse)
        params_path = f"{self._dir}/params.json"
        workdirs.write(params_path, json.dumps(self.dispatch.params).encode(), reuse=reuse)
        stdin = os.open(params_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return spawn(
                argv,
                stdin=stdin,
                cwd=self._dir,
                env=self._environment(params_path),
                preexec=self._preexec(),
            )
        finally:
            os.close(stdin)

    def _environment(self, params_path: str) -> dict[str, str]:
        env = os.environ.copy()
        env["WFE_PARAMS"] = params_path
        env["WFE_RESULT"] = f"{self._dir}/result.json"
        env["WFE_JOB_ID"] = self.ref.job_id
        env["WFE_ATTEMPT"] = str(self.ref.attempt)
        return env

    def _preexec(self) -> Callable[[], None] | None:
        memory = self.dispatch.limits.memory
        return None if memory is None else memory_limiter(memory)

    async def _supervise(self, child: Child, on_chunk: ChunkCallback) -> tuple[FinishReason, float]:
        """Wait for the child to end (or be killed) while its output is handed on.

        With ``on_running``, the first ``running_after`` seconds are waited out on the
        child's exit alone: a script that ends that soon has its output read afterwards,
        from the pipes, without a reading task per pipe.
        """
        reason = FinishReason.EXITED
        pumping = False
        async with trio.open_nursery() as nursery:
            with self._cancel_scope:
                with trio.move_on_after(self.dispatch.limits.timeout) as deadline:
                    if self._on_running is not None:
                        with trio.move_on_after(self._running_after):
                            await child.wait()
                    if child.returncode is None:
                        pumping = True
                        nursery.start_soon(self._pump, child.stdout, Stream.STDOUT, on_chunk)
                        nursery.start_soon(self._pump, child.stderr, Stream.STDERR, on_chunk)
                        async with self._emit_lock:
                            await self._announce(child.pid)
                        await child.wait()
            if deadline.cancelled_caught:
                reason = FinishReason.TIMED_OUT
            elif self._cancel_scope.cancelled_caught:
                reason = FinishReason.CANCELLED
            if child.returncode is None:
                await self._terminate(child)
            ended = trio.current_time()
            killpg(child.pid, signal.SIGKILL)  # what the script left running in its group
            self._exited = True
            for scope in self._read_scopes:
                scope.deadline = ended + self._kill_grace
            if not pumping:
                await self._drain(child, nursery, on_chunk)
        return reason, ended

    async def _drain(self, child: Child, nursery: trio.Nursery, on_chunk: ChunkCallback) -> None:
        """Hand on what the ended child left in its pipes; a pipe that some process outside
        the group still holds open goes to a reading task (which waits a little for it)."""
        for pipe, which in ((child.stdout, Stream.STDOUT), (child.stderr, Stream.STDERR)):
            while True:
                try:
                    data = os.read(pipe.fileno(), MAX_CHUNK_BYTES)
                except BlockingIOError:
                    nursery.start_soon(self._pump, pipe, which, on_chunk)
                    break
                if not data:
                    break
                await self._emit(which, data, on_chunk)

    async def _terminate(self, child: Child) -> None:
        killpg(child.pid, signal.SIGTERM)
        with trio.move_on_after(self._kill_grace):
            await child.wait()
            return
        killpg(child.pid, signal.SIGKILL)
        await child.wait()

    async def _pump(
        self, stream: trio.abc.ReceiveStream, which: Stream, on_chunk: ChunkCallback
    ) -> None:
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
            await self._emit(which, bytes(data), on_chunk)

    async def _emit(self, which: Stream, data: bytes, on_chunk: ChunkCallback) -> None:
        """Hand on one chunk, after ``on_running``; chunks are numbered in the order handed on."""
        async with self._emit_lock:
            assert self.pid is not None
            await self._announce(self.pid)
            chunk = OutputChunk(
                job_id=self.ref.job_id,
                attempt=self.ref.attempt,
                stream=which,
                seq=self._chunks,
                data=data,
            )
            self._chunks += 1
            await on_chunk(chunk)

    async def _announce(self, pid: int) -> None:
        """Call ``on_running`` unless done already; the emit lock must be held."""
        if not self.announced and self._on_running is not None:
            self.announced = True
            await self._on_running(pid)


def describe(finished: JobFinished) -> str:
    """How an attempt ended, in a few words, for a log line."""
    how = (
        f"signal {finished.signal}" if finished.signal is not None else f"exit {finished.exit_code}"
    )
    text = f"{finished.reason.value}, {how}, {finished.duration:.3f} s, {finished.chunks} chunks"
    return f"{text}; {finished.detail}" if finished.detail else text
