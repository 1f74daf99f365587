"""The wfe engine: tasklet scheduler, repository writer, agent controller, console, CLI."""

from __future__ import annotations

__version__ = "0.1.0"
