"""The engine's books of pilots: what a factory records through the console, and reads back.

The engine holds one ``PilotBooks`` (``Engine.pilots``); the console's ``pilots.*`` operations
(``wfe.engine.console.ops_pilots``) use it. Every write goes through the repository's one writer
(``wfe.engine.repository.pilots``: the table, the events). A factory records a pilot before
it submits it, then its batch id, its start and its end.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from wfe.engine.pilots import demand
from wfe.engine.pilots.model import Need, PilotError
from wfe.engine.repository import pilots as rows
from wfe.engine.repository.rowtypes import JsonObject

if TYPE_CHECKING:
    from wfe.engine.dispatch.controller import AgentController
    from wfe.engine.repository import Repository

_SYSTEM = re.compile(r"[a-z][a-z0-9_-]{0,31}\Z")
_BATCH_ID = re.compile(r"[A-Za-z0-9_.:@-]{1,128}\Z")
_END_STATE = re.compile(r"[A-Z][A-Z0-9_+]{0,31}\Z")
MAX_REASON = 500


class UnknownPilot(PilotError, LookupError):
    """No pilot has that id (or it is not in the state the change needs)."""


class PilotBooks:
    """The pilots' records and the demand that calls for them."""

    def __init__(self, repo: Repository, controller: AgentController) -> None:
        self._repo = repo
        self._controller = controller

    def current_demand(self) -> JsonObject:
        """``needs`` (queued jobs no connected agent has room for, by requirements), ``agents``
        (the names of the agents connected now) and ``holding`` (of the agents the engine knows,
        those attempts are still out on)."""
        controller = self._controller
        return {
            "needs": [c.as_data() for c in demand.queued_demand(controller)],
            "agents": list(demand.connected_agents(controller)),
            "holding": list(demand.agents_holding_work(controller)),
        }

    async def create(
        self,
        *,
        system: str,
        factory: str,
        agent: str,
        requirements: Any,
        resources: Any,
    ) -> JsonObject:
        """Record a pilot about to be submitted; its row as data. Raises ``PilotError``."""
        if not _SYSTEM.match(system):
            raise PilotError(f"system {system!r}: expected a lower-case name such as slurm")
        if not agent or len(agent) > 1023 or any(c.isspace() for c in agent):
            raise PilotError(f"agent {agent!r}: expected an agent name (its JID) without spaces")
        need = Need.from_data(requirements)
        if not isinstance(resources, dict):
            raise PilotError("resources: expected an object (cpus, memory, walltime, site...)")
        row = await self._repo.write(
            rows.create_pilot(
                system=system,
                factory=factory,
                agent=agent,
                requirements=need.as_data(),
                resources=resources,
            )
        )
        return row.as_data()

    async def submitted(self, pilot_id: str, batch_id: str) -> JsonObject:
        """The batch system took ``pilot_id`` as ``batch_id``. Raises ``UnknownPilot``."""
        if not _BATCH_ID.match(batch_id):
            raise PilotError(f"batch_id {batch_id[:40]!r}: expected a batch system's job id")
        row = await self._repo.write(rows.pilot_submitted(pilot_id, batch_id))
        if row is None:
            raise UnknownPilot(f"no pilot {pilot_id!r} waits to be submitted")
        return row.as_data()

    async def started(self, pilot_id: str) -> JsonObject:
        """The batch system runs ``pilot_id``. Raises ``UnknownPilot``."""
        row = await self._repo.write(rows.pilot_started(pilot_id))
        if row is None:
            raise UnknownPilot(f"no pilot {pilot_id!r} is pending")
        return row.as_data()

    async def ended(
        self, pilot_id: str, *, end_state: str, exit_code: int | None, reason: str
    ) -> JsonObject:
        """``pilot_id`` ended as ``end_state`` (the batch system's word). Raises ``UnknownPilot``."""
        if not _END_STATE.match(end_state):
            raise PilotError(f"end_state {end_state[:40]!r}: expected a state such as COMPLETED")
        row = await self._repo.write(
            rows.pilot_ended(
                pilot_id, end_state=end_state, exit_code=exit_code, reason=reason[:MAX_REASON]
            )
        )
        if row is None:
            raise UnknownPilot(f"no pilot {pilot_id!r} is live")
        return row.as_data()

    async def listing(self, *, live: bool, limit: int) -> list[JsonObject]:
        """Pilots: the live ones oldest first, or all newest first."""
        found = await self._repo.read(rows.list_pilots(live=live, limit=limit))
        return [row.as_data() for row in found]
