"""The clocks a simulated execution runs on: one per execution, never the engine's own.

A workflow's tasklets call ``ctx.sleep`` and read ``ctx.now``; in a simulation both go to
the execution's clock (``SimClock``), found through the calling task's ``SimTask`` (a
context variable, so tasks a tasklet starts with ``ctx.start_soon`` and child actions each
have their own). trio's clock is never replaced: the rest of the engine runs beside.

Theory of operation. Every task of an execution is a ``SimTask``, in one of three states:
running (doing something real: computing, writing the repository, waiting for an RScript),
sleeping (in ``ctx.sleep``, until a simulation time), or waiting on another task of the
execution (joining a child action). ``done`` removes a task, and makes the tasks that were
waiting on it running again in the same step, so no instant exists in which all look idle.

- **fast** (``VirtualClock``): a small discrete-event scheduler. Sleepers sit in one heap
  by ``(time, seq)``, ``seq`` counting sleeps. When no task is running, the first sleeper
  is popped, the clock jumps to its time and that one task is woken; the next is popped
  only once every task is idle again. Wake order is therefore exactly ``(time, seq)``,
  whatever trio's scheduler does, and a task doing real work holds simulated time still.
- **realtime** (``RealtimeClock``): simulation time is tied to trio's clock from the
  execution's start: a sleep ends at ``origin + scheduled time`` (``trio.sleep_until``, not
  a duration), so a task that fell behind catches up by not sleeping; ``now`` is the
  scheduled time, as SimPy's ``RealtimeEnvironment(strict=False)`` has it.

With ``until``, the clock never goes past that simulation time: when the next wake would,
the clock stops at ``until`` and calls ``on_stop`` once (the execution cancels its tasks
there); a sleep on a stopped clock never ends.

SimPy (the seed's engine) was considered and not used: its processes are generators driven
by its own loop, while wfe's tasklets are trio coroutines that also await the repository and
agents; bridging the two would need this same bookkeeping around it.
"""

from __future__ import annotations

import contextvars
import enum
import heapq
import itertools
import math
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

T = TypeVar("T")


class TaskState(enum.Enum):
    """What a simulation task is doing, as the clock sees it."""

    RUNNING = "running"  # doing something real; simulated time holds still (fast mode)
    SLEEPING = "sleeping"  # in ctx.sleep until a simulation time
    WAITING = "waiting"  # waiting for another task of the execution to end
    DONE = "done"  # ended; no longer counted


