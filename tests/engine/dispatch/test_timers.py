"""``wfe.engine.dispatch.timers``: typed timers fire in time order, at their exact times."""

from __future__ import annotations

import trio
import trio.testing
from trio.testing import MockClock

from wfe.engine.dispatch.timers import AgentCheck, FenceCheck, OverallExpired, Timer, Timers


async def test_timers_fire_in_time_order_at_their_times(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    """Each timer fires once, when its time comes (an earlier one scheduled later still
    fires first), with ``now`` the time it fired at."""
    timers = Timers()
    fired: list[tuple[Timer, float, float]] = []
    nursery.start_soon(timers.run, lambda t, now: fired.append((t, now, trio.current_time())))
    start = trio.current_time()
    timers.schedule(start + 10, AgentCheck("a"))
    await trio.testing.wait_all_tasks_blocked()
    timers.schedule(start + 3, FenceCheck("a"))  # earlier than the one waited for
    timers.schedule(start + 3, OverallExpired("j"))
    await trio.sleep(20)
    assert fired == [
        (FenceCheck("a"), start + 3, start + 3),
        (OverallExpired("j"), start + 3, start + 3),
        (AgentCheck("a"), start + 10, start + 10),
    ]
    assert len(timers) == 0
