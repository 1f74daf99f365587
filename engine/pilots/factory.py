"""How many pilots to submit or cancel: a pure decision, tested with hypothesis.

Each round the factory knows, per ``Need`` (a set of job requirements), how many queued jobs
no connected agent has a slot for (``demand``), and how many of its pilots for that need have
not joined the engine yet (``Waiting``: still queued in the batch system, or started and not
yet connected). It wants just enough pilots on the way to take the demand:
``needed = ceil(demand / jobs per pilot)``.

* Fewer on the way than needed: submit the difference, while the number of live pilots (every
  pilot submitted and not ended, joined or not) stays at most ``max_pilots``. When the room
  is short, the needs take turns, one pilot at a time, the largest shortfall first, so no need
  starves while another gets several.
* More on the way than needed: cancel the surplus among those still queued in the batch
  system (a pilot that started is never cancelled: it ends by itself when idle).
* A need this factory cannot serve (another site, a tag it does not offer, too big) gets a
  reason instead, and nothing is submitted for it.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from wfe.engine.pilots.model import Limits, Need, Shape, shape_for


@attrs.frozen(kw_only=True)
class Waiting:
    """A need's pilots that have not joined the engine yet."""

    queued: int = 0  # still waiting in the batch system (may be cancelled)
    starting: int = 0  # running in the batch system, agent not connected yet

    @property
    def total(self) -> int:
        return self.queued + self.starting


@attrs.frozen(kw_only=True)
class Plan:
    """What to do this round."""

    submit: dict[Need, int] = attrs.Factory(dict)  # pilots to submit per need (> 0)
    cancel: dict[Need, int] = attrs.Factory(dict)  # queued pilots to cancel per need (> 0)
    shapes: dict[Need, Shape] = attrs.Factory(dict)  # the pilot for each need served
    refused: dict[Need, str] = attrs.Factory(dict)  # needs this factory cannot serve, and why

    @property
    def submitted(self) -> int:
        return sum(self.submit.values())


def needed(demand: int, shape: Shape, need: Need) -> int:
    """Pilots that take ``demand`` jobs of ``need`` at once."""
    per_pilot = shape.jobs(need)
    return -(-demand // per_pilot) if demand > 0 else 0


def plan(
    demand: Mapping[Need, int],
    waiting: Mapping[Need, Waiting],
    *,
    live: int,
    limits: Limits,
) -> Plan:
    """Decide this round's submissions and cancellations (see the module docstring).

    ``live`` counts every pilot of this factory not ended yet (including those in
    ``waiting``). Needs in ``waiting`` but not in ``demand`` have a demand of 0.
    """
    result = Plan()
    shortfall: dict[Need, int] = {}
    for need in sorted(set(demand) | set(waiting), key=lambda n: n.sort_key):
        jobs = max(0, demand.get(need, 0))
        on_the_way = waiting.get(need, Waiting())
        shape = shape_for(need, limits)
        if isinstance(shape, str):
            if jobs:
                result.refused[need] = shape
            if on_the_way.queued:  # the factory's limits changed since: nothing to wait for
                result.cancel[need] = on_the_way.queued
            continue
        result.shapes[need] = shape
        want = needed(jobs, shape, need)
        if want > on_the_way.total:
            shortfall[need] = want - on_the_way.total
        elif want < on_the_way.total and on_the_way.queued:
            result.cancel[need] = min(on_the_way.queued, on_the_way.total - want)
    room = max(0, limits.max_pilots - live)
    while room and shortfall:
        for need in sorted(shortfall, key=lambda n: (-shortfall[n], n.sort_key)):
            if not room:
                break
            result.submit[need] = result.submit.get(need, 0) + 1
            room -= 1
            shortfall[need] -= 1
            if not shortfall[need]:
                del shortfall[need]
    return result
