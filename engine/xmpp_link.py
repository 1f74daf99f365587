"""The engine's XMPP client: ``[xmpp]`` turned into ``XmppSettings``, and the slixmpp bridge.

The bridge is ``agents.xmpp_link.XmppClient`` (slixmpp on trio-asyncio, reconnect with backoff,
verified STARTTLS, the payload codec of ``protocols.xmpp``): both ends speak the same stanzas,
so the engine reuses the agent's module as it reuses ``agents.local_link`` for the local
transport. This module is the only engine module that reaches slixmpp; ``engine.xmpp_transport``
sees trio channels of events and protocol messages.
"""

from __future__ import annotations

import os

from agents.errors import ConfigError as AgentConfigError
from agents.xmpp_link import (
    MessageReceived,
    Offline,
    Online,
    PresenceReceived,
    XmppClient,
    XmppRefused,
    XmppSettings,
    open_xmpp_client,
)
from agents.xmpp_link import read_password as agent_read_password
from engine.config import Config
from engine.errors import ConfigError

__all__ = [
    "ENGINE_RESOURCE",
    "MessageReceived",
    "Offline",
    "Online",
    "PresenceReceived",
    "XmppClient",
    "XmppRefused",
    "XmppSettings",
    "open_xmpp_client",
    "xmpp_settings",
]

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
    except AgentConfigError as exc:
        raise ConfigError(str(exc)) from None
