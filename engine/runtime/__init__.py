"""The engine process: the daemon's root nursery, tasklets and actions, jobs, the watchdog."""

from __future__ import annotations
