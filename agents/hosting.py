"""The attempts an agent hosts: admission of a dispatch, running, output, results and drops.

An ``AttemptHost`` holds the attempts in a nursery the ``Agent`` gives it (``nursery``), not in
a connection's: they outlive the link to the engine. It takes a dispatch's slot before any
await (so a duplicate arriving next sees it), starts the attempt in a task of its own, spools
its output and result before sending them through ``send`` (the agent's one send lock), and
drops an acknowledged result from the spool in the background. On start it adopts what the
keeper still holds (``recover``); on stop it cancels (``finish_all``) or leaves (``detach_all``)
what runs. The order of messages within an attempt comes from its own output lock; see
``wfe.agents.core`` for the session around it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import trio

from wfe.agents.errors import SpoolError
from wfe.agents.keeper_link import KeeperLink, open_keeper
from wfe.agents.runner import Attempt, AttemptNotStarted, describe
from wfe.agents.spool import Progress, Spool, parse_name
from wfe.agents.workdirs import Workdirs
from wfe.protocols.admission import Admission, DispatchFacts, Ignore, Refuse, Resend, Run
from wfe.protocols.messages import (
    AttemptRef,
    Capabilities,
    Dispatch,
    JobAccepted,
    JobRefused,
    Message,
    OutputChunk,
    Resume,
)

log = logging.getLogger("wfe.agent")

#: An agent refuses new work while its work directory's or spool's filesystem has less free
#: than this: a script there would fail writing its output, which is no fault of the job.
MIN_FREE_BYTES = 16 * 1024 * 1024


def _disk_problem(*paths: Path) -> str:
    """Why the agent's disk cannot take an attempt now, or ""."""
    for path in paths:
        try:
            st = os.statvfs(path)
        except OSError:
            continue  # not made yet: preparing the attempt will say what is wrong
        free = st.f_bavail * st.f_frsize
        if free < MIN_FREE_BYTES:
            return f"the agent's disk is full ({free // 1024} KiB free at {path})"
    return ""


@attrs.define
class Hosted:
    """One attempt the agent hosts, with the lock that orders its messages."""

    attempt: Attempt
    output_lock: trio.Lock = attrs.Factory(trio.Lock)
    done: trio.Event = attrs.Factory(trio.Event)


