"""The agent's XMPP transport: one ``Link`` per session with a controller, over ``XmppClient``.

``XmppConnector`` is hosted for the whole run (``hosted``) and gives the agent core one
``Link`` per session with a controller (``connector()``). Scheme: the agent sends directed
presence (its status payload) to each controller JID it obeys, again every ``probe_interval``
while none is online; a controller answers with its own directed presence (role
``controller`` and an instance id). A session starts with that answer and ends when the
controller goes unavailable, comes back as a new instance, or our connection drops; the core
then says hello again. No roster subscription is needed: the server sends unavailable
presence to everyone we sent directed presence to when our session ends, and the other way
round.

Output: after every login the connector looks for the server's XEP-0363 upload service; while
there is one, big incompressible output chunks go by HTTP (``wfe.agents.xmpp_batch``) and only a
reference goes in a stanza. Without one, everything goes in stanzas.

Security at this layer: payloads only from the configured controller JIDs (bare JID compare)
reach the core; anything else is logged on one line and answered with ``JobRefused`` (a
dispatch) or a ``forbidden`` error; a dispatch whose ``issued`` is older than
``max_dispatch_age`` is refused as a replay (the rules: ``wfe.protocols.admission``). Signatures
are checked by the core (``trusted_key``, required in XMPP mode).
"""

from __future__ import annotations

import contextlib
import logging
import math
import ssl
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING

import attrs
import trio

from wfe.agents.errors import AgentError, ConfigError, LinkError, MessageTooLarge
from wfe.agents.xmpp_batch import OutputBatch
from wfe.links.xmpp import (
    MessageReceived,
    Offline,
    Online,
    PresenceReceived,
    XmppClient,
    XmppSettings,
    open_xmpp_client,
    read_password,
)
from wfe.links.xmpp_upload import UploadService, discover, http_client
from wfe.protocols.admission import Admission
from wfe.protocols.messages import (
    Ack,
    AgentStatus,
    Capabilities,
    Dispatch,
    JobRefused,
    Message,
    OutputChunk,
)
from wfe.protocols.xmpp import PayloadTooLarge, PresenceInfo, bare_jid

if TYPE_CHECKING:
    import httpx

    from wfe.agents.config import AgentConfig

log = logging.getLogger("wfe.xmpp")

PROBE_INTERVAL = 5.0
#: Default for ``max_dispatch_age``: a dispatch signed longer ago than this is a replay.
DEFAULT_MAX_DISPATCH_AGE = 300.0
#: Attempts whose highest sent chunk seq is remembered (to tell replays from new output).
MAX_TRACKED = 4096


@attrs.define(eq=False)
class _Session:
    peer: str  # the controller's full JID
    instance: str
    inbox: trio.MemorySendChannel[Message]
    closed: bool = False
    batch: OutputBatch | None = None  # uploads, once the server's service is known
    timer: trio.CancelScope | None = None  # the batch's flush timer

    def close(self) -> None:
        self.closed = True
        self.inbox.close()
        if self.timer is not None:
            self.timer.cancel()


