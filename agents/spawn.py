"""Start a script's child process in a session of its own, wait for it, signal its group.

``spawn`` starts the child with ``subprocess.Popen`` (which waits only for the ``exec``) and
gives it stdout and stderr pipes of our own; ``Child.wait`` awaits its exit on a pidfd (in a
worker thread where there is none), so no thread hop is paid per attempt.
"""

from __future__ import annotations

import functools
import logging
import os
import resource
import subprocess
from collections.abc import Callable

import trio

log = logging.getLogger("wfe.agent.runner")

_HAVE_PIDFD = hasattr(os, "pidfd_open")


def killpg(pgid: int, sig: int) -> None:
    """Send ``sig`` to process group ``pgid``; a group that is gone already is no error."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass  # the whole group is gone already
    except PermissionError as exc:  # a member changed its user id; nothing more we can do
        log.warning("could not signal process group %d: %s", pgid, exc)


def memory_limiter(limit: int) -> Callable[[], None]:
    """A ``preexec_fn`` that caps the child's address space at ``limit`` bytes (or the hard
    limit, if lower)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)

    def preexec() -> None:  # runs in the child between fork and exec
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return preexec


class Child:
    """A child started by ``spawn``: its pid, its output pipes, and ``wait`` on a pidfd."""

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


def spawn(
    argv: list[str],
    *,
    stdin: int,
    cwd: str,
    env: dict[str, str],
    preexec: Callable[[], None] | None,
) -> Child:
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
    return Child(popen, trio.lowlevel.FdStream(out_r), trio.lowlevel.FdStream(err_r))
