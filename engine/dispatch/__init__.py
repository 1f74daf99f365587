"""Dispatch: the agent controller (``controller``) and its parts: the pure decisions
(``policy``, ``scheduler``), the job queue, the agent registry, timers, dispatch rounds,
what agents say (``inbox``), the ends of attempts (``ends``, ``output_fill``) and restart
recovery. Their SQL is in ``wfe.engine.repository.attempts``."""

from __future__ import annotations
