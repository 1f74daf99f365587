"""The agent core: one connection session at a time, attempts that outlive connections.

The attempts themselves are an ``AttemptHost``'s (``wfe.agents.hosting``); this module is the
agent's life (keeper, reconnection, stop) and its sessions with the engine.

An ``Agent`` hosts attempts in a nursery of its own (``Agent.open``), not in the nursery of
a connection: when the link to the engine drops, running scripts go on, their results go
to the spool, and the next session's ``AgentHello`` lists them as ``running`` or ``held``.
Every held result is sent again right after the hello, until the engine ``Ack``s it.

Per session (``Agent.serve``): hello, then the held results, then one message at a time
from the engine, and an ``AgentStatus`` every ``heartbeat`` seconds. A ``Dispatch`` is
checked at once by the rules of ``wfe.protocols.admission``, in this order: signature (or,
without a trusted key, the script's sha256); an attempt already running (or starting) is a
duplicate and is ignored; an attempt already spooled is a redelivery and gets its stored
result without running again; then a free slot and enough memory, else ``JobRefused``. An accepted attempt takes its slot there and then,
and is started in a task of its own, so the next message is read while it starts. It sends
``JobAccepted`` (before any of its output), its ``OutputChunk``s (each appended to the spool
first), and ``JobFinished`` (stored durably in the spool first). ``JobAccepted`` waits until
the script has run ``accept_after`` seconds (its output is read from then on); a script that
ends sooner has it sent together with its ``JobFinished`` (and any output between them), in
one write when the link has ``send_many``. A script that cannot be started, or is cancelled
before it starts, gets ``JobFinished`` and no ``JobAccepted``. An ``Ack``'s spool drop runs
in the background; from the ``Ack`` on, the attempt is no longer listed as held, and a
``StatusRequest`` is answered once pending drops are done.

Every send goes through one lock, held for the send alone, so a message is never cut by
another. Order within an attempt comes from the attempt's own output lock: ``JobAccepted``
before its chunks, its chunks before ``JobFinished``, a replay (``Resume``) in one piece. The
hello goes first in a session.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import attrs
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from wfe.agents import __version__
from wfe.agents.errors import MessageTooLarge, SpoolError
from wfe.agents.hosting import AttemptHost
from wfe.agents.keeper_link import KeeperLink, running_keeper
from wfe.agents.link import Link
from wfe.agents.reactors import Reactors
from wfe.agents.runner import KILL_GRACE
from wfe.agents.spool import Spool
from wfe.protocols.admission import Admission
from wfe.protocols.lease import LeaseTracker
from wfe.protocols.messages import (
    Ack,
    AgentHello,
    AgentStatus,
    AttemptRef,
    Broadcast,
    Cancel,
    Capabilities,
    Dispatch,
    Lease,
    Message,
    Resume,
    Shutdown,
    StatusRequest,
)

log = logging.getLogger("wfe.agent")

#: Seconds between ``AgentStatus`` reports when none is given: well under the engine's default
#: ``[agents] heartbeat_deadline`` (10 s), and the heartbeat the engine gives its own local
#: agents (``[agents] heartbeat``), so an agent started by hand with defaults is not lost.
DEFAULT_HEARTBEAT = 2.0

#: Seconds a script runs before its ``JobAccepted`` is sent and its output read: a trivial
#: job's start and end then travel together, one write and one wake-up of the engine
#: instead of two, and its output is read once, after it ended.
ACCEPT_AFTER = 0.005

#: Seconds between reconnection attempts at most (the delay doubles from ``reconnect_delay``).
#: Bounded so that an engine that restarts hears from its agents within this much plus its
#: ``reconcile_grace`` margin (docs/decisions.md #41).
MAX_RECONNECT_DELAY = 5.0

_LINK_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


class AgentExit(enum.Enum):
    """Why ``Agent.run`` returned."""

    SHUTDOWN = "shutdown"  # the engine sent Shutdown
    STOPPED = "stopped"  # Agent.stop() was called (a signal, usually): running attempts are
    # left to the keeper, for the next start to adopt (or for the lease to end)
    GAVE_UP = "gave_up"  # no engine could be reached for give_up_after seconds


class Agent:
    """Runs the attempts the engine dispatches; see the module docstring."""

    def __init__(
        self,
        *,
        name: str,
        capabilities: Capabilities,
        spool: Spool,
        workdir: str | os.PathLike[str],
        trusted_key: Ed25519PublicKey | None = None,
        heartbeat: float = DEFAULT_HEARTBEAT,
        keep_workdirs: bool = False,
        kill_grace: float = KILL_GRACE,
        accept_after: float = ACCEPT_AFTER,
        reactors: Reactors | None = None,
    ) -> None:
        self.name = name
        self.capabilities = capabilities
        self.spool = spool
        self.workdir = Path(workdir)
        self.trusted_key = trusted_key
        self.admission = Admission(trusted_key=trusted_key)  # protocols.admission
        self.heartbeat = heartbeat
        self.keep_workdirs = keep_workdirs
        self.kill_grace = kill_grace
        self.accept_after = accept_after
        self.host = AttemptHost(
            capabilities=capabilities,
            spool=spool,
            workdir=self.workdir,
            admission=self.admission,
            send=self._send,
            kill_grace=kill_grace,
            accept_after=accept_after,
            keep_workdirs=keep_workdirs,
        )
        self.reactors = reactors  # what runs when a broadcast comes (wfe.agents.reactors)
        self._link: Link | None = None
        self._send_lock = trio.Lock()
        self._stop_scope: trio.CancelScope | None = None
        self._stop_requested = False
        self._detach = False  # on exit, leave running attempts to the keeper
        self.lease = LeaseTracker()  # numbers hellos and statuses; the engine's Lease answers
        self.forward_leases = True  # False once wfe.agents.lifetime hands attempts back

    # --- life --------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[Agent]:
        """Host attempts for the duration; ``serve`` may be called inside.

        On entry the agent connects to its keeper (``wfe.agents.keeper``) if one runs (none is
        started until the first attempt: an idle agent costs no second process),
        adopts the attempts a previous agent left running under it, and closes the books on
        those nothing supervises any more (``Spool.recover``: reported ``FENCED``). On a
        normal exit, attempts still running are cancelled and their results spooled (and
        sent, if a link is up) before it returns, unless ``stop()`` asked to leave them to
        the keeper. If the caller is cancelled instead, their process groups are killed and
        the next start reports them.
        """
        async with running_keeper(self.spool.path) as keeper:
            self.host.keeper = keeper  # None: none runs; the first attempt starts one
            self.host.on_keeper = self._lease_to_keeper
            try:
                adopted = await self.host.recover(keeper)
                await trio.to_thread.run_sync(
                    functools.partial(self.workdir.mkdir, parents=True, exist_ok=True)
                )
                self.host.workdirs.close()  # spare directories of a past run (two small files each)
                async with trio.open_nursery() as nursery:
                    self.host.nursery = nursery
                    if self.reactors is not None:
                        self.reactors.attach(nursery, self._send)
                    for entry in adopted:
                        nursery.start_soon(self.host.run_attempt, entry, True)
                    try:
                        yield self
                    finally:
                        with trio.CancelScope(shield=True) as cleanup:
                            cleanup.deadline = trio.current_time() + 2 * self.kill_grace + 10
                            if self._detach:
                                self.host.detach_all()
                            else:
                                await self.host.finish_all("the agent is stopping")
                        if not self._detach:
                            self.host.workdirs.close()
                        self.host.nursery = None
                        nursery.cancel_scope.cancel()  # nothing may keep the agent from stopping
            finally:
                self.host.keeper = None

    async def run(
        self,
        connect: Callable[[], AbstractAsyncContextManager[Link]],
        *,
        reconnect_delay: float = 0.5,
        max_reconnect_delay: float = MAX_RECONNECT_DELAY,
        give_up_after: float | None = None,
    ) -> AgentExit:
        """Connect, serve, and reconnect with exponential backoff until told to stop.

        ``connect()`` must give an async context manager yielding a ``Link``, and raise
        ``OSError`` when the engine cannot be reached. With ``give_up_after``, the agent
        returns ``GAVE_UP`` after that many seconds without a connection (its running
        attempts are left to the keeper, which ends them when their lease runs out), so an
        agent the engine started does not outlive it.
        """
        async with self.open():
            with trio.CancelScope() as self._stop_scope:
                if self._stop_requested:
                    self._stop_scope.cancel()
                return await self._connect_loop(
                    connect, reconnect_delay, max_reconnect_delay, give_up_after
                )
            return AgentExit.STOPPED

    def stop(self) -> None:
        """Make ``run`` return ``STOPPED`` at once, leaving running attempts to the keeper.

        New dispatches are refused from now on. The scripts run on under the keeper; the
        agent that starts next on this spool adopts them and reports them running (or their
        results), exactly as after a crash; if none starts before their lease runs out, the
        keeper kills them and the engine runs them again. (The engine's ``Shutdown`` is the
        way to cancel what an agent runs.)
        """
        if self._stop_requested:
            return
        self._stop_requested = self.host.stopping = True
        self._detach = True
        if self._stop_scope is not None:
            self._stop_scope.cancel()

    async def _connect_loop(
        self,
        connect: Callable[[], AbstractAsyncContextManager[Link]],
        reconnect_delay: float,
        max_reconnect_delay: float,
        give_up_after: float | None,
    ) -> AgentExit:
        delay = reconnect_delay
        offline_since = trio.current_time()
        failures = 0
        while True:
            try:
                async with connect() as link:
                    log.info("connected to the engine")
                    failures, delay = 0, reconnect_delay
                    if await self.serve(link):
                        return AgentExit.SHUTDOWN
                log.warning("the connection to the engine closed; reconnecting")
                offline_since = trio.current_time()
            except _LINK_ERRORS as exc:
                failures += 1
                (log.warning if failures == 1 else log.debug)("cannot reach the engine: %s", exc)
            offline = trio.current_time() - offline_since
            pause = delay
            if give_up_after is not None:
                if offline >= give_up_after:
                    log.warning("no engine for %.1f s: giving up", offline)
                    self._detach = True
                    return AgentExit.GAVE_UP
                pause = min(delay, give_up_after - offline)  # one last try at the deadline
            await trio.sleep(pause)
            delay = min(2 * delay, max_reconnect_delay)

    # --- one session -------------------------------------------------------------------

    async def serve(self, link: Link) -> bool:
        """Run one session on ``link`` until it closes; True if the engine sent ``Shutdown``.

        Must be called inside ``open()`` (``run`` does that).
        """
        if self.host.nursery is None:
            raise RuntimeError(
                "Agent.serve needs a running agent: call it inside `async with agent.open():`"
            )
        async with self._send_lock:
            self._link = link
            await self._hello_locked()
        shutdown = False
        try:
            async with trio.open_nursery() as session:
                session.start_soon(self._heartbeat)
                try:
                    async for message in link.receive():
                        if await self._handle(message, session):
                            shutdown = True
                            break
                except _LINK_ERRORS as exc:
                    log.warning("lost the connection: %s", exc)
                session.cancel_scope.cancel()
        finally:
            if self._link is link:
                self._link = None
        return shutdown

    async def _resend_stored(self, ref: AttemptRef) -> None:
        """Send a spooled result again; the send lock must be held."""
        try:
            finished = self.spool.get(ref.job_id, ref.attempt)
        except SpoolError as exc:
            log.error("cannot resend a held result: %s", exc)
            return
        if finished is not None:
            await self._send_locked(finished)

    async def _heartbeat(self) -> None:
        while True:
            await trio.sleep(self.heartbeat)
            await self._send(self.status())

    def status(self) -> AgentStatus:
        """The agent's load now, as an ``AgentStatus`` (numbered: the engine's ``Lease``
        answers it)."""
        return AgentStatus(
            name=self.name,
            free_slots=max(0, self.capabilities.slots - len(self.host.running)),
            running=tuple(self.host.running),
            held=self.host.held(),
            seq=self.lease.sent(trio.current_time()),
        )

    async def _granted(self, lease: Lease) -> None:
        """The engine heard our message ``lease.seq``: attempts may run until ``ttl`` seconds
        after we sent it. Forward the new end to the keeper, which enforces it."""
        if self.lease.granted(lease) is not None and self.host.keeper is not None:
            await self._lease_to_keeper(self.host.keeper)

    async def _lease_to_keeper(self, keeper: KeeperLink) -> None:
        """Tell ``keeper`` the end of the lease granted so far (none yet: nothing to tell)."""
        until = self.lease.until
        if not self.forward_leases or until == -math.inf:
            return
        # wall-clock: the keeper is another process; CLOCK_MONOTONIC is the one both read
        monotonic_until = time.monotonic() + (until - trio.current_time())  # wall-clock
        with contextlib.suppress(OSError):
            await keeper.lease(monotonic_until)

    async def announce_no_slots(self) -> None:
        """Take no new work (``wfe.agents.lifetime``): say hello again offering no slot, so
        the engine reattaches what runs and dispatches nothing more here. Over the local
        socket a second hello is ignored; ``host.stopping`` refuses what comes instead."""
        self.capabilities = attrs.evolve(self.capabilities, slots=0)
        async with self._send_lock:
            if self._link is None:
                return  # the next session's hello offers no slot
            await self._hello_locked()

    async def _hello_locked(self) -> None:
        """Say hello (what we offer, run and hold), then send every held result again; the
        send lock must be held."""
        hello = AgentHello(
            name=self.name,
            software=__version__,
            capabilities=self.capabilities,
            running=tuple(self.host.running),
            held=self.host.held(),
            seq=self.lease.sent(trio.current_time()),
        )
        await self._send_locked(hello)
        for ref in hello.held:
            await self._resend_stored(ref)

    async def _send(self, *messages: Message) -> bool:
        async with self._send_lock:
            return await self._send_locked(*messages)

    async def _send_locked(self, *messages: Message) -> bool:
        """Send on the current link if there is one, in order, in one write where the link
        offers ``send_many``; False when they did not all go out."""
        link = self._link
        if link is None:
            return False
        try:
            send_many = getattr(link, "send_many", None)
            if send_many is not None and len(messages) > 1:
                await send_many(messages)
            else:
                for message in messages:
                    await link.send(message)
        except MessageTooLarge as exc:
            log.error("could not send: %s", exc)
            return False
        except _LINK_ERRORS as exc:
            names = ", ".join(type(m).__name__ for m in messages)
            log.warning("lost the connection sending %s: %s", names, exc)
            if self._link is link:
                self._link = None
            return False
        return True

    # --- messages from the engine ------------------------------------------------------

    async def _handle(self, message: Message, session: trio.Nursery) -> bool:
        match message:
            case Dispatch():
                await self.host.dispatch(message)
            case Cancel(job_id=job_id, attempt=attempt, reason=reason):
                entry = self.host.running.get(AttemptRef(job_id=job_id, attempt=attempt))
                if entry is None:
                    log.info("cancel for %s#%d, which is not running: ignored", job_id, attempt)
                else:
                    log.info("cancelling %s#%d: %s", job_id, attempt, reason or "no reason given")
                    entry.attempt.cancel(reason)
            case Ack(job_id=job_id, attempt=attempt):
                self.host.drop_soon(AttemptRef(job_id=job_id, attempt=attempt))
            case Lease():
                await self._granted(message)
            case StatusRequest():
                await self.host.drops_done.wait()
                await self._send(self.status())
            case Resume():
                session.start_soon(self.host.replay, message)
            case Broadcast():
                if self.reactors is None:
                    log.info("broadcast %d on %s: no reactors here", message.seq, message.topic)
                else:
                    self.reactors.receive(message)
            case Shutdown(reason=reason, leave_running=leave_running):
                log.info("the engine asked to shut down: %s", reason or "no reason given")
                if leave_running:  # the engine stops; its work does not
                    self._stop_requested = self._detach = self.host.stopping = True
                else:
                    await self.host.finish_all(f"shutdown: {reason}" if reason else "shutdown")
                return True
            case _:
                log.warning(
                    "ignored a %s: it goes from agents to the engine", type(message).__name__
                )
        return False
