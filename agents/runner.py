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
prepared (reused from an earlier attempt when a ``Workdirs`` keeps spares), the child
spawned (``subprocess.Popen``, which waits only for the ``exec``), its result read and its
directory emptied on the event loop itself, without a worker-thread hop each; the child's
exit is awaited on a pidfd. These are small operations on local files.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import os
import re
import resource
import shlex
import shutil
import signal
import stat
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
RunningCallback = Callable[[int], Awaitable[None]]

_INTERPRETER_LINE = re.compile(r"#\s*interpreter\s*:(?P<value>.*)")


_interpreters: dict[tuple[str, int], tuple[str, ...]] = {}


def _interpreter(dispatch: Dispatch) -> tuple[str, ...]:
    """``script_interpreter`` of the dispatch's script, remembered by its sha256 (which the
    agent checked) and length. Raises ``ValueError`` as it does."""
    key = (dispatch.sha256, len(dispatch.script))
    command = _interpreters.get(key)
    if command is None:
        command = tuple(script_interpreter(dispatch.script))
        if len(_interpreters) > 64:
            _interpreters.clear()
        _interpreters[key] = command
    return command


_programs: dict[tuple[str, str | None], str] = {}


def _which(name: str) -> str | None:
    """``shutil.which(name)``, remembered per ``PATH`` once found (a miss is not remembered)."""
    key = (name, os.environ.get("PATH"))
    program = _programs.get(key)
    if program is None:
        program = shutil.which(name)
        if program is not None:
            if len(_programs) > 64:
                _programs.clear()
            _programs[key] = program
    return program


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


