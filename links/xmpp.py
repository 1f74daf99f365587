"""The XMPP client: slixmpp inside trio, used by both ends (its settings, errors and events
are in ``wfe.links.xmpp_types``, re-exported here).

The only module of wfe that imports slixmpp and trio_asyncio. The agent drives it through
``wfe.agents.xmpp_connector``, the engine through ``wfe.engine.transports.xmpp_link``: both
ends speak the same stanzas.
slixmpp runs on trio-asyncio's loop inside the one trio run; its callbacks hand what arrives to
trio through memory channels (same thread, so ``send_nowait`` is safe), and we send by writing
whole stanzas straight to its transport, so messages keep their order and nothing waits in a
queue across a reconnect. Everything above sees trio channels of protocol messages.

``XmppClient`` keeps one connection to the server: it connects, verifies TLS, reconnects with
backoff after any loss (slixmpp does not), pings the server to notice a dead connection, and
reports ``Online`` / ``Offline`` / ``PresenceReceived`` / ``MessageReceived`` on ``events``.
A wrong password, an untrusted certificate or a server without STARTTLS (when TLS is asked)
before the first session raises ``XmppRefused``: that is a configuration to fix, not an outage.

Besides protocol messages it carries ``<upload>`` references to output put on the server's
HTTP upload service (``UploadReceived``; see ``wfe.links.xmpp_upload``), and IQs (``iq``) for
service discovery and upload slots.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import secrets
import socket
import ssl
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from typing import Any

import attrs
import slixmpp
import trio
import trio_asyncio
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from wfe.links.xmpp_types import (
    DEFAULT_PORT,
    TLS_MODES,
    Event,
    IqFailed,
    MessageReceived,
    Offline,
    Online,
    PresenceReceived,
    UploadReceived,
    XmppRefused,
    XmppSettings,
    read_password,
    ssl_context,
)
from wfe.links.xmpp_upload import TAG as UPLOAD_TAG
from wfe.links.xmpp_upload import UploadError, parse_ref
from wfe.protocols.errors import DecodeError
from wfe.protocols.messages import Message
from wfe.protocols.xmpp import (
    DELAY_TAG,
    STANZAS_NS,
    TAG,
    PayloadAssembler,
    PayloadEncoder,
    PresenceInfo,
    error_stanza,
    parse_presence,
    presence_stanza,
)

#: The client, and what it takes and gives (defined in ``wfe.links.xmpp_types``).
__all__ = [
    "DEFAULT_PORT",
    "TLS_MODES",
    "Event",
    "IqFailed",
    "MessageReceived",
    "Offline",
    "Online",
    "PresenceReceived",
    "UploadReceived",
    "XmppClient",
    "XmppRefused",
    "XmppSettings",
    "open_xmpp_client",
    "read_password",
    "ssl_context",
]

log = logging.getLogger("wfe.xmpp")

#: Seconds to wait for the answer to an IQ (service discovery, upload slots).
IQ_TIMEOUT = 30.0

_MESSAGE_TAG = "{jabber:client}message"

_STATE_EVENTS = (
    "session_start",
    "disconnected",
    "connection_failed",
    "failed_all_auth",
    "ssl_invalid_chain",
    "stream_error",
)


# --- the client -----------------------------------------------------------------------------


class _Stream(slixmpp.ClientXMPP):
    """slixmpp's client with our TLS policy, handlers and write flow control."""

    def __init__(self, client: XmppClient, ssl_context: ssl.SSLContext) -> None:
        settings = client.settings
        super().__init__(settings.full_jid, settings.password, ssl_context=ssl_context)
        self._client = client
        self.enable_direct_tls = False
        if settings.tls == "plain":
            self.enable_starttls, self.enable_plaintext = False, True
            self.plugin["feature_mechanisms"].unencrypted_plain = True
        else:
            self.enable_starttls, self.enable_plaintext = True, False  # TCP, then STARTTLS
        self.whitespace_keepalive = False  # we ping (keepalive) instead
        self.auto_authorize = False  # nobody subscribes to our presence
        self.auto_subscribe = False
        self.register_plugin("xep_0199", pconfig={"keepalive": False})
        self.register_handler(
            Callback(
                "wfe payload", MatchXPath(f"{{jabber:client}}message/{TAG}"), client._on_payload
            )
        )
        self.register_handler(
            Callback("wfe presence", MatchXPath("{jabber:client}presence"), client._on_presence)
        )
        self.register_handler(
            Callback(
                "wfe upload",
                MatchXPath(f"{{jabber:client}}message/{UPLOAD_TAG}"),
                client._on_upload,
            )
        )
        for name in _STATE_EVENTS:
            self.add_event_handler(name, functools.partial(client._on_state, name))

    async def _handle_stream_features(self, features: Any) -> bool | None:
        # slixmpp would go on without TLS when the server does not offer it; we refuse.
        tls_done = "starttls" in self.features
        if (
            self._client.settings.tls == "starttls"
            and not tls_done
            and "starttls" not in features["features"]
        ):
            self._client._on_state("no_tls", None)
            self.abort()
            return True
        result: bool | None = await super()._handle_stream_features(features)
        return result

    def _spawn_event(self, xml: ET.Element) -> None:
        # The hot path: a wfe payload goes straight to its handler. slixmpp would wrap it in a
        # stanza object and match it against every registered handler (sixteen: roster,
        # ping, stream features...), which cost more than decoding the payload itself, and
        # an engine with a thousand agents gets one such message per agent every heartbeat.
        # Only our handler matches a message with a payload (it handles errors too).
        if xml.tag == _MESSAGE_TAG and xml.find(TAG) is not None:
            self._client._on_payload_xml(xml)
            return
        super()._spawn_event(xml)

    def data_received(self, data: bytes | str) -> None:
        # The server may use Nagle's algorithm (Prosody does unless network_settings says
        # nagle = false): then a second small stanza waits until we acknowledge the first,
        # and Linux delays acknowledgements by up to 40 ms. Acknowledge at once instead.
        _quickack(self.transport)
        super().data_received(data)

    def pause_writing(self) -> None:
        self._client._writable = trio.Event()

    def resume_writing(self) -> None:
        self._client._writable.set()


