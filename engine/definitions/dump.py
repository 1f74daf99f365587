"""Write plain definition data back as TOML (what ``wfe validate`` prints).

``tomllib.loads(dump_toml(data)) == data`` for any JSON-ready ``data`` whose values are
tables, arrays, strings, booleans, integers and finite floats (no null). Within a table,
plain values come first, then sub-tables, then arrays of tables; arrays of tables come out
as ``[[stages]]`` blocks, other arrays and tables inside arrays inline.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def dump_toml(data: Mapping[str, Any]) -> str:
    """The TOML text of ``data``. Raises ``ValueError`` for None or non-finite floats."""
    lines: list[str] = []
    _table(lines, (), data)
    return "\n".join(lines).strip("\n") + "\n"


def _table(lines: list[str], path: tuple[str, ...], table: Mapping[str, Any]) -> None:
    subtables = [(k, v) for k, v in table.items() if isinstance(v, Mapping)]
    arrays = [(k, v) for k, v in table.items() if _is_table_array(v)]
    for key, value in table.items():
        if _plain(value):
            lines.append(f"{_key(key)} = {_value(value)}")
    for key, value in subtables:
        if not value or any(_plain(v) for v in value.values()):
            lines += ["", f"[{_dotted((*path, key))}]"]
        _table(lines, (*path, key), value)
    for key, items in arrays:
        for item in items:
            lines += ["", f"[[{_dotted((*path, key))}]]"]
            _table(lines, (*path, key), item)


def _plain(value: Any) -> bool:
    return not isinstance(value, Mapping) and not _is_table_array(value)


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, Mapping) for v in value)


def _dotted(path: tuple[str, ...]) -> str:
    return ".".join(_key(part) for part in path)


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _string(key)


def _string(text: str) -> str:
    # JSON escapes are TOML escapes; TOML also forbids a raw DEL in basic strings.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"TOML output cannot hold {value}")
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        items = ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items())
        return "{ " + items + " }" if items else "{}"
    raise ValueError(f"TOML output cannot hold {value!r}")
