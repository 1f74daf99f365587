"""The pilot factory process (``wfe pilots``): rounds of track, ask, decide, submit.

Each round (every ``interval`` seconds) the factory

1. asks the batch system where its live pilots are, and records in the engine (console ops
   ``pilots.started`` / ``pilots.ended``) the ones that started or ended;
2. asks the engine for its demand (``pilots.demand``: queued jobs no connected agent has a
   slot for, by requirements, and which agents are connected: a pilot whose agent was seen
   connected has *joined*);
3. decides with ``wfe.engine.pilots.factory.plan`` how many pilots to submit or cancel;
4. submits each new pilot: an XMPP account not in use by a live pilot, a record in the engine
   (``pilots.create``, committed *before* the batch system hears of it), the batch job, then
   its batch id (``pilots.submitted``). A pilot the batch system refused is recorded ended
   (``NOT_SUBMITTED``) and the round stops submitting.

The factory keeps nothing of its own: started again, it adopts the live pilots the engine's
books list for its batch system. Stopping it (SIGINT, SIGTERM) leaves the pilots running:
each ends by itself (idle, or at its wall time), and the next factory records how.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import attrs
import trio

from wfe.engine.pilots.factory import Waiting, plan
from wfe.engine.pilots.model import Limits, Need, Shape
from wfe.engine.pilots.submitter import BatchState, PilotJob, SubmitError, Submitter

log = logging.getLogger("wfe.pilots")

#: The end state recorded for a pilot the batch system never took.
NOT_SUBMITTED = "NOT_SUBMITTED"


class Console(Protocol):
    """What the factory needs of a console client (``wfe.engine.cli.client.Client``)."""

    async def call(self, op: str, **args: Any) -> Any: ...


@attrs.frozen(kw_only=True)
class FactorySettings:
    """How the factory makes pilots, beyond the policy's ``Limits``.

    ``accounts`` holds one file per pilot XMPP account, named by its bare JID and holding its
    password (mode 0600); ``agent`` is the command that starts an agent on a batch node
    (``python -m wfe agent``) and ``agent_options`` what every pilot's agent is given (server,
    TLS, trusted key, controller...). ``workdir`` must be visible from the batch nodes.
    """

    limits: Limits
    accounts: Path
    workdir: Path
    agent: tuple[str, ...]
    agent_options: tuple[str, ...] = ()
    interval: float = 10.0


@attrs.define
class Pilot:
    """A live pilot as the factory tracks it."""

    id: str
    agent: str
    need: Need
    batch_id: str | None
    state: str  # submitting, pending (queued in the batch system) or running
    joined: bool = False  # its agent was seen connected to the engine


def accounts_in(directory: Path) -> list[str]:
    """The pilot accounts (bare JIDs) of ``directory``, sorted."""
    return sorted(p.name for p in directory.iterdir() if "@" in p.name and p.is_file())


class Factory:
    """One factory: its live pilots and the round that keeps them matched to demand."""

    def __init__(
        self,
        console: Console,
        submitter: Submitter,
        settings: FactorySettings,
        report: Callable[[str], None] = log.info,
    ) -> None:
        self.console = console
        self.submitter = submitter
        self.settings = settings
        self.report = report
        self.pilots: dict[str, Pilot] = {}
        self._refused: dict[Need, str] = {}  # needs reported as not served, not to repeat it
        self._holding: set[str] = set()  # agents attempts are out on (the engine says)
        self._last_used: dict[str, int] = {}  # account -> when it was last given to a pilot
        self._submitted = 0

    async def adopt(self) -> None:
        """Track the live pilots the engine's books hold for this batch system."""
        for row in await self.console.call("pilots.list", live=True, limit=10_000):
            if row["system"] != self.submitter.system or row["id"] in self.pilots:
                continue
            self.pilots[row["id"]] = Pilot(
                id=row["id"],
                agent=row["agent"],
                need=Need.from_data(row["requirements"]),
                batch_id=row["batch_id"],
                state=row["state"],
            )
        stranded = [p for p in self.pilots.values() if p.batch_id is None]
        for pilot in stranded:  # recorded, then the factory stopped before submitting it
            await self._ended(pilot, NOT_SUBMITTED, None, "the factory stopped before submitting")

    async def round(self) -> None:
        """One round: track, ask, decide, submit and cancel (see the module docstring)."""
        await self.track()
        demand = await self.console.call("pilots.demand")
        connected = set(demand["agents"])
        self._holding = set(demand.get("holding", ()))
        for pilot in self.pilots.values():
            pilot.joined = pilot.joined or pilot.agent in connected
        needs = {Need.from_data(n["requirements"]): int(n["queued"]) for n in demand["needs"]}
        waiting: dict[Need, Waiting] = {}
        for pilot in self.pilots.values():
            if pilot.joined:
                continue
            was = waiting.get(pilot.need, Waiting())
            queued = pilot.state in ("submitting", "pending")
            waiting[pilot.need] = Waiting(
                queued=was.queued + queued, starting=was.starting + (not queued)
            )
        decided = plan(needs, waiting, live=len(self.pilots), limits=self.settings.limits)
        for need, why in decided.refused.items():
            if self._refused.get(need) != why:
                self.report(f"not served: {need.as_data()}: {why}")
        self._refused = dict(decided.refused)
        for need, count in decided.cancel.items():
            await self._cancel(need, count)
        for need, count in decided.submit.items():
            for _ in range(count):
                if not await self._submit(need, decided.shapes[need]):
                    return

    async def track(self) -> None:
        """Record the pilots that started or ended since the last look."""
        ids = [p.batch_id for p in self.pilots.values() if p.batch_id is not None]
        statuses = await self.submitter.statuses(ids)
        for pilot in list(self.pilots.values()):
            status = statuses.get(pilot.batch_id or "")
            if status is None:
                continue
            if status.state is BatchState.RUNNING and pilot.state == "pending":
                await self.console.call("pilots.started", id=pilot.id)
                pilot.state = "running"
                self.report(f"{pilot.id} (batch job {pilot.batch_id}) started")
            if status.state is BatchState.ENDED:
                await self._ended(pilot, status.end_state, status.exit_code, status.reason)

    async def _ended(self, pilot: Pilot, end_state: str, code: int | None, reason: str) -> None:
        await self.console.call(
            "pilots.ended", id=pilot.id, end_state=end_state, exit_code=code, reason=reason
        )
        del self.pilots[pilot.id]
        why = f" ({reason})" if reason else ""
        self.report(f"{pilot.id} (batch job {pilot.batch_id}) ended: {end_state}{why}")

    def _free_account(self) -> str | None:
        """An account no live pilot uses and no attempt is out on (a new agent under the
        name of a killed one would end its attempts before they are fenced), the least
        recently used first."""
        used = {p.agent for p in self.pilots.values()} | self._holding
        free = [jid for jid in accounts_in(self.settings.accounts) if jid not in used]
        if not free:
            return None
        chosen = min(free, key=lambda jid: (self._last_used.get(jid, -1), jid))
        self._submitted += 1
        self._last_used[chosen] = self._submitted
        return chosen

    async def _submit(self, need: Need, shape: Shape) -> bool:
        """Submit one pilot for ``need``; False when no more can be submitted this round."""
        agent = self._free_account()
        if agent is None:
            self.report(
                f"no free pilot account in {self.settings.accounts}: add one per pilot"
                " (an account stays out of use while attempts are out on its last agent)"
            )
            return False
        row = await self.console.call(
            "pilots.create",
            system=self.submitter.system,
            agent=agent,
            requirements=need.as_data(),
            resources=shape.as_data(),
        )
        pilot = Pilot(id=row["id"], agent=agent, need=need, batch_id=None, state="submitting")
        self.pilots[pilot.id] = pilot
        directory = self.settings.workdir / pilot.id
        await trio.Path(directory).mkdir(parents=True, exist_ok=True)
        job = PilotJob(
            name=pilot.id,
            command=self.agent_command(agent, shape, directory),
            cpus=shape.cpus,
            memory_mb=shape.memory_mb,
            walltime=shape.walltime,
            directory=directory,
        )
        try:
            pilot.batch_id = await self.submitter.submit(job)
        except SubmitError as exc:
            await self._ended(pilot, NOT_SUBMITTED, None, str(exc))
            return False
        await self.console.call("pilots.submitted", id=pilot.id, batch_id=pilot.batch_id)
        pilot.state = "pending"
        self.report(
            f"{pilot.id} submitted as batch job {pilot.batch_id} for {need.as_data()}:"
            f" {shape.cpus} cpus, agent {agent}"
        )
        return True

    async def _cancel(self, need: Need, count: int) -> None:
        queued = [p for p in self.pilots.values() if p.need == need and p.state == "pending"]
        for pilot in sorted(queued, key=lambda p: p.id, reverse=True)[:count]:
            assert pilot.batch_id is not None
            try:
                await self.submitter.cancel(pilot.batch_id)
            except SubmitError as exc:
                self.report(f"could not cancel {pilot.id}: {exc}")
            else:
                self.report(f"{pilot.id} cancelled: no queued work needs it any more")

    def agent_command(self, agent: str, shape: Shape, directory: Path) -> tuple[str, ...]:
        """The payload of a pilot: ``wfe agent`` over XMPP with the pilot's resources."""
        options = [
            "--xmpp",
            "--jid",
            agent,
            "--password-file",
            str(self.settings.accounts / agent),
            "--slots",
            str(shape.cpus),
            "--memory",
            str(shape.memory),
            "--site",
            shape.site,
            "--spool",
            str(directory / "spool"),
            "--workdir",
            str(directory / "work"),
            "--idle-exit",
            f"{shape.idle_exit:g}",
            "--walltime",
            f"{shape.walltime:g}",
        ]
        for tag in shape.tags:
            options += ["--tag", tag]
        return (*self.settings.agent, *options, *self.settings.agent_options)


async def run_factory(
    console: Console,
    submitter: Submitter,
    settings: FactorySettings,
    *,
    stop: trio.Event,
    rounds: int | None = None,
    report: Callable[[str], None] = log.info,
) -> Factory:
    """Adopt the live pilots, then run rounds every ``settings.interval`` seconds until
    ``stop`` is set (or ``rounds`` have run). A batch system's failure is reported and the
    round tried again at the next interval; the console's errors propagate."""
    factory = Factory(console, submitter, settings, report)
    await factory.adopt()
    done = 0
    while not stop.is_set() and (rounds is None or done < rounds):
        try:
            await factory.round()
        except SubmitError as exc:
            report(f"batch system: {exc}")
        done += 1
        if rounds is not None and done >= rounds:
            break
        with trio.move_on_after(settings.interval):
            await stop.wait()
    return factory
