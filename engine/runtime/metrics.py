"""Figures recorded at the moment something happens, for ``/metrics`` (wfe.engine.console.metrics).

Most of what ``/metrics`` shows is read at scrape time from statistics the engine keeps
anyway (the controller's, the repository's, the console's) or from the repository. What
can only be seen as it happens lives here: the time from an attempt's dispatch to its
result, recorded by the controller when it commits an attempt's end
(``attempt_ended(controller, machine)``), and the repository's commit latency, observed by
the console's metrics task on each committed batch. Figures are kept per owner (one
controller, one repository), so engines in one process (tests) do not mix.
"""

from __future__ import annotations

import weakref
from typing import Any

from prometheus_client import Histogram

#: Buckets of dispatch→result latency, in seconds: from quick jobs to long ones.
LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
                   3600.0, float("inf"))  # fmt: skip
#: Buckets of repository commit latency, in seconds.
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                  float("inf"))  # fmt: skip


class Recorded:
    """The histograms of one engine (unregistered: the scrape's collector yields them)."""

    def __init__(self) -> None:
        self.dispatch_to_result = Histogram(
            "wfe_attempt_dispatch_to_result_seconds",
            "Seconds from an attempt's dispatch to its end, for attempts ended since the engine"
            " started",
            buckets=LATENCY_BUCKETS,
            registry=None,
        )
        self.commit = Histogram(
            "wfe_repository_commit_seconds",
            "Seconds from the start of a repository transaction to its events reaching"
            " subscribers, for transactions that committed events",
            buckets=COMMIT_BUCKETS,
            registry=None,
        )


_recorded: weakref.WeakKeyDictionary[Any, Recorded] = weakref.WeakKeyDictionary()


def recorded(owner: Any) -> Recorded:
    """The histograms kept for ``owner`` (a controller or a repository), made on first use."""
    found = _recorded.get(owner)
    if found is None:
        found = _recorded[owner] = Recorded()
    return found


def attempt_ended(owner: Any, machine: Any) -> None:
    """Record an attempt's end: ``machine`` is its ``AttemptMachine`` (trio-clock times)."""
    if machine.dispatched_at is not None and machine.ended_at is not None:
        recorded(owner).dispatch_to_result.observe(
            max(0.0, machine.ended_at - machine.dispatched_at)
        )