class _Spawned:
    """A child started by ``_spawn``: its pid, its output pipes, and ``wait`` on a pidfd."""

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        stdout: trio.lowlevel.FdStream,
        stderr: trio.lowlevel.FdStream,
    ) -> None:
        self._popen = popen
        self.pid = popen.pid
        self.stdout = stdout
        self.stderr = stderr
        self._pidfd: int | None = None
        if _HAVE_PIDFD:
            try:
                self._pidfd = os.pidfd_open(popen.pid)
            except OSError:  # an old kernel or a sandbox: wait in a thread instead
                pass

    @property
    def returncode(self) -> int | None:
        """The exit status once the child has exited (polled, never blocking), else None."""
        return self._popen.poll()

    async def wait(self) -> int:
        """Wait for the child to exit and reap it; returns its exit status."""
        if self._popen.returncode is None:
            if self._pidfd is not None:
                await trio.lowlevel.wait_readable(self._pidfd)
            else:
                await trio.to_thread.run_sync(
                    functools.partial(os.waitid, os.P_PID, self.pid, os.WEXITED | os.WNOWAIT),
                    abandon_on_cancel=True,
                )
            self._popen.wait()  # it has exited: this only reaps it
        self._close_pidfd()
        code = self._popen.returncode
        assert code is not None
        return code

    def _close_pidfd(self) -> None:
        if self._pidfd is not None:
            trio.lowlevel.notify_closing(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None


_HAVE_PIDFD = hasattr(os, "pidfd_open")


def _spawn(
    argv: list[str],
    *,
    stdin: int,
    cwd: str,
    env: dict[str, str],
    preexec: Callable[[], None] | None,
) -> _Spawned:
    """Start ``argv`` in a new session with stdout and stderr on pipes of our own.

    Blocks only until the child has called ``exec`` (``Popen`` uses ``vfork`` when there
    is no ``preexec``). Raises ``OSError`` or ``subprocess.SubprocessError``.
    """
    fds: list[int] = []
    try:
        out_r, out_w = os.pipe()
        fds += (out_r, out_w)
        err_r, err_w = os.pipe()
        fds += (err_r, err_w)
        popen = subprocess.Popen(
            argv,
            stdin=stdin,
            stdout=out_w,
            stderr=err_w,
            cwd=cwd,
            env=env,
            start_new_session=True,
            preexec_fn=preexec,
        )
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    os.close(out_w)  # the child holds the only write ends: their end of file is its exit
    os.close(err_w)
    return _Spawned(popen, trio.lowlevel.FdStream(out_r), trio.lowlevel.FdStream(err_r))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


#: A directory with more entries than this (a script that left many files behind) is
#: removed in a worker thread, not on the event loop.
_INLINE_REMOVE_ENTRIES = 16

#: The files a reused directory keeps, to be overwritten by the next attempt.
_KEPT = ("script", "params.json")

_FREE_PREFIX = ".free-"


def _remove_path(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


class Workdirs:
    """The attempts' working directories under ``root``, reused to spare the filesystem.

    Creating a file or directory costs far more than overwriting one on many filesystems
    (130-250 us of CPU on ext4 here). So a finished attempt's directory is emptied except
    for its ``script`` and ``params.json``, renamed to ``.free-<n>`` and, up to ``keep`` of
    them, renamed into place for a later attempt, which overwrites those two files. Only
    regular files with one link are overwritten, opened without following symlinks; anything
    else is replaced. With ``keep=0`` every attempt gets a fresh directory. ``close`` removes
    the spare ones.
    """

    def __init__(self, root: str | os.PathLike[str], *, keep: int = 0) -> None:
        self.root = Path(root)
        self.keep = keep
        self._root = os.fspath(root)  # paths are joined as strings: pathlib costs on every job
        self._free: list[str] = []
        self._count = 0

    def make(self, name: str) -> tuple[str, bool]:
        """An empty-but-for-kept-files directory ``root/name``; True if it was reused.

        A directory of that name left behind by an agent that died mid-attempt is removed
        first. Raises ``OSError``.
        """
        target = os.path.join(self._root, name)
        while self._free:
            spare = self._free.pop()
            try:
                os.rename(spare, target)  # replaces an empty directory left behind, too
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                    _remove_path(target)  # left behind by an agent that died mid-attempt
                    self._free.append(spare)
                else:
                    shutil.rmtree(spare, ignore_errors=True)
                continue
            return target, True
        try:
            os.makedirs(target)
        except FileExistsError:  # left behind by an agent that died mid-attempt
            _remove_path(target)
            os.mkdir(target)
        return target, False

    def write(self, path: str, data: bytes, *, reuse: bool) -> None:
        """Make ``path`` a regular file holding ``data``, overwriting it if ``reuse`` allows."""
        if reuse:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:
                fd = -1
            if fd >= 0:
                try:
                    st = os.fstat(fd)
                    if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
                        _write_all(fd, data)
                        os.ftruncate(fd, len(data))
                        return
                finally:
                    os.close(fd)
            _remove_path(path)
        fd = os.open(
            path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644
        )
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)

    def release(self, directory: str) -> bool:
        """Empty ``directory`` and keep it for reuse, or remove it; False if it is too big or
        odd to handle here (the caller then removes it with ``shutil.rmtree`` in a thread).

        A directory that is already gone counts as handled.
        """
        try:
            keep: list[str] = []
            drop: list[str] = []
            with os.scandir(directory) as entries:
                for entry in entries:
                    if len(keep) + len(drop) >= _INLINE_REMOVE_ENTRIES:
                        return False
                    if entry.is_dir(follow_symlinks=False):
                        return False
                    if entry.name in _KEPT and entry.is_file(follow_symlinks=False):
                        keep.append(entry.name)  # ``write`` checks it before overwriting
                    else:
                        drop.append(entry.name)
            if len(self._free) < self.keep:
                for name in drop:
                    os.unlink(f"{directory}/{name}")
                self._count += 1
                spare = f"{self._root}/{_FREE_PREFIX}{self._count}"
                os.rename(directory, spare)
                self._free.append(spare)
                return True
            for name in keep + drop:
                os.unlink(f"{directory}/{name}")
            os.rmdir(directory)
        except FileNotFoundError:
            return not os.path.exists(directory)
        except OSError:
            return False
        return True

    def close(self) -> None:
        """Remove the spare directories (and any a previous run left behind)."""
        self._free.clear()
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self._root):
                if entry.name.startswith(_FREE_PREFIX):
                    shutil.rmtree(entry.path, ignore_errors=True)


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
            command = _interpreter(self.dispatch)
        except ValueError as exc:
            task_status.started(None)
            return self._finished(FinishReason.ERROR, detail=f"bad interpreter header: {exc}")
        program = _which(command[0])
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
            _programs.clear()  # the interpreter may have moved: look it up afresh next time
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
                    _killpg(child.pid, signal.SIGKILL)
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
            result, problem = self._read_result()
            fields["detail"] = problem
            if result:  # an empty object always travels
                problem = _travel_problem(self._finished(reason, result=result, **fields))
                if problem:
                    fields["detail"] = f"result.json rejected: {problem}"
                    result = None
            if result is not None:
                fields["result"] = result
        return self._finished(reason, **fields)

    def _cancel_detail(self) -> str:
        return f"cancelled: {self._cancel_reason}" if self._cancel_reason else "cancelled"

    def _start(self, argv: list[str]) -> _Spawned:
        """Prepare the directory and start the child (blocking, but only briefly)."""
        workdirs = self._workdirs
        _, reuse = workdirs.make(self.directory.name)
        workdirs.write(f"{self._dir}/script", self.dispatch.script.encode(), reuse=reuse)
        params_path = f"{self._dir}/params.json"
        workdirs.write(params_path, json.dumps(self.dispatch.params).encode(), reuse=reuse)
        stdin = os.open(params_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return _spawn(
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
        return None if memory is None else _memory_limiter(memory)

    async def _supervise(
        self, child: _Spawned, on_chunk: ChunkCallback
    ) -> tuple[FinishReason, float]:
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
            _killpg(child.pid, signal.SIGKILL)  # what the script left running in its group
            self._exited = True
            for scope in self._read_scopes:
                scope.deadline = ended + self._kill_grace
            if not pumping:
                await self._drain(child, nursery, on_chunk)
        return reason, ended

    async def _drain(self, child: _Spawned, nursery: trio.Nursery, on_chunk: ChunkCallback) -> None:
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

    async def _terminate(self, child: _Spawned) -> None:
        _killpg(child.pid, signal.SIGTERM)
        with trio.move_on_after(self._kill_grace):
            await child.wait()
            return
        _killpg(child.pid, signal.SIGKILL)
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

    def _read_result(self) -> tuple[dict[str, Any] | None, str]:
        try:  # O_NONBLOCK: a FIFO put there must not hang the agent
            fd = os.open(f"{self._dir}/result.json", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return None, ""
        except OSError as exc:
            return None, f"result.json cannot be read: {exc.strerror or exc}"
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return None, "result.json is not a regular file"
            if st.st_size > MAX_RESULT_BYTES:
                size = st.st_size
                return None, f"result.json of {size} bytes exceeds the limit of {MAX_RESULT_BYTES}"
            data = os.read(fd, MAX_RESULT_BYTES + 1)
        finally:
            os.close(fd)
        if len(data) > MAX_RESULT_BYTES:  # it grew after the check
            return None, f"result.json exceeds the limit of {MAX_RESULT_BYTES} bytes"
        try:
            value = json.loads(data, parse_constant=_refuse_constant)
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


def describe(finished: JobFinished) -> str:
    """How an attempt ended, in a few words, for a log line."""
    how = (
        f"signal {finished.signal}" if finished.signal is not None else f"exit {finished.exit_code}"
    )
    text = f"{finished.reason.value}, {how}, {finished.duration:.3f} s, {finished.chunks} chunks"
    return f"{text}; {finished.detail}" if finished.detail else text
