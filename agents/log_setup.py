"""Logging for ``wfe engine`` and ``wfe agent``: ``--log-format text|json`` and ``--log-file``.

Text is one line per record for people. JSON is one object per line for log collectors:
``time`` (ISO 8601, UTC, with its zone), ``level``, ``logger``, ``message``, then whatever the
record carries in ``extra`` (``job``, ``attempt``, ``agent``, ``request``...) and the fields
the process adds to every line (an agent adds its name). Formatting is python-json-logger's.

It lives in ``agents/`` because both processes use it and ``agents/`` never imports
``engine/`` (the engine reuses it, as it reuses the agent's stream framing).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pythonjsonlogger.json import JsonFormatter

FORMATS = ("text", "json")
TEXT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def json_formatter(static: Mapping[str, Any] | None = None) -> logging.Formatter:
    """The JSON line formatter (``static`` fields are added to every line)."""
    return JsonFormatter(
        "{levelname}{name}{message}",
        style="{",
        timestamp="time",
        rename_fields={"levelname": "level", "name": "logger"},
        static_fields=dict(static or {}),
    )


def configure_logging(
    *,
    level: int | str = logging.INFO,
    log_format: str = "text",
    log_file: Path | None = None,
    text_format: str = TEXT,
    static: Mapping[str, Any] | None = None,
    logger: str = "wfe",
) -> logging.Handler:
    """Send the ``logger`` tree's records to ``log_file`` (appended; stderr when None) in
    ``log_format``; return the handler. Raises ``ValueError`` for an unknown format and
    ``OSError`` when the file can't be opened (nothing is changed then)."""
    if log_format not in FORMATS:
        raise ValueError(f"--log-format: {log_format!r} is not one of {', '.join(FORMATS)}")
    handler: logging.Handler
    if log_file is None:
        handler = logging.StreamHandler(sys.stderr)
    else:
        handler = logging.FileHandler(log_file, encoding="utf-8")
    if log_format == "json":
        handler.setFormatter(json_formatter(static))
    else:
        handler.setFormatter(logging.Formatter(text_format))
    root = logging.getLogger(logger)
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    return handler