class AttemptHost:
    """Runs the attempts the engine dispatches to one agent; see the module docstring."""

    def __init__(
        self,
        *,
        capabilities: Capabilities,
        spool: Spool,
        workdir: Path,
        admission: Admission,
        send: Callable[..., Awaitable[bool]],
        kill_grace: float,
        accept_after: float,
        keep_workdirs: bool,
    ) -> None:
        self.capabilities = capabilities
        self.spool = spool
        self.workdir = workdir
        self.workdirs = Workdirs(workdir, keep=capabilities.slots)
        self.admission = admission
        self.send = send
        self.kill_grace = kill_grace
        self.accept_after = accept_after
        self.keep_workdirs = keep_workdirs
        self.running: dict[AttemptRef, Hosted] = {}
        self.dropping: set[AttemptRef] = set()  # acknowledged, drop from the spool under way
        self.drops_done = trio.Event()
        self.drops_done.set()
        self.nursery: trio.Nursery | None = None  # the agent's, while it is open
        self.keeper: KeeperLink | None = None  # started at the first attempt (ensure_keeper)
        self._keeper_lock = trio.Lock()
        # called with a keeper just started, before any script: the agent forwards its lease
        self.on_keeper: Callable[[KeeperLink], Awaitable[None]] | None = None
        self.stopping = False  # refuse new work

    async def ensure_keeper(self) -> KeeperLink:
        """The agent's keeper, started (in the agent's nursery, for the agent's life) if none
        runs yet: an agent starts one at its first attempt, not before (decision #66). Raises
        ``AttemptNotStarted`` when it cannot be started."""
        async with self._keeper_lock:
            if self.keeper is None:
                assert self.nursery is not None
                try:
                    await self.nursery.start(self._keep_keeper)
                except OSError as exc:
                    raise AttemptNotStarted(f"cannot start the agent's keeper: {exc}") from exc
            assert self.keeper is not None
            return self.keeper

    async def _keep_keeper(self, *, task_status: trio.TaskStatus[None]) -> None:
        async with open_keeper(self.spool.path) as keeper:
            self.keeper = keeper
            try:
                if self.on_keeper is not None:
                    await self.on_keeper(keeper)  # the lease the engine granted so far
                task_status.started()
                await trio.sleep_forever()
            finally:
                self.keeper = None

    def held(self) -> tuple[AttemptRef, ...]:
        """Attempts whose result is spooled and not yet acknowledged."""
        return tuple(ref for ref in self.spool.held() if ref not in self.dropping)

    async def recover(self, keeper: KeeperLink | None) -> list[Hosted]:
        """Match what the keeper holds (nothing when none runs) with what the spool says ran;
        the attempts to adopt."""
        held = {}
        for h in keeper.held if keeper is not None else ():
            ref = parse_name(h.key)
            if ref is not None:
                held[ref] = h
        closed, progress = await self.spool.recover(held.keys())
        for lost in closed:
            log.warning(
                "attempt %s#%d was running when the agent stopped and nothing supervises it"
                " any more: reporting it fenced",
                lost.job_id,
                lost.attempt,
            )
        adopted: list[Hosted] = []
        for ref, h in held.items():
            assert keeper is not None  # ``held`` is empty without one
            if ref not in progress:  # its result is spooled already, or it is not ours
                if h.status is None:
                    keeper.kill(h.pid, signal.SIGKILL)
                else:
                    await keeper.release(h.key)
                continue
            adopted.append(self.adopt(ref, h, progress[ref], keeper))
        return adopted

    def adopt(self, ref: AttemptRef, held: Any, progress: Progress, keeper: KeeperLink) -> Hosted:
        attempt = Attempt.adopted(
            held,
            ref=ref,
            workdir=self.workdir,
            keeper=keeper,
            chunks=progress.chunks,
            offsets=progress.sizes,
            kill_grace=self.kill_grace,
            workdirs=self.workdirs,
        )
        log.info(
            "adopted attempt %s#%d (pid %d) from the keeper: %s",
            ref.job_id,
            ref.attempt,
            held.pid,
            "still running" if held.status is None else "ended while no agent ran",
        )
        entry = Hosted(attempt)
        self.running[ref] = entry
        return entry

    def detach_all(self) -> None:
        for entry in self.running.values():
            entry.attempt.detach()
        if self.running:
            log.info(
                "leaving %d running attempt(s) to the keeper for the next start",
                len(self.running),
            )

    async def finish_all(self, reason: str) -> None:
        entries = list(self.running.values())
        for entry in entries:
            entry.attempt.cancel(reason)
        for entry in entries:
            await entry.done.wait()

    def drop_soon(self, ref: AttemptRef) -> None:
        """Drop an acknowledged attempt from the spool in the background."""
        assert self.nursery is not None
        if ref in self.dropping:
            return
        if not self.dropping:
            self.drops_done = trio.Event()
        self.dropping.add(ref)
        self.nursery.start_soon(self._drop, ref)

    async def _drop(self, ref: AttemptRef) -> None:
        try:
            if not await self.spool.drop(ref.job_id, ref.attempt):
                log.info("ack for %s#%d, which is not held: ignored", ref.job_id, ref.attempt)
        except OSError as exc:
            log.error("could not drop %s#%d from the spool: %s", ref.job_id, ref.attempt, exc)
        finally:
            self.dropping.discard(ref)
            if not self.dropping:
                self.drops_done.set()

    async def dispatch(self, d: Dispatch) -> None:
        """Check ``d`` now; if it may run, take its slot and start it in a task of its own.

        No await comes before the slot is taken, so a duplicate arriving next sees it.
        """
        ref = AttemptRef(job_id=d.job_id, attempt=d.attempt)
        name = f"{d.job_id}#{d.attempt}"
        stored: Message | None = None
        unreadable = ""
        try:
            stored = self.spool.get(d.job_id, d.attempt)
        except SpoolError as exc:
            unreadable = str(exc)
        facts = DispatchFacts(
            running=ref in self.running,
            stored=stored is not None,
            unreadable=unreadable,
            capacity=self._capacity_problem(d),
        )
        match self.admission.admit(d, facts):
            case Ignore(reason=reason):
                log.info("dispatch of %s, which is %s: ignored", name, reason)
                return
            case Resend():
                assert stored is not None
                log.info("dispatch of %s, which already ran: sending its stored result", name)
                await self.send(stored)
                return
            case Refuse(reason=reason):
                log.warning("refused %s: %s", name, reason)
                await self.send(JobRefused(job_id=d.job_id, attempt=d.attempt, reason=reason))
                return
            case Run():
                pass
        assert self.nursery is not None
        # The agent removes the directory itself, once the result is sent. Without a keeper
        # yet (none ran when the agent started), the attempt gets one before it starts.
        attempt = Attempt(
            d,
            workdir=self.workdir,
            keeper=self.keeper,
            keep_workdir=True,
            kill_grace=self.kill_grace,
            workdirs=self.workdirs,
        )
        entry = Hosted(attempt)
        self.running[ref] = entry  # the slot is taken from here on
        self.nursery.start_soon(self.run_attempt, entry)

    def _capacity_problem(self, d: Dispatch) -> str:
        if self.stopping:
            return "the agent is stopping"
        full = _disk_problem(self.workdir, self.spool.path)
        if full:
            return full
        slots = self.capabilities.slots
        if len(self.running) >= slots:
            return f"no free slot: all {slots} busy"
        memory, offered = d.limits.memory, self.capabilities.memory
        if memory is not None and offered is not None and memory > offered:
            return f"needs {memory} bytes of memory; this agent offers {offered}"
        return ""

    async def run_attempt(self, entry: Hosted, adopted: bool = False) -> None:
        """Begin the output of a reserved attempt, run it, spool its result and send it.

        ``JobAccepted`` goes out once the script has run ``accept_after`` seconds; a script
        that ends sooner has its ``JobAccepted`` and ``JobFinished`` sent together, in one
        write where the link allows it. An ``adopted`` attempt (a previous agent began it)
        goes on from where the spool has its output.
        """
        ref = entry.attempt.ref
        try:
            try:
                if not adopted:
                    await self.spool.begin_output(ref.job_id, ref.attempt)
            except OSError as exc:
                self.running.pop(ref, None)
                reason = f"cannot write the spool: {exc}"
                log.warning("refused %s#%d: %s", ref.job_id, ref.attempt, reason)
                await self.send(JobRefused(job_id=ref.job_id, attempt=ref.attempt, reason=reason))
                return
            attempt = entry.attempt
            try:
                if not attempt.has_keeper:
                    attempt.use_keeper(await self.ensure_keeper())
                finished = await attempt.run(
                    functools.partial(self._on_chunk, entry),
                    on_running=functools.partial(self._accepted, entry),
                    running_after=self.accept_after,
                )
            except AttemptNotStarted as exc:  # a full disk, say: a refusal, not a failure
                self.running.pop(ref, None)
                log.warning("refused %s#%d: %s", ref.job_id, ref.attempt, exc)
                with contextlib.suppress(OSError):
                    await self.spool.drop(ref.job_id, ref.attempt)
                await self.send(JobRefused(job_id=ref.job_id, attempt=ref.attempt, reason=str(exc)))
                return
            try:
                await self.spool.store(finished, alone=len(self.running) == 1)
            except OSError as exc:
                log.error(
                    "could not spool the result of %s#%d, sending it anyway: %s",
                    ref.job_id,
                    ref.attempt,
                    exc,
                )
            del self.running[ref]
            report: list[Message] = [finished]
            if attempt.pid is not None and not attempt.announced:
                report.insert(
                    0, JobAccepted(job_id=ref.job_id, attempt=ref.attempt, pid=attempt.pid)
                )
            async with entry.output_lock:  # after JobAccepted and every chunk
                await self.send(*report)
            log.info("attempt %s#%d ended: %s", ref.job_id, ref.attempt, describe(finished))
        finally:
            self.running.pop(ref, None)
            try:
                if not self.keep_workdirs and not entry.attempt.detached:
                    with trio.CancelScope(shield=True):
                        await entry.attempt.remove_directory()
            finally:
                entry.done.set()

    async def _accepted(self, entry: Hosted, pid: int) -> None:
        ref = entry.attempt.ref
        async with entry.output_lock:  # not in the middle of a replay
            await self.send(JobAccepted(job_id=ref.job_id, attempt=ref.attempt, pid=pid))

    async def _on_chunk(self, entry: Hosted, chunk: OutputChunk) -> None:
        async with entry.output_lock:
            try:
                await self.spool.append_output(chunk)
            except OSError as exc:
                log.error("could not spool output of %s#%d: %s", chunk.job_id, chunk.attempt, exc)
            await self.send(chunk)

    async def replay(self, resume: Resume) -> None:
        ref = AttemptRef(job_id=resume.job_id, attempt=resume.attempt)
        entry = self.running.get(ref)
        lock: contextlib.AbstractAsyncContextManager[object] = (
            entry.output_lock if entry is not None else contextlib.nullcontext()
        )
        async with lock:  # no live chunk of the attempt goes out in the middle of the replay
            reader = self.spool.open_output(resume.job_id, resume.attempt)
            if reader is None:
                log.warning("resume for %s#%d: no output is held for it", ref.job_id, ref.attempt)
                return
            with reader:
                while (chunk := await trio.to_thread.run_sync(reader.next_chunk)) is not None:
                    if chunk.seq >= resume.next_seq and not await self.send(chunk):
                        return
