"""The operator console: the websocket API (``wfe.console.v1``), the web page, the terminal view.

Modules: ``protocol`` (frames and codes, no I/O), ``registry`` (``@op`` and argument
checks), ``ops`` (the console's own operations), ``server`` (the port, authentication,
dispatch), ``session`` (one connection's buffers and writer), ``hub`` (event fan-out),
``tail`` (live output), ``web`` (the HTTP side of the port), ``tui`` (``wfe console``).
"""

from __future__ import annotations

from wfe.engine.console.protocol import PROTOCOL, ApiError
from wfe.engine.console.registry import OPS, Op, arg, op
from wfe.engine.console.server import ConsoleServer
from wfe.engine.console.session import Limits, Session

__all__ = ["OPS", "PROTOCOL", "ApiError", "ConsoleServer", "Limits", "Op", "Session", "arg", "op"]
