"""Encode messages to bytes and decode them back, refusing anything malformed.

The wire form is one UTF-8 JSON object: ``{"v": 1, "type": "<name>", ...fields}``.
``bytes`` fields travel as base64 strings. Decoding checks, in order: size, JSON syntax,
the envelope (version, type), then every field's type; the first problem found becomes
a ``DecodeError`` whose message names the message type and the path, e.g.
``dispatch: $.limits.timeout: expected a number``. Only strict JSON is spoken: ``NaN`` and
``Infinity`` are refused both ways (a NaN timeout would never expire), and a list field
must be a JSON array (a string is not taken as a list of characters).
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import math
from collections.abc import Callable
from typing import Any, get_args, get_origin

import attrs
import cattrs
from cattrs.cols import homogenous_tuple_structure_factory
from cattrs.gen import make_dict_structure_fn

from wfe.protocols.errors import DecodeError
from wfe.protocols.messages import (
    MAX_MESSAGE_BYTES,
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
    TYPE_NAMES,
    Message,
)

_converter = cattrs.Converter(forbid_extra_keys=True)


def _structure_bytes(value: Any, _type: Any) -> bytes:
    if not isinstance(value, str):
        raise TypeError("expected a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error as exc:
        raise ValueError("invalid base64") from exc


def strict_scalar(expected: type[Any]) -> Any:
    """A cattrs structure hook accepting only a value already of ``expected`` (no coercion)."""

    def structure(value: Any, _type: Any) -> Any:
        # JSON has no int/float/str/bool distinction problems cattrs would paper over by
        # calling int("3"); refuse anything that is not already the right JSON type.
        if expected is float:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError("expected a number")
            if not math.isfinite(value):
                raise ValueError("expected a finite number")
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


def _structure_dict(value: Any, _type: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError("expected an object")
    return value


def _require(
    kind: type[Any], what: str, inner: Callable[[Any, Any], Any]
) -> Callable[[Any, Any], Any]:
    """Wrap a cattrs hook so that it first checks the JSON type of the value."""

    def structure(value: Any, type_: Any) -> Any:
        if not isinstance(value, kind):
            raise TypeError(f"expected {what}")
        return inner(value, type_)

    return structure


def _is_homogeneous_tuple(type_: Any) -> bool:
    args = get_args(type_)
    return get_origin(type_) is tuple and len(args) == 2 and args[1] is Ellipsis


def strict_hooks(converter: cattrs.Converter) -> cattrs.Converter:
    """Make ``converter`` take only values already of the right JSON (or TOML) type: no
    coercion of scalars, an array for a tuple, an object for a model. Returns it."""
    for t in (int, float, str, bool):
        converter.register_structure_hook(t, strict_scalar(t))
    converter.register_structure_hook_func(lambda t: t == dict[str, Any], _structure_dict)
    # Without these checks cattrs would iterate a string or an object given for a tuple field,
    # and fail with an AttributeError on a string given for a nested model.
    converter.register_structure_hook_factory(
        _is_homogeneous_tuple,
        lambda t, c: _require(list, "an array", homogenous_tuple_structure_factory(t, c)),
    )
    converter.register_structure_hook_factory(
        attrs.has, lambda cls, c: _require(dict, "an object", make_dict_structure_fn(cls, c))
    )
    return converter


strict_hooks(_converter)


def unstructure(message: Message) -> dict[str, Any]:
    """Return the JSON-ready dict of ``message``, envelope included."""
    body: dict[str, Any] = _converter.unstructure(message)
    return {"v": PROTOCOL_VERSION, "type": TYPE_NAMES[type(message)], **body}


def encode(message: Message) -> bytes:
    """Return the wire bytes of ``message``.

    Raises ``ValueError`` if a float field is NaN or infinite (not representable in JSON).
    """
    obj = unstructure(message)
    try:
        text = json.dumps(obj, separators=(",", ":"), allow_nan=False)
    except ValueError as exc:
        raise ValueError(f"{obj['type']}: cannot encode: {exc}") from None
    return text.encode("utf-8")


def structure(obj: Any) -> Message:
    """Build a message from an already parsed JSON value. Raises ``DecodeError``."""
    if not isinstance(obj, dict):
        raise DecodeError("$: expected a JSON object")
    body = dict(obj)
    version = body.pop("v", None)
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise DecodeError(
            f"$.v: unsupported protocol version {version!r} (this side speaks {PROTOCOL_VERSION})"
        )
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
        obj = json.loads(data, parse_constant=_refuse_constant)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, NaN, too many digits
        raise DecodeError(f"not valid JSON: {exc}") from None
    except RecursionError:
        raise DecodeError("not valid JSON: nested too deeply") from None
    return structure(obj)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _describe(exc: BaseException) -> str:
    """One line for a cattrs error: the path of the first problem and what was wrong."""
    if isinstance(exc, cattrs.ForbiddenExtraKeysError):
        return f"$: {explain(exc, None)}"
    if isinstance(exc, cattrs.BaseValidationError):
        messages = cattrs.transform_error(exc, path="$", format_exception=explain)
        if messages:
            explanation, _, path = messages[0].rpartition(" @ ")
            return f"{path}: {explanation}"
    return str(exc) or type(exc).__name__


def explain(exc: BaseException, type_: Any) -> str:
    """What was wrong with one value, for ``cattrs.transform_error(format_exception=...)``."""
    if isinstance(exc, cattrs.ForbiddenExtraKeysError):
        return f"unknown field(s) {', '.join(sorted(exc.extra_fields))}"
    if isinstance(exc, KeyError):
        return "required field missing"
    if isinstance(exc, TypeError | ValueError) and str(exc).startswith("expected "):
        return str(exc)  # our own hooks already say what they wanted
    if isinstance(type_, type) and issubclass(type_, enum.Enum):
        return "expected one of " + ", ".join(repr(m.value) for m in type_)
    if isinstance(exc, ValueError) and str(exc) == "invalid base64":
        return "invalid base64"
    name = getattr(type_, "__name__", None) or repr(type_)
    return f"expected {name}"
