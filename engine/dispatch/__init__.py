"""Dispatch: the agent controller, its scheduler, attempts and restart recovery."""

from __future__ import annotations
