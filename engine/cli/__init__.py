"""The ``wfe`` command line and its console client."""

from __future__ import annotations
