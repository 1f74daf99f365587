"""A simulated execution as the engine runs it: its clock, its tasks, what it records.

``Execution`` belongs to one ``wfe simulate`` run. The action runner gives each action run
of the execution a ``SimRun`` (the execution and that run's ``SimTask``); ``Context`` reads
``ctx.now``, sleeps, publishes and joins through it, and tasklets see the execution as
``ctx.execution`` (``id``, ``mode``, ``state(...)``, ``metrics``).

Figures, stored when the execution ends: seconds spent in each workflow state
(``"state/substate"``), messages published per topic, wall seconds (trio's clock, which is
the wall clock in a running engine), simulated seconds and their ratio, and the workflow's
own ``metrics``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import trio

from wfe.engine.repository import executions as rows
from wfe.engine.repository.rowtypes import JsonObject
from wfe.engine.simulate.clock import CURRENT, SimClock, SimTask, TaskState, current_task

if TYPE_CHECKING:
    from wfe.engine.repository import Repository
    from wfe.engine.runtime.actions import Run


class Execution:
    """One simulated execution: id, namespace, configuration, clock and running figures."""

    def __init__(
        self,
        *,
        id: str,
        namespace: str,
        config: Mapping[str, Any],
        clock: SimClock,
        repo: Repository,
        on_end: Callable[[], None] | None = None,
        reactors: Mapping[str, str] | None = None,
    ) -> None:
        self.id = id
        self.reactors = dict(reactors or {})  # the definition's [reactors]: topic -> action
        self._on_end = on_end
        self.namespace = namespace
        self.config = config
        self.clock = clock
        self.repo = repo
        self.mode = "realtime" if clock.realtime else "fast"
        self.started = trio.current_time()
        self.messages: Counter[str] = Counter()
        self.durations: dict[str, float] = {}
        self._state: str | None = None
        self._state_since = 0.0
        self.metrics: dict[str, Any] = {}  # the workflow's own figures (JSON values)
        self.root: Run | None = None  # set when the root action run is made
        self.ended = trio.Event()
        self.record: rows.ExecutionRecord | None = None  # set once ended

    def now(self) -> float:
        """The calling task's simulation time (the clock's latest outside a task)."""
        task = current_task()
        return self.clock.now if task is None else task.at

    async def state(self, state: str, substate: str = "") -> None:
        """The workflow entered ``state``/``substate``: recorded with the simulation time."""
        if not isinstance(state, str) or not state or not isinstance(substate, str):
            raise ValueError("state: expected a non-empty state name and a substate string")
        now = self.now()
        self._close_state(now)
        self._state = f"{state}/{substate}" if substate else state
        self._state_since = now
        await self.repo.write(rows.record_state(self.id, state, substate, sim_time=now))

    def _close_state(self, now: float) -> None:
        if self._state is not None:
            spent = now - self._state_since
            self.durations[self._state] = self.durations.get(self._state, 0.0) + spent
            self._state_since = now

    def stop(self) -> None:
        """The clock reached ``until``: cancel the workflow (it ends as completed)."""
        if self.root is not None:
            self.root.scope.cancel()

    @property
    def stopped(self) -> bool:
        return self.clock.stopped

    def figures(self) -> JsonObject:
        """The performance figures so far."""
        simulated = self.clock.now
        self._close_state(simulated)
        wall = trio.current_time() - self.started
        return {
            "mode": self.mode,
            "wall_seconds": round(wall, 6),
            "simulated_seconds": simulated,
            "ratio": round(simulated / wall, 3) if wall > 0 else None,
            "states": {k: round(v, 9) for k, v in self.durations.items()},
            "messages": dict(sorted(self.messages.items())),
            "messages_total": sum(self.messages.values()),
            **self._metrics(),
        }

    def _metrics(self) -> JsonObject:
        """``{"metrics": ...}``, or ``{"metrics_error": ...}`` when the workflow put something
        JSON cannot hold there (the execution still ends, with the line saying so)."""
        try:
            json.dumps(self.metrics, allow_nan=False)
        except (TypeError, ValueError) as exc:
            return {"metrics": {}, "metrics_error": f"metrics are not JSON: {exc}"}
        return {"metrics": dict(self.metrics)}

    async def finish(self, state: str, *, error: str | None) -> rows.ExecutionRecord:
        """Record the end (``completed``, ``failed``, ``cancelled``) with the figures."""
        try:
            self.record = await self.repo.write(
                rows.end_execution(
                    self.id, state, error=error, figures=self.figures(), sim_time=self.clock.now
                )
            )
            return self.record
        finally:
            self.ended.set()
            if self._on_end is not None:
                self._on_end()


class SimRun:
    """What one action run of an execution carries: the execution and its own task."""

    def __init__(self, execution: Execution, task: SimTask) -> None:
        self.execution = execution
        self.task = task
        self.subtasks: list[SimTask] = []  # tasks this run started: ctx.start_soon, children

    def new_task(self, name: str) -> SimTask:
        """A task this run starts now (running from this instant)."""
        task = self.execution.clock.task(name)
        task.at = (current_task() or self.task).at
        self.subtasks.append(task)
        return task

    def child(self, name: str) -> SimRun:
        """The ``SimRun`` of a child action started now (a task of its own, running)."""
        return SimRun(self.execution, self.new_task(name))

    def wait_for_subtasks(self) -> None:
        """The run's tasklets are done: let the clock move while the tasks it started end."""
        self.subtasks = [t for t in self.subtasks if t.state is not TaskState.DONE]
        self.execution.clock.wait_for_all(self.task, self.subtasks)

    def enter(self) -> None:
        """Make this run's task the calling trio task's (at the start of the run's task)."""
        CURRENT.set(self.task)

    async def sleep(self, seconds: float) -> None:
        """``ctx.sleep`` in a simulation: the calling task's sleep on the execution's clock."""
        await (current_task() or self.task).sleep(seconds)

    async def sleep_until(self, when: float) -> None:
        await (current_task() or self.task).sleep_until(when)

    async def ended(self, state: str, result: Any, error: str | None) -> None:
        """The root run ended with the job state ``state``: the execution ends."""
        if state == "succeeded":
            await self.execution.finish("completed", error=None)
        elif state == "cancelled":
            await self.execution.finish("cancelled", error=error)
        else:
            await self.execution.finish("failed", error=error)


async def run_task(task: SimTask, fn: Any, *args: Any) -> None:
    """Run ``fn(*args)`` as ``task`` (``ctx.start_soon``: the task was made, running, when
    the call was, so that the clock cannot advance before it starts)."""
    CURRENT.set(task)
    try:
        await fn(*args)
    finally:
        task.done()
