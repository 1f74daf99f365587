"""What the XMPP client takes and gives, without the client: its settings, its errors, the
events it reports, and reading a password file and making the TLS context. Importing this
loads neither slixmpp nor trio-asyncio (``wfe.links.xmpp`` is the module that does).
"""

from __future__ import annotations

import logging
import os
import ssl
import stat
from pathlib import Path

import attrs

from wfe.links.errors import LinkConfigError, LinkError
from wfe.links.xmpp_upload import UploadRef
from wfe.protocols.messages import Message
from wfe.protocols.xmpp import DEFAULT_MAX_STANZA, PresenceInfo

log = logging.getLogger("wfe.xmpp")

TLS_MODES = ("starttls", "plain")
DEFAULT_PORT = 5222


class XmppRefused(LinkError):
    """The server refused us in a way retrying will not fix (password, certificate, no TLS)."""


class IqFailed(LinkError):
    """An IQ got an error or no answer; the message names the entity and the condition."""


@attrs.frozen(kw_only=True)
class XmppSettings:
    """How to log in to the XMPP server."""

    jid: str  # bare JID of the account, e.g. agent-node17@wfe.example.org
    password: str = attrs.field(repr=False)
    host: str  # where to connect (the JID's domain when no other is configured)
    port: int = DEFAULT_PORT
    tls: str = "starttls"  # "starttls" (verified) or "plain" (loopback only; checked by config)
    ca_file: Path | None = None  # PEM CA bundle for a private CA; None: the system's CAs
    resource: str = "wfe"
    max_stanza: int = DEFAULT_MAX_STANZA
    reconnect_delay: float = 0.5  # first pause before reconnecting, doubled up to the max
    max_reconnect_delay: float = 10.0
    connect_timeout: float = 20.0  # from TCP connect to a session
    keepalive: float = 30.0  # seconds between pings to the server (0: none)

    @property
    def full_jid(self) -> str:
        return f"{self.jid}/{self.resource}"


# --- events ---------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Online:
    """A session with the server started; ``instance`` is new for every session."""

    instance: str


@attrs.frozen(kw_only=True)
class Offline:
    """The session ended; the client is reconnecting."""

    reason: str


@attrs.frozen(kw_only=True)
class PresenceReceived:
    """Someone's presence (available or not), with its wfe payload when it had a valid one."""

    sender: str  # full JID
    available: bool
    info: PresenceInfo | None = None


@attrs.frozen(kw_only=True)
class MessageReceived:
    """A whole, well-formed protocol message from ``sender`` (full JID)."""

    sender: str
    message: Message


@attrs.frozen(kw_only=True)
class UploadReceived:
    """A well-formed reference to output ``sender`` put on the HTTP upload service."""

    sender: str
    ref: UploadRef


Event = Online | Offline | PresenceReceived | MessageReceived | UploadReceived


def ssl_context(ca_file: Path | None) -> ssl.SSLContext:
    """Verify the server's certificate and host name: against ``ca_file`` alone when given
    (a private CA), else against the system's CAs."""
    context = ssl.create_default_context(cafile=ca_file)
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def read_password(path: str | os.PathLike[str], what: str = "password file") -> str:
    """The first line of a password file. Raises ``LinkConfigError`` naming the file.

    Warns when the file is readable by group or others.
    """
    try:
        with open(path, encoding="utf-8") as f:
            mode = os.fstat(f.fileno()).st_mode
            password = f.readline().rstrip("\r\n")
    except FileNotFoundError:
        raise LinkConfigError(
            f"{what}: {path}: no such file (write the XMPP password there, mode 0600)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LinkConfigError(f"{what}: {path}: cannot read: {exc}") from None
    if not password:
        raise LinkConfigError(f"{what}: {path}: the first line (the password) is empty")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s is readable by others: chmod 600 %s", path, path)
    return password
