"""Transport code both the engine and the agent use: a framed byte stream, the XMPP client and
its upload helpers. Imports only ``protocols``: never ``engine`` nor ``agents``."""

from __future__ import annotations
