"""Report a task that holds the trio loop too long (a blocking call inside a tasklet).

Tasklets are cooperative: a blocking call in one stalls every other. The watchdog is a trio
``Instrument`` that times every task step; a step longer than the threshold is reported with
the task's label (the tasklet and job it was running), as a log line and an event.

The timing reads ``time.perf_counter`` because it measures the real time the loop was held,
which is exactly what the trio clock cannot see (a MockClock does not advance while a step runs).
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable

import attrs
import trio
from trio.lowlevel import Task

log = logging.getLogger("wfe.watchdog")


@attrs.frozen(kw_only=True)
class BlockedReport:
    """One over-long step."""

    label: str
    seconds: float


class Watchdog(trio.abc.Instrument):
    """Times task steps; calls ``on_report`` for every step over ``threshold`` seconds."""

    def __init__(
        self, threshold: float, on_report: Callable[[BlockedReport], None] | None = None
    ) -> None:
        self.threshold = threshold
        self.reports: list[BlockedReport] = []
        self.max_held = 0.0  # the longest step so far, in seconds (garbage collection excluded)
        self._on_report = on_report
        self._labels: dict[Task, str] = {}
        self._started: float | None = None
        self._gc_started = 0.0
        self._gc_seconds = 0.0  # garbage collection during the current step: not the task's doing
        gc.callbacks.append(self.on_gc)

    def close(self) -> None:
        """Stop listening to the garbage collector."""
        if self.on_gc in gc.callbacks:
            gc.callbacks.remove(self.on_gc)

    def on_gc(self, phase: str, info: dict[str, int]) -> None:
        """The ``gc.callbacks`` hook: time spent collecting is not blamed on the task."""
        now = time.perf_counter()  # wall-clock: measures the collection's pause
        if phase == "start":
            self._gc_started = now
        else:
            self._gc_seconds += now - self._gc_started

    def label(self, text: str) -> None:
        """Name the current task in reports (e.g. ``tasklet demo.survey/10_split (job j1)``)."""
        self._labels[trio.lowlevel.current_task()] = text

    def before_task_step(self, task: Task) -> None:
        self._started = time.perf_counter()  # wall-clock: measures real time the loop was held
        self._gc_seconds = 0.0

    def after_task_step(self, task: Task) -> None:
        if self._started is None:  # the step that added this instrument
            return
        held = time.perf_counter() - self._started - self._gc_seconds  # wall-clock
        self._started = None
        if held > self.max_held:
            self.max_held = held
        if held < self.threshold:
            return
        label = self._labels.get(task, task.name)
        report = BlockedReport(label=label, seconds=held)
        self.reports[:] = self.reports[-99:] + [report]
        log.warning(
            "%s held the loop for %.3f s: a blocking call? (use ctx.sleep / trio)", label, held
        )
        if self._on_report is not None:
            self._on_report(report)

    def task_exited(self, task: Task) -> None:
        self._labels.pop(task, None)
