"""The task that wakes standing requests, on a virtual clock: cooldown windows and cron
ticks fire at their exact times, and catalog changes refresh continuous requests only."""

from __future__ import annotations

import trio
import trio.testing

from wfe.engine.definitions import Trigger, TriggerKind
from wfe.engine.requests.standing_clock import StandingClock

CONTINUOUS = Trigger(kind=TriggerKind.CONTINUOUS)
EPOCH = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC: the wall clock when trio time is 0


class Pokes:
    """Records (trio time, request) for every poke."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, str]] = []

    def __call__(self, rid: str) -> None:
        self.seen.append((trio.current_time(), rid))


async def test_one_round_per_cooldown_window(autojump_clock: trio.testing.MockClock) -> None:
    """With a 10 s cooldown a stage starts a round at once, then no other before 10 s:
    a gap seen at 3 s and 7 s is woken for once, at exactly 10 s, and starts then."""
    pokes = Pokes()
    clock = StandingClock(pokes)
    clock.watch("r", CONTINUOUS)
    async with trio.open_nursery() as nursery:
        await nursery.start(clock.run)
        assert clock.may_start("r", "map", cooldown=10.0, gap=2)
        await trio.sleep(3)
        assert not clock.may_start("r", "map", cooldown=10.0, gap=1)
        await trio.sleep(4)
        assert not clock.may_start("r", "map", cooldown=10.0, gap=3)
        assert clock.waiting_until("r", "map") == 10.0
        await trio.sleep(5)
        assert pokes.seen == [(10.0, "r")]
        assert clock.may_start("r", "map", cooldown=10.0, gap=3)
        assert clock.last_round("r", "map") == 12.0  # the step came at 12 s here
        assert clock.waiting_until("r", "map") is None
        nursery.cancel_scope.cancel()


async def test_no_gap_no_wakeup(autojump_clock: trio.testing.MockClock) -> None:
    """A stage in its cooldown window with nothing waiting arms no wakeup."""
    pokes = Pokes()
    clock = StandingClock(pokes)
    clock.watch("r", CONTINUOUS)
    async with trio.open_nursery() as nursery:
        await nursery.start(clock.run)
        assert clock.may_start("r", "cal", cooldown=60.0, gap=1)
        assert not clock.may_start("r", "cal", cooldown=60.0, gap=0)
        await trio.sleep(600)
        assert pokes.seen == []
        nursery.cancel_scope.cancel()


async def test_zero_cooldown_starts_every_time(autojump_clock: trio.testing.MockClock) -> None:
    """A "0s" cooldown starts a round whenever there is a gap, at any time."""
    clock = StandingClock(Pokes())
    clock.watch("r", CONTINUOUS)
    assert clock.may_start("r", "cal", cooldown=0.0, gap=1)
    assert clock.may_start("r", "cal", cooldown=0.0, gap=1)


async def test_cron_ticks_at_exact_times(autojump_clock: trio.testing.MockClock) -> None:
    """The cron "*/5 * * * *" pokes and refreshes the request at each five minutes of wall time:
    from 08:00:00 plus 2 s, the ticks come at 298 s, 598 s and 898 s."""
    pokes = Pokes()
    clock = StandingClock(pokes, wall=lambda: EPOCH + 2 + trio.current_time())
    clock.watch("r", Trigger(kind=TriggerKind.CRON, cron="*/5 * * * *"))
    assert clock.refresh_due("r")  # a new standing request looks at once
    assert not clock.refresh_due("r")
    async with trio.open_nursery() as nursery:
        await nursery.start(clock.run)
        assert clock.next_tick("r") == 298.0
        await trio.sleep(900)
        assert pokes.seen == [(298.0, "r"), (598.0, "r"), (898.0, "r")]
        assert clock.refresh_due("r")
        assert clock.ticks == 3
        nursery.cancel_scope.cancel()


async def test_a_forgotten_request_is_not_woken(autojump_clock: trio.testing.MockClock) -> None:
    """After ``forget`` (the request ended), neither its ticks nor its cooldowns fire."""
    pokes = Pokes()
    clock = StandingClock(pokes, wall=lambda: EPOCH + trio.current_time())
    clock.watch("r", Trigger(kind=TriggerKind.CRON, cron="* * * * *"))
    async with trio.open_nursery() as nursery:
        await nursery.start(clock.run)
        assert clock.may_start("r", "map", cooldown=30.0, gap=1)
        assert not clock.may_start("r", "map", cooldown=30.0, gap=1)
        clock.forget("r")
        await trio.sleep(300)
        assert pokes.seen == []
        nursery.cancel_scope.cancel()


async def test_catalog_changes_refresh_continuous_requests_only(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A committed catalog change pokes and refreshes continuous requests; cron ones wait
    for their tick."""
    pokes = Pokes()
    clock = StandingClock(pokes, wall=lambda: EPOCH + trio.current_time())
    clock.watch("c", CONTINUOUS)
    clock.watch("k", Trigger(kind=TriggerKind.CRON, cron="0 3 * * *"))
    assert clock.refresh_due("c") and clock.refresh_due("k")
    clock.catalog_changed()
    assert pokes.seen == [(0.0, "c")]
    assert clock.refresh_due("c")
    assert not clock.refresh_due("k")
    clock.watch("c", CONTINUOUS)  # watching again changes nothing
    assert not clock.refresh_due("c")


async def test_a_window_open_at_a_restart_stays_open(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Watched with the wall time of a stage's last round (7 s ago, cooldown 10 s), the
    window stays open for the 3 s left: a gap waits until exactly then."""
    pokes = Pokes()
    clock = StandingClock(pokes, wall=lambda: EPOCH + trio.current_time())
    clock.watch("r", CONTINUOUS, {"map": EPOCH - 7})
    async with trio.open_nursery() as nursery:
        await nursery.start(clock.run)
        assert not clock.may_start("r", "map", cooldown=10.0, gap=1)
        assert clock.waiting_until("r", "map") == 3.0
        await trio.sleep(5)
        assert pokes.seen == [(3.0, "r")]
        assert clock.may_start("r", "map", cooldown=10.0, gap=1)
        assert clock.may_start("r", "cal", cooldown=10.0, gap=1)  # no round recorded
        nursery.cancel_scope.cancel()
