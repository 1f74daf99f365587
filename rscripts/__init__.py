"""RScripts shipped with wfe, and the loader that reads and validates their headers."""

from __future__ import annotations
