"""A pilot agent's lifetime (agents/lifetime.py): when it stops taking work and leaves, on
trio's clock (``MockClock(autojump_threshold=0)``), against a stand-in for the agent that
records what it was told and when."""

from __future__ import annotations

import functools
from typing import Any

import attrs
import pytest
import trio

from wfe.agents.lifetime import Lifetime, Step, watch_lifetime


@attrs.define
class Entry:
    done: trio.Event = attrs.Factory(trio.Event)


@attrs.define
class Keeper:
    """Ends every running attempt when its lease is ended, as the real keeper's kill does."""

    host: Host | None = None
    leases: list[float] = attrs.Factory(list)

    async def lease(self, until: float) -> None:
        self.leases.append(trio.current_time())
        assert self.host is not None
        for entry in self.host.running.values():
            entry.done.set()


@attrs.define
class Host:
    running: dict[str, Entry] = attrs.Factory(dict)
    results: tuple[str, ...] = ()
    stopping: bool = False
    keeper: Keeper = attrs.Factory(Keeper)

    def held(self) -> tuple[str, ...]:
        return self.results


@attrs.define
class Agent:
    """What watch_lifetime uses of ``wfe.agents.core.Agent``."""

    host: Host = attrs.Factory(Host)
    forward_leases: bool = True
    stopped_at: float | None = None
    announced_at: float | None = None

    def __attrs_post_init__(self) -> None:
        self.host.keeper.host = self.host

    def stop(self) -> None:
        self.stopped_at = trio.current_time()

    async def announce_no_slots(self) -> None:
        self.announced_at = trio.current_time()


async def busy(agent: Agent, start: float, end: float, *, held: bool = False) -> None:
    """Run one attempt from ``start`` to ``end`` (or hold its result then, with ``held``)."""
    await trio.sleep_until(start)
    if held:
        agent.host.results = ("result",)
    else:
        agent.host.running["a"] = Entry()
    await trio.sleep_until(end)
    agent.host.results = ()
    agent.host.running.pop("a", None)


async def live(agent: Any, lifetime: Lifetime, *work: tuple[float, float, bool]) -> None:
    async with trio.open_nursery() as nursery:
        for start, end, held in work:
            nursery.start_soon(functools.partial(busy, agent, start, end, held=held))
        await watch_lifetime(agent, lifetime)
        nursery.cancel_scope.cancel()


async def test_an_idle_agent_leaves_after_idle_exit(autojump_clock: trio.abc.Clock) -> None:
    """With nothing to do, the agent leaves idle_exit seconds after it started."""
    agent = Agent()
    await live(agent, Lifetime(idle_exit=5))
    assert agent.stopped_at == 5.0 and agent.announced_at is None


async def test_work_and_held_results_restart_the_idle_clock(
    autojump_clock: trio.abc.Clock,
) -> None:
    """An attempt running (2 to 7.2 s), then a result the engine has not acknowledged
    (9.1 to 11.2 s), keep the agent: it leaves idle_exit after the last of them, as seen
    at its next look (every 0.5 s)."""
    agent = Agent()
    await live(agent, Lifetime(idle_exit=5), (2, 7.2, False), (9.1, 11.2, True))
    assert agent.stopped_at == 11.5 + 5


async def test_near_its_walltime_an_agent_drains_then_leaves_when_its_work_ends(
    autojump_clock: trio.abc.Clock,
) -> None:
    """From walltime - drain (10% of it) the agent offers no slot and refuses work; when
    its attempt ends it leaves at once, handing nothing back."""
    agent = Agent()
    await live(agent, Lifetime(walltime=1000), (0, 950.2, False))
    assert agent.announced_at == 900.0 and agent.host.stopping
    assert agent.stopped_at == 950.5
    assert agent.host.keeper.leases == [] and agent.forward_leases


async def test_what_still_runs_at_walltime_minus_hand_back_is_handed_back(
    autojump_clock: trio.abc.Clock,
) -> None:
    """An attempt still running hand_back seconds before the wall time has its lease ended
    (the keeper kills it; it is reported fenced) and no lease is forwarded any more; the
    agent leaves once it has ended."""
    agent = Agent()
    await live(agent, Lifetime(walltime=1000, idle_exit=60), (10, 5000, False))
    assert agent.announced_at == 900.0
    assert agent.host.keeper.leases == [970.0] and not agent.forward_leases
    assert agent.stopped_at == 970.0


@pytest.mark.parametrize(
    ("elapsed", "idle_for", "step"),
    [
        (0, 0, Step.RUN),
        (59.9, 59.9, Step.RUN),
        (60, 60, Step.LEAVE),
        (500, None, Step.RUN),
        (3599 - 360, None, Step.RUN),
        (3600 - 360, None, Step.DRAIN),
        (3600 - 360, 0, Step.LEAVE),
        (3600 - 30, None, Step.HAND_BACK),
        (3600 - 30, 1, Step.LEAVE),
    ],
)
def test_the_steps_of_a_pilots_life(elapsed: float, idle_for: float | None, step: Step) -> None:
    """An hour of wall time: drain from 6 minutes before its end (10%), hand back 30 s
    before; idle for idle_exit (60 s) or idle while draining is leaving."""
    assert Lifetime(idle_exit=60, walltime=3600).step(elapsed=elapsed, idle_for=idle_for) is step


def test_a_walltime_too_short_to_work_is_refused() -> None:
    """A wall time within its own margins, or a limit that is not positive, is refused in
    one line."""
    with pytest.raises(ValueError, match=r"walltime 30 s leaves no time to work"):
        Lifetime(walltime=30)
    with pytest.raises(ValueError, match="idle-exit must be a positive number of seconds"):
        Lifetime(idle_exit=0)
