"""The one place the engine reads wall-clock time: for the timestamps it records.

Logic (deadlines, timeouts, backoff) uses ``trio.current_time()`` so that tests can run on
a ``MockClock``; only records shown to people carry wall-clock time.
"""

from __future__ import annotations

import time


def wall_now() -> float:
    """Seconds since the epoch, for records only."""
    return time.time()  # wall-clock
