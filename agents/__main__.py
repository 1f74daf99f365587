"""``python -m wfe.agents``: the same as ``wfe agent``."""

from __future__ import annotations

from wfe.agents.main import main

raise SystemExit(main())
