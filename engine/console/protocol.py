"""The console protocol ``wfe.console.v1`` as data: request parsing, reply and push frames.

No I/O here. Every frame is one JSON object in one websocket text message:

* request  ``{"id": 7, "op": "jobs", "args": {...}}`` (``id``: an integer or a string of at
  most 64 characters, echoed in the reply; ``args`` optional; no key twice in any object, no
  ``NaN`` or ``Infinity``);
* reply    ``{"id": 7, "ok": true, "result": ...}`` or
  ``{"id": 7, "ok": false, "error": {"code": "forbidden", "message": "..."}}``;
* push     ``{"stream": 3, ...}`` for a stream opened by ``subscribe`` or ``tail``.

See docs/console-protocol.md for the operations and the codes.
"""

from __future__ import annotations

import json
from typing import Any

import attrs

from wfe.engine.errors import EngineError

PROTOCOL = "wfe.console.v1"

# Error codes (the ``error.code`` of a reply).
BAD_REQUEST = "bad_request"  # not JSON, not an object, no op, bad args
TOO_LARGE = "too_large"  # the request is longer than the server's limit
UNKNOWN_OP = "unknown_op"  # no such operation
UNAUTHENTICATED = "unauthenticated"  # no auth yet, or a bad token
FORBIDDEN = "forbidden"  # the token's role is below what the op needs
NOT_FOUND = "not_found"  # no such job, request, token, stream...
REFUSED = "refused"  # the engine refused (illegal transition, bad params, name taken...)
UNAVAILABLE = "unavailable"  # the engine does not run that service
UNSUPPORTED_PROTOCOL = "unsupported_protocol"  # the client asked for another protocol version
INTERNAL = "internal"  # a bug; the connection and the engine go on

# Websocket close codes the server uses (with a one-line reason).
CLOSE_GOING_AWAY = 1001  # the engine is stopping
CLOSE_TOO_BIG = 1009  # a message over the transport limit (closed by the websocket layer)
CLOSE_TRY_LATER = 1013  # authenticated, but no room for one more connection of its role
CLOSE_UNAUTHENTICATED = 4401  # first request was not a good ``auth``, or auth took too long
CLOSE_REVOKED = 4403  # the connection's token was revoked
CLOSE_TOO_SLOW = 4408  # the client stopped reading (see ``stall_timeout``)

_MAX_ID = 64


class ApiError(EngineError):
    """An error reply: ``code`` is one of the codes above, the message is one line."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class BadFrame(ApiError):
    """A request that can't be parsed; ``request_id`` is its id when one could be read."""

    def __init__(self, code: str, message: str, request_id: Any = None) -> None:
        super().__init__(code, message)
        self.request_id = request_id


@attrs.frozen(kw_only=True)
class Request:
    """One parsed request."""

    id: int | str | None
    op: str
    args: dict[str, Any]


