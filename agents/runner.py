"""Run one attempt of a job: an RScript as a process in its own process group, through the keeper.

The script text goes to ``<workdir>/<job>-<attempt>/script``, which is also the child's
working directory; the parameters go to ``params.json`` there and to the child's stdin, and
never into code. The interpreter is named by the script's ``# interpreter:`` header line
(default ``sh``). The child sees ``WFE_PARAMS``, ``WFE_RESULT``, ``WFE_JOB_ID`` and
``WFE_ATTEMPT`` in its environment, and may write a JSON object to ``$WFE_RESULT``.

The script is started by the agent's keeper (``wfe.agents.keeper``), which is its parent and
outlives the agent: stdout and stderr go to files in the attempt's directory
(``.wfe-stdout``, ``.wfe-stderr``), read from here in pieces of at most ``MAX_CHUNK_BYTES``
as they grow; each becomes an ``OutputChunk`` numbered by one ``seq`` counter across both
streams and is handed to the caller's callback, which may block (the files then grow ahead
of it; nothing is lost). At the timeout or on ``cancel()`` the whole group gets SIGTERM,
then SIGKILL after ``kill_grace`` seconds. When the main process has exited, the keeper kills
whatever is left of its group: an attempt is over when its script is, and leaves nothing
running behind. An attempt whose agent died is *adopted* by the next one
(``Attempt.adopted``): it reads the files on from where the spool says the dead agent got
to, and waits for the same process. ``detach()`` lets the agent stop without killing it.

Cost per attempt matters (a trivial job is a few milliseconds in all): the directory is
prepared (reused from an earlier attempt when a ``Workdirs`` keeps spares,
``wfe.agents.workdirs``), the child spawned by the keeper (one request on a Unix socket), its result read
(``wfe.agents.results``) and its directory emptied on the event loop itself, without a
worker-thread hop each. These are small operations on local files.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from wfe.agents.interpreters import find_program, forget_programs, interpreter_of
from wfe.agents.keeper_link import Ended, Held, KeeperGone, KeeperLink
from wfe.agents.results import read_result, travel_problem
from wfe.agents.spool import attempt_name
from wfe.agents.workdirs import Workdirs
from wfe.protocols.messages import (
    MAX_CHUNK_BYTES,
    AttemptRef,
    Dispatch,
    FinishReason,
    JobFinished,
    Limits,
    OutputChunk,
    Stream,
)

log = logging.getLogger("wfe.agent.runner")

#: Seconds between SIGTERM and SIGKILL, and how long output is awaited once the group is gone.
KILL_GRACE = 2.0

#: Seconds between looks at a running script's output files, at most (less while it writes).
MAX_POLL = 0.1

#: The output files in an attempt's directory.
STDOUT_FILE = ".wfe-stdout"
STDERR_FILE = ".wfe-stderr"
#: How a detail begins when the script ran out of memory (the engine's policy reads it).
OUT_OF_MEMORY = "out of memory"
#: What the end of a script's stderr says when an allocation failed under its memory
#: limit (RLIMIT_AS, agents/keeper.py): Python, C and C++ runtimes, R, the shell.
_ALLOCATION_FAILED = (
    b"MemoryError",
    b"Cannot allocate memory",
    b"std::bad_alloc",
    b"cannot allocate vector",
    b"out of memory",
)
_STDERR_TAIL = 4096

ChunkCallback = Callable[[OutputChunk], Awaitable[None]]
RunningCallback = Callable[[int], Awaitable[None]]


class AttemptNotStarted(OSError):
    """The attempt could not even be prepared (its directory cannot be written): nothing ran,
    so it is no failure of the job; the agent refuses it."""


class Attempt:
    """One attempt of a job, run once with ``run``; ``cancel`` may be called at any time."""

    def __init__(
        self,
        dispatch: Dispatch,
        *,
        workdir: str | os.PathLike[str],
        keeper: KeeperLink | None,
        keep_workdir: bool = False,
        kill_grace: float = KILL_GRACE,
        workdirs: Workdirs | None = None,
    ) -> None:
        self.dispatch: Dispatch | None = dispatch
        self.ref = AttemptRef(job_id=dispatch.job_id, attempt=dispatch.attempt)
        self.timeout = dispatch.limits.timeout
        self._keeper = keeper  # None until the agent's keeper runs (``use_keeper``)
        self._workdirs = workdirs if workdirs is not None else Workdirs(workdir)
        self.key = attempt_name(self.ref.job_id, self.ref.attempt)
        self.directory = self._workdirs.root / self.key
        self._dir = os.fspath(self.directory)
        self.pid: int | None = None
        self._keep_workdir = keep_workdir
        self._kill_grace = kill_grace
        self._cancel_scope = trio.CancelScope()
        self._cancel_reason = ""
        self._chunks = 0
        self._offsets = {Stream.STDOUT: 0, Stream.STDERR: 0}
        self._ran_before = 0.0  # seconds it ran under an agent before this one adopted it
        self._emit_lock = trio.Lock()  # one chunk handed on at a time, in seq order
        self._on_running: RunningCallback | None = None
        self._running_after = 0.0
        self.announced = False  # on_running was called
        self.detached = False  # left running to the keeper when the agent stops
        self._exited = False
        self._exit_seen = trio.Event()  # wakes the output tails at once when the script ends

    @property
    def keeper(self) -> KeeperLink:
        """The keeper that starts and holds the script (given before ``run``)."""
        if self._keeper is None:
            raise RuntimeError(f"attempt {self.key} has no keeper yet")
        return self._keeper

    @property
    def has_keeper(self) -> bool:
        return self._keeper is not None

    def use_keeper(self, keeper: KeeperLink) -> None:
        """Run through ``keeper`` (the agent started it for its first attempt)."""
        self._keeper = keeper

    @classmethod
    def adopted(
        cls,
        held: Held,
        *,
        ref: AttemptRef,
        workdir: str | os.PathLike[str],
        keeper: KeeperLink,
        chunks: int,
        offsets: dict[Stream, int],
        kill_grace: float = KILL_GRACE,
        workdirs: Workdirs | None = None,
    ) -> Attempt:
        """An attempt a previous agent started, which the keeper still holds: ``run`` reads
        its output on from ``offsets`` (numbering chunks from ``chunks``) and waits for it."""
        timeout = float(held.meta.get("timeout", 0.0)) or 1e9
        placeholder = Dispatch(
            job_id=ref.job_id,
            attempt=ref.attempt,
            script_name="",
            script="",
            sha256="",
            params={},
            limits=Limits(timeout=timeout),
        )
        attempt = cls(
            placeholder,
            workdir=workdir,
            keeper=keeper,
            keep_workdir=True,
            kill_grace=kill_grace,
            workdirs=workdirs,
        )
        attempt.dispatch = None
        attempt.pid = held.pid
        attempt._chunks = chunks
        attempt._offsets = dict(offsets)
        attempt.announced = True
        # wall-clock: the start was noted by another process (the keeper, for an earlier agent)
        started = float(held.meta.get("started", time.monotonic()))  # wall-clock
        attempt._ran_before = max(0.0, time.monotonic() - started)  # wall-clock
        return attempt

    def cancel(self, reason: str = "") -> None:
        """Kill the attempt's process group; ``run`` then reports ``CANCELLED``.

        Does nothing once the script has exited.
        """
        if not self._cancel_scope.cancel_called:
            self._cancel_reason = reason
        self._cancel_scope.cancel()

    def detach(self) -> None:
        """Leave the script to the keeper when ``run`` is cancelled (the agent stops): it is
        neither killed nor its directory removed, and the next agent adopts it."""
        self.detached = True

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
        result then has reason ``ERROR`` and says why; ``AttemptNotStarted`` is raised instead
        when its directory cannot be written). ``on_running(pid)``, if given, is
        awaited once the child has run for ``running_after`` seconds, and its output is read
        from then on; a child that ends sooner has its output read after its end, and
        ``on_running`` is called before its first chunk or not at all (``announced`` tells
        which), so a caller can report a short attempt's start and end together. Without
        ``on_running`` output is read from the start. If the caller is cancelled, the group
        is killed before ``Cancelled`` propagates, unless ``detach()`` was called. The working
        directory is removed (or kept as a spare by the ``Workdirs``) at the end unless
        ``keep_workdir``.
        """
        self._on_running, self._running_after = on_running, running_after
        try:
            return await self._run(on_chunk, task_status)
        finally:
            if not self._keep_workdir and not self.detached:
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
        if self.pid is None:
            pid_or_error = await self._start_script()
            if isinstance(pid_or_error, JobFinished):
                task_status.started(None)
                return pid_or_error
            self.pid = pid_or_error
            log.debug("attempt %s#%d started: pid %d", self.ref.job_id, self.ref.attempt, self.pid)
        pid = self.pid
        started = trio.current_time() - self._ran_before
        task_status.started(pid)
        try:
            reason, ended = await self._supervise(pid, on_chunk)
        finally:
            with trio.CancelScope(shield=True):
                if not self._exited and not self.detached:
                    # we were cancelled from outside: the group dies too
                    self.keeper.kill(pid, signal.SIGKILL)
                    with trio.move_on_after(self._kill_grace):
                        await self._wait_exit()
                        await self.keeper.release(self.key)
        end = self.keeper.ended(self.key)
        await self.keeper.release(self.key)
        fields: dict[str, Any] = {"duration": ended - started}
        code = end.status if end is not None else None
        if code is not None and code < 0:
            fields["signal"] = -code
        else:
            fields["exit_code"] = code
        if end is not None and end.fenced and reason is FinishReason.EXITED:
            reason = FinishReason.FENCED
            fields["detail"] = "killed by the agent side: the engine's lease ran out"
        elif end is None:
            reason = FinishReason.FENCED
            fields["detail"] = "the agent's keeper went away: the script was killed"
        elif reason is FinishReason.TIMED_OUT:
            fields["detail"] = f"killed at the timeout of {self.timeout:g} s"
        elif reason is FinishReason.CANCELLED:
            fields["detail"] = self._cancel_detail()
        else:
            result, problem = read_result(self._dir)
            fields["detail"] = problem
            memory = self.dispatch.limits.memory if self.dispatch else None
            if code and memory is not None and ran_out_of_memory(self._dir):
                fields["detail"] = (
                    f"{OUT_OF_MEMORY}: an allocation failed under its limit of {memory} bytes"
                )
            if result:  # an empty object always travels
                problem = travel_problem(self._finished(reason, result=result, **fields))
                if problem:
                    fields["detail"] = f"result.json rejected: {problem}"
                    result = None
            if result is not None:
                fields["result"] = result
        return self._finished(reason, **fields)

    async def _start_script(self) -> int | JobFinished:
        """Start the script through the keeper: its pid, or the result saying why not."""
        assert self.dispatch is not None
        try:
            command = interpreter_of(self.dispatch)
        except ValueError as exc:
            return self._finished(FinishReason.ERROR, detail=f"bad interpreter header: {exc}")
        program = find_program(command[0])
        if program is None:
            return self._finished(
                FinishReason.ERROR, detail=f"interpreter {command[0]!r} not found on PATH"
            )
        if self._cancel_scope.cancel_called:
            return self._finished(FinishReason.CANCELLED, detail=self._cancel_detail())
        try:
            return await self._start([program, *command[1:], "script"])
        except AttemptNotStarted:
            raise
        except KeeperGone as exc:
            return self._finished(FinishReason.ERROR, detail=f"could not start: {exc}")
        except OSError as exc:
            forget_programs()  # the interpreter may have moved: look it up afresh next time
            return self._finished(FinishReason.ERROR, detail=f"could not start {command[0]}: {exc}")

    def _cancel_detail(self) -> str:
        return f"cancelled: {self._cancel_reason}" if self._cancel_reason else "cancelled"

    async def _start(self, argv: list[str]) -> int:
        """Prepare the directory and have the keeper start the script; its pid. Raises
        ``AttemptNotStarted`` when the directory cannot be written (a full disk): nothing ran."""
        assert self.dispatch is not None
        workdirs = self._workdirs
        params_path = f"{self._dir}/params.json"
        try:
            _, reuse = workdirs.make(self.directory.name)
            workdirs.write(f"{self._dir}/script", self.dispatch.script.encode(), reuse=reuse)
            workdirs.write(params_path, json.dumps(self.dispatch.params).encode(), reuse=reuse)
        except OSError as exc:
            raise AttemptNotStarted(f"cannot prepare its directory: {exc}") from exc
        return await self.keeper.spawn(
            self.key,
            argv,
            cwd=self._dir,
            env=self._environment(params_path),
            stdin=params_path,
            stdout=f"{self._dir}/{STDOUT_FILE}",
            stderr=f"{self._dir}/{STDERR_FILE}",
            memory=self.dispatch.limits.memory,
            meta={"timeout": self.timeout},
        )

    def _environment(self, params_path: str) -> dict[str, str]:
        env = os.environ.copy()
        env["WFE_PARAMS"] = params_path
        env["WFE_RESULT"] = f"{self._dir}/result.json"
        env["WFE_JOB_ID"] = self.ref.job_id
        env["WFE_ATTEMPT"] = str(self.ref.attempt)
        return env

    async def _wait_exit(self) -> Ended:
        return await self.keeper.exited(self.key)

    async def _supervise(self, pid: int, on_chunk: ChunkCallback) -> tuple[FinishReason, float]:
        """Wait for the script to end (or be killed) while its output is handed on.

        With ``on_running``, the first ``running_after`` seconds are waited out on the
        script's exit alone: a script that ends that soon has its output read afterwards,
        without a reading task per stream.
        """
        reason = FinishReason.EXITED
        pumping = False
        remaining = max(0.0, self.timeout - self._ran_before)
        async with trio.open_nursery() as nursery:
            with self._cancel_scope:
                with trio.move_on_after(remaining) as deadline:
                    if self._on_running is not None and not self.announced:
                        with trio.move_on_after(self._running_after):
                            await self._wait_exit()
                    if self.keeper.ended(self.key) is None:
                        pumping = True
                        nursery.start_soon(self._tail, Stream.STDOUT, on_chunk)
                        nursery.start_soon(self._tail, Stream.STDERR, on_chunk)
                        async with self._emit_lock:
                            await self._announce(pid)
                        await self._wait_exit()
            if deadline.cancelled_caught:
                reason = FinishReason.TIMED_OUT
            elif self._cancel_scope.cancelled_caught:
                reason = FinishReason.CANCELLED
            if self.keeper.ended(self.key) is None:
                await self._terminate(pid)
            ended = trio.current_time()
            await self._wait_group_gone(pid)
            self._exited = True
            self._exit_seen.set()
            if not pumping:
                for which in (Stream.STDOUT, Stream.STDERR):
                    await self._read_to_end(which, on_chunk)
        return reason, ended

    async def _wait_group_gone(self, pid: int) -> None:
        """The keeper killed what the script left in its group: wait (a little) until all of
        it is gone, so an attempt that is over leaves nothing running."""
        with trio.move_on_after(self._kill_grace):
            while _group_alive(pid):  # noqa: ASYNC110 - a process group has no event to await
                await trio.sleep(0.005)

    async def _terminate(self, pid: int) -> None:
        self.keeper.kill(pid, signal.SIGTERM)
        with trio.move_on_after(self._kill_grace):
            await self._wait_exit()
            return
        self.keeper.kill(pid, signal.SIGKILL)
        with trio.move_on_after(self._kill_grace):
            await self._wait_exit()

    def _open(self, which: Stream) -> int | None:
        name = STDOUT_FILE if which is Stream.STDOUT else STDERR_FILE
        try:
            fd = os.open(f"{self._dir}/{name}", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        os.lseek(fd, self._offsets[which], os.SEEK_SET)
        return fd

    async def _read_to_end(self, which: Stream, on_chunk: ChunkCallback) -> None:
        fd = self._open(which)
        if fd is None:
            return
        try:
            while data := os.read(fd, MAX_CHUNK_BYTES):
                self._offsets[which] += len(data)
                await self._emit(which, data, on_chunk)
        finally:
            os.close(fd)

    async def _tail(self, which: Stream, on_chunk: ChunkCallback) -> None:
        """Hand on a running script's output file as it grows, to its end once it exited."""
        fd = self._open(which)
        if fd is None:
            return
        pause = 0.005
        try:
            while True:
                exited = self._exited
                data = os.read(fd, MAX_CHUNK_BYTES)
                if data:
                    self._offsets[which] += len(data)
                    await self._emit(which, data, on_chunk)
                    pause = 0.005
                    continue
                if exited:
                    return
                with trio.move_on_after(pause):
                    await self._exit_seen.wait()
                pause = min(2 * pause, MAX_POLL)
        finally:
            os.close(fd)

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


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def describe(finished: JobFinished) -> str:
    """How an attempt ended, in a few words, for a log line."""
    how = (
        f"signal {finished.signal}" if finished.signal is not None else f"exit {finished.exit_code}"
    )
    text = f"{finished.reason.value}, {how}, {finished.duration:.3f} s, {finished.chunks} chunks"
    return f"{text}; {finished.detail}" if finished.detail else text


def ran_out_of_memory(directory: str) -> bool:
    """Whether the end of the script's stderr says an allocation failed (the script ran
    under a memory limit and exited with a failure)."""
    try:
        with open(f"{directory}/{STDERR_FILE}", "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - _STDERR_TAIL))
            tail = f.read()
    except OSError:
        return False
    return any(marker in tail for marker in _ALLOCATION_FAILED)
