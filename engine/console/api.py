"""The engine's websocket API, protocol ``wfe.console.v1`` (see docs/console-protocol.md).

This module is the stable entry point: ``serve_api`` (what ``wfe engine`` runs), the
``@op(name, role=...)`` decorator and ``ApiError`` for modules that add operations. It imports
every module that adds operations (``ops``, ``ops_requests``, ``ops_jobs``, ``ops_works``,
``ops_views``, ``ops_pilots``, ``ops_simulate``), so their ``@op``s
are registered once this module is loaded. The implementation lives in ``wfe.engine.console``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from wfe.engine.console import (
    ops,
    ops_jobs,
    ops_pilots,
    ops_requests,
    ops_simulate,
    ops_views,
    ops_works,
)
from wfe.engine.console.protocol import PROTOCOL, ApiError
from wfe.engine.console.registry import OPS, Handler, Op, arg, op
from wfe.engine.console.server import ConsoleServer
from wfe.engine.console.session import Limits, Session

if TYPE_CHECKING:
    from wfe.engine.runtime.facade import Engine

#: The modules that add operations with ``@op(...)``: imported above, so registered.
OP_MODULES = (ops, ops_requests, ops_jobs, ops_works, ops_views, ops_pilots, ops_simulate)


def load_ops() -> dict[str, Op]:
    """The operation table: every ``@op`` of ``OP_MODULES``."""
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