class XmppLink:
    """A ``Link`` for one session with one controller instance.

    Big incompressible output chunks go by HTTP upload (``OutputBatch``) when the server
    offers an upload service; a chunk sent before (a replay after ``Resume``) always goes
    inline, so output the engine could not fetch comes back by the path that always works.
    """

    def __init__(
        self,
        connector: XmppConnector,
        client: XmppClient,
        session: _Session,
        inbox: trio.MemoryReceiveChannel[Message],
    ) -> None:
        self.client = client
        self.peer = session.peer
        self._connector = connector
        self._session = session
        self._inbox = inbox

    async def send(self, message: Message) -> None:
        """Send one message to the controller. Raises ``trio.ClosedResourceError`` after the
        session ended, ``trio.BrokenResourceError`` when offline, ``MessageTooLarge``."""
        if await self._put(message):
            await self.client.drain()

    async def send_many(self, messages: Sequence[Message]) -> None:
        """Send several messages in order, then wait for one drain: they leave in one write
        where nothing else was queued in between (a short attempt's ``JobAccepted`` and
        ``JobFinished``). Raises as ``send``; a message that cannot travel raises
        ``MessageTooLarge`` and those before it are sent, as with one ``send`` each."""
        queued = False
        for message in messages:
            queued = await self._put(message) or queued
        if queued:
            await self.client.drain()

    async def _put(self, message: Message) -> bool:
        """Queue ``message`` on the client, or hand it to the upload batch; True when it
        was queued (the caller drains)."""
        if self._session.closed:
            raise trio.ClosedResourceError(f"the session with {self.peer} ended")
        batch = self._connector._batch(self._session)
        if isinstance(message, OutputChunk) and self._connector._first_time(message):
            if batch is not None and batch.takes(message):
                await batch.add(message)
                return False
        if batch is not None:
            await batch.flush()
        try:
            self.client.send_message(self.peer, message)
        except PayloadTooLarge as exc:
            raise MessageTooLarge(str(exc)) from None
        return True

    def receive(self) -> AsyncIterator[Message]:
        """The controller's messages, until the session ends."""
        return self._inbox


