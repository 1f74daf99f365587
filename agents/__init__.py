"""The wfe agent: runs RScripts as child processes on a worker host. Never imports ``engine``."""

from __future__ import annotations

__version__ = "0.1.0"
