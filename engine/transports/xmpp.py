"""The XMPP transport, engine side: agents on other hosts turned into controller calls.

Like ``wfe.engine.transports.local``, it hands the controller ``agent_connected`` /
``agent_message`` / ``agent_disconnected`` and gives it one ``AgentLink`` per agent session.
An agent session starts with the agent's ``AgentHello`` (a message from its full JID) and ends
with its unavailable presence, a new hello, or the end of our own XMPP session; the
controller then gives the agent ``heartbeat_deadline`` to come back before declaring it lost.

Who is accepted: the configured ``agents`` (bare JIDs), or, when that list is empty, any JID
on the engine's own domain. Anything else is refused with a logged line and a ``forbidden``
error. An agent is registered under its bare JID, whatever name its hello gives.

Presence: on every session start we send directed presence (role ``controller``, a new
instance id) to every agent we know (configured, or remembered by the controller from before
a restart), and we answer every available presence of an accepted agent with ours. That is
how agents learn that a controller is there and which full JID to talk to; agents we do not
know yet find us by sending their presence (they repeat it until we answer).

Uploaded output: an agent may put big incompressible output on the server's HTTP upload
service and send an ``<upload>`` reference instead (``wfe.links.xmpp_upload``). The transport
fetches it (``UploadFetcher``: only from that service, size and sha256 checked) and hands the
chunks to the controller in order: while a fetch is under way, what the agent sends after it
waits behind it. A reference that cannot be fetched is logged and dropped; the controller asks
for the chunks again before it commits the attempt's end (``wfe.engine.dispatch.output_fill``), and the
agent sends replayed chunks inline.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import attrs
import trio

from wfe.engine.errors import EngineError
from wfe.engine.transports.xmpp_link import (
    MessageReceived,
    Offline,
    Online,
    PresenceReceived,
    UploadError,
    UploadFetcher,
    UploadReceived,
    UploadRef,
    XmppClient,
    XmppRefused,
    XmppSettings,
    http_client,
    open_xmpp_client,
)
from wfe.protocols.messages import AgentHello, Message, OutputChunk
from wfe.protocols.xmpp import PayloadTooLarge, PresenceInfo, bare_jid, is_bare_jid, jid_domain

if TYPE_CHECKING:
    from wfe.engine.dispatch.controller import AgentController

log = logging.getLogger("wfe.xmpp")

#: At most one presence nudge per agent this often, for messages that arrive without a hello.
NUDGE_INTERVAL = 5.0
#: Uploads fetched at once, over all agents.
MAX_FETCHES = 4
#: JIDs whose acceptance is remembered (the lot is forgotten when full).
MAX_REMEMBERED = 65536


class XmppAgentLink:
    """The controller's ``AgentLink`` for one agent session: stanzas to the agent's full JID.

    ``send_nowait`` writes at once to the connection, so messages keep their order; once
    the session is over (or we are offline) it drops them, as a closed socket would.
    """

    def __init__(self, client: XmppClient, jid: str) -> None:
        self.client = client
        self.jid = jid
        self.closed = False

    def send_nowait(self, message: Message) -> None:
        if self.closed:
            return
        try:
            self.client.send_message(self.jid, message)
        except trio.BrokenResourceError:
            self.closed = True
        except PayloadTooLarge as exc:
            log.error("xmpp: cannot send to %s: %s", self.jid, exc)


@attrs.define(eq=False)
class _Fetch:
    """An upload being fetched; ``chunks`` once done (empty when it failed)."""

    ref: UploadRef
    done: bool = False
    chunks: list[OutputChunk] = attrs.Factory(list)


@attrs.define(eq=False)
class _AgentSession:
    jid: str  # full JID
    link: XmppAgentLink
    waiting: collections.deque[Message | _Fetch] = attrs.Factory(collections.deque)


class XmppTransport:
    """Routes the events of one ``XmppClient`` to the controller."""

    def __init__(
        self,
        controller: AgentController,
        client: XmppClient,
        *,
        agents: Sequence[str] = (),
        fetcher: UploadFetcher | None = None,
    ) -> None:
        self.controller = controller
        self.client = client
        self.fetcher = fetcher
        self._nursery: trio.Nursery | None = None
        self._fetch_limit = trio.Semaphore(MAX_FETCHES)
        self.own = bare_jid(client.settings.jid)
        self.agents = frozenset(bare_jid(a) for a in agents)
        self.sessions: dict[str, _AgentSession] = {}
        self.refused = 0
        self._nudged: dict[str, float] = {}
        self._accepted: dict[str, bool] = {}  # JID -> accepts(JID)

    def accepts(self, jid: str) -> bool:
        """True when messages from ``jid`` (bare or full) may reach the controller."""
        known = self._accepted.get(jid)
        if known is not None:
            return known
        bare = bare_jid(jid)
        if bare == self.own or not is_bare_jid(bare):
            verdict = False
        else:
            verdict = (
                bare in self.agents if self.agents else jid_domain(bare) == jid_domain(self.own)
            )
        # Remembered: every message asks, and a thousand agents send one each heartbeat.
        if len(self._accepted) >= MAX_REMEMBERED:
            self._accepted.clear()
        self._accepted[jid] = verdict
        return verdict

    async def run(self) -> None:
        """Handle the client's events until cancelled."""
        events = self.client.events
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            async for first in events:
                # Whatever else arrived meanwhile too, without a trip through the scheduler each.
                event: object = first
                while True:
                    self.handle(event)
                    try:
                        event = events.receive_nowait()
                    except trio.WouldBlock:
                        break

    def handle(self, event: object) -> None:
        match event:
            case Online():
                self.controller.transport_up("xmpp")
                self._announce()
                if self.fetcher is not None and self._nursery is not None:
                    self._nursery.start_soon(self.fetcher.find_service)
            case UploadReceived(sender=sender, ref=ref):
                self._upload(sender, ref)
            case Offline():
                self.controller.transport_down("xmpp")  # our outage, not the agents'
                self._drop_all()
            case PresenceReceived():
                self._presence(event)
            case MessageReceived(sender=sender, message=message):
                self._message(sender, message)

    def presence(self) -> PresenceInfo:
        return PresenceInfo(role="controller", instance=self.client.instance, name=self.own)

    def _announce(self) -> None:
        known = set(self.agents) | {name for name in self.controller.agents if self.accepts(name)}
        info = self.presence()
        for jid in sorted(known):
            self._send_presence(jid, info)
        if known:
            log.info("xmpp: told %d known agent(s) that the controller is online", len(known))

    def _send_presence(self, to: str, info: PresenceInfo) -> None:
        try:
            self.client.send_presence(to, info)
        except trio.BrokenResourceError:
            pass

    def _drop_all(self) -> None:
        sessions, self.sessions = self.sessions, {}
        for name, session in sessions.items():
            session.link.closed = True
            self.controller.agent_disconnected(name, session.link)

    def _presence(self, event: PresenceReceived) -> None:
        if not self.accepts(event.sender):
            return
        bare = bare_jid(event.sender)
        if event.available:
            self._send_presence(event.sender, self.presence())
            return
        session = self.sessions.get(bare)
        if session is not None and session.jid == event.sender:
            del self.sessions[bare]
            session.link.closed = True
            self.controller.agent_disconnected(bare, session.link)

    def _message(self, sender: str, message: Message) -> None:
        bare = bare_jid(sender)
        if not self.accepts(sender):
            self.refused += 1
            log.warning(
                "xmpp: refused a %s from %s: not an agent this engine accepts",
                type(message).__name__,
                sender,
            )
            self.client.send_error(sender, "forbidden", "not an agent this engine accepts")
            return
        if isinstance(message, AgentHello):
            self._hello(sender, bare, message)
            return
        session = self.sessions.get(bare)
        if session is None or session.jid != sender:
            log.info(
                "xmpp: ignored a %s from %s: it has not said hello", type(message).__name__, sender
            )
            self._nudge(sender)
            return
        if session.waiting:  # behind a fetch
            session.waiting.append(message)
        else:
            self.controller.agent_message(bare, message)

    def _upload(self, sender: str, ref: UploadRef) -> None:
        """Fetch the output ``ref`` names; what the agent sends next waits behind it."""
        bare = bare_jid(sender)
        session = self.sessions.get(bare)
        if not self.accepts(sender) or session is None or session.jid != sender:
            self.refused += 1
            log.warning("xmpp: ignored an upload reference from %s: no session with it", sender)
            return
        if self.fetcher is None or self._nursery is None:
            log.warning("xmpp: ignored an upload reference from %s: uploads are off", sender)
            return
        item = _Fetch(ref=ref)
        session.waiting.append(item)
        self._nursery.start_soon(self._fetch, bare, session, item)

    async def _fetch(self, bare: str, session: _AgentSession, item: _Fetch) -> None:
        assert self.fetcher is not None
        ref = item.ref
        try:
            async with self._fetch_limit:
                item.chunks = await self.fetcher.fetch(ref)
        except UploadError as exc:
            log.error(
                "xmpp: output %s#%d chunks %d-%d from %s lost: %s",
                ref.job_id,
                ref.attempt,
                ref.seq,
                ref.seq + ref.chunks - 1,
                bare,
                exc,
            )
        finally:
            item.done = True
            self._release(bare, session)

    def _release(self, bare: str, session: _AgentSession) -> None:
        """Hand the controller what waited behind finished fetches, in order."""
        waiting = session.waiting
        while waiting:
            head = waiting[0]
            if isinstance(head, _Fetch) and not head.done:
                return
            waiting.popleft()
            if self.sessions.get(bare) is not session:
                continue  # the session ended: the agent says it all again in the next one
            if isinstance(head, _Fetch):
                for chunk in head.chunks:
                    self.controller.agent_message(bare, chunk)
            else:
                self.controller.agent_message(bare, head)

    def _hello(self, sender: str, bare: str, hello: AgentHello) -> None:
        old = self.sessions.get(bare)
        if old is not None:
            old.link.closed = True
        link = XmppAgentLink(self.client, sender)
        self.sessions[bare] = _AgentSession(jid=sender, link=link)
        if hello.name != bare:
            log.info("xmpp: agent %s calls itself %r; it is known by its JID", sender, hello.name)
            hello = attrs.evolve(hello, name=bare)
        self.controller.agent_connected(hello, link, transport="xmpp")

    def _nudge(self, sender: str) -> None:
        """Answer a message that came without a hello with our presence: the agent then
        starts a session (it may have missed our restart)."""
        now = trio.current_time()
        if now - self._nudged.get(sender, -NUDGE_INTERVAL) >= NUDGE_INTERVAL:
            self._nudged[sender] = now
            self._send_presence(sender, self.presence())

    def statistics(self) -> dict[str, int]:
        fetcher = self.fetcher
        return {
            "sessions": len(self.sessions),
            "refused": self.refused,
            "stanzas_sent": self.client.stanzas_sent,
            "messages_received": self.client.messages_received,
            "stale_dropped": self.client.stale_dropped,
            "uploads_fetched": fetcher.fetched if fetcher else 0,
            "upload_bytes_fetched": fetcher.fetched_bytes if fetcher else 0,
            "uploads_refused": fetcher.refused if fetcher else 0,
        }


async def serve_xmpp_agents(
    controller: AgentController,
    settings: XmppSettings,
    *,
    agents: Sequence[str] = (),
    task_status: trio.TaskStatus[XmppTransport] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve agents over XMPP until cancelled; ``task_status.started`` gets the transport.

    Connects in the background (and again after any loss). Raises ``XmppLoginRefused`` if
    the server refuses the engine's account before its first session (a wrong password, an
    untrusted certificate, no STARTTLS: see ``wfe.links.xmpp``).
    """
    try:
        async with open_xmpp_client(settings) as client:
            assert client.ssl_context is not None  # made before the client is handed out
            http = http_client(client.ssl_context)
            fetcher = UploadFetcher(client, http)
            controller.transport_down("xmpp")  # until the first session is up
            transport = XmppTransport(controller, client, agents=agents, fetcher=fetcher)
            task_status.started(transport)
            async with http:
                try:
                    await transport.run()
                finally:
                    transport._drop_all()
    except* XmppRefused as group:
        raise XmppLoginRefused(str(_leaf(group))) from None


class XmppLoginRefused(EngineError):
    """The XMPP server refused the engine's account; the message says why and what to check."""


def _leaf(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error
