"""Console API operations for simulated executions (``wfe simulate``, ``wfe status ID``).

Registered with ``@op`` when ``wfe.engine.console.api`` imports this module.

- ``simulate`` (operator): args ``expanded`` (object), ``user``, and optionally ``sources``
  (array), ``git`` (object), ``params`` (object: the workflow action's parameters),
  ``realtime`` (bool), ``until`` (seconds of simulation). Starts an execution of the
  definition's workflow action and replies with its record (``id``, ``job``, ``state``...).
- ``execution`` (viewer): args ``execution``: its record and its story (events, each with the
  simulation time in its data); ``not_found`` for an unknown id.
- ``execution_wait`` (viewer): as ``execution``, once the execution has ended.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from wfe.engine.console.protocol import ApiError
from wfe.engine.console.registry import arg, op
from wfe.engine.repository.executions import UnknownExecution

if TYPE_CHECKING:
    from wfe.engine.console.api import Session


@op("simulate", role="operator")
async def _simulate(session: Session, args: dict[str, Any]) -> Any:
    until = args.get("until")
    if until is not None and (isinstance(until, bool) or not isinstance(until, int | float)):
        raise ApiError("bad_request", "args.until: expected a number of seconds")
    record = await session.engine.simulations.start(
        expanded=arg(args, "expanded", dict),
        user=arg(args, "user", str),
        sources=arg(args, "sources", list, []),
        git=arg(args, "git", dict, None),
        params=arg(args, "params", dict, {}),
        realtime=arg(args, "realtime", bool, False),
        until=None if until is None else float(until),
        by=session.name,
    )
    return record.as_dict()


@op("execution", role="viewer")
async def _execution(session: Session, args: dict[str, Any]) -> Any:
    eid = arg(args, "execution", str)
    try:
        return await session.engine.simulations.detail(eid)
    except UnknownExecution as exc:
        raise ApiError("not_found", str(exc)) from None


@op("execution_wait", role="viewer")
async def _execution_wait(session: Session, args: dict[str, Any]) -> Any:
    eid = arg(args, "execution", str)
    try:
        return await session.engine.simulations.wait(eid)
    except UnknownExecution as exc:
        raise ApiError("not_found", str(exc)) from None
