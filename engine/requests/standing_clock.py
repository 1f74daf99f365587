"""The task that wakes standing requests: at cron ticks and when a stage's cooldown ends.

``StandingClock`` keeps, in memory, what the requests service needs to drive standing
requests in time: for each request its trigger, whether its finder should run again
(``refresh_due``), and for each stage when its last round started. It never touches the
repository; it calls ``poke(rid)`` and the service takes the step. What it keeps is
rebuilt as the service steps each live request after an engine start: the last round of
each stage from its recorded ``request.batch`` events (wall clock), so a cooldown window
open at a restart stays open for what is left of it.

Time: rounds and cooldowns run on ``trio.current_time()``; cron expressions are wall
clock, so a tick is armed ``next_tick(expr, wall()) - wall()`` seconds from now and armed
again from the tick itself (tests pass ``wall`` tied to the trio clock).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable, Mapping

import trio

from wfe.engine.definitions import Trigger, TriggerKind, next_tick
from wfe.engine.requests.standing import next_round
from wfe.engine.runtime.clock import wall_now


class StandingClock:
    """Cron ticks, cooldown windows and refresh flags of standing requests."""

    def __init__(self, poke: Callable[[str], None], *, wall: Callable[[], float] = wall_now):
        self._poke = poke
        self._wall = wall
        self._triggers: dict[str, Trigger] = {}
        self._refresh: set[str] = set()
        self._last: dict[tuple[str, str], float] = {}  # (rid, stage) -> last round's start
        self._waiting: dict[tuple[str, str], float] = {}  # (rid, stage) -> cooldown's end
        self._ticks: dict[str, float] = {}  # rid -> next cron tick (trio time)
        self._tick_walls: dict[str, float] = {}  # rid -> next cron tick (wall clock)
        self._heap: list[tuple[float, int, str, str]] = []  # (at, seq, rid, stage or "")
        self._seq = itertools.count()
        self._changed = trio.Event()
        self.ticks = 0

    # --- what the service tells it ---------------------------------------------------------

    def watching(self, rid: str) -> bool:
        """Whether ``rid`` is followed already."""
        return rid in self._triggers

    def watch(
        self, rid: str, trigger: Trigger, last_rounds: Mapping[str, float] | None = None
    ) -> None:
        """Follow standing request ``rid`` (idempotent). A new one refreshes at once.
        ``last_rounds`` (stage -> wall-clock time its last round started, as recorded)
        carries cooldown windows over an engine restart."""
        if rid in self._triggers or not trigger.standing:
            return
        self._triggers[rid] = trigger
        self._refresh.add(rid)
        now, wall = trio.current_time(), self._wall()
        for stage, at in (last_rounds or {}).items():
            self._last[(rid, stage)] = now - max(0.0, wall - at)
        if trigger.kind is TriggerKind.CRON:
            self._arm_tick(rid, trio.current_time(), self._wall())

    def forget(self, rid: str) -> None:
        """Stop following ``rid`` (it ended)."""
        self._triggers.pop(rid, None)
        self._refresh.discard(rid)
        self._ticks.pop(rid, None)
        self._tick_walls.pop(rid, None)
        for key in [k for k in self._last if k[0] == rid]:
            del self._last[key]
        for key in [k for k in self._waiting if k[0] == rid]:
            del self._waiting[key]

    def catalog_changed(self) -> None:
        """Catalog entries were added or changed (committed): every continuous request
        looks at its query again."""
        for rid, trigger in self._triggers.items():
            if trigger.kind is TriggerKind.CONTINUOUS:
                self._refresh.add(rid)
                self._poke(rid)

    def refresh_due(self, rid: str) -> bool:
        """Whether ``rid`` should run its finder now (and clear the flag)."""
        if rid in self._refresh:
            self._refresh.discard(rid)
            return True
        return False

    def may_start(self, rid: str, stage: str, *, cooldown: float, gap: int) -> bool:
        """Whether stage ``stage`` of ``rid`` starts a round for its ``gap`` now; if so the
        round is counted from now, else (a gap in a cooldown window) a wakeup is armed for
        the window's end."""
        now = trio.current_time()
        key = (rid, stage)
        decision = next_round(gap=gap, last_round=self._last.get(key), cooldown=cooldown, now=now)
        if decision.start:
            self._last[key] = now
            self._waiting.pop(key, None)
            return True
        if decision.wake_at is not None and self._waiting.get(key) != decision.wake_at:
            self._waiting[key] = decision.wake_at
            self._push(decision.wake_at, rid, stage)
        return False

    # --- what consoles show ----------------------------------------------------------------

    def last_round(self, rid: str, stage: str) -> float | None:
        """Trio time the stage's last round started, if any since the engine started."""
        return self._last.get((rid, stage))

    def waiting_until(self, rid: str, stage: str) -> float | None:
        """Trio time the stage's cooldown ends while it has a gap waiting, else None."""
        return self._waiting.get((rid, stage))

    def next_tick(self, rid: str) -> float | None:
        """Trio time of ``rid``'s next cron tick, if it has a cron trigger."""
        return self._ticks.get(rid)

    # --- the task --------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Fire wakeups at their times until cancelled."""
        task_status.started()
        while True:
            at = self._heap[0][0] if self._heap else math.inf
            with trio.move_on_at(at):
                await self._changed.wait()
            self._changed = trio.Event()
            self._fire(trio.current_time())

    def _fire(self, now: float) -> None:
        while self._heap and self._heap[0][0] <= now:
            at, _, rid, stage = heapq.heappop(self._heap)
            if rid not in self._triggers:
                continue
            if stage:
                if self._waiting.get((rid, stage)) == at:
                    self._poke(rid)  # may_start records the round and clears the wait
            elif self._ticks.get(rid) == at:
                self.ticks += 1
                self._refresh.add(rid)
                self._poke(rid)
                # From the tick itself: a wall clock a little behind must not fire it twice.
                self._arm_tick(rid, at, max(self._wall(), self._tick_walls[rid]))

    def _arm_tick(self, rid: str, now: float, wall: float) -> None:
        trigger = self._triggers[rid]
        assert trigger.cron is not None
        tick = next_tick(trigger.cron, wall)
        at = now + (tick - wall)
        self._ticks[rid] = at
        self._tick_walls[rid] = tick
        self._push(at, rid, "")

    def _push(self, at: float, rid: str, stage: str) -> None:
        heapq.heappush(self._heap, (at, next(self._seq), rid, stage))
        self._changed.set()
