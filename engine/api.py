"""The engine's websocket API, protocol ``wfe.console.v1`` (see docs/console-protocol.md).

This module is the stable entry point: ``serve_api`` (what ``wfe engine`` runs), the
``@op(name, role=...)`` decorator and ``ApiError`` for modules that add operations, and
``OP_MODULES``, the modules imported (so that their ``@op``s register) when the server
starts. The implementation lives in ``engine.console``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

import trio

from engine.console.protocol import PROTOCOL, ApiError
from engine.console.registry import OPS, Handler, Op, arg, op
from engine.console.server import ConsoleServer
from engine.console.session import Limits, Session

if TYPE_CHECKING:
    from engine.daemon import Engine

#: Modules that add operations with ``@op(...)``; imported when the server starts.
OP_MODULES: tuple[str, ...] = ("engine.console.ops", "engine.api_requests", "engine.api_jobs")


def load_ops() -> dict[str, Op]:
    """Import every module of ``OP_MODULES`` and return the operation table."""
    for module in OP_MODULES:
        importlib.import_module(module)
    return OPS


async def serve_api(
    engine: Engine,
    *,
    host: str,
    port: int,
    token: str | None,
    max_message: int = 1024 * 1024,
    limits: Limits | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the console (websocket API and web page) on ``host:port`` until cancelled.

    ``token`` is the bootstrap admin token (the ``wfe init`` token file); ``max_message`` is
    the longest request answered (longer ones get a ``too_large`` error). ``task_status``
    gets the bound port.
    """
    load_ops()
    if limits is None:
        api = engine.config.api
        limits = Limits(
            max_request=max_message,
            max_message=max(16 * max_message, 16 * 1024 * 1024),
            max_connections=api.max_connections,
            max_unauthenticated=api.max_unauthenticated,
            admin_reserve=api.admin_reserve,
            auth_timeout=api.auth_timeout,
        )
    server = ConsoleServer(engine, bootstrap_token=token, limits=limits)
    await server.serve(host, port, task_status=task_status)


__all__ = [
    "OPS",
    "OP_MODULES",
    "PROTOCOL",
    "ApiError",
    "Handler",
    "Limits",
    "Session",
    "arg",
    "load_ops",
    "op",
    "serve_api",
]
