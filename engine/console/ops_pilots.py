"""Console operations of pilot factories (``wfe pilots``; docs/pilots.md).

Registered with ``@op`` when ``wfe.engine.console.api`` imports this module. A viewer may
read the demand and the pilots; recording pilots (``pilots.create``, ``pilots.submitted``,
``pilots.started``, ``pilots.ended``) needs an operator token: the factory's. A bad argument
is refused with ``bad_request`` naming it; an unknown pilot (or one not in the state the
change needs) with ``not_found``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from wfe.engine.console.protocol import BAD_REQUEST, ApiError
from wfe.engine.console.registry import arg, bounded, op
from wfe.engine.pilots.books import UnknownPilot
from wfe.engine.pilots.model import PilotError

if TYPE_CHECKING:
    from wfe.engine.console.session import Session


def _refused(exc: PilotError) -> ApiError:
    return ApiError(BAD_REQUEST, str(exc))


@op("pilots.demand", role="viewer")
async def _demand(session: Session, args: dict[str, Any]) -> Any:
    """Queued jobs no connected agent has room for, by requirements, and the agents
    connected. Result: needs [{requirements, queued, unplaceable}], agents [names connected],
    holding [names of agents attempts are out on]."""
    return session.engine.pilots.current_demand()


@op("pilots.create", role="operator")
async def _create(session: Session, args: dict[str, Any]) -> Any:
    """Record a pilot before submitting it: system, agent, requirements, resources.
    Result: the pilot (id, state submitting)."""
    try:
        return await session.engine.pilots.create(
            system=arg(args, "system", str),
            factory=session.name,
            agent=arg(args, "agent", str),
            requirements=arg(args, "requirements", dict),
            resources=arg(args, "resources", dict),
        )
    except UnknownPilot:
        raise
    except PilotError as exc:
        raise _refused(exc) from None


@op("pilots.submitted", role="operator")
async def _submitted(session: Session, args: dict[str, Any]) -> Any:
    """A pilot was taken by its batch system: id, batch_id. Result: the pilot (pending)."""
    try:
        return await session.engine.pilots.submitted(
            arg(args, "id", str), arg(args, "batch_id", str)
        )
    except UnknownPilot:
        raise
    except PilotError as exc:
        raise _refused(exc) from None


@op("pilots.started", role="operator")
async def _started(session: Session, args: dict[str, Any]) -> Any:
    """A pilot's batch job runs: id. Result: the pilot (running)."""
    return await session.engine.pilots.started(arg(args, "id", str))


@op("pilots.ended", role="operator")
async def _ended(session: Session, args: dict[str, Any]) -> Any:
    """A pilot's batch job ended: id, end_state (COMPLETED, CANCELLED, TIMEOUT, ...),
    exit_code, reason. Result: the pilot (ended)."""
    try:
        return await session.engine.pilots.ended(
            arg(args, "id", str),
            end_state=arg(args, "end_state", str),
            exit_code=arg(args, "exit_code", int, None),
            reason=arg(args, "reason", str, ""),
        )
    except UnknownPilot:
        raise
    except PilotError as exc:
        raise _refused(exc) from None


@op("pilots.list", role="viewer")
async def _list(session: Session, args: dict[str, Any]) -> Any:
    """Pilots: live (only those not ended, oldest first; default false: all, newest first),
    limit (100)."""
    live = arg(args, "live", bool, False)
    return await session.engine.pilots.listing(live=live, limit=bounded(args, "limit", 100))
