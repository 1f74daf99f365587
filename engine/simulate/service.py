"""Start, follow and show simulated executions in a running engine (``wfe simulate``).

The ``Engine`` facade holds one ``Simulations`` (``Engine.simulations``): ``start`` checks everything
before writing anything (the definition, its workflow action, the parameters, ``until``),
records the execution (its id from the request counter), and starts the workflow action as
a root job whose runs carry the execution's clock; ``wait`` returns once it has ended;
``detail`` is what ``wfe status EXECUTION_ID`` shows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from wfe.engine.definitions import GitInfo, build_definition, config_of
from wfe.engine.errors import EngineError, UnknownAction
from wfe.engine.repository import executions as rows
from wfe.engine.repository.rowtypes import JsonObject
from wfe.engine.simulate import workflow_action
from wfe.engine.simulate.clock import RealtimeClock, SimClock, VirtualClock
from wfe.engine.simulate.execution import Execution, SimRun

if TYPE_CHECKING:
    from wfe.engine.runtime.actions import ActionRunner


class SimulationError(EngineError, ValueError):
    """A simulation cannot start: bad ``until``, unknown workflow action, bad parameters."""


class UnknownWorkflowAction(EngineError, LookupError):
    """The definition's workflow action is not in the engine's action roots."""


class Simulations:
    """The simulated executions of one engine."""

    def __init__(self, runner: ActionRunner, *, admit_new_work: Callable[[], None]) -> None:
        self._runner = runner
        self._admit_new_work = admit_new_work  # the engine's check that it may take new work
        self._live: dict[str, Execution] = {}

    async def start(
        self,
        *,
        expanded: dict[str, Any],
        user: str,
        sources: list[str] | None = None,
        git: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        realtime: bool = False,
        until: float | None = None,
        by: str | None = None,
    ) -> rows.ExecutionRecord:
        """Start an execution of the expanded definition's workflow action; return its record.

        Raises ``InvalidDefinition``, ``UnknownWorkflowAction`` or ``SimulationError`` (one
        line) before anything is written.
        """
        if until is not None and (
            isinstance(until, bool) or not math.isfinite(until) or until <= 0
        ):
            raise SimulationError(f"--until {until}: expected a positive number of seconds")
        definition = build_definition(
            expanded,
            sources=tuple(sources or ()),
            git=None if git is None else GitInfo(**git),
        )
        name = workflow_action(definition)
        runner = self._runner
        try:
            action = runner.library.get(name)
        except UnknownAction:
            where = (
                f"[workflow] action = {name!r}"
                if definition.workflow.action
                else f"[workflow] name = {definition.name!r}; put its tasklets in an actions "
                f"root's {name.replace('.', '/')}/, or set [workflow] action"
            )
            known = ", ".join(runner.library.names()) or "none"
            raise UnknownWorkflowAction(
                f"unknown workflow action {name!r} ({where}; known actions: {known})"
            ) from None
        params = dict(params or {})
        action.check_params(params)
        self._admit_new_work()
        from wfe.engine.runtime.broadcasting import reactors_of

        record = await runner.repo.write(
            rows.create_execution(
                definition,
                user=user,
                action=name,
                mode="realtime" if realtime else "fast",
                until=until,
                params=params,
                by=by,
            )
        )
        execution: Execution
        clock: SimClock
        if realtime:
            clock = RealtimeClock(until=until, on_stop=lambda: execution.stop())
        else:
            clock = VirtualClock(until=until, on_stop=lambda: execution.stop())
        execution = Execution(
            id=record.id,
            namespace=definition.namespace,
            config=config_of(definition.expanded),
            reactors=reactors_of(definition.expanded),
            clock=clock,
            repo=runner.repo,
            on_end=lambda: self._forget(record.id),
        )
        self._live[record.id] = execution
        try:
            job = await runner.start(
                name, params, by=by, sim=SimRun(execution, clock.task(definition.name))
            )
            await runner.repo.write(rows.set_job(record.id, job))
        except BaseException as exc:
            if not execution.ended.is_set():
                await execution.finish("failed", error=f"could not start: {exc}")
            raise
        return await runner.repo.read(lambda db: rows.get_execution(db, record.id))

    def _forget(self, eid: str) -> None:
        self._live.pop(eid, None)

    async def wait(self, eid: str) -> JsonObject:
        """Wait until the execution ``eid`` has ended and return its detail. Raises
        ``UnknownExecution``."""
        execution = self._live.get(eid)
        if execution is not None:
            await execution.ended.wait()
        return await self.detail(eid)

    async def detail(self, eid: str) -> JsonObject:
        """The execution ``eid`` and its story (its events, oldest first). Raises
        ``UnknownExecution``."""
        story = rows.execution_story(eid)

        def read(db: Any) -> JsonObject:  # one read, one snapshot: the record and its story agree
            return {**rows.get_execution(db, eid).as_dict(), "story": list(story(db))}

        detail: JsonObject = await self._runner.repo.read(read)
        return detail

    async def find(self, eid: str) -> JsonObject | None:
        """The execution ``eid`` (no story), or None when no execution has that id."""
        record = await self._runner.repo.read(rows.find_execution(eid))
        return None if record is None else record.as_dict()