def parse_request(text: str | bytes, *, max_size: int) -> Request:
    """Parse one request frame. Raises ``BadFrame`` (never anything else) with one line.

    Once the frame is a JSON object, the ``BadFrame`` carries its ``id`` as sent, even an id
    refused for its type or length, so that the reply reaches the request it answers; only an
    id the parser can't know (not JSON, the key ``id`` repeated, ``"id": NaN``) is None.
    """
    size = len(text)
    if isinstance(text, str) and 4 * size > max_size:  # a character is one to four bytes
        size = len(text.encode("utf-8", "surrogatepass"))
    if size > max_size:
        raise BadFrame(TOO_LARGE, f"request of {size} bytes is over the limit of {max_size}")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise BadFrame(BAD_REQUEST, "request is not UTF-8 text") from None
    repeated: list[str] = []  # keys given twice in one object, in the order met
    try:
        data = json.loads(text, parse_constant=_non_finite, parse_float=_finite,
                          object_pairs_hook=lambda pairs: _object(pairs, repeated))  # fmt: skip
    except (ValueError, RecursionError) as exc:
        raise BadFrame(BAD_REQUEST, f"request is not JSON: {_first_line(exc)}") from None
    if not isinstance(data, dict):
        raise BadFrame(BAD_REQUEST, f"a request must be a JSON object, not {_json_type(data)}")
    # From here on every refusal carries the id as sent (a valid one, or the one refused for
    # being invalid), so that the client can match the reply to its request.
    request_id = data.get("id")
    if isinstance(request_id, _NonFinite):
        request_id = None  # NaN can't be sent back, nor matched
    if repeated:  # a key of the request itself first: that is the one a reader looks at
        own = data.repeated if isinstance(data, _Object) else frozenset()
        key = min(own) if own else repeated[0]
        raise BadFrame(BAD_REQUEST, f"repeated key {key[:64]!r} in request",
                       None if "id" in own else request_id)  # fmt: skip
    if not _valid_id(request_id):
        raise BadFrame(
            BAD_REQUEST,
            f"id must be an integer or a string of at most {_MAX_ID} characters",
            request_id,
        )
    where = _path_of(data, _NonFinite)
    if where is not None:
        raise BadFrame(BAD_REQUEST, f"request is not JSON: {where[1]} is not JSON (at {where[0]})",
                       request_id)  # fmt: skip
    name = data.get("op")
    if not isinstance(name, str) or not name:
        raise BadFrame(
            BAD_REQUEST,
            'op is missing: a request is {"id": 1, "op": "...", "args": {}}',
            request_id,
        )
    args = data.get("args", {})
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise BadFrame(
            BAD_REQUEST, f"args must be a JSON object, not {_json_type(args)}", request_id
        )
    extra = sorted(set(data) - {"id", "op", "args"})
    if extra:
        raise BadFrame(BAD_REQUEST, f"unknown key(s) in request: {', '.join(extra)}", request_id)
    return Request(id=request_id, op=name, args=args)


def encode(frame: dict[str, Any]) -> str:
    """One frame as compact JSON (values JSON can't hold are sent as strings)."""
    return json.dumps(frame, separators=(",", ":"), allow_nan=False, default=str)


def ok(request_id: Any, result: Any) -> str:
    return encode({"id": request_id, "ok": True, "result": result})


def error(request_id: Any, code: str, message: str) -> str:
    return encode({"id": request_id, "ok": False, "error": {"code": code, "message": message}})


def push(stream: int, **fields: Any) -> str:
    return encode({"stream": stream, **fields})


class _Object(dict[str, Any]):
    """A decoded JSON object that remembers which of its keys were repeated."""

    repeated: frozenset[str] = frozenset()


def _object(pairs: list[tuple[str, Any]], repeated: list[str]) -> _Object:
    made = _Object(pairs)
    if len(made) != len(pairs):
        seen: set[str] = set()
        twice = [k for k, _ in pairs if k in seen or seen.add(k)]  # type: ignore[func-returns-value]
        made.repeated = frozenset(twice)
        repeated.extend(twice)
    return made


class _NonFinite(str):
    """Stands, while parsing, for ``NaN``/``Infinity`` or a number too large for a float."""


def _valid_id(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, int) and not isinstance(value, bool):
        return abs(value) < 2**53
    return isinstance(value, str) and len(value) <= _MAX_ID


def _finite(text: str) -> float | _NonFinite:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        return _NonFinite(f"{text[:20]} (too large for a number)")
    return value


def _non_finite(name: str) -> _NonFinite:
    return _NonFinite(name)


def _path_of(value: Any, kind: type, path: str = "") -> tuple[str, Any] | None:
    """The path (``args.params.x``, ``args.list[2]``) and value of the first ``kind`` inside
    ``value``, depth first; None if there is none."""
    if isinstance(value, kind):
        return path, value
    items: Any = ()
    if isinstance(value, dict):
        items = ((f"{path}.{k}" if path else k, v) for k, v in value.items())
    elif isinstance(value, list):
        items = ((f"{path}[{i}]", v) for i, v in enumerate(value))
    for where, item in items:
        found = _path_of(item, kind, where)
        if found is not None:
            return found
    return None


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "null"


def _first_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]
