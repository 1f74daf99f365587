"""A private Prosody XMPP server on loopback, for tests and for developers.

    with start_prosody(tmp, users={"engine": "secret"}) as server:
        client.connect(server.host, server.port)   # as server.jid("engine")

This is a tool, so the core is synchronous (``subprocess``). From trio use
``async with open_prosody(...) as server`` and run the blocking calls in a thread, e.g.
``await trio.to_thread.run_sync(server.restart)``.

The parts: ``prosody_config`` writes the configuration and certificates, ``prosody_server``
runs the server and registers its accounts, ``prosody_cli`` is ``wfe xmpp-dev-server``
(:func:`main`: one server in the foreground until Ctrl-C). Import them from here.
"""

from __future__ import annotations

from wfe.engine.devtools.prosody_cli import main
from wfe.engine.devtools.prosody_config import (
    DEFAULT_DOMAIN,
    DEFAULT_STANZA_SIZE_LIMIT,
    DEFAULT_UPLOAD_SIZE_LIMIT,
    NETWORK_SETTINGS,
)
from wfe.engine.devtools.prosody_server import (
    INSTALL_HINT,
    ProsodyError,
    ProsodyNotInstalled,
    ProsodyServer,
    open_prosody,
    start_prosody,
)

__all__ = [
    "DEFAULT_DOMAIN",
    "DEFAULT_STANZA_SIZE_LIMIT",
    "DEFAULT_UPLOAD_SIZE_LIMIT",
    "INSTALL_HINT",
    "NETWORK_SETTINGS",
    "ProsodyError",
    "ProsodyNotInstalled",
    "ProsodyServer",
    "main",
    "open_prosody",
    "start_prosody",
]