@attrs.define
class _Failure:
    reason: str
    fatal: bool = False  # before the first session: give up instead of retrying


class XmppClient:
    """One account's connection to the XMPP server, kept up until closed. See the module doc."""

    def __init__(self, settings: XmppSettings) -> None:
        if settings.tls not in TLS_MODES:
            raise ValueError(f"tls must be one of {', '.join(TLS_MODES)}, not {settings.tls!r}")
        self.settings = settings
        self.jid = settings.full_jid
        self._events_send, self.events = trio.open_memory_channel[Event](math.inf)
        self._state_send, self._state = trio.open_memory_channel[tuple[str, Any]](math.inf)
        self._encoder = PayloadEncoder(max_stanza=settings.max_stanza)
        self._assembler = PayloadAssembler()
        self._stream: _Stream | None = None
        self.ssl_context: ssl.SSLContext | None = None  # set by run(); HTTP uploads use it too
        self._writable = trio.Event()
        self._writable.set()
        self._pending: list[str] = []
        self._wake = trio.Event()
        self._flushed = trio.Event()
        self.online = False
        self.instance = ""
        self.sessions = 0
        self.stale_dropped = 0
        self.stanzas_sent = 0
        self.messages_received = 0
        self._closing = False

    # --- sending (from trio, never blocks) -------------------------------------------------
    #
    # Stanzas are queued in order and written by the flusher task on its next turn, all that
    # is queued in one write: a burst of dispatches and acks costs one system call, not one
    # each (a write to TCP loopback costs about as much as the whole stanza's processing).

    def send_message(self, to: str, message: Message) -> None:
        """Queue ``message`` for the full JID ``to``, in order with everything sent before.

        Raises ``trio.BrokenResourceError`` when offline, ``PayloadTooLarge`` when it cannot
        travel at all.
        """
        stanzas = self._encoder.stanzas(to, message)
        self._live()
        for text in stanzas:
            self._queue(text)
        self.stanzas_sent += len(stanzas)

    def send_presence(
        self, to: str | None, info: PresenceInfo | None = None, *, available: bool = True
    ) -> None:
        """Send directed presence to ``to`` (or broadcast). Raises ``trio.BrokenResourceError``."""
        self._live()
        self._queue(presence_stanza(to, info, available=available))

    def send_error(self, to: str, condition: str, text: str, *, kind: str = "auth") -> None:
        """Tell ``to`` why we did not take its message; nothing happens when offline."""
        if self.online:
            self._queue(error_stanza(to, condition, text, kind=kind))

    def send_stanza(self, text: str) -> None:
        """Queue one whole stanza (XML text), in order. Raises ``trio.BrokenResourceError``."""
        self._live()
        self._queue(text)
        self.stanzas_sent += 1

    async def iq(self, to: str, payload: str, *, kind: str = "get") -> Any:
        """Send an IQ of ``kind`` carrying ``payload`` (one XML element as text) to ``to``;
        return the answer's element. Raises ``IqFailed`` on an error or no answer within
        ``IQ_TIMEOUT``, ``trio.BrokenResourceError`` when offline."""
        stream = self._live()
        iq = stream.Iq()
        iq["type"] = kind
        iq["to"] = to
        iq.append(ET.fromstring(payload))
        send: Any = iq.send  # untyped in slixmpp
        try:
            answer = await trio_asyncio.run_aio_future(send(timeout=IQ_TIMEOUT))
        except IqError as exc:
            raise IqFailed(f"{to} answered with an error: {_error_text(exc.iq.xml)}") from None
        except IqTimeout:
            raise IqFailed(f"{to} did not answer within {IQ_TIMEOUT:g} s") from None
        return answer.xml

    async def drain(self) -> None:
        """Wait until what was queued is written and the connection takes more data."""
        if self._pending:
            await self._flushed.wait()
        await self._writable.wait()

    def _live(self) -> _Stream:
        stream = self._stream
        if not self.online or stream is None or stream.transport is None:
            raise trio.BrokenResourceError(f"{self.jid} is not connected to the XMPP server")
        return stream

    def _queue(self, text: str) -> None:
        self._pending.append(text)
        self._wake.set()

    def _flush(self, stream: _Stream) -> None:
        if self._pending:
            data = "".join(self._pending).encode("utf-8")
            self._pending.clear()
            if stream.transport is not None:
                stream.send_raw(data)
        self._flushed.set()
        self._flushed = trio.Event()

    async def _flusher(self, stream: _Stream) -> None:
        while True:
            self._flush(stream)
            self._wake = trio.Event()
            await self._wake.wait()

    # --- callbacks from slixmpp (asyncio side, same thread) ------------------------------

    def _on_state(self, name: str, data: Any) -> None:
        self._state_send.send_nowait((name, data))

    def _on_payload(self, stanza: Any) -> None:
        self._on_payload_xml(stanza.xml)

    def _on_payload_xml(self, xml: ET.Element) -> None:
        sender = xml.get("from") or ""
        if xml.get("type") == "error":
            log.warning("xmpp: %s could not take a message we sent: %s", sender, _error_text(xml))
            return
        if xml.find(DELAY_TAG) is not None:  # kept by the server while we were away: stale
            self.stale_dropped += 1
            log.info("xmpp: dropped a message from %s stored while we were offline", sender)
            return
        payload = xml.find(TAG)
        if payload is None:
            return
        try:
            message = self._assembler.feed(sender, payload)
        except DecodeError as exc:
            log.error("xmpp: refused a malformed payload from %s: %s", sender, exc)
            self.send_error(sender, "bad-request", f"malformed wfe payload: {exc}", kind="modify")
            return
        if message is not None:
            self.messages_received += 1
            self._events_send.send_nowait(MessageReceived(sender=sender, message=message))

    def _on_upload(self, stanza: Any) -> None:
        xml = stanza.xml
        sender = xml.get("from") or ""
        if xml.get("type") == "error" or xml.find(DELAY_TAG) is not None:
            return  # not for us, or stale as any message stored while we were away
        try:
            ref = parse_ref(xml.find(UPLOAD_TAG))
        except UploadError as exc:
            log.error("xmpp: refused a malformed upload reference from %s: %s", sender, exc)
            self.send_error(sender, "bad-request", str(exc), kind="modify")
            return
        self.messages_received += 1
        self._events_send.send_nowait(UploadReceived(sender=sender, ref=ref))

    def _on_presence(self, stanza: Any) -> None:
        xml = stanza.xml
        sender, kind = xml.get("from") or "", xml.get("type")
        if not sender or sender == self.jid or kind not in (None, "unavailable"):
            return
        info = None
        payload = xml.find(TAG)
        if kind is None and payload is not None:
            try:
                info = parse_presence(payload)
            except DecodeError as exc:
                log.warning("xmpp: ignored the wfe payload of %s's presence: %s", sender, exc)
        if kind == "unavailable":
            self._assembler.forget(sender)
        self._events_send.send_nowait(
            PresenceReceived(sender=sender, available=kind is None, info=info)
        )

    # --- connecting ------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect and stay connected until cancelled. Raises ``XmppRefused`` (see the class)."""
        # Loading CA certificates takes a while: not on the event loop.
        context = await trio.to_thread.run_sync(ssl_context, self.settings.ca_file)
        self.ssl_context = context
        stream = self._stream = _Stream(self, context)
        task_status.started()
        delay = self.settings.reconnect_delay
        failures = 0
        while True:
            failure = await self._connect_once(stream)
            if failure is None:
                failures, delay = 0, self.settings.reconnect_delay
                await self._serve_session(stream)
            else:
                if failure.fatal and self.sessions == 0:
                    raise XmppRefused(f"xmpp: {self.settings.jid}: {failure.reason}")
                failures += 1
                (log.warning if failures == 1 else log.debug)(
                    "xmpp: %s: %s; retrying", self.settings.jid, failure.reason
                )
            await trio.sleep(delay)
            delay = min(2 * delay, self.settings.max_reconnect_delay)

    async def _connect_once(self, stream: _Stream) -> _Failure | None:
        """One attempt: None once a session started, else why not (the stream is closed)."""
        s = self.settings
        stream.connect(s.host, s.port)
        failure: _Failure | None = None
        with trio.move_on_after(s.connect_timeout) as timer:
            while True:
                name, data = await self._state.receive()
                if name == "session_start":
                    self._started(stream)
                    return None
                if name == "connection_failed":
                    stream.cancel_connection_attempt()  # no transport; slixmpp would retry itself
                    return _Failure(f"cannot reach {s.host}:{s.port}: {data}")
                if name == "disconnected":
                    return failure or _Failure(
                        f"the server closed the connection: {data or 'no reason'}"
                    )
                failure = self._failure(name, data) or failure
                if failure is not None and stream.transport is not None:
                    stream.abort()  # then wait for "disconnected"
        assert timer.cancelled_caught
        stream.cancel_connection_attempt()
        await self._close_transport(stream)
        return _Failure(
            f"no session within {s.connect_timeout:g} s of connecting to {s.host}:{s.port}"
        )

    def _failure(self, name: str, data: Any) -> _Failure | None:
        s = self.settings
        if name == "failed_all_auth":
            return _Failure(
                "authentication failed: check the JID and the password file", fatal=True
            )
        if name == "ssl_invalid_chain":
            where = (
                f"the CA file {s.ca_file}"
                if s.ca_file
                else "the system's CAs (set ca_file for a private CA)"
            )
            return _Failure(
                f"the server's certificate does not verify against {where}: {data}", fatal=True
            )
        if name == "no_tls":
            return _Failure(
                "the server does not offer STARTTLS (tls = 'starttls' requires it)", fatal=True
            )
        if name == "stream_error":
            log.warning("xmpp: %s: the server ended the stream: %s", s.jid, _stream_error(data))
        return None

    def _started(self, stream: _Stream) -> None:
        self.online = True
        self.sessions += 1
        self.instance = secrets.token_hex(8)
        self._writable.set()
        stream.send_raw(presence_stanza(None))  # initial presence; also flushes offline storage
        log.info("xmpp: %s online at %s:%d", self.jid, self.settings.host, self.settings.port)
        self._events_send.send_nowait(Online(instance=self.instance))

    async def _serve_session(self, stream: _Stream) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._flusher, stream)
            if self.settings.keepalive > 0:
                nursery.start_soon(self._keepalive, stream)
            reason = "connection lost"
            while True:
                name, data = await self._state.receive()
                if name == "disconnected":
                    reason = str(data or reason)
                    break
                if name == "stream_error":
                    reason = _stream_error(data)
                    log.warning(
                        "xmpp: %s: the server ended the stream: %s", self.settings.jid, reason
                    )
            nursery.cancel_scope.cancel()
        self.online = False
        self._pending.clear()  # what did not go out before the loss is lost, as in a socket
        self._flushed.set()
        self._writable.set()
        self._assembler.clear()
        (log.info if self._closing else log.warning)("xmpp: %s offline: %s", self.jid, reason)
        self._events_send.send_nowait(Offline(reason=reason))

    async def _keepalive(self, stream: _Stream) -> None:
        interval = self.settings.keepalive
        while True:
            await trio.sleep(interval)
            try:
                server = slixmpp.JID(self.settings.jid.split("@", 1)[1])
                future = stream.plugin["xep_0199"].send_ping(server, timeout=interval)
                await trio_asyncio.run_aio_future(future)
            except IqError:
                pass  # an error reply still proves the connection is alive
            except IqTimeout:
                log.warning(
                    "xmpp: %s: no answer to a ping in %g s: reconnecting", self.jid, interval
                )
                stream.abort()
                return

    async def _close_transport(self, stream: _Stream) -> None:
        if stream.transport is None:
            return
        stream.abort()
        with trio.move_on_after(5):
            while (await self._state.receive())[0] != "disconnected":
                pass

    async def aclose(self) -> None:
        """Say we are leaving and close the stream (bounded; call it shielded)."""
        stream = self._stream
        if stream is None:
            return
        self._closing = True
        stream.cancel_connection_attempt()
        if self.online and stream.transport is not None:
            with contextlib.suppress(Exception):
                self._flush(stream)
                stream.send_raw(presence_stanza(None, available=False))
            with trio.move_on_after(2):
                await trio_asyncio.run_aio_future(stream.disconnect(wait=1))
        if stream.transport is not None:
            stream.abort()
        task = getattr(stream, "_run_out_filters", None)
        if task is not None:
            task.cancel()
        self.online = False