class SimTask:
    """One task of a simulated execution: its state and the simulation time it is at."""

    def __init__(self, clock: SimClock, name: str) -> None:
        self.clock = clock
        self.name = name
        self.state = TaskState.RUNNING
        self.at = clock.now  # the simulation time this task has reached
        self.waiters: list[SimTask] = []  # tasks waiting (also) on this one's end
        self.pending = 0  # while WAITING: how many tasks it still waits for

    def __repr__(self) -> str:
        return f"<SimTask {self.name} {self.state.value} at {self.at}>"

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` of simulation time. Raises ``ValueError`` for a negative or
        non-finite duration. Past the execution's ``until`` it never returns (the
        execution is stopped and cancels it)."""
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"sleep: expected a non-negative number of seconds, not {seconds}")
        await self.clock.sleep_until(self, self.at + seconds)

    async def sleep_until(self, when: float) -> None:
        """Sleep until simulation time ``when`` (at once when it has passed)."""
        await self.clock.sleep_until(self, max(when, self.at))

    def done(self) -> None:
        """This task has ended: tasks waiting on it run again (in this same step)."""
        self.clock.task_done(self)


CURRENT: contextvars.ContextVar[SimTask | None] = contextvars.ContextVar(
    "wfe_sim_task", default=None
)


def current_task() -> SimTask | None:
    """The simulation task of the calling trio task, or None outside a simulation."""
    return CURRENT.get()


class SimClock:
    """What both clocks share: tasks, waiting on tasks, and the ``until`` stop."""

    realtime = False

    def __init__(
        self, *, until: float | None = None, on_stop: Callable[[], None] | None = None
    ) -> None:
        if until is not None and (not math.isfinite(until) or until <= 0):
            raise ValueError(f"until: expected a positive number of seconds, not {until}")
        self.now = 0.0  # the latest simulation time any task has reached
        self.until = until
        self.stopped = False
        self._on_stop = on_stop
        self.running = 0  # tasks in TaskState.RUNNING

    def task(self, name: str) -> SimTask:
        """A new task, running."""
        task = SimTask(self, name)
        self.running += 1
        return task

    def task_done(self, task: SimTask) -> None:
        if task.state is TaskState.DONE:
            return
        if task.state is TaskState.RUNNING:
            self.running -= 1
        task.state = TaskState.DONE
        for waiter in task.waiters:
            if waiter.state is TaskState.WAITING:
                waiter.at = max(waiter.at, task.at)
                waiter.pending -= 1
                if waiter.pending == 0:
                    waiter.state = TaskState.RUNNING
                    self.running += 1
        task.waiters.clear()
        self._idle()

    def wait_for_all(self, waiter: SimTask, tasks: list[SimTask]) -> None:
        """Mark ``waiter`` as waiting until every one of ``tasks`` has ended (a tasklet body
        done, its run waiting for the tasks it started); it runs again, in the step the
        last one ends, with no instant in between. Nothing to wait for: it stays running."""
        live = [t for t in tasks if t.state is not TaskState.DONE]
        if not live or waiter.state is not TaskState.RUNNING:
            return
        waiter.state = TaskState.WAITING
        waiter.pending = len(live)
        for task in live:
            task.waiters.append(waiter)
        self.running -= 1
        self._idle()

    async def wait_on(self, waiter: SimTask, other: SimTask, wait: Callable[[], Awaitable[T]]) -> T:
        """Mark ``waiter`` as waiting on ``other`` while ``await wait()`` runs (a join), and
        return its value. When ``other`` has already ended, ``waiter`` stays running."""
        if other.state is TaskState.DONE or waiter.state is not TaskState.RUNNING:
            return await wait()
        waiter.state = TaskState.WAITING
        waiter.pending = 1
        other.waiters.append(waiter)
        self.running -= 1
        self._idle()
        try:
            return await wait()
        finally:
            if waiter.state is TaskState.WAITING:  # cancelled before the other ended
                other.waiters.remove(waiter)
                waiter.state = TaskState.RUNNING
                self.running += 1

    def stop(self) -> None:
        """Stop the execution at ``until`` (once)."""
        if not self.stopped:
            self.stopped = True
            if self.until is not None:
                self.now = max(self.now, self.until)
            if self._on_stop is not None:
                self._on_stop()

    async def sleep_until(self, task: SimTask, when: float) -> None:
        raise NotImplementedError

    def _idle(self) -> None:
        """Called when a task stops running (fast mode advances here)."""


class VirtualClock(SimClock):
    """Fast mode: simulated time jumps to the next sleeper whenever every task is idle."""

    def __init__(
        self, *, until: float | None = None, on_stop: Callable[[], None] | None = None
    ) -> None:
        super().__init__(until=until, on_stop=on_stop)
        self._heap: list[tuple[float, int, SimTask, trio.Event]] = []
        self._seq = itertools.count()
        self.wakes: list[tuple[float, int, str]] = []  # (time, seq, task) woken, in order

    def pending(self) -> int:
        """Sleepers not woken yet."""
        return len(self._heap)

    async def sleep_until(self, task: SimTask, when: float) -> None:
        if self.stopped:
            await trio.sleep_forever()
        when = max(when, self.now)  # never behind the clock: time does not go back
        event = trio.Event()
        seq = next(self._seq)
        heapq.heappush(self._heap, (when, seq, task, event))
        task.state = TaskState.SLEEPING
        self.running -= 1
        self._idle()
        try:
            await event.wait()
        except BaseException:
            if task.state is TaskState.SLEEPING:  # cancelled while asleep
                self._heap = [e for e in self._heap if e[3] is not event]
                heapq.heapify(self._heap)
                task.state = TaskState.RUNNING
                self.running += 1
            raise

    def _idle(self) -> None:
        if self.running > 0 or not self._heap or self.stopped:
            return
        when, seq, task, event = self._heap[0]
        if self.until is not None and when > self.until:
            self.stop()  # the sleepers stay asleep: the execution cancels them
            return
        heapq.heappop(self._heap)
        self.now = max(self.now, when)
        task.at = when
        task.state = TaskState.RUNNING
        self.running += 1
        self.wakes.append((when, seq, task.name))
        event.set()


class RealtimeClock(SimClock):
    """Real-time mode: a sleep ends at ``origin + scheduled time`` on trio's clock."""

    realtime = True

    def __init__(
        self,
        *,
        origin: float | None = None,
        until: float | None = None,
        on_stop: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(until=until, on_stop=on_stop)
        self.origin = trio.current_time() if origin is None else origin

    def elapsed(self) -> float:
        """Seconds of trio's clock since the execution started."""
        return trio.current_time() - self.origin

    async def sleep_until(self, task: SimTask, when: float) -> None:
        task.state = TaskState.SLEEPING
        self.running -= 1
        try:
            if self.until is not None and when > self.until:
                await trio.sleep_until(self.origin + self.until)
                task.at = self.until
                self.stop()
            if self.stopped:
                await trio.sleep_forever()
            await trio.sleep_until(self.origin + when)  # at once when behind: catching up
        finally:
            task.state = TaskState.RUNNING
            self.running += 1
        task.at = when
        self.now = max(self.now, when)
