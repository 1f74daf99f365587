"""The engine's XMPP client: ``[xmpp]`` turned into ``XmppSettings``, and the slixmpp bridge.

The bridge is ``wfe.links.xmpp.XmppClient`` (slixmpp on trio-asyncio, reconnect with backoff,
verified STARTTLS, the payload codec of ``wfe.protocols.xmpp``): both ends speak the same stanzas,
so the engine reuses the agent's module as it reuses ``wfe.links.stream`` for the local
transport. This module is the only engine module that reaches slixmpp; ``wfe.engine.transports.xmpp``
sees trio channels of events and protocol messages.

``UploadFetcher`` fetches the output agents put on the XMPP server's HTTP upload service
(``wfe.links.xmpp_upload``): it learns that service's URL base after each login (service
discovery, then a slot of one byte it never uses) and fetches only URLs under that base, with
the XMPP connection's TLS settings (plain HTTP only when the XMPP connection is plaintext).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import trio

from wfe.engine.config import Config
from wfe.engine.errors import ConfigError
from wfe.links.errors import LinkConfigError, LinkError
from wfe.links.xmpp import (
    MessageReceived,
    Offline,
    Online,
    PresenceReceived,
    UploadReceived,
    XmppClient,
    XmppRefused,
    XmppSettings,
    open_xmpp_client,
)
from wfe.links.xmpp import read_password as agent_read_password
from wfe.links.xmpp_upload import (
    UploadError,
    UploadRef,
    allowed_url,
    discover,
    fetch,
    http_client,
    request_slot,
    same_service,
    service_base,
    unpack,
)
from wfe.protocols.messages import OutputChunk
from wfe.protocols.xmpp import bare_jid

if TYPE_CHECKING:
    import httpx

__all__ = [
    "ENGINE_RESOURCE",
    "MessageReceived",
    "Offline",
    "Online",
    "PresenceReceived",
    "UploadError",
    "UploadFetcher",
    "UploadReceived",
    "UploadRef",
    "XmppClient",
    "XmppRefused",
    "XmppSettings",
    "http_client",
    "open_xmpp_client",
    "xmpp_settings",
]

log = logging.getLogger("wfe.xmpp")

#: The largest uploaded file the engine fetches.
MAX_FETCH = 64 * 1024 * 1024

#: The resource the engine binds; agents learn the full JID from its presence.
ENGINE_RESOURCE = "wfe-engine"


def xmpp_settings(config: Config) -> XmppSettings:
    """The engine's XMPP settings from ``[xmpp]``, password read from ``password_file``.

    Raises ``ConfigError`` (one line, naming the file) when the password or CA file cannot be
    used. Warns when the password file is readable by others.
    """
    x = config.xmpp
    path = config.path(x.password_file)
    password = read_password(path, "xmpp.password_file")
    ca_file = config.path(x.ca_file) if x.ca_file else None
    if ca_file is not None and not ca_file.is_file():
        raise ConfigError(f"xmpp.ca_file: {ca_file}: no such file")
    jid = x.jid.lower()
    return XmppSettings(
        jid=jid,
        password=password,
        host=x.host or jid.rpartition("@")[2],
        port=x.port,
        tls=x.tls,
        ca_file=ca_file,
        resource=ENGINE_RESOURCE,
        max_stanza=x.max_stanza,
    )


def read_password(path: os.PathLike[str], what: str) -> str:
    """The first line of a password file. Raises ``ConfigError`` naming the file."""
    try:
        return agent_read_password(path, what)
    except LinkConfigError as exc:
        raise ConfigError(str(exc)) from None


class UploadFetcher:
    """Fetches agents' uploaded output from the server's upload service, and from nowhere else."""

    def __init__(self, client: XmppClient, http: httpx.AsyncClient, *, limit: int = MAX_FETCH):
        self.client = client
        self.http = http
        self.limit = limit
        self.plain = client.settings.tls == "plain"
        self.base: str | None = None  # URL base of the service's files; None: fetch nothing
        self.fetched = 0
        self.fetched_bytes = 0
        self.refused = 0
        self._known = trio.Event()

    async def find_service(self) -> None:
        """Learn the upload service's URL base (call after each login; logs what it found)."""
        self.base = None
        if self._known.is_set():
            self._known = trio.Event()
        domain = bare_jid(self.client.settings.jid).rpartition("@")[2]
        try:
            service = await discover(self.client, domain)
            if service is None:
                log.info("xmpp: %s offers no upload service: agents send all output inline", domain)
                return
            slot = await request_slot(self.client, service, "wfe-engine-probe", 1)
            if not allowed_url(slot.get, plain=self.plain):
                log.error(
                    "xmpp: the upload service %s serves %s, not https: uploads refused",
                    service.jid,
                    slot.get,
                )
                return
            self.base = service_base(slot.get)
            log.info("xmpp: agents' uploaded output is fetched from %s", self.base)
        except (LinkError, trio.BrokenResourceError) as exc:
            log.warning("xmpp: could not find the upload service of %s: %s", domain, exc)
        except Exception:  # a surprise here must not take the XMPP transport down
            log.exception("xmpp: looking for the upload service of %s failed", domain)
        finally:
            self._known.set()

    def use_service(self, base: str | None) -> None:
        """Fetch only URLs under ``base`` from now on (None: fetch nothing): what
        ``find_service`` learns, for a service known another way."""
        self.base = base
        self._known.set()

    async def fetch(self, ref: UploadRef) -> list[OutputChunk]:
        """The chunks of ``ref``, fetched and checked. Raises ``UploadError`` (refused or bad)."""
        await self._known.wait()
        if self.base is None:
            self.refused += 1
            raise UploadError(f"upload {ref.url}: refused, the server offers no upload service")
        if not same_service(ref.url, self.base):
            self.refused += 1
            raise UploadError(f"upload {ref.url}: refused, not on the upload service {self.base}")
        data = await fetch(self.http, ref, limit=self.limit)
        chunks = unpack(data, ref)
        self.fetched += 1
        self.fetched_bytes += len(data)
        return chunks
