"""``python -m agents``: the same as ``wfe agent``."""

from __future__ import annotations

from agents.main import main

raise SystemExit(main())
