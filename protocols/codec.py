"""Encode messages to bytes and decode them back, refusing anything malformed.

The wire form is one UTF-8 JSON object: ``{"v": 1, "type": "<name>", ...fields}``.
``bytes`` fields travel as base64 strings. Decoding checks, in order: size, JSON syntax,
the envelope (version, type), then every field's type; the first problem found becomes
a ``DecodeError`` whose message names the path, e.g. ``$.limits.timeout: expected float``.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import cattrs
from cattrs.gen import make_dict_structure_fn

from protocols.errors import DecodeError
from protocols.messages import MAX_MESSAGE_BYTES, MESSAGE_TYPES, PROTOCOL_VERSION, TYPE_NAMES, Message

_converter = cattrs.Converter(forbid_extra_keys=True)


def _structure_bytes(value: Any, _type: Any) -> bytes:
    if not isinstance(value, str):
        raise TypeError("expected a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error as exc:
        raise ValueError("invalid base64") from exc


def _structure_strict(expected: type[Any]) -> Any:
    def structure(value: Any, _type: Any) -> Any:
        # JSON has no int/float/str/bool distinction problems cattrs would paper over by
        # calling int("3"); refuse anything that is not already the right JSON type.
        if expected is float:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError("expected a number")
            return float(value)
        if expected is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise TypeError("expected an integer")
        if expected is str and not isinstance(value, str):
            raise TypeError("expected a string")
        if expected is bool and not isinstance(value, bool):
            raise TypeError("expected true or false")
        return value

    return structure


_converter.register_structure_hook(bytes, _structure_bytes)
_converter.register_unstructure_hook(bytes, lambda b: base64.b64encode(b).decode("ascii"))
for _t in (int, float, str, bool):
    _converter.register_structure_hook(_t, _structure_strict(_t))


def _structure_dict(value: Any, _type: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError("expected an object")
    return value


_converter.register_structure_hook_func(lambda t: t == dict[str, Any], _structure_dict)
for _cls in MESSAGE_TYPES.values():
    _converter.register_structure_hook(_cls, make_dict_structure_fn(_cls, _converter))


def unstructure(message: Message) -> dict[str, Any]:
    """Return the JSON-ready dict of ``message``, envelope included."""
    body: dict[str, Any] = _converter.unstructure(message)
    return {"v": PROTOCOL_VERSION, "type": TYPE_NAMES[type(message)], **body}


def encode(message: Message) -> bytes:
    """Return the wire bytes of ``message``."""
    return json.dumps(unstructure(message), separators=(",", ":")).encode("utf-8")


def structure(obj: Any) -> Message:
    """Build a message from an already parsed JSON value. Raises ``DecodeError``."""
    if not isinstance(obj, dict):
        raise DecodeError("$: expected a JSON object")
    body = dict(obj)
    version = body.pop("v", None)
    if version != PROTOCOL_VERSION:
        raise DecodeError(f"$.v: unsupported protocol version {version!r} (this side speaks {PROTOCOL_VERSION})")
    name = body.pop("type", None)
    cls = MESSAGE_TYPES.get(name) if isinstance(name, str) else None
    if cls is None:
        raise DecodeError(f"$.type: unknown message type {name!r}")
    try:
        message: Message = _converter.structure(body, cls)
    except Exception as exc:  # cattrs raises ClassValidationError / ForbiddenExtraKeysError
        raise DecodeError(f"{name}: {_describe(exc)}") from None
    return message


def decode(data: bytes, *, max_bytes: int = MAX_MESSAGE_BYTES) -> Message:
    """Parse wire bytes into a message. Raises ``DecodeError`` naming the first problem."""
    if len(data) > max_bytes:
        raise DecodeError(f"message of {len(data)} bytes exceeds the limit of {max_bytes}")
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DecodeError(f"not valid JSON: {exc}") from None
    return structure(obj)


def _describe(exc: BaseException) -> str:
    """One line for a cattrs error: the path of the first problem and what was wrong."""
    if isinstance(exc, cattrs.ForbiddenExtraKeysError):
        return f"$: unknown field(s) {', '.join(sorted(exc.extra_fields))}"
    if isinstance(exc, cattrs.BaseValidationError):
        messages = cattrs.transform_error(exc, path="$")
        if messages:
            return messages[0]
    return str(exc) or type(exc).__name__
