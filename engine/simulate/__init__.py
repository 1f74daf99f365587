"""Simulated executions (``wfe simulate``): a definition's workflow action on a clock of its own.

``clock.py`` (the virtual scheduler and the real-time clock), ``execution.py`` (what one
execution records as it runs), ``service.py`` (start, wait, show). docs/simulation.md.
"""

from __future__ import annotations