def _quickack(transport: Any) -> None:
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None and _TCP_QUICKACK is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)


_TCP_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux only


@contextlib.asynccontextmanager
async def _asyncio_loop() -> AsyncIterator[None]:
    """Open trio-asyncio's loop unless one is open already (one per process is enough)."""
    if trio_asyncio.current_loop.get() is not None:
        yield
        return
    async with trio_asyncio.open_loop():
        yield


@contextlib.asynccontextmanager
async def open_xmpp_client(settings: XmppSettings) -> AsyncIterator[XmppClient]:
    """Run an ``XmppClient`` for the block; it connects in the background.

    Leaving the block sends unavailable presence and closes the stream. ``XmppRefused``
    from the connection loop propagates out of the block.
    """
    async with _asyncio_loop():
        client = XmppClient(settings)
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run)
            try:
                yield client
            finally:
                with trio.CancelScope(shield=True):
                    await client.aclose()
                nursery.cancel_scope.cancel()


def _error_text(xml: Any) -> str:
    error = xml.find("{jabber:client}error")
    if error is None:
        return "no detail"
    conditions = [
        child.tag.rpartition("}")[2] for child in error if child.tag.startswith(f"{{{STANZAS_NS}}}")
    ]
    text = error.findtext(f"{{{STANZAS_NS}}}text") or ""
    names = [c for c in conditions if c != "text"]
    return " ".join(filter(None, [", ".join(names), text])) or "no detail"


def _stream_error(data: Any) -> str:
    try:
        condition, text = data["condition"], data["text"]
    except (KeyError, TypeError):
        return str(data)
    return f"{condition}: {text}" if text else str(condition)
