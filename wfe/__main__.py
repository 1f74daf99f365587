"""``python -m wfe``: the ``wfe`` command."""

from __future__ import annotations

from wfe.engine.cli.main import main

raise SystemExit(main())
