"""The table of console operations: each has a name, the least role it needs, and a handler.

Add one with ``@op("name", role="viewer"|"operator"|"admin")`` (and ``workers=True`` for the
few that the ``worker`` role may use as well: the work queue's) in any module listed in
``wfe.engine.console.api``, which imports every module that has operations. A handler is ``async def handler(session, args) -> result``: it
gets the authenticated ``Session`` (``session.name``, ``session.role``, ``session.engine``)
and the request's ``args`` object, returns JSON-ready data, and raises ``ApiError(code,
message)`` to refuse; ``EngineError``/``ValueError``/``LookupError`` become ``refused`` /
``not_found`` replies (see ``server.dispatch``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import attrs

from wfe.engine.console.protocol import BAD_REQUEST, ApiError
from wfe.engine.console.tokens import Role

if TYPE_CHECKING:
    from wfe.engine.console.session import Session

Handler = Callable[["Session", dict[str, Any]], Awaitable[Any]]


@attrs.frozen(kw_only=True)
class Op:
    """One registered operation."""

    name: str
    role: Role
    handler: Handler
    summary: str
    workers: bool = False  # the worker role may use it too

    def allows(self, role: Role) -> bool:
        """Whether a token of ``role`` may use this operation."""
        return role >= self.role or (self.workers and role is Role.WORKER)


OPS: dict[str, Op] = {}


def op(name: str, *, role: Role | str, workers: bool = False) -> Callable[[Handler], Handler]:
    """Register the decorated handler as operation ``name``, allowed from ``role`` upwards
    (and to the worker role when ``workers``)."""
    needed = Role.parse(role)

    def register(fn: Handler) -> Handler:
        doc = (fn.__doc__ or "").strip().splitlines()
        OPS[name] = Op(
            name=name, role=needed, handler=fn, summary=doc[0] if doc else "", workers=workers
        )
        return fn

    return register


_KIND_NAMES = {
    str: "a string",
    int: "an integer",
    bool: "true or false",
    dict: "an object",
    list: "an array",
}


def arg(args: dict[str, Any], key: str, kind: type, default: Any = ...) -> Any:
    """``args[key]`` checked to be a ``kind`` (None allowed when it is the default).

    Raises ``ApiError(bad_request)`` naming the argument when it is missing or of the wrong
    type (a boolean is not an integer here).
    """
    value = args.get(key, default)
    if value is ...:
        raise ApiError(BAD_REQUEST, f"args.{key} is required")
    if value is None and default is None:
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ApiError(BAD_REQUEST, f"args.{key}: expected {_KIND_NAMES.get(kind, kind.__name__)}")
    return value


def bounded(
    args: dict[str, Any], key: str, default: int, *, low: int = 1, high: int = 10_000
) -> int:
    """An integer argument within ``low..high``."""
    value = int(arg(args, key, int, default))
    if not low <= value <= high:
        raise ApiError(BAD_REQUEST, f"args.{key}: expected an integer from {low} to {high}")
    return value


def epoch_seconds(args: dict[str, Any], key: str) -> float | None:
    """A time argument in seconds since the epoch (None when absent)."""
    value = args.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ApiError(BAD_REQUEST, f"args.{key}: expected a number (seconds since the epoch)")
    return float(value)


def string_list(args: dict[str, Any], key: str) -> tuple[str, ...]:
    """A string or an array of strings, as a tuple (empty when absent)."""
    value = args.get(key)
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ApiError(BAD_REQUEST, f"args.{key}: expected a string or an array of strings")
