"""The types the repository's functions take and return, in one place.

``JsonValue`` is what a JSON column or event holds once decoded; ``JsonObject`` a decoded
object (job params, results, metadata). ``Db`` is what a function that only reads accepts:
the writer's ``Tx`` inside a write op, or a reader's connection inside ``Repository.read``.
"""

from __future__ import annotations

import sqlite3
from typing import Any, TypeAlias

from wfe.engine.repository.writer import Tx

JsonValue: TypeAlias = "None | bool | int | float | str | list[JsonValue] | dict[str, JsonValue]"
JsonObject: TypeAlias = "dict[str, JsonValue]"

#: One row as sqlite3 returns it: untyped until a ``*_from_row`` function decodes it.
Row: TypeAlias = tuple[Any, ...]

#: A reader's connection (``Repository.read(fn)`` calls ``fn(conn)``).
Conn: TypeAlias = sqlite3.Connection

#: Either side: a read that also runs inside write ops takes this.
Db: TypeAlias = "Tx | sqlite3.Connection"

__all__ = ["Conn", "Db", "JsonObject", "JsonValue", "Row", "Tx"]
