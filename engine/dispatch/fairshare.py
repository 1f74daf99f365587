"""Fair share: which namespace and user a free slot goes to, when several have work queued.

A job's *share* is its ``(namespace, user)``: a request's namespace and user, ``("", "")`` for
work that is no request's. A share's weight is its namespace's weight times its user's
(``[fair_share]`` in wfe.toml; 1 when not named). Its *usage* is the slots its attempts hold
now plus the average they held over the recent past: an exponential moving average with the
time constant ``window`` (the sliding window; Slurm's fair share decays usage likewise). A
free slot goes to the share whose usage per weight is least; within a share, priority then age
decides, as without fair share. So two shares with work queued get slots in proportion to their
weights whatever their backlogs, and a share that has had many slots lately waits its turn.

Pure: time enters as ``now`` (trio's clock in the engine, a ``MockClock`` in tests).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator, Mapping

import attrs

Share = tuple[str, str]  # (namespace, user)
NO_SHARE: Share = ("", "")


@attrs.define
class _Use:
    running: float = 0.0  # slots held now
    average: float = 0.0  # slots held, on average over the window, at ``at``
    at: float = 0.0


@attrs.define
class FairShare:
    """Weights, and the usage of every share, updated as attempts start and end."""

    window: float = 600.0
    namespaces: Mapping[str, float] = attrs.Factory(dict)
    users: Mapping[str, float] = attrs.Factory(dict)
    _use: dict[Share, _Use] = attrs.Factory(dict)

    def weight(self, share: Share) -> float:
        namespace, user = share
        return self.namespaces.get(namespace, 1.0) * self.users.get(user, 1.0)

    def _advance(self, share: Share, now: float) -> _Use:
        use = self._use.setdefault(share, _Use(at=now))
        if now > use.at:
            keep = math.exp(-(now - use.at) / self.window)
            use.average = use.running + (use.average - use.running) * keep
            use.at = now
        return use

    def started(self, share: Share, slots: float, now: float) -> None:
        """An attempt of ``share`` took ``slots`` at ``now``."""
        self._advance(share, now).running += slots

    def ended(self, share: Share, slots: float, now: float) -> None:
        """An attempt of ``share`` gave back ``slots`` at ``now``."""
        use = self._advance(share, now)
        use.running = max(0.0, use.running - slots)

    def usage(self, share: Share, now: float) -> float:
        """Slots ``share`` holds now plus what it held on average lately."""
        use = self._advance(share, now)
        return use.running + use.average

    def running(self, share: Share) -> float:
        use = self._use.get(share)
        return 0.0 if use is None else use.running

    def turns(self, shares: Iterator[Share] | list[Share], now: float) -> Turns:
        """The order in which ``shares`` (those with work queued) take slots from now on."""
        return Turns(self, list(shares), now)


class Turns:
    """Hands out turns: ``next()`` is the share whose usage per weight is least, counting the
    slots already given in these turns (``took``), so one round does not give every free
    slot to one share."""

    def __init__(self, fair: FairShare, shares: list[Share], now: float) -> None:
        self._fair = fair
        # the key is the usage per weight half a slot on (Sainte-Lague): shares of any weights
        # stay within a slot of their portion, where "least usage first" lets a heavy share
        # fall behind by more
        self._heap = [((fair.usage(s, now) + 0.5) / fair.weight(s), s) for s in set(shares)]
        heapq.heapify(self._heap)
        self._given: dict[Share, float] = {}
        self._now = now

    def __bool__(self) -> bool:
        return bool(self._heap)

    def next(self) -> Share:
        """The share whose turn it is (raises ``IndexError`` when none is left)."""
        return self._heap[0][1]

    def took(self, share: Share, slots: float) -> None:
        """``share`` took a job of ``slots`` in this turn: its next turn comes later."""
        self._given[share] = self._given.get(share, 0.0) + slots
        fair = self._fair
        key = (fair.usage(share, self._now) + self._given[share] + 0.5) / fair.weight(share)
        heapq.heapreplace(self._heap, (key, share))

    def drop(self, share: Share) -> None:
        """``share`` has nothing more to offer in these turns."""
        self._heap = [(k, s) for k, s in self._heap if s != share]
        heapq.heapify(self._heap)
