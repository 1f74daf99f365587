"""Workflow requests run by the engine: submission, lifecycle, stages, inputs, catalog,
products, provenance and checking.

``RequestService`` is the long-lived task the engine runs (``wfe.engine.requests.service``);
``prepare`` registers the RScripts of live requests before the controller recovers jobs.
The pure decisions are in ``plan`` and ``checking``; the SQL in the repository package
(``requests``, ``request_batches``, ``request_views``, ``catalog``, ``products``). See docs/definitions.md, "Running requests".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from wfe.engine.requests.errors import (
    CatalogError,
    RefusedTransition,
    RequestError,
    SubmitError,
    UnknownProduct,
    UnknownRequest,
)
from wfe.engine.requests.model import BatchOutcome, RequestRecord, StageState

if TYPE_CHECKING:
    from wfe.engine.dispatch.controller import AgentController
    from wfe.engine.repository import Repository
    from wfe.engine.requests.service import RequestService
    from wfe.rscripts.loader import ScriptLibrary


async def prepare(
    repo: Repository, library: ScriptLibrary, controller: AgentController | None = None
) -> int:
    """Register the stored RScripts that live requests use in ``library`` and have
    ``controller`` hold the jobs of paused requests; call it before
    ``AgentController.recover`` so their unfinished jobs are recovered, not failed, and none
    of a paused request is dispatched before the requests service's first step."""
    from wfe.engine.repository import requests as store
    from wfe.engine.requests import scripts

    if controller is not None:
        for rid in await repo.read(store.paused_requests):
            controller.hold_request(rid)
    return scripts.register(library, await repo.read(store.scripts_in_use))


def __getattr__(name: str) -> object:
    # The service is imported on first use, so that the repository's modules can import
    # this package's errors and models without loading the service (which imports them).
    if name == "RequestService":
        from wfe.engine.requests.service import RequestService

        return RequestService
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BatchOutcome",
    "CatalogError",
    "RefusedTransition",
    "RequestError",
    "RequestRecord",
    "RequestService",
    "StageState",
    "SubmitError",
    "UnknownProduct",
    "UnknownRequest",
    "prepare",
]
