"""The simulation clocks: the virtual scheduler's wake order, holding time while a task
works, joins, ``until``; the real-time clock's pacing and catch-up at exact trio times."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from wfe.engine.simulate.clock import CURRENT, RealtimeClock, SimTask, TaskState, VirtualClock

# each task: the sleeps it makes, in simulation seconds (0 included: a same-time wake)
SLEEPS = st.lists(
    st.lists(st.sampled_from([0, 0.5, 1, 1, 2, 3.25]), max_size=6), min_size=1, max_size=5
)


def run_mock(fn: Any) -> Any:
    return trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))


@settings(max_examples=60, deadline=None)
@given(SLEEPS)
def test_sleepers_wake_sorted_by_time_then_by_when_they_slept(plan: list[list[float]]) -> None:
    """Whatever trio's scheduler does, concurrent tasks wake in the order of (simulation
    time, order of the sleep calls), one at a time (the woken task is the only one running,
    and the clock's count of running tasks is right); the clock ends at the latest wake; no
    trio time passes."""
    requests: list[tuple[float, int, str]] = []
    wakes: list[tuple[float, int, str]] = []

    async def main() -> float:
        clock = VirtualClock()
        tasks: list[SimTask] = []

        async def task(name: str, sleeps: list[float], me: SimTask) -> None:
            CURRENT.set(me)
            try:
                for seconds in sleeps:
                    ticket = (me.at + seconds, len(requests), name)
                    requests.append(ticket)
                    await me.sleep(seconds)
                    assert me.at == clock.now == ticket[0]
                    running = [t for t in tasks if t.state is TaskState.RUNNING]
                    assert running == [me] and clock.running == 1
                    wakes.append(ticket)
                    await trio.lowlevel.checkpoint()  # let others run between wakes
            finally:
                me.done()

        async with trio.open_nursery() as nursery:
            for i, sleeps in enumerate(plan):
                tasks.append(clock.task(f"t{i}"))
                nursery.start_soon(task, f"t{i}", sleeps, tasks[-1])
        assert trio.current_time() == 0 and clock.running == 0 and clock.pending() == 0
        return clock.now

    end = run_mock(main)
    assert wakes == sorted(requests)
    assert end == max((w[0] for w in wakes), default=0)


async def test_simulated_time_holds_while_a_task_does_real_work(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A task doing something real (here 5 s of trio time) holds the clock: a sleeper due at
    1 wakes only once the busy task sleeps too, and then at simulation time 1."""
    clock = VirtualClock()
    sleeper, worker = clock.task("sleeper"), clock.task("worker")
    seen: list[tuple[str, float, float]] = []

    async def sleeping() -> None:
        await sleeper.sleep(1)
        seen.append(("sleeper", sleeper.at, trio.current_time()))
        sleeper.done()

    async def working() -> None:
        await trio.sleep(5)  # real work: the clock must not move meanwhile
        seen.append(("worker", worker.at, trio.current_time()))
        await worker.sleep(2)
        seen.append(("worker", worker.at, trio.current_time()))
        worker.done()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sleeping)
        nursery.start_soon(working)
    assert seen == [("worker", 0, 5), ("sleeper", 1, 5), ("worker", 2, 5)]


async def test_a_join_lets_time_move_and_hands_back_in_one_step(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A task waiting on another (a child action) does not hold the clock; when the child
    ends, the parent runs again before any other sleeper can wake."""
    clock = VirtualClock()
    parent, child, other = clock.task("parent"), clock.task("child"), clock.task("other")
    order: list[tuple[str, float]] = []
    child_done = trio.Event()

    async def child_task() -> None:
        await child.sleep(3)
        order.append(("child ends", child.at))
        child.done()
        child_done.set()

    async def other_task() -> None:
        await other.sleep(3)  # due at the same time as the child, but slept later
        order.append(("other", other.at))
        other.done()

    async def parent_task() -> None:
        await clock.wait_on(parent, child, child_done.wait)
        order.append(("parent", parent.at))
        await parent.sleep(0)  # back in line: after the other's wake at 3
        order.append(("parent again", parent.at))
        parent.done()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(child_task)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(other_task)
        nursery.start_soon(parent_task)
    assert order == [("child ends", 3), ("parent", 3), ("other", 3), ("parent again", 3)]
    assert parent.state is TaskState.DONE and clock.running == 0


async def test_until_stops_the_clock_at_that_time(autojump_clock: trio.testing.MockClock) -> None:
    """With until = 10, wakes up to 10 happen; the first one past it stops the clock at 10
    and calls on_stop once; that sleeper never wakes."""
    stops: list[float] = []
    scope = trio.CancelScope()

    def on_stop() -> None:
        stops.append(clock.now)
        scope.cancel()

    with scope:
        clock = VirtualClock(until=10, on_stop=on_stop)
        task = clock.task("t")
        woke: list[float] = []
        for _ in range(10):
            await task.sleep(4)
            woke.append(task.at)
    assert woke == [4, 8] and stops == [10] and clock.now == 10 and clock.stopped


def test_until_must_be_positive() -> None:
    """until <= 0 is refused in one line."""
    for bad in (0, -1, float("inf")):
        with pytest.raises(ValueError, match="until: expected a positive number of seconds"):
            VirtualClock(until=bad)


async def test_realtime_sleeps_end_at_start_plus_simulated_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """In real time a sleep ends at origin + the simulation time it is due (trio.sleep_until),
    exactly; simulation time reads the scheduled time."""
    await trio.sleep(100)  # the execution starts at trio time 100
    clock = RealtimeClock()
    task = clock.task("t")
    seen = []
    for seconds in (5, 1, 0.5, 2):
        await task.sleep(seconds)
        seen.append((task.at, trio.current_time()))
    assert seen == [(5, 105), (6, 106), (6.5, 106.5), (8.5, 108.5)]


async def test_realtime_catches_up_after_falling_behind(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A task held up by 7 s of real work at simulation time 1 does not sleep again until it
    has caught up: the sleeps due at 2..8 end at once (trio time 8), the next one on time."""
    clock = RealtimeClock(origin=0)
    task = clock.task("t")
    await task.sleep(1)
    assert trio.current_time() == 1
    await trio.sleep(7)  # the workflow fell behind: now 8 s of wall time at simulation time 1
    seen = []
    for _ in range(9):
        await task.sleep(1)
        seen.append((task.at, trio.current_time()))
    assert seen == [
        (2, 8), (3, 8), (4, 8), (5, 8), (6, 8), (7, 8), (8, 8), (9, 9), (10, 10),
    ]  # fmt: skip


async def test_realtime_until_stops_at_that_wall_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """In real time, a sleep past until ends the execution at origin + until."""
    stopped_at: list[float] = []
    scope = trio.CancelScope()

    def on_stop() -> None:
        stopped_at.append(trio.current_time())
        scope.cancel()

    with scope:
        clock = RealtimeClock(origin=0, until=3, on_stop=on_stop)
        task = clock.task("t")
        await task.sleep(2)
        await task.sleep(2)
    assert stopped_at == [3] and task.at == 3 and clock.stopped


async def test_negative_sleeps_are_refused(autojump_clock: trio.testing.MockClock) -> None:
    """ctx.sleep(-1) in a simulation is a one-line ValueError; nothing moves."""
    clock = VirtualClock()
    task = clock.task("t")
    with pytest.raises(ValueError, match="non-negative number of seconds"):
        await task.sleep(-1)
    assert clock.now == 0 and task.state is TaskState.RUNNING
