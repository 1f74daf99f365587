"""A short-lived agent's life: leave when idle, and leave before the wall time ends.

A pilot (``wfe pilots``) runs ``wfe agent --idle-exit SECONDS --walltime SECONDS`` as a batch
job. ``Lifetime`` is the pure decision; ``watch_lifetime`` drives it on trio's clock against
an ``Agent``.

Theory of operation
-------------------
The agent is *busy* while it runs an attempt or holds a result the engine has not
acknowledged (leaving then would lose the result). Times count from the agent's start.

* **Idle exit**: not busy for ``idle_exit`` seconds in a row: the agent leaves.
* **Drain** from ``walltime - drain``: the agent takes no new work. It announces itself again
  with no free slot (a new ``AgentHello`` whose capabilities offer 0 slots: the engine sends
  it nothing more and reattaches what it runs), refuses any dispatch that crossed that on the
  wire, lets what runs finish, and leaves as soon as it is not busy.
* **Hand back** at ``walltime - hand_back``: what still runs is handed back: the agent stops
  forwarding the engine's lease and ends it at once in its keeper, which kills the scripts and
  reports them ``fenced``; the engine takes that as a loss and dispatches the attempts again
  at once, to another agent. Once the reports are sent (or ``hand_back`` seconds later), the
  agent leaves, before the batch system's own kill.

Leaving is ``Agent.stop()``: the agent's process exits 0, so the batch job ends COMPLETED.
"""

from __future__ import annotations

import enum
import logging
import math
import time
from typing import TYPE_CHECKING

import attrs
import trio

if TYPE_CHECKING:
    from wfe.agents.core import Agent

log = logging.getLogger("wfe.agent")

#: Seconds before the wall time at which what still runs is handed back (then the agent leaves).
HAND_BACK = 30.0
#: The drain, when not given: this share of the wall time, at most ``MAX_DRAIN`` seconds.
DRAIN_SHARE = 0.1
MAX_DRAIN = 600.0
#: Seconds between looks at whether the agent is busy.
CHECK_EVERY = 0.5


class Step(enum.Enum):
    """What the agent should do now."""

    RUN = "run"  # go on
    DRAIN = "drain"  # take no new work; finish what runs
    HAND_BACK = "hand_back"  # give back what still runs, then leave
    LEAVE = "leave"  # nothing runs: exit now


@attrs.frozen(kw_only=True)
class Lifetime:
    """When a short-lived agent stops taking work and leaves (see the module docstring).

    ``idle_exit`` and ``walltime`` are seconds, None for no limit. Raises ``ValueError`` for
    a limit that is not a positive finite number, or a wall time too short for its margins.
    """

    idle_exit: float | None = None
    walltime: float | None = None
    drain: float | None = None  # default: DRAIN_SHARE of the wall time, at most MAX_DRAIN
    hand_back: float = HAND_BACK

    def __attrs_post_init__(self) -> None:
        for name in ("idle_exit", "walltime", "drain", "hand_back"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name.replace('_', '-')} must be a positive number of seconds")
        if self.walltime is not None and self.walltime <= self.drain_seconds:
            raise ValueError(
                f"walltime {self.walltime:g} s leaves no time to work: it must be more than"
                f" the drain ({self.drain_seconds:g} s)"
            )

    @property
    def drain_seconds(self) -> float:
        """Seconds before the wall time from which no new work is taken."""
        if self.walltime is None:
            return 0.0
        if self.drain is not None:
            return max(self.drain, self.hand_back)
        return max(min(DRAIN_SHARE * self.walltime, MAX_DRAIN), self.hand_back)

    def step(self, *, elapsed: float, idle_for: float | None) -> Step:
        """What to do ``elapsed`` seconds after the start; ``idle_for`` is how long the agent
        has not been busy (None while it is busy)."""
        busy = idle_for is None
        if self.walltime is not None:
            if elapsed >= self.walltime - self.hand_back:
                return Step.HAND_BACK if busy else Step.LEAVE
            if elapsed >= self.walltime - self.drain_seconds:
                return Step.DRAIN if busy else Step.LEAVE
        if idle_for is not None and self.idle_exit is not None and idle_for >= self.idle_exit:
            return Step.LEAVE
        return Step.RUN

    def next_change(self, *, elapsed: float, idle_for: float | None) -> float:
        """Seconds from now until ``step`` may answer differently with the agent as it is."""
        times = []
        if self.walltime is not None:
            times += [self.walltime - self.drain_seconds, self.walltime - self.hand_back]
        if idle_for is not None and self.idle_exit is not None:
            times.append(elapsed + self.idle_exit - idle_for)
        ahead = [t - elapsed for t in times if t > elapsed]
        return min(ahead, default=math.inf)


def _busy(agent: Agent) -> bool:
    return bool(agent.host.running) or bool(agent.host.held())


async def watch_lifetime(agent: Agent, lifetime: Lifetime) -> None:
    """Apply ``lifetime`` to ``agent`` until it leaves (``agent.stop()``); start it as the
    agent starts. Looks at whether the agent is busy every ``CHECK_EVERY`` seconds."""
    started = trio.current_time()
    idle_since: float | None = started
    draining = handed_back = False
    while True:
        now = trio.current_time()
        if _busy(agent):
            idle_since = None
        elif idle_since is None:
            idle_since = now
        idle_for = None if idle_since is None else now - idle_since
        step = lifetime.step(elapsed=now - started, idle_for=idle_for)
        if step is Step.LEAVE:
            why = "its wall time ends soon" if draining else f"idle for {idle_for or 0:.0f} s"
            log.info("leaving: %s", why)
            agent.stop()
            return
        if step in (Step.DRAIN, Step.HAND_BACK) and not draining:
            draining = True
            log.info("the wall time ends in %.0f s: taking no new work", lifetime.drain_seconds)
            agent.host.stopping = True
            await agent.announce_no_slots()
        if step is Step.HAND_BACK and not handed_back:
            handed_back = True
            log.warning(
                "the wall time ends in %.0f s: handing back %d running attempt(s)",
                lifetime.hand_back,
                len(agent.host.running),
            )
            await hand_back(agent)
            with trio.move_on_after(lifetime.hand_back / 2):
                for entry in list(agent.host.running.values()):
                    await entry.done.wait()  # reported fenced (sent while the link is up)
            log.info("leaving: the wall time ends soon")
            agent.stop()
            return
        wait = lifetime.next_change(elapsed=now - started, idle_for=idle_for)
        await trio.sleep(min(wait, CHECK_EVERY))


async def hand_back(agent: Agent) -> None:
    """End the lease of what ``agent`` runs now: its keeper kills the scripts and they are
    reported ``fenced`` (a loss the engine re-dispatches at once)."""
    agent.forward_leases = False
    keeper = agent.host.keeper
    if keeper is not None:
        with trio.CancelScope(shield=True):
            try:
                await keeper.lease(time.monotonic())  # wall-clock: the keeper's clock
            except OSError as exc:
                log.error("could not end the lease in the keeper: %s", exc)