class XmppConnector:
    """The agent's XMPP transport; ``connector()`` opens the next session (see the module doc)."""

    def __init__(
        self,
        settings: XmppSettings,
        *,
        controllers: Sequence[str],
        max_dispatch_age: float | None = DEFAULT_MAX_DISPATCH_AGE,
        wait_limit: float | None = None,
        probe_interval: float = PROBE_INTERVAL,
    ) -> None:
        if not controllers:
            raise ValueError("an XMPP agent needs at least one controller JID to obey")
        self.settings = settings
        self.controllers = frozenset(bare_jid(c) for c in controllers)
        self.max_dispatch_age = max_dispatch_age or None
        # who may send us what, and how old a dispatch may be: protocols.admission
        self.admission = Admission(controllers=controllers, max_age=self.max_dispatch_age)
        self.wait_limit = wait_limit
        self.probe_interval = probe_interval
        self.client: XmppClient | None = None
        self.refused = 0
        self._online: dict[str, str] = {}  # controller full JID -> instance, in order of arrival
        self._session: _Session | None = None
        self._changed = trio.Event()
        self._status: Callable[[], AgentStatus] | None = None
        self._capabilities: Capabilities | None = None
        self._name = settings.jid
        self.upload_service: UploadService | None = None  # found again on every login
        self.uploads = 0
        self.uploaded_bytes = 0
        self._http: httpx.AsyncClient | None = None
        self._nursery: trio.Nursery | None = None
        self._sent_top: dict[tuple[str, int], int] = {}  # highest chunk seq sent, per attempt

    @contextlib.asynccontextmanager
    async def hosted(
        self,
        *,
        name: str | None = None,
        capabilities: Capabilities | None = None,
        status: Callable[[], AgentStatus] | None = None,
    ) -> AsyncIterator[XmppConnector]:
        """Keep the XMPP connection for the block; ``status`` fills the presence payload."""
        self._name = name or self._name
        self._capabilities, self._status = capabilities, status
        async with (
            open_xmpp_client(self.settings) as client,
            http_client(_verified(client)) as http,
            trio.open_nursery() as nursery,
        ):
            self.client, self._http, self._nursery = client, http, nursery
            nursery.start_soon(self._route, client)
            nursery.start_soon(self._probe, client)
            try:
                yield self
            finally:
                self._end_session()
                self.client, self._http, self._nursery = None, None, None
                nursery.cancel_scope.cancel()

    def __call__(self) -> AbstractAsyncContextManager[XmppLink]:
        return self._open_session()

    @contextlib.asynccontextmanager
    async def _open_session(self) -> AsyncIterator[XmppLink]:
        """Wait for a controller (at most ``wait_limit``), then yield a link to it.

        Raises ``OSError`` when none came in time, ``RuntimeError`` outside ``hosted``.
        """
        client = self.client
        if client is None:
            raise RuntimeError(
                "XmppConnector: open sessions inside `async with connector.hosted():`"
            )
        with trio.move_on_after(self.wait_limit if self.wait_limit is not None else math.inf):
            while not (client.online and self._online):
                await self._wait_changed()
        if not (client.online and self._online):
            state = "no controller online" if client.online else "not connected to the XMPP server"
            raise OSError(
                f"{state} after {self.wait_limit:g} s (controllers: {', '.join(sorted(self.controllers))})"
            )
        peer, instance = next(iter(self._online.items()))
        send, receive = trio.open_memory_channel[Message](math.inf)
        session = self._session = _Session(peer=peer, instance=instance, inbox=send)
        log.info("xmpp: session with controller %s", peer)
        try:
            yield XmppLink(self, client, session, receive)
        finally:
            if self._session is session:
                self._end_session()  # counts its uploads too
            session.close()

    async def _wait_changed(self) -> None:
        self._changed = trio.Event()
        await self._changed.wait()

    def _end_session(self, why: str = "") -> None:
        session, self._session = self._session, None
        if session is not None:
            if why:
                log.info("xmpp: session with %s ends: %s", session.peer, why)
            session.close()
            if session.batch is not None:
                self.uploads += session.batch.uploads
                self.uploaded_bytes += session.batch.uploaded_bytes

    # --- uploads -------------------------------------------------------------------------

    def _batch(self, session: _Session) -> OutputBatch | None:
        """The session's upload batch, made once the upload service is known."""
        if session.batch is None and self.upload_service is not None:
            assert self.client is not None and self._http is not None
            assert self._nursery is not None
            session.batch = OutputBatch(
                self.client,
                session.peer,
                self.upload_service,
                self._http,
                plain=self.settings.tls == "plain",
            )
            session.timer = trio.CancelScope()
            self._nursery.start_soon(self._run_timer, session.batch, session.timer)
        return session.batch

    @staticmethod
    async def _run_timer(batch: OutputBatch, scope: trio.CancelScope) -> None:
        with scope:
            await batch.run()

    def _first_time(self, chunk: OutputChunk) -> bool:
        """True unless a chunk of the attempt with this seq or a later one went out before."""
        key = (chunk.job_id, chunk.attempt)
        top = self._sent_top.get(key, -1)
        if chunk.seq <= top:
            return False
        if key not in self._sent_top and len(self._sent_top) >= MAX_TRACKED:
            del self._sent_top[next(iter(self._sent_top))]
        self._sent_top[key] = chunk.seq
        return True

    async def _discover(self, client: XmppClient) -> None:
        """Look for the server's upload service (XEP-0363) after a login."""
        domain = bare_jid(self.settings.jid).rpartition("@")[2]
        try:
            service = await discover(client, domain)
        except (AgentError, LinkError, trio.BrokenResourceError) as exc:
            log.warning("xmpp: could not look for an upload service on %s: %s", domain, exc)
            return
        except Exception:  # a surprise here must not stop the agent: output goes inline
            log.exception("xmpp: looking for an upload service on %s failed", domain)
            return
        if service is None:
            log.info("xmpp: %s offers no upload service: all output goes in stanzas", domain)
        else:
            log.info("xmpp: large incompressible output goes by HTTP upload to %s", service.jid)
        self.upload_service = service

    def presence(self, client: XmppClient) -> PresenceInfo:
        """What we tell controllers about ourselves."""
        status = self._status() if self._status is not None else None
        return PresenceInfo(
            role="agent",
            instance=client.instance,
            name=self._name,
            capabilities=self._capabilities,
            free_slots=status.free_slots if status else None,
            running=len(status.running) if status else 0,
        )

    def _announce(self, client: XmppClient) -> None:
        info = self.presence(client)
        for jid in sorted(self.controllers):
            with contextlib.suppress(trio.BrokenResourceError):
                client.send_presence(jid, info)

    async def _probe(self, client: XmppClient) -> None:
        while True:
            await trio.sleep(self.probe_interval)
            if client.online and not self._online:
                self._announce(client)

    async def _route(self, client: XmppClient) -> None:
        async for event in client.events:
            match event:
                case Online():
                    self._online.clear()
                    self.upload_service = None
                    self._announce(client)
                    if self._nursery is not None:
                        self._nursery.start_soon(self._discover, client)
                case Offline(reason=reason):
                    self._online.clear()
                    self._end_session(f"XMPP connection lost ({reason})")
                case PresenceReceived():
                    self._presence(event)
                case MessageReceived(sender=sender, message=message):
                    self._deliver(client, sender, message)
            self._changed.set()

    def _presence(self, event: PresenceReceived) -> None:
        if bare_jid(event.sender) not in self.controllers:
            return
        session = self._session
        if not event.available:
            self._online.pop(event.sender, None)
            if session is not None and session.peer == event.sender:
                self._end_session("the controller went offline")
            return
        if event.info is None or event.info.role != "controller":
            return
        self._online[event.sender] = event.info.instance
        if (
            session is not None
            and session.peer == event.sender
            and session.instance != event.info.instance
        ):
            self._end_session("the controller restarted")

    def _deliver(self, client: XmppClient, sender: str, message: Message) -> None:
        what = type(message).__name__
        session = self._session
        problem = self.admission.sender_problem(sender, session.peer if session else None)
        if problem and bare_jid(sender) not in self.controllers:
            self._refuse(client, sender, message, problem)
            return
        if problem or session is None:
            log.info("xmpp: ignored a %s from %s: no session with it yet", what, sender)
            if isinstance(message, Dispatch):
                self._refuse(client, sender, message, problem)
            return
        if isinstance(message, Dispatch) and (
            stale := self.admission.age_problem(message, now=time.time())  # wall-clock: vs signing
        ):
            self._refuse(client, sender, message, stale)
            return
        if isinstance(message, Ack):
            self._sent_top.pop((message.job_id, message.attempt), None)
        with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
            session.inbox.send_nowait(message)

    def _refuse(self, client: XmppClient, sender: str, message: Message, reason: str) -> None:
        self.refused += 1
        if isinstance(message, Dispatch):
            log.warning(
                "xmpp: refused dispatch %s#%d from %s: %s",
                message.job_id,
                message.attempt,
                sender,
                reason,
            )
            with contextlib.suppress(trio.BrokenResourceError):
                client.send_message(
                    sender,
                    JobRefused(job_id=message.job_id, attempt=message.attempt, reason=reason),
                )
        else:
            log.warning("xmpp: refused a %s from %s: %s", type(message).__name__, sender, reason)
            client.send_error(sender, "forbidden", reason)


def xmpp_connector(config: AgentConfig) -> XmppConnector:
    """The XMPP transport an agent configuration asks for. Raises ``ConfigError``."""
    assert config.jid is not None and config.password_file is not None  # checked by load_config
    if config.ca_file is not None and not config.ca_file.is_file():
        raise ConfigError(f"ca file {config.ca_file}: no such file")
    settings = XmppSettings(
        jid=config.jid,
        password=read_password(config.password_file),
        host=config.server or config.jid.rpartition("@")[2],
        port=config.port,
        tls=config.tls,
        ca_file=config.ca_file,
        max_stanza=config.max_stanza,
    )
    return XmppConnector(
        settings,
        controllers=config.controllers,
        max_dispatch_age=config.max_dispatch_age,
        wait_limit=config.give_up_after,
    )


def _verified(client: XmppClient) -> ssl.SSLContext:
    context = client.ssl_context
    assert context is not None, "the client is running, so its TLS context is made"
    return context
