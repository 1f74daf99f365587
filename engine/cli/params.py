"""``wfe run -p NAME=VALUE``: each value converted to the type its action or RScript declares.

``wfe submit -p`` already converts to the request's declared types (in the engine); this does
the same for ``wfe run``, from the declaration the ``actions`` / ``rscripts`` ops list. So
``-p message=42`` is the string ``"42"`` for a ``str`` parameter and the number 42 for an
``int`` one. For an action that declares no parameters a value is taken as JSON when it
parses, else as text (the old behaviour). Errors are one line naming the parameter.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from wfe.engine.errors import EngineError

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_PHRASES = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "list": "a JSON array",
    "dict": "a JSON object",
}


class ParamValueError(EngineError, ValueError):
    """A ``-p`` value that does not convert to its declared type, or an unknown name."""


def split_pairs(pairs: Sequence[str]) -> list[tuple[str, str]]:
    """``["k=v", ...]`` into ``[(k, v), ...]``. Raises ``ParamValueError`` for a bad item."""
    out = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ParamValueError(f"bad --param {pair!r}: expected NAME=VALUE")
        out.append((key.strip(), value))
    return out


def guess(value: str) -> Any:
    """A value with no declared type: JSON when it parses as finite JSON, else the text."""
    try:
        parsed = _loads(value)
    except ValueError:
        return value
    return parsed


def _loads(text: str) -> Any:
    """Strict JSON: no NaN, no Infinity, no number too big for a float."""
    return json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is not a finite number")
    return value


def convert(name: str, value: str, kind: str) -> Any:
    """``value`` (text from the command line) as the declared ``kind`` (an RScript or action
    parameter type: str, path, int, float, bool, list, dict). Raises ``ParamValueError``."""
    if kind in ("str", "path"):
        return value
    text = value.strip()
    bad = ParamValueError(f"parameter {name!r}: {value!r} is not {_PHRASES.get(kind, kind)}")
    if kind == "bool":
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise bad
    if kind == "int":
        try:
            return int(text)
        except ValueError:
            raise bad from None
    if kind == "float":
        try:
            number = float(text)
        except ValueError:
            raise bad from None
        if not math.isfinite(number):
            raise ParamValueError(f"parameter {name!r}: {value!r} is not a finite number")
        return number
    if kind in ("list", "dict"):
        try:
            parsed = _loads(text)
        except ValueError:
            raise bad from None
        if not isinstance(parsed, list if kind == "list" else dict):
            raise bad
        return parsed
    raise ParamValueError(f"parameter {name!r}: unknown declared type {kind!r}")


def typed_params(
    pairs: Sequence[str], declared: Sequence[Mapping[str, Any]], *, target: str
) -> dict[str, Any]:
    """The ``-p`` pairs converted by the declaration (``[{"name", "type"}, ...]``) of
    ``target`` (named in errors). With no declaration every value is guessed (``guess``).
    Raises ``ParamValueError`` for a bad pair, an undeclared name or a value that does not
    convert."""
    types = {str(d["name"]): str(d["type"]) for d in declared}
    params: dict[str, Any] = {}
    for key, value in split_pairs(pairs):
        if not types:
            params[key] = guess(value)
            continue
        if key not in types:
            known = ", ".join(sorted(types))
            raise ParamValueError(f"{target}: unknown parameter {key!r} (known: {known})")
        params[key] = convert(key, value, types[key])
    return params
