"""Development and test tooling, never started by the engine: a private Prosody."""

from __future__ import annotations
